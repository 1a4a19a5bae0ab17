"""Certificates for the TLS tests: a cluster CA, node certificates it signs,
and a second CA nobody trusts (``trustme``, written to a temp dir).

    files = make_certs(tmp_path)
    files.creds(token)                 # Credentials with mutual TLS under the cluster CA
    files.untrusted_creds(token)       # a certificate from the other CA
    files.node_flags()                 # --tls-cert/--tls-key/--tls-ca for a node process
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import trustme

from objstore.auth import TOKEN_BYTES, Credentials, TlsFiles

__all__ = ["CertFiles", "make_certs"]


@dataclass(frozen=True)
class CertFiles:
    """PEM files in one directory: the CA, node certificates, an untrusted pair."""

    directory: str
    ca: str
    # Node certificates signed by ``ca``: (cert, key) each.
    nodes: tuple[tuple[str, str], ...]
    untrusted_ca: str
    # A certificate and key signed by ``untrusted_ca``.
    untrusted: tuple[str, str]

    def tls(self, i: int = 0) -> TlsFiles:
        cert, key = self.nodes[i]
        return TlsFiles(cert, key, self.ca)

    def creds(self, token: bytes = b"t" * TOKEN_BYTES, i: int = 0) -> Credentials:
        return Credentials(token, self.tls(i), "test")

    def untrusted_tls(self) -> TlsFiles:
        """Another CA's certificate, trusting only that CA."""
        cert, key = self.untrusted
        return TlsFiles(cert, key, self.untrusted_ca)

    def untrusted_creds(self, token: bytes = b"t" * TOKEN_BYTES) -> Credentials:
        return Credentials(token, self.untrusted_tls(), "test")

    def node_flags(self, i: int = 0) -> list[str]:
        cert, key = self.nodes[i]
        return ["--tls-cert", cert, "--tls-key", key, "--tls-ca", self.ca]


def _write(directory: str, name: str, data: bytes) -> str:
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def make_certs(directory: str | os.PathLike[str], nodes: int = 3) -> CertFiles:
    """Write a CA, ``nodes`` node certificates (127.0.0.1, localhost) and an untrusted pair."""
    d = os.fspath(directory)
    os.makedirs(d, exist_ok=True)
    ca = trustme.CA(organization_name="objstore test cluster")
    pairs = []
    for i in range(nodes):
        leaf = ca.issue_cert("127.0.0.1", "localhost", common_name=f"node-{i}")
        pairs.append(
            (
                _write(d, f"node-{i}.pem", b"".join(b.bytes() for b in leaf.cert_chain_pems)),
                _write(d, f"node-{i}.key", leaf.private_key_pem.bytes()),
            )
        )
    other = trustme.CA(organization_name="someone else")
    stranger = other.issue_cert("127.0.0.1", "localhost", common_name="stranger")
    return CertFiles(
        directory=d,
        ca=_write(d, "ca.pem", ca.cert_pem.bytes()),
        nodes=tuple(pairs),
        untrusted_ca=_write(d, "other-ca.pem", other.cert_pem.bytes()),
        untrusted=(
            _write(d, "stranger.pem", b"".join(b.bytes() for b in stranger.cert_chain_pems)),
            _write(d, "stranger.key", stranger.private_key_pem.bytes()),
        ),
    )
