"""The data plane of real nodes refuses whoever does not prove the cluster token.

A head and two nodes (real processes on 127.0.0.1, authentication on as by
default: the head makes the token and publishes it for the same user's nodes).
A raw TCP client that knows the wire format but not the token asks a node
for an object it holds, by its real id, with ``FETCH`` and ``FETCH_MANY``:
it gets no byte, its connection is closed, and the node logs the refusal.
Pulls between the nodes, which hold the token, still work.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from auth_peer import prove

import objstore
from objstore.auth import (
    cache_path,
    read_token_file,
)
from objstore.transfer import wire

KiB = 1 << 10
ENV = {"OBJSTORE_TRANSFER_CHUNK_SIZE": "64KiB", "OBJSTORE_TRANSFER_MAX_BYTES_IN_FLIGHT": "1MiB"}


def pattern(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


async def exchange(address: str, payload: bytes, handshake: bytes | None = None) -> bytes:
    """Send ``payload`` (after the token handshake if given a token); all that comes back."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    out = bytearray()
    try:
        async with asyncio.timeout(10):
            if handshake is not None:
                await prove(reader, writer, handshake)
            writer.write(payload)
            writer.write_eof()
            while data := await reader.read(1 << 20):
                out += data
    except ConnectionResetError:
        pass
    finally:
        writer.close()
    return bytes(out)


async def test_a_raw_client_without_the_token_gets_no_byte_and_pulls_still_work(
    cluster_factory,
) -> None:
    c = cluster_factory(2, env=ENV, memory="64MiB")
    a, b = c.nodes
    big, small = pattern(200 * KiB + 7, 1), pattern(3 * KiB, 2)
    async with objstore.connect(a.socket) as ca, objstore.connect(b.socket) as cb:
        big_ref, small_ref = await ca.put(big), await ca.put(small)
        address = str(a.ready["address"])
        for payload in (
            wire.encode_request(wire.FETCH, big_ref._id, 0, 64 * KiB),
            wire.encode_request(wire.FETCH_MANY, bytes(20), 0, 2) + big_ref._id + small_ref._id,
        ):
            got = await exchange(address, payload)
            assert got == b""
            for secret in (big, small):
                assert secret[:64] not in got and secret[-64:] not in got
        assert "data plane: connection refused" in a.stderr()
        assert "no handshake" in a.stderr()
        assert (await ca.stats())["refused_peers"] == 2
        # The nodes know the token: a pull between them works.
        assert bytes(await cb.get(big_ref, timeout=20)) == big
        assert bytes(await cb.get(small_ref, timeout=20)) == small
        # And so does a raw client that proves it (the token the head published here).
        token = read_token_file(cache_path(c.directory))
        got = await exchange(
            address, wire.encode_request(wire.FETCH, small_ref._id, 0, 64 * KiB), token
        )
        assert wire.decode_reply(got[: wire.REPLY.size])[0] == wire.OK
        assert small in got


@pytest.mark.slow
async def test_another_token_is_refused_and_the_cluster_carries_on(cluster_factory) -> None:
    """A client under another token finds the node's proof wrong; pulls carry on."""
    c = cluster_factory(1, env=ENV, memory="64MiB")
    (a,) = c.nodes
    async with objstore.connect(a.socket) as ca:
        ref = await ca.put(pattern(100 * KiB, 3))
        token = read_token_file(cache_path(c.directory))
        wrong = bytes(reversed(token))
        got = await exchange(
            str(a.ready["address"]), wire.encode_request(wire.FETCH, ref._id, 0, 64 * KiB), None
        )
        assert got == b""
        # A handshake under the wrong token: the node's proof fails on our side.
        with pytest.raises(objstore.errors.AuthenticationError):
            await exchange(str(a.ready["address"]), b"", wrong)
        async with objstore.connect(c.head.socket) as ch:
            assert bytes(await ch.get(ref, timeout=20)) == pattern(100 * KiB, 3)
