"""Who may call the directory: a proof of the cluster token on every request.

The server side is :class:`Gate`: a grpclib ``RecvRequest`` listener that
checks the ``authorization`` metadata (:class:`objstore.auth.ProofVerifier`)
before any handler runs, for unary calls and streams alike, and refuses with
UNAUTHENTICATED otherwise.  A refused call reads no request body and leaves
no state behind but a line in a :class:`~objstore.lograte.LogLimiter` (one warning per peer IP per
minute, for at most :data:`MAX_LOGGED_PEERS` IPs), so a stranger knocking on
the port costs the directory one HMAC per call and cannot fill its memory or
its log.

The client side is :func:`open_channel`: every grpclib channel objstore
opens to a directory sends a fresh proof (:class:`objstore.auth.ChannelProver`,
one per channel) on every request, and speaks mutual TLS when the
credentials carry certificates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.events import RecvRequest, SendRequest, listen

from objstore.auth import METADATA_KEY, ChannelProver, Credentials, ProofVerifier
from objstore.lograte import LogLimiter

__all__ = [
    "Gate",
    "open_channel",
    "server_ssl",
    "MAX_LOGGED_PEERS",
    "LOG_EVERY_S",
]

log = structlog.get_logger("objstore.directory.guard")

# A refused peer IP is logged at most once per this many seconds...
LOG_EVERY_S = 60.0
# ... and at most this many IPs are remembered (the oldest is forgotten first).
MAX_LOGGED_PEERS = 1024
# gRPC needs HTTP/2, which TLS negotiates by ALPN.
_ALPN = ["h2"]


class Gate:
    """Checks every call's proof before its handler runs (see the module docstring)."""

    def __init__(self, token: bytes, clock: Callable[[], float] = time.monotonic) -> None:
        self.verifier = ProofVerifier(token)
        self.refusals = LogLimiter(LOG_EVERY_S, max_keys=MAX_LOGGED_PEERS)
        # Time for the refusal log (tests move it on).
        self.clock = clock
        # Calls refused since the start (status and tests).
        self.refused = 0

    def attach(self, server: Any) -> None:
        """Check the calls of ``server`` (a grpclib ``Server``) from now on."""
        listen(server, RecvRequest, self._on_request)

    async def _on_request(self, event: RecvRequest) -> None:
        values = event.metadata.getall(METADATA_KEY, [])
        value = values[0] if len(values) == 1 else None
        if len(values) > 1 or isinstance(value, bytes):
            reason: str | None = "malformed credentials"
        else:
            reason = self.verifier.check(value, event.method_name)
        if reason is None:
            return
        self.refused += 1
        addr = event.peer.addr()
        ip = str(addr[0]) if addr else "unknown"
        unlogged = self.refusals.note(ip, self.clock())
        if unlogged is not None:
            log.warning(
                "directory refused a call without valid credentials",
                peer=ip,
                method=event.method_name.rpartition("/")[2],
                reason=reason,
                refused_unlogged=unlogged,
                next_log_after_s=self.refusals.every_s,
            )
        raise GRPCError(Status.UNAUTHENTICATED, reason)


def open_channel(host: str, port: int, credentials: Credentials) -> Channel:
    """A grpclib channel to the directory that proves the cluster token on every request.

    With TLS in the credentials the channel speaks mutual TLS (ALPN h2);
    with no token (``--insecure``) it sends no proofs.
    """
    channel = Channel(host, port, ssl=credentials.client_ssl(_ALPN))
    if credentials.token is not None:
        prover = ChannelProver(credentials.token)

        async def prove(event: SendRequest) -> None:
            event.metadata[METADATA_KEY] = prover.proof(event.method_name)

        listen(channel, SendRequest, prove)
    return channel


def server_ssl(credentials: Credentials) -> Any:
    """The server's TLS context (ALPN h2), or None without TLS."""
    return credentials.server_ssl(_ALPN)
