"""Certificates for the TLS tests (trustme): the cluster's CA, leaves for 127.0.0.1, a stranger's CA.

:func:`make_tls` writes, under a directory, a CA with a server and a client
leaf it signed (each valid for 127.0.0.1 and localhost), and a second,
unrelated CA with a leaf of its own: the certificate of someone outside the
cluster.  Each is returned as :class:`objstore.auth.TlsFiles` for
:class:`objstore.auth.Credentials`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import trustme

from objstore.auth import TlsFiles

__all__ = ["TlsSet", "make_tls"]

_NAMES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class TlsSet:
    """The files of one test: the cluster's server and client, and a stranger."""

    server: TlsFiles
    client: TlsFiles
    # A certificate from another CA (trusting that other CA, not the cluster's).
    stranger: TlsFiles


def _leaf(ca: trustme.CA, ca_path: str, directory: str, name: str) -> TlsFiles:
    cert = ca.issue_cert(*_NAMES)
    cert_path = os.path.join(directory, f"{name}.pem")
    key_path = os.path.join(directory, f"{name}.key")
    cert.cert_chain_pems[0].write_to_path(cert_path)
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(cert_path, append=True)
    cert.private_key_pem.write_to_path(key_path)
    os.chmod(key_path, 0o600)
    return TlsFiles(cert_path, key_path, ca_path)


def make_tls(directory: str) -> TlsSet:
    """Write the certificates under ``directory`` (created if missing)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    ca_path = os.path.join(directory, "ca.pem")
    other_path = os.path.join(directory, "other-ca.pem")
    ca.cert_pem.write_to_path(ca_path)
    other.cert_pem.write_to_path(other_path)
    return TlsSet(
        server=_leaf(ca, ca_path, directory, "server"),
        client=_leaf(ca, ca_path, directory, "client"),
        stranger=_leaf(other, other_path, directory, "stranger"),
    )
