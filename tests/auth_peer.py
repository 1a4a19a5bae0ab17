"""Both sides of the data plane's token handshake, for raw test peers.

``ScriptedPeer(authenticated(handler))``: the handler sees the requests that
follow the handshake, as a real source would, so tests of misbehaving
sources run against clients that authenticate.  ``await prove(reader,
writer, token)``: a raw client's side, before it sends what it likes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fakes import CREDS

from objstore.auth import (
    CLIENT_ANSWER_SIZE,
    CLIENT_HELLO,
    SERVER_CHALLENGE,
    VERDICT_OK,
    VERDICT_REFUSED,
    ClientHandshake,
    check_client_answer,
    server_challenge,
)

__all__ = ["authenticated", "prove"]

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def authenticated(handler: Handler, token: bytes | None = CREDS.token) -> Handler:
    """``handler`` behind the server's side of the handshake under ``token``."""
    assert token is not None

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pair = server_challenge(token, await reader.readexactly(CLIENT_HELLO.size))
        assert pair is not None, "the client did not open with a handshake"
        challenge, expected = pair
        writer.write(challenge)
        await writer.drain()
        ok = check_client_answer(expected, await reader.readexactly(CLIENT_ANSWER_SIZE))
        writer.write(VERDICT_OK if ok else VERDICT_REFUSED)
        await writer.drain()
        if ok:
            await handler(reader, writer)

    return run


async def prove(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, token: bytes) -> None:
    """A raw client's side of the handshake; the server must accept it."""
    hs = ClientHandshake(token)
    writer.write(hs.hello())
    writer.write(hs.answer(await reader.readexactly(SERVER_CHALLENGE.size)))
    assert await reader.readexactly(len(VERDICT_OK)) == VERDICT_OK
