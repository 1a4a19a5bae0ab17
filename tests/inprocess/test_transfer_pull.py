"""Pulls in one process over real sockets: a TransferServer over one FakeStore
on 127.0.0.1 port 0, an ObjectManager over another pulling from it through a
real PeerClient.  Every test ends with nothing left: no partial copy, no
lease, no pull in the policy, no task, only idle and alive pooled sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from auth_peer import authenticated
from fakes import CREDS, FakeStore, ScriptedPeer

from objstore.auth import Credentials
from objstore.config import Config
from objstore.locations import LocationState, ObjectRow
from objstore.transfer import wire
from objstore.transfer.manager import ObjectManager
from objstore.transfer.peer import PeerClient
from objstore.transfer.server import TransferServer

KiB = 1024
MiB = 1024 * KiB
CHUNK = 64 * KiB
ME = b"\x01" * 20
SRC = b"\x02" * 20
BAD = b"\x03" * 20


def oid(i: int) -> bytes:
    return struct.pack(">I", i).rjust(20, b"\xbb")


def pattern(n: int, seed: int = 0) -> bytes:
    return (bytes(range(seed % 7, 256)) * (n // 200 + 2))[:n]


async def no_restore(o: bytes, timeout: float) -> bool:
    return False


@dataclass
class Pull:
    """A source (server over ``src``) and a puller (manager over ``dst``)."""

    src: FakeStore
    dst: FakeStore
    server: TransferServer
    client: PeerClient
    om: ObjectManager
    addresses: dict[bytes, str] = field(default_factory=dict)

    def locate(self, o: bytes, size: int, *nodes: bytes) -> None:
        self.om.on_locations(ObjectRow(o, LocationState.PRESENT, size, nodes=nodes or (SRC,)))

    async def get(self, o: bytes, size: int, *nodes: bytes, timeout: float = 10.0) -> bytes:
        """What a get does: want, hear the locations, wait for the copy, stop wanting."""
        self.om.want(o, 0)
        try:
            self.locate(o, size, *nodes)
            async with asyncio.timeout(timeout):
                entry = await self.dst.wait_sealed(o)
            return bytes(entry.data)
        finally:
            self.om.unwant(o, 0)

    async def until(self, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(0.005)


def assert_pool_clean(client: PeerClient) -> None:
    pool = client.pool
    idle = pool.idle_sockets()
    assert set(idle) == pool.open, (len(idle), len(pool.open))
    for s in idle:
        with pytest.raises(BlockingIOError):
            s.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)


@contextlib.asynccontextmanager
async def pulling(
    config: Config | None = None,
    *,
    server_config: Config | None = None,
    dst_capacity: int = 64 * MiB,
    client: PeerClient | None = None,
    restore: Callable[[bytes, float], Awaitable[bool]] = no_restore,
) -> AsyncIterator[Pull]:
    cfg = config or Config.for_test()
    src, dst = FakeStore(), FakeStore(capacity=dst_capacity)
    server = TransferServer(src, server_config or cfg, restore, credentials=CREDS)
    await server.start("127.0.0.1", 0)
    client = client or PeerClient.from_config(ME, cfg, CREDS)
    addresses = {SRC: server.address}
    om = ObjectManager(dst, cfg, ME, client, addresses.get)
    p = Pull(src, dst, server, client, om, addresses)
    try:
        yield p
        # Everything ended: the pulls, their tasks, their sockets and leases.
        await p.until(lambda: om.tasks() == 0)
        assert not om.policy.pulls
        om.policy.check()
        assert om.policy.in_flight_bytes == 0
        assert len(om.slots) == 0
        assert_pool_clean(client)
        dst.check()
    finally:
        await om.close()
        client.close()
        await server.close()
    src.check()


async def test_large_objects_in_several_chunks() -> None:
    sizes = [CHUNK + 1, 3 * CHUNK + 12345, 20 * CHUNK]
    async with pulling() as p:
        for i, n in enumerate(sizes):
            p.src.put(oid(i), pattern(n, i), meta=b"meta%d" % i)
        got = await asyncio.gather(*(p.get(oid(i), n) for i, n in enumerate(sizes)))
        for i, n in enumerate(sizes):
            assert got[i] == pattern(n, i)
            assert p.dst.objects[oid(i)].meta == b"meta%d" % i
            assert not p.dst.objects[oid(i)].primary
        assert p.om.pulled == 3 and p.om.bytes_pulled == sum(sizes) and p.om.failures == 0
        assert p.server.bytes_sent == sum(sizes)
        assert p.server.chunks_sent == sum(-(-n // CHUNK) for n in sizes)
        # At most connections_per_peer connections to the one source.
        assert len(p.client.pool.open) <= Config.for_test().transfer.connections_per_peer


async def test_a_thousand_small_objects_in_batches() -> None:
    async with pulling() as p:
        for i in range(1000):
            p.src.put(oid(i), pattern(i % 300, i), meta=b"s")
        p.src.put(oid(5000), b"x" * CHUNK)  # the chunk size itself still goes in a batch
        ids = [oid(i) for i in range(1000)] + [oid(5000)]
        sizes = [i % 300 for i in range(1000)] + [CHUNK]
        got = await asyncio.gather(*(p.get(o, n) for o, n in zip(ids, sizes)))
        assert got[:1000] == [pattern(i % 300, i) for i in range(1000)]
        assert p.om.pulled == 1001 and p.om.failures == 0
        # Two requests (1,000 per batch) on two connections at most.
        assert len(p.client.pool.open) <= 2
        assert p.server.chunks_sent == 1001


async def test_an_object_that_is_already_here_is_not_fetched() -> None:
    async with pulling() as p:
        p.src.put(oid(1), b"abc")
        p.dst.put(oid(1), b"abc")
        p.om.want(oid(1), 0)
        p.locate(oid(1), 3)
        p.om.unwant(oid(1), 0)
        assert p.server.chunks_sent == 0 and p.om.pulled == 0


async def test_a_spilled_object_at_the_source_is_restored_and_pulled() -> None:
    data = pattern(3 * CHUNK, 3)
    holder: dict[str, FakeStore] = {}

    async def restore(o: bytes, timeout: float) -> bool:
        src = holder["src"]
        space = await src.allocate(len(data))
        src.space_view(space)[:] = data
        src.restored(o, space)
        return True

    async with pulling(restore=restore) as p:
        holder["src"] = p.src
        p.src.put(oid(1), data)
        p.src.free_spilled(oid(1))
        assert await p.get(oid(1), len(data)) == data


# ----------------------------------------------------------------------------- bad sources


async def bad_crc(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Replies to everything with a chunk whose CRC is wrong."""
    while True:
        kind, _, offset, length = wire.decode_request(await reader.readexactly(wire.REQUEST.size))
        if kind == wire.HELLO:
            continue
        if kind == wire.FETCH_MANY:
            await reader.readexactly(20 * length)
            for _ in range(length):
                writer.write(wire.encode_reply(wire.OK, 4, 4, 0, 12345) + b"evil")
        else:
            size = 4 * CHUNK
            n = min(length, size - offset)
            writer.write(wire.encode_reply(wire.OK, size, n, 0, 12345) + b"\0" * n)
        await writer.drain()


async def closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads a request, sends half a reply, closes."""
    while True:
        kind, *_ = wire.decode_request(await reader.readexactly(wire.REQUEST.size))
        if kind != wire.HELLO:
            break
    writer.write(wire.encode_reply(wire.OK, 4 * CHUNK, CHUNK, 0, 0) + b"\0" * 100)
    await writer.drain()


async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads requests and never answers."""
    while True:
        await reader.readexactly(wire.REQUEST.size)


@pytest.mark.parametrize("handler", [bad_crc, closes, stalls], ids=["bad-crc", "closes", "stalls"])
@pytest.mark.parametrize("size", [4, 4 * CHUNK], ids=["small", "large"])
async def test_a_bad_source_fails_over_to_a_good_one(handler, size: int) -> None:  # type: ignore[no-untyped-def]
    cfg = Config.for_test(transfer={"pull_timeout_s": 0.2})
    async with ScriptedPeer(authenticated(handler)) as bad, pulling(cfg) as p:
        p.addresses[BAD] = bad.address
        data = pattern(size, 9)
        p.src.put(oid(1), data)
        p.om.want(oid(1), 0)
        # Only the bad source first: the attempt fails, nothing half-written stays.
        p.locate(oid(1), size, BAD)
        await p.until(lambda: p.om.failures >= 1)
        await p.until(lambda: p.om.tasks() == 0)
        p.dst.check()
        p.om.policy.check()
        assert oid(1) not in p.dst.objects
        # Then the good one too: the pull gets there.
        p.locate(oid(1), size, BAD, SRC)
        async with asyncio.timeout(10):
            entry = await p.dst.wait_sealed(oid(1))
        assert bytes(entry.data) == data
        p.om.unwant(oid(1), 0)
        assert p.om.pulled == 1


@pytest.mark.parametrize("size", [4, 4 * CHUNK], ids=["small", "large"])
async def test_a_source_with_another_token_fails_over_without_hot_looping(size: int) -> None:
    """Authentication failures are failed attempts: back off, try the others, log once."""
    other = TransferServer(
        FakeStore(), Config.for_test(), no_restore, credentials=Credentials.for_test(b"o" * 32)
    )
    await other.start("127.0.0.1", 0)
    try:
        async with pulling() as p:
            p.addresses[BAD] = other.address
            data = pattern(size, 5)
            p.src.put(oid(1), data)
            p.om.want(oid(1), 0)
            p.locate(oid(1), size, BAD)
            await p.until(lambda: p.om.failures >= 1)
            await asyncio.sleep(0.3)
            # Backed off between rounds: a handful of attempts, not a reconnect loop.
            assert 1 <= p.client.pool.auth_failures <= 6, p.client.pool.auth_failures
            assert other.chunks_sent == 0
            p.locate(oid(1), size, BAD, SRC)
            async with asyncio.timeout(10):
                entry = await p.dst.wait_sealed(oid(1))
            assert bytes(entry.data) == data
            p.om.unwant(oid(1), 0)
    finally:
        await other.close()


async def test_a_stalled_source_is_given_up_after_pull_timeout() -> None:
    cfg = Config.for_test(transfer={"pull_timeout_s": 0.2})
    async with ScriptedPeer(authenticated(stalls)) as bad, pulling(cfg) as p:
        p.addresses[BAD] = bad.address
        p.om.want(oid(1), 0)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        p.locate(oid(1), 4 * CHUNK, BAD)
        await p.until(lambda: p.om.failures >= 1)
        assert 0.15 < loop.time() - t0 < 3
        # It backs off and tries again, each time failing within the deadline.
        await p.until(lambda: p.om.failures >= 2)
        p.om.unwant(oid(1), 0)


async def test_a_node_without_a_known_address_is_a_failed_source() -> None:
    async with pulling() as p:
        p.src.put(oid(1), b"x" * 10)
        p.om.want(oid(1), 0)
        p.locate(oid(1), 10, BAD)  # no address known for BAD
        await p.until(lambda: p.om.failures >= 1)
        p.locate(oid(1), 10, BAD, SRC)
        async with asyncio.timeout(10):
            await p.dst.wait_sealed(oid(1))
        p.om.unwant(oid(1), 0)


# ----------------------------------------------------------------------------- the defects


async def test_idle_sockets_closed_by_the_source_do_not_fail_the_next_pull() -> None:
    """Defect 1: the source closes idle connections; the next pull must not see them.

    The puller's pool is configured to keep connections far longer than the
    source does (30 s against 0.3 s), so only the liveness check (and the one
    retry on a fresh connection) stand between the pull and a dead socket.
    """
    server_cfg = Config.for_test(transfer={"idle_timeout_s": 0.3, "peer_idle_s": 0.1})
    client = PeerClient(ME, credentials=CREDS, idle_s=30)
    async with pulling(server_config=server_cfg, client=client) as p:
        big = pattern(10 * CHUNK, 1)
        p.src.put(oid(1), big)
        p.src.put(oid(2), big[::-1])
        p.src.put(oid(3), b"small")
        p.src.put(oid(4), b"small too")
        await p.get(oid(1), len(big))
        await p.get(oid(3), 5)
        pooled = p.client.pool.idle_count()
        assert pooled >= 2
        await asyncio.sleep(0.6)
        assert p.server.connections() == 0  # the source closed every one
        assert await p.get(oid(2), len(big)) == big[::-1]
        assert await p.get(oid(4), 9) == b"small too"
        assert p.om.failures == 0
        assert p.client.pool.dropped_stale >= 1


async def test_idle_sockets_expire_on_the_pulling_side_first() -> None:
    """Defect 1 with the defaults' relation: peer_idle_s < idle_timeout_s."""
    cfg = Config.for_test(transfer={"idle_timeout_s": 0.4, "peer_idle_s": 0.15})
    async with pulling(cfg) as p:
        p.src.put(oid(1), pattern(5 * CHUNK))
        p.src.put(oid(2), pattern(5 * CHUNK, 2))
        await p.get(oid(1), 5 * CHUNK)
        assert p.client.pool.idle_count() >= 1
        await asyncio.sleep(0.3)
        assert p.client.pool.idle_count() == 0  # dropped before the source's timeout
        assert await p.get(oid(2), 5 * CHUNK) == pattern(5 * CHUNK, 2)
        assert p.om.failures == 0 and p.client.pool.dropped_stale == 0
        assert p.client.pool.dropped_idle >= 1


@pytest.mark.parametrize("size", [3 * CHUNK + 7, 1000], ids=["large", "small"])
async def test_waiting_for_local_memory_does_not_fail_the_source(size: int) -> None:
    """Defect 2: a node short of memory waits for room; the source is not blamed.

    The wait lasts many times ``pull_timeout_s``; the pull then completes from
    the same source without a single failure.
    """
    cfg = Config.for_test(transfer={"pull_timeout_s": 0.2})
    async with pulling(cfg, dst_capacity=4 * CHUNK) as p:
        data = pattern(size, 4)
        p.src.put(oid(1), data)
        filler = p.dst.put(oid(99), b"\0" * (4 * CHUNK - 10))  # a primary: not evictable
        p.om.want(oid(1), 0)
        p.locate(oid(1), size)
        await asyncio.sleep(1.0)
        assert p.om.failures == 0
        assert p.dst.sealed(oid(1)) is None
        # The source is not held while this node waits: its connection is idle.
        assert p.server.push.is_idle()
        assert_pool_clean(p.client)
        p.dst.delete(oid(99))
        del filler
        p.om.space_freed()
        async with asyncio.timeout(10):
            entry = await p.dst.wait_sealed(oid(1))
        assert bytes(entry.data) == data
        p.om.unwant(oid(1), 0)
        assert p.om.failures == 0 and p.om.pulled == 1


async def test_a_memory_wait_ends_when_nobody_wants_the_object() -> None:
    cfg = Config.for_test(transfer={"pull_timeout_s": 0.2})
    async with pulling(cfg, dst_capacity=4 * CHUNK) as p:
        p.src.put(oid(1), pattern(3 * CHUNK))
        p.dst.put(oid(99), b"\0" * (4 * CHUNK - 10))
        p.om.want(oid(1), 0)
        p.locate(oid(1), 3 * CHUNK)
        await asyncio.sleep(0.3)
        assert p.om.tasks() == 1  # waiting for room
        p.om.unwant(oid(1), 0)
        await p.until(lambda: p.om.tasks() == 0)
        assert p.om.failures == 0
        p.dst.delete(oid(99))
