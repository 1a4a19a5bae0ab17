"""The data plane in one process: a real TransferServer over a FakeStore on
127.0.0.1 port 0, and the pulling side's PeerClient (its pool of checked
connections), plus scripted peers that misbehave on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from auth_peer import authenticated
from fakes import CREDS, FakeStore, ScriptedPeer

from objstore.config import Config
from objstore.errors import ConfigError
from objstore.transfer import wire
from objstore.transfer.conn import PlainConn
from objstore.transfer.peer import PeerClient, PeerPool, TransferError
from objstore.transfer.server import TransferServer

KiB = 1024
CHUNK = 64 * KiB
ME = b"\x01" * 20


def oid(i: int) -> bytes:
    return struct.pack(">I", i).rjust(20, b"\xaa")


def pattern(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(n))


async def no_restore(oid: bytes, timeout: float) -> bool:
    return False


@contextlib.asynccontextmanager
async def serving(
    store: FakeStore,
    config: Config | None = None,
    restore: Callable[[bytes, float], Awaitable[bool]] = no_restore,
) -> AsyncIterator[TransferServer]:
    server = TransferServer(store, config or Config.for_test(), restore, credentials=CREDS)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.close()
        store.check()


def deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


def assert_pool_clean(client: PeerClient) -> None:
    """Every socket the pool still has open is idle and alive."""
    pool = client.pool
    idle = pool.idle_sockets()
    assert set(idle) == pool.open, (len(idle), len(pool.open))
    for s in idle:
        with pytest.raises(BlockingIOError):
            s.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)


async def read_request(reader: asyncio.StreamReader) -> tuple[int, bytes, int, int]:
    """The next request other than HELLO."""
    while True:
        kind, o, offset, length = wire.decode_request(await reader.readexactly(wire.REQUEST.size))
        if kind != wire.HELLO:
            return kind, o, offset, length


# ----------------------------------------------------------------------------- the fetches


async def test_first_chunk_then_chunks_then_many() -> None:
    src = FakeStore()
    big = pattern(3 * CHUNK + 5, 1)
    src.put(oid(1), big, meta=b"big-meta")
    src.put(oid(2), b"small", meta=b"s")
    src.put(oid(3), b"")
    client = PeerClient(ME, credentials=CREDS, idle_s=30)
    async with serving(src) as server:
        first = await client.fetch_first(server.address, oid(1), CHUNK, deadline())
        assert (first.size, first.meta, first.length) == (len(big), b"big-meta", CHUNK)
        got = bytearray(len(big))
        view = memoryview(got)
        await first.read_into(view[:CHUNK], deadline())
        for off in range(CHUNK, len(big), CHUNK):
            n = min(CHUNK, len(big) - off)
            await client.fetch_chunk(server.address, oid(1), off, view[off : off + n], deadline())
        assert bytes(got) == big
        replies = await client.fetch_many(server.address, [oid(2), oid(9), oid(3)], deadline())
        assert [(r.size, r.meta, r.data, r.error) for r in replies] == [
            (5, b"s", b"small", ""),
            (0, b"", b"", "source says not found"),
            (0, b"m", b"", ""),
        ]
        # One connection did it all, and it is back in the pool.
        assert client.pool.idle_count(server.address) == 1
        assert client.retried == 0
        assert_pool_clean(client)
        assert server.chunks_sent == 4 + 2
        # The server held a lease only while it sent.
        assert ("lease", oid(1)) in src.log and ("unlease", oid(1)) in src.log
    client.close()
    assert not client.pool.open


async def test_not_found_keeps_the_connection() -> None:
    src = FakeStore()
    client = PeerClient(ME, credentials=CREDS, idle_s=30)
    async with serving(src) as server:
        with pytest.raises(TransferError, match="not found"):
            await client.fetch_first(server.address, oid(1), CHUNK, deadline())
        assert client.pool.idle_count(server.address) == 1
        view = memoryview(bytearray(10))
        with pytest.raises(TransferError, match="not found"):
            await client.fetch_chunk(server.address, oid(1), 10, view, deadline())
        assert client.pool.idle_count(server.address) == 1
        assert_pool_clean(client)
    client.close()


async def test_connection_refused_is_a_transfer_error() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{s.getsockname()[1]}"
    s.close()
    client = PeerClient(ME, credentials=CREDS)
    with pytest.raises(TransferError, match="ConnectionRefused"):
        await client.fetch_many(address, [oid(1)], deadline())
    assert not client.pool.open


async def test_first_chunk_closed_unread_closes_its_connection() -> None:
    src = FakeStore()
    src.put(oid(1), pattern(2 * CHUNK))
    client = PeerClient(ME, credentials=CREDS)
    async with serving(src) as server:
        first = await client.fetch_first(server.address, oid(1), CHUNK, deadline())
        first.close()
        first.close()  # harmless
        assert not client.pool.open
        with pytest.raises(TransferError):
            await first.read_into(memoryview(bytearray(CHUNK)), deadline())
    client.close()


# ----------------------------------------------------------------------------- the pool


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    """Defect 1's cause: the server closes idle connections; the pool must notice."""
    src = FakeStore()
    src.put(oid(1), b"x" * 100)
    cfg = Config.for_test(transfer={"idle_timeout_s": 0.2, "peer_idle_s": 0.1})
    # The pool's own idle limit is longer than the server's here (a clock that
    # drifts, a server configured apart): only the liveness check stands in the way.
    client = PeerClient(ME, credentials=CREDS, idle_s=30)
    async with serving(src, cfg) as server:
        assert (await client.fetch_many(server.address, [oid(1)], deadline()))[0].size == 100
        assert client.pool.idle_count(server.address) == 1
        await asyncio.sleep(0.5)
        assert server.connections() == 0  # it closed ours
        assert (await client.fetch_many(server.address, [oid(1)], deadline()))[0].size == 100
        assert client.pool.dropped_stale == 1
        assert client.retried == 0
        assert_pool_clean(client)
    client.close()


async def test_idle_connections_are_closed_before_the_servers_timeout() -> None:
    src = FakeStore()
    src.put(oid(1), b"x")
    client = PeerClient(ME, credentials=CREDS, idle_s=0.1)
    async with serving(src) as server:
        await asyncio.gather(
            *(client.fetch_many(server.address, [oid(1)], deadline()) for _ in range(3))
        )
        assert client.pool.idle_count() == 3
        await asyncio.sleep(0.35)
        # Swept in the background, without any request.
        assert client.pool.idle_count() == 0 and not client.pool.open
        assert client.pool.dropped_idle == 3
        for _ in range(50):
            if server.connections() == 0:
                break
            await asyncio.sleep(0.01)
        assert server.connections() == 0
    client.close()


async def test_the_pool_keeps_at_most_max_idle_per_peer() -> None:
    src = FakeStore()
    src.put(oid(1), b"x")
    client = PeerClient(ME, credentials=CREDS, idle_s=30, max_idle_per_peer=2)
    async with serving(src) as server:
        await asyncio.gather(
            *(client.fetch_many(server.address, [oid(1)], deadline()) for _ in range(5))
        )
        assert client.pool.idle_count() == 2 and len(client.pool.open) == 2
        assert_pool_clean(client)
    client.close()


async def test_a_request_the_source_drops_on_a_reused_connection_is_sent_again() -> None:
    """The race the liveness check cannot close: the source closes just as we send."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first_conn = peer.connections == 1
        served = 0
        while True:
            _kind, _o, _offset, _length = await read_request(reader)
            if first_conn and served == 1:
                return  # closes without a reply
            writer.write(wire.encode_reply(wire.OK, 3, 3, 0, wire.crc32(b"abc")) + b"abc")
            await writer.drain()
            served += 1

    async with ScriptedPeer(authenticated(handler)) as peer:
        client = PeerClient(ME, credentials=CREDS, idle_s=30)
        for _ in range(2):
            view = memoryview(bytearray(3))
            await client.fetch_chunk(peer.address, oid(1), 0, view, deadline())
            assert bytes(view) == b"abc"
        assert client.retried == 1 and peer.connections == 2
        assert_pool_clean(client)
        client.close()


def test_peer_idle_must_be_below_the_servers_idle_timeout() -> None:
    with pytest.raises(ConfigError, match=r"transfer\.peer_idle_s"):
        Config().replace(transfer={"peer_idle_s": 300.0})
    with pytest.raises(ConfigError, match=r"transfer\.peer_idle_s"):
        Config().replace(transfer={"idle_timeout_s": 30.0})
    cfg = Config()
    assert cfg.transfer.peer_idle_s < cfg.transfer.idle_timeout_s == 300.0
    with pytest.raises(ConfigError, match=r"transfer\.connections_per_peer"):
        Config().replace(transfer={"connections_per_peer": 0})


async def test_pool_liveness_check_on_a_plain_socket_pair() -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    pool = PeerPool(credentials=CREDS, idle_s=30)
    conn = PlainConn(a)
    pool.open.add(conn)
    pool.give("x:1", conn)
    b.close()
    assert pool.take("x:1") is None
    assert pool.dropped_stale == 1 and not pool.open
    pool.close()


# ----------------------------------------------------------------------------- misbehaving sources


async def test_a_stalled_source_ends_at_the_deadline() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(3600)

    async with ScriptedPeer(authenticated(handler)) as peer:
        client = PeerClient(ME, credentials=CREDS)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(TransferError, match="no reply in time"):
            await client.fetch_first(peer.address, oid(1), CHUNK, deadline(0.2))
        assert 0.15 < loop.time() - t0 < 2
        assert not client.pool.open
        client.close()


async def test_a_bad_crc_fails_the_chunk_and_drops_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            kind, _o, _offset, length = await read_request(reader)
            if kind == wire.FETCH_MANY:
                await reader.readexactly(20 * length)
                for i in range(length):
                    crc = wire.crc32(b"ok") ^ (1 if i == 1 else 0)
                    writer.write(wire.encode_reply(wire.OK, 2, 2, 0, crc) + b"ok")
            else:
                writer.write(wire.encode_reply(wire.OK, 8, 4, 0, wire.crc32(b"abcd") ^ 1) + b"abcd")
            await writer.drain()

    async with ScriptedPeer(authenticated(handler)) as peer:
        client = PeerClient(ME, credentials=CREDS)
        with pytest.raises(TransferError, match="checksum"):
            await client.fetch_chunk(peer.address, oid(1), 4, memoryview(bytearray(4)), deadline())
        assert not client.pool.open
        first = await client.fetch_first(peer.address, oid(1), 4, deadline())
        with pytest.raises(TransferError, match="checksum"):
            await first.read_into(memoryview(bytearray(4)), deadline())
        assert not client.pool.open
        replies = await client.fetch_many(peer.address, [oid(1), oid(2), oid(3)], deadline())
        assert [r.error for r in replies] == ["", "failed its checksum", ""]
        assert replies[0].data == b"ok" and replies[1].data == b""
        client.close()


async def test_a_source_that_closes_mid_reply() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(wire.encode_reply(wire.OK, 100, 100, 0, 0) + b"x" * 40)
        await writer.drain()

    async with ScriptedPeer(authenticated(handler)) as peer:
        client = PeerClient(ME, credentials=CREDS)
        with pytest.raises(TransferError, match="closed after 40 of 100"):
            await client.fetch_chunk(
                peer.address, oid(1), 0, memoryview(bytearray(100)), deadline()
            )
        assert not client.pool.open
        client.close()


async def test_garbage_replies_are_transfer_errors() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n".ljust(wire.REPLY.size, b" "))
        await writer.drain()
        await asyncio.sleep(1)

    async with ScriptedPeer(authenticated(handler)) as peer:
        client = PeerClient(ME, credentials=CREDS)
        with pytest.raises(TransferError, match="WireError"):
            await client.fetch_first(peer.address, oid(1), CHUNK, deadline())
        assert not client.pool.open
        client.close()


async def test_a_cancelled_fetch_closes_its_connection() -> None:
    started = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(wire.encode_reply(wire.OK, 100, 100, 0, 0) + b"x" * 10)
        await writer.drain()
        started.set()
        await asyncio.sleep(3600)

    async with ScriptedPeer(authenticated(handler)) as peer:
        client = PeerClient(ME, credentials=CREDS)
        task = asyncio.ensure_future(
            client.fetch_chunk(peer.address, oid(1), 0, memoryview(bytearray(100)), deadline())
        )
        await asyncio.wait_for(started.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not client.pool.open
        client.close()


# ----------------------------------------------------------------------------- the server


async def test_a_spilled_object_is_restored_for_a_peer() -> None:
    src = FakeStore()
    data = pattern(2 * CHUNK + 3)
    src.put(oid(1), data, meta=b"mm")
    src.put(oid(2), b"tiny")
    src.put(oid(3), b"lost")
    for i in (1, 2, 3):
        src.free_spilled(oid(i))
    asked: list[tuple[bytes, float]] = []

    async def restore(o: bytes, timeout: float) -> bool:
        asked.append((o, timeout))
        if o == oid(3):
            return False
        space = await src.allocate(len(data) if o == oid(1) else 4)
        src.space_view(space)[:] = data if o == oid(1) else b"tiny"
        src.restored(o, space)
        return True

    client = PeerClient(ME, credentials=CREDS)
    async with serving(src, restore=restore) as server:
        first = await client.fetch_first(server.address, oid(1), CHUNK, deadline())
        buf = memoryview(bytearray(CHUNK))
        await first.read_into(buf, deadline())
        assert bytes(buf) == data[:CHUNK] and first.meta == b"mm"
        replies = await client.fetch_many(server.address, [oid(2), oid(3)], deadline())
        assert [(r.data, r.error) for r in replies] == [
            (b"tiny", ""),
            (b"", "source says not found"),
        ]
        assert [o for o, _ in asked] == [oid(1), oid(2), oid(3)]
        assert all(t == Config.for_test().transfer.pull_timeout_s for _, t in asked)
    client.close()


async def test_server_close_ends_connections_and_leases() -> None:
    src = FakeStore()
    src.put(oid(1), pattern(CHUNK))
    client = PeerClient(ME, credentials=CREDS)
    server = TransferServer(src, Config.for_test(), no_restore, credentials=CREDS)
    await server.start("127.0.0.1", 0)
    await client.fetch_many(server.address, [oid(1)], deadline())
    assert server.connections() == 1
    await server.close()
    assert server.connections() == 0
    src.check()
    # The pooled connection is now closed by the server: found dead, not reused.
    with pytest.raises(TransferError):
        await client.fetch_many(server.address, [oid(1)], deadline())
    assert client.pool.dropped_stale == 1
    client.close()
