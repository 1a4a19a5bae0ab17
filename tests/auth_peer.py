"""Scripted data plane peers that pass the token handshake first.

``ScriptedPeer(authenticated(handler))``: the handler sees the requests that
follow the handshake, as a real source would, so tests of misbehaving
sources run against clients that authenticate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fakes import CREDS

from objstore.auth import (
    CLIENT_ANSWER_SIZE,
    CLIENT_HELLO,
    VERDICT_OK,
    VERDICT_REFUSED,
    check_client_answer,
    server_challenge,
)

__all__ = ["authenticated"]

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
