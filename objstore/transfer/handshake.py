"""Proving the cluster token on a data plane connection, before any request.

The bytes are :mod:`objstore.auth`'s (:class:`~objstore.auth.ClientHandshake`,
:func:`~objstore.auth.server_challenge`); this module does their I/O over a
:class:`~objstore.transfer.conn.Conn` (under TLS when the cluster has it):

    puller                                   server
    CLIENT_HELLO (44: magic OSXA, nonce) ->
                                         <-  SERVER_CHALLENGE (72: nonce, MAC)
    answer (32) + HELLO + first request  ->
                                         <-  VERDICT_OK | VERDICT_REFUSED (4)

The puller checks the server's MAC before it answers (a server without the
token learns nothing it could use), and sends its first request with its
answer, so authenticating costs a new connection one round trip; the server
reads no request before the verdict.  Pooled connections stay authenticated.

Refusals are logged once per peer IP per minute
(:class:`objstore.lograte.LogLimiter`): a flood of refused connections costs
a log line, not memory.
"""

from __future__ import annotations

from objstore.auth import (
    CLIENT_ANSWER_SIZE,
    CLIENT_HELLO,
    HANDSHAKE_MAGIC,
    SERVER_CHALLENGE,
    VERDICT_OK,
    VERDICT_REFUSED,
    ClientHandshake,
    check_client_answer,
    server_challenge,
)
from objstore.errors import AuthenticationError
from objstore.transfer.conn import Conn

__all__ = [
    "Refused",
    "accept_handshake",
    "offer_handshake",
    "looks_like_handshake",
]

# Reasons a server gives for a refusal (the log's ``reason``).
NO_HANDSHAKE = "no handshake"
WRONG_TOKEN = "wrong token"
CLOSED = "closed before answering (another cluster token?)"


class Refused(Exception):
    """A peer did not prove the token; ``reason`` says how (for the log)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def looks_like_handshake(first: bytes | bytearray) -> bool:
    """Whether a connection's first bytes open an authentication handshake."""
    return first[:4] == HANDSHAKE_MAGIC


async def accept_handshake(conn: Conn, token: bytes) -> None:
    """The server's side; :class:`Refused` when the peer does not prove the token.

    The caller bounds it with the handshake deadline.  A wrong answer gets
    ``VERDICT_REFUSED`` before the Refused is raised.
    """
    hello = bytearray(CLIENT_HELLO.size)
    try:
        await conn.recv_exactly(memoryview(hello))
    except ConnectionError:
        raise Refused("closed before the handshake") from None
    pair = server_challenge(token, bytes(hello))
    if pair is None:
        raise Refused(NO_HANDSHAKE)
    challenge, expected = pair
    await conn.sendall(challenge)
    answer = bytearray(CLIENT_ANSWER_SIZE)
    try:
        await conn.recv_exactly(memoryview(answer))
    except ConnectionError:
        raise Refused(CLOSED) from None
    if not check_client_answer(expected, bytes(answer)):
        await conn.sendall(VERDICT_REFUSED)
        raise Refused(WRONG_TOKEN)
    await conn.sendall(VERDICT_OK)


async def offer_handshake(conn: Conn, token: bytes, then: bytes = b"") -> None:
    """The puller's side: prove the token, sending ``then`` (requests) with the answer.

    :class:`~objstore.errors.AuthenticationError` if the server does not
    know the token or refuses ours; ConnectionError if it closes first (an
    overloaded server, or one running ``--insecure``).  The caller bounds it
    with its deadline.
    """
    hs = ClientHandshake(token)
    await conn.sendall(hs.hello())
    challenge = bytearray(SERVER_CHALLENGE.size)
    try:
        await conn.recv_exactly(memoryview(challenge))
    except ConnectionError as exc:
        raise ConnectionError(
            "the peer closed the connection instead of answering the authentication "
            "handshake (is it running --insecure, or overloaded?)"
        ) from exc
    await conn.sendall(hs.answer(bytes(challenge)) + then)
    verdict = bytearray(len(VERDICT_OK))
    try:
        await conn.recv_exactly(memoryview(verdict))
    except ConnectionError as exc:
        raise ConnectionError("the peer closed the connection before its verdict") from exc
    if verdict == VERDICT_REFUSED:
        raise AuthenticationError("the peer refused this node's cluster token")
    if verdict != VERDICT_OK:
        raise AuthenticationError(f"the peer's verdict is malformed ({bytes(verdict)!r})")
