"""``transfer.fetch_timeout_s`` in one process, over real sockets: the node's
object service over a real PlasmaStore, its ObjectManager pulling through a
real PeerClient from raw test sources (``ScriptedPeer``) behind the real
handshake; only the directory is a fake (the test hands the service the
directory's rows).  Every test ends with nothing left: no pull, no get
counted in the manager, no task, no watch, no waiter, no pin.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from auth_peer import authenticated
from fakes import CREDS, FakeDirectory, ScriptedPeer

from objstore.config import Config, MiB
from objstore.errors import GetTimeoutError, ObjectFetchTimedOutError
from objstore.locations import LocationState, ObjectRow
from objstore.node.objects import ObjectService, Parts
from objstore.plasma.store import ClientState, PlasmaStore
from objstore.transfer import wire
from objstore.transfer.manager import ObjectManager
from objstore.transfer.peer import PeerClient

KiB = 1024
CHUNK = 64 * KiB
ME = b"\x01" * 20
SRC = b"\x02" * 20
OWNER = b"\x0a" * 20
FETCH_TIMEOUT = 0.5


def oid(i: int) -> bytes:
    return struct.pack(">I", i).rjust(20, b"\xdd")


def pattern(n: int, seed: int = 0) -> bytes:
    return (bytes(range(seed % 7, 256)) * (n // 200 + 2))[:n]


async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts requests and never answers one (a source that hangs)."""
    while True:
        await reader.readexactly(wire.REQUEST.size)


def slow(data: bytes, every: float) -> Callable[..., object]:
    """Serves ``data`` (any id) one FETCH at a time, each chunk ``every`` s after its request."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            kind, _, offset, length = wire.decode_request(
                await reader.readexactly(wire.REQUEST.size)
            )
            if kind == wire.HELLO:
                continue
            assert kind == wire.FETCH, "only large objects here"
            await asyncio.sleep(every)  # the slow link
            chunk = data[offset : offset + length]
            meta = b"m" if offset == 0 else b""
            writer.write(
                wire.encode_reply(wire.OK, len(data), len(chunk), len(meta), wire.crc32(chunk))
                + meta
                + chunk
            )
            await writer.drain()

    return serve


@dataclass
class Node:
    service: ObjectService
    store: PlasmaStore
    directory: FakeDirectory
    om: ObjectManager
    peers: PeerClient
    addresses: dict[bytes, str] = field(default_factory=dict)

    def client(self, n: int = 1) -> ClientState:
        c = ClientState(n, lambda ids: None, pid=n)
        self.service.connected(c)
        return c

    async def located(
        self, o: bytes, size: int, *nodes: bytes, owner: bytes | None = OWNER
    ) -> None:
        """The directory's row, once the service watches the object."""
        await until(lambda: o in self.directory.watching)
        self.service.on_update(
            [ObjectRow(o, LocationState.PRESENT, size, primary=owner, nodes=nodes or (SRC,))]
        )


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def node(tmp: Path, **transfer: object) -> AsyncIterator[Node]:
    cfg = Config.for_test(
        plasma={"memory": 8 * MiB, "fallback_dir": str(tmp), "fallback_max_bytes": 0},
        transfer={"fetch_timeout_s": FETCH_TIMEOUT, "pull_timeout_s": 30.0, **transfer},
    )
    service = ObjectService(cfg, ME)
    store = PlasmaStore(cfg, events=service)
    directory = FakeDirectory()
    peers = PeerClient.from_config(ME, cfg, CREDS)
    addresses: dict[bytes, str] = {}
    om = ObjectManager(store, cfg, ME, peers, addresses.get)
    service.bind(Parts(store, directory=directory, puller=om))
    n = Node(service, store, directory, om, peers, addresses)
    try:
        yield n
        # Nothing left: the pulls, the gets the manager counted, the tasks, the watches.
        await until(lambda: om.tasks() == 0)
        assert not om.policy.pulls and not om._gets
        om.policy.check()
        assert om.policy.in_flight_bytes == 0
        assert n.directory.watching == {}
        assert not store._waiters
        store.check()
    finally:
        await om.close()
        peers.close()
        await service.close()
        store.close()


@pytest.mark.parametrize("size", [4, 4 * CHUNK], ids=["small", "large"])
async def test_a_source_that_sends_nothing_fails_the_get_after_fetch_timeout(
    tmp_path: Path, size: int
) -> None:
    async with ScriptedPeer(authenticated(stalls)) as src, node(tmp_path) as n:
        n.addresses[SRC] = src.address
        reader = n.client()
        o = oid(1)
        loop = asyncio.get_running_loop()
        get = asyncio.create_task(n.service.get(reader, [o], "", 20.0))
        await n.located(o, size)
        t0 = loop.time()
        with pytest.raises(ObjectFetchTimedOutError) as info:
            await get
        took = loop.time() - t0
        # About fetch_timeout_s, far before the get's own 20 s and the 30 s pull timeout.
        assert FETCH_TIMEOUT * 0.9 <= took < 5.0, took
        assert isinstance(info.value, GetTimeoutError) and isinstance(info.value, TimeoutError)
        message = str(info.value)
        assert f"node {ME.hex()}" in message  # this node
        assert o.hex() in message
        assert f"put on node {OWNER.hex()} (its owner)" in message
        assert f"tried node {SRC.hex()} (1 attempt)" in message  # what was tried
        assert "in flight" in message and "fetch_timeout_s = 0.5s" in message
        assert n.om.fetch_timeouts == 1
        assert src.connections >= 1  # the source was asked


async def test_a_slow_source_that_keeps_sending_chunks_is_not_a_stall(tmp_path: Path) -> None:
    """A chunk every 0.2 s for well over fetch_timeout_s: progress restarts the clock."""
    data = pattern(8 * CHUNK, 3)
    async with (
        ScriptedPeer(authenticated(slow(data, 0.2))) as src,
        node(tmp_path, connections_per_peer=1) as n,
    ):
        n.addresses[SRC] = src.address
        reader = n.client()
        o = oid(2)
        loop = asyncio.get_running_loop()
        get = asyncio.create_task(n.service.get(reader, [o], "", 20.0))
        await n.located(o, len(data))
        t0 = loop.time()
        ids, entries = await get
        took = loop.time() - t0
        assert took > 3 * FETCH_TIMEOUT, took  # 8 chunks, one by one
        assert ids == [o] and bytes(n.store.view(entries[0])) == data
        assert n.om.fetch_timeouts == 0 and n.om.failures == 0 and n.om.pulled == 1
        n.service.release(reader, ids)


async def test_a_wait_on_a_stalled_pull_returns_on_its_own_timeout(tmp_path: Path) -> None:
    """The get fails at fetch_timeout_s; the wait beside it does not raise, keeps
    the pull going and returns no ready id at its own timeout; a get that comes
    after the stall gets the stall's next report, not the first one's."""
    async with ScriptedPeer(authenticated(stalls)) as src, node(tmp_path) as n:
        n.addresses[SRC] = src.address
        reader = n.client()
        o = oid(3)
        loop = asyncio.get_running_loop()
        wait = asyncio.create_task(n.service.wait([o], 1, 4 * FETCH_TIMEOUT))
        get = asyncio.create_task(n.service.get(reader, [o], "", 20.0))
        await n.located(o, 4 * CHUNK)
        t0 = loop.time()
        with pytest.raises(ObjectFetchTimedOutError):
            await get
        assert not wait.done()
        assert o in n.om.policy.pulls  # kept for the wait
        later = asyncio.create_task(n.service.get(reader, [o], "", 20.0))
        with pytest.raises(ObjectFetchTimedOutError):
            await later
        assert loop.time() - t0 >= 2 * FETCH_TIMEOUT * 0.9  # a full timeout after the first
        assert await wait == []
        assert loop.time() - t0 >= 4 * FETCH_TIMEOUT * 0.9
        assert n.om.fetch_timeouts == 2


async def test_a_get_with_a_shorter_timeout_times_out_as_before(tmp_path: Path) -> None:
    async with ScriptedPeer(authenticated(stalls)) as src, node(tmp_path) as n:
        n.addresses[SRC] = src.address
        reader = n.client()
        o = oid(4)
        get = asyncio.create_task(n.service.get(reader, [o], "", 0.2))
        await n.located(o, 4 * CHUNK)
        with pytest.raises(GetTimeoutError) as info:
            await get
        assert not isinstance(info.value, ObjectFetchTimedOutError)
        assert n.om.fetch_timeouts == 0


async def test_a_get_of_many_objects_fails_with_the_stalled_one(tmp_path: Path) -> None:
    data = pattern(2 * CHUNK, 5)
    async with (
        ScriptedPeer(authenticated(stalls)) as bad,
        ScriptedPeer(authenticated(slow(data, 0.01))) as good,
        node(tmp_path) as n,
    ):
        bad_node = b"\x03" * 20
        n.addresses[SRC] = good.address
        n.addresses[bad_node] = bad.address
        reader = n.client()
        ok, stuck = oid(5), oid(6)
        get = asyncio.create_task(n.service.get(reader, [ok, stuck], "", 20.0))
        await n.located(ok, len(data))
        await n.located(stuck, 4 * CHUNK, bad_node, owner=None)
        with pytest.raises(ObjectFetchTimedOutError, match=stuck.hex()) as info:
            await get
        # The directory's row did not say who put it: the message does not guess.
        assert "owner" not in str(info.value)
        assert f"tried node {bad_node.hex()}" in str(info.value)
        # The other one came, and the failed get holds no pin on it.
        assert n.store.sealed(ok) is not None
        assert not n.store.held(ok)


async def test_waiting_for_memory_here_is_not_a_stall(tmp_path: Path) -> None:
    """The first chunk came, then no room here for many times fetch_timeout_s:
    not the source's fault, the get keeps waiting and gets the object."""
    data = pattern(4 * CHUNK, 7)
    async with ScriptedPeer(authenticated(slow(data, 0.0))) as src, node(tmp_path) as n:
        n.addresses[SRC] = src.address
        holder, reader = n.client(1), n.client(2)
        filler = oid(90)
        entry = n.store.create_secondary_now(filler, n.store.memory.capacity - CHUNK, b"m")
        assert entry is not None
        n.store.seal_secondary(filler)
        n.store.hold(filler, entry, holder)  # not evictable while held
        o = oid(7)
        get = asyncio.create_task(n.service.get(reader, [o], "", 20.0))
        await n.located(o, len(data))
        await until(lambda: src.connections >= 1 and n.om.tasks() == 1)
        # What is tested is that nothing happens for a while: a sleep is the test.
        await asyncio.sleep(4 * FETCH_TIMEOUT)
        assert not get.done()
        assert n.om.fetch_timeouts == 0 and n.om.failures == 0
        n.store.unpin(filler, holder)
        n.store.delete_many([filler])  # room for the pull
        ids, entries = await get
        assert bytes(n.store.view(entries[0])) == data
        n.service.release(reader, ids)
