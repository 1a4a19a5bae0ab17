"""The ObjectManager's driving of its policy, without sockets: FakePeers (slow,
failing, stalling, corrupting sources) and FakeSpillReader over FakeStores.

The cancellation tests follow httpcore's ``tests/test_cancellations.py``: a
pull is cancelled at each of its awaits in turn (the fake transport calls a
hook at every step; the test gives the pull up at the k-th, for every k), and
then nothing may be left: no partial copy, no lease, no pull in the policy,
no task, no fetch running, no first chunk left open.  The same is done over
real sockets with a transport that wraps the PeerClient.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fakes import CREDS, FakePeers, FakeSpillReader, FakeStore, Step

from objstore.config import Config
from objstore.locations import LocationState, ObjectRow
from objstore.transfer.manager import NodeSource, ObjectManager, SpillSource
from objstore.transfer.peer import PeerClient, Small, TransferError
from objstore.transfer.server import TransferServer

KiB = 1024
MiB = 1024 * KiB
CHUNK = 64 * KiB
ME = b"\x01" * 20
N1, N2, N3 = b"\x11" * 20, b"\x12" * 20, b"\x13" * 20
ADDR = {N1: "n1:1", N2: "n2:1", N3: "n3:1"}


def oid(i: int) -> bytes:
    return struct.pack(">I", i).rjust(20, b"\xcc")


def pattern(n: int, seed: int = 0) -> bytes:
    return (bytes(range(seed % 5, 256)) * (n // 200 + 2))[:n]


@dataclass
class World:
    dst: FakeStore
    peers: FakePeers
    spill: FakeSpillReader
    om: ObjectManager

    def source(self, node: bytes) -> FakeStore:
        return self.peers.stores.setdefault(ADDR[node], FakeStore())

    def locate(self, o: bytes, size: int, *nodes: bytes, url: str = "") -> None:
        self.om.on_locations(
            ObjectRow(o, LocationState.PRESENT, size, nodes=nodes, spilled_url=url)
        )

    async def until(self, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(0.002)

    async def sealed(self, o: bytes, timeout: float = 10.0) -> bytes:
        async with asyncio.timeout(timeout):
            return bytes((await self.dst.wait_sealed(o)).data)

    def check_empty(self) -> None:
        """Nothing left anywhere (after every pull ended)."""
        om = self.om
        assert om.tasks() == 0, "a task is left"
        assert not om.policy.pulls, list(om.policy.pulls)
        om.policy.check()
        assert om.policy.in_flight_bytes == 0
        assert not om._attempts and not om._batched
        assert len(om.slots) == 0
        self.dst.check()
        self.peers.check()


@contextlib.asynccontextmanager
async def world(config: Config | None = None, *, capacity: int = 64 * MiB) -> AsyncIterator[World]:
    cfg = config or Config.for_test()
    dst = FakeStore(capacity=capacity)
    peers = FakePeers()
    spill = FakeSpillReader(dst)
    om = ObjectManager(dst, cfg, ME, peers, ADDR.get, spill_reader=spill)
    w = World(dst, peers, spill, om)
    try:
        yield w
        await w.until(lambda: om.tasks() == 0)
        w.check_empty()
    finally:
        await om.close()


# ----------------------------------------------------------------------------- policy driving


async def test_sources_are_typed_and_this_node_is_never_one() -> None:
    async with world() as w:
        w.om.want(oid(1), 0)
        w.locate(oid(1), 10, ME, N1, N2)
        pull = w.om.policy.pulls[oid(1)]
        assert set(pull.sources) == {NodeSource(N1), NodeSource(N2)}
        w.om.unwant(oid(1), 0)


async def test_a_failing_source_then_the_next() -> None:
    async with world() as w:
        data = pattern(5 * CHUNK)
        w.source(N1).put(oid(1), data)
        w.source(N2).put(oid(1), data)
        w.peers.fail[ADDR[N1]] = "refused"
        w.om.want(oid(1), 0)
        w.locate(oid(1), len(data), N1, N2)
        assert await w.sealed(oid(1)) == data
        w.om.unwant(oid(1), 0)
        assert w.om.pulled == 1
        assert w.om.failures <= 1  # N1 only if it was picked first


async def test_every_source_failing_backs_off_and_keeps_trying() -> None:
    async with world() as w:
        w.source(N1).put(oid(1), b"x" * 10)
        w.source(N2).put(oid(1), b"x" * 10)
        w.peers.fail = {ADDR[N1]: "down", ADDR[N2]: "down"}
        w.om.want(oid(1), 0)
        w.locate(oid(1), 10, N1, N2)
        await w.until(lambda: w.om.failures >= 4)
        # Backing off between rounds: far fewer attempts than a busy loop.
        assert len(w.peers.steps) < 40
        del w.peers.fail[ADDR[N2]]
        assert await w.sealed(oid(1)) == b"x" * 10
        w.om.unwant(oid(1), 0)


async def test_a_slow_and_failing_source_with_a_good_one() -> None:
    cfg = Config.for_test(transfer={"pull_timeout_s": 0.1})
    async with world(cfg) as w:
        data = pattern(4 * CHUNK, 1)
        for n in (N1, N2, N3):
            w.source(n).put(oid(1), data)
        w.peers.stall.add(ADDR[N1])
        w.peers.corrupt.add((ADDR[N2], oid(1)))
        w.om.want(oid(1), 0)
        w.locate(oid(1), len(data), N1, N2, N3)
        assert await w.sealed(oid(1)) == data
        w.om.unwant(oid(1), 0)
        assert w.om.failures <= 2


async def test_slow_sources_still_finish() -> None:
    async with world() as w:
        w.peers.delay = 0.01
        w.source(N1).put(oid(1), pattern(6 * CHUNK))
        for i in range(2, 12):
            w.source(N1).put(oid(i), pattern(i, i))
        ids = [oid(i) for i in range(1, 12)]
        for o in ids:
            w.om.want(o, 0)
        w.locate(oid(1), 6 * CHUNK, N1)
        for i in range(2, 12):
            w.locate(oid(i), i, N1)
        for i, o in enumerate(ids, 1):
            assert await w.sealed(o) == (pattern(6 * CHUNK) if i == 1 else pattern(i, i))
            w.om.unwant(o, 0)
        # The ten small ones went in one batch.
        assert sum(s.what == "many" for s in w.peers.steps) == 1


async def test_bytes_in_flight_are_bounded_by_the_policys_admission() -> None:
    cfg = Config.for_test(transfer={"max_bytes_in_flight": 256 * KiB})
    async with world(cfg) as w:
        size = 100 * KiB
        for i in range(10):
            w.source(N1).put(oid(i), pattern(size, i))
        seen: list[int] = []

        async def on_step(step: Step) -> None:
            seen.append(w.om.policy.in_flight_bytes)
            await asyncio.sleep(0.001)

        w.peers.on_step = on_step
        for i in range(10):
            w.om.want(oid(i), 0)
            w.locate(oid(i), size, N1)
        for i in range(10):
            assert await w.sealed(oid(i)) == pattern(size, i)
            w.om.unwant(oid(i), 0)
        assert max(seen) <= 256 * KiB and max(seen) == 2 * size


async def test_a_spill_copy_when_no_node_holds_it() -> None:
    async with world() as w:
        w.spill.copies["fake://bucket/a"] = (b"sm", b"from spill")
        w.om.want(oid(1), 0)
        w.locate(oid(1), 10, url="fake://bucket/a")
        assert w.om.policy.pulls[oid(1)].sources == (SpillSource("fake://bucket/a"),)
        assert await w.sealed(oid(1)) == b"from spill"
        w.om.unwant(oid(1), 0)
        assert w.om.pulled_from_spill == 1 and w.om.pulled == 1
        # A URL this node cannot read is no source; a node holding it is preferred.
        w.om.want(oid(2), 0)
        w.locate(oid(2), 10, url="s3://elsewhere/x")
        assert w.om.policy.pulls[oid(2)].sources == ()
        w.source(N1).put(oid(2), b"from node!")
        w.locate(oid(2), 10, N1, url="fake://bucket/b")
        assert w.om.policy.pulls[oid(2)].sources == (NodeSource(N1),)
        assert await w.sealed(oid(2)) == b"from node!"
        w.om.unwant(oid(2), 0)


async def test_a_failing_spill_read_is_a_failed_source() -> None:
    async with world() as w:
        w.spill.fail.add("fake://x")
        w.om.want(oid(1), 0)
        w.locate(oid(1), 10, url="fake://x")
        await w.until(lambda: w.om.failures >= 1)
        w.om.unwant(oid(1), 0)


async def test_lost_or_deleted_rows_start_nothing() -> None:
    async with world() as w:
        w.om.want(oid(1), 0)
        for state in (LocationState.LOST, LocationState.DELETED, LocationState.PENDING):
            w.om.on_locations(ObjectRow(oid(1), state, 10, nodes=(N1,)))
        await asyncio.sleep(0.01)
        assert not w.peers.steps
        w.om.unwant(oid(1), 0)


async def test_a_bad_object_in_a_batch_fails_only_itself() -> None:
    async with world() as w:
        for i in range(3):
            w.source(N1).put(oid(i), b"%d" % i)
        w.peers.corrupt.add((ADDR[N1], oid(1)))
        for i in range(3):
            w.om.want(oid(i), 0)
            w.locate(oid(i), 1, N1)
        assert await w.sealed(oid(0)) == b"0" and await w.sealed(oid(2)) == b"2"
        await w.until(lambda: w.om.failures >= 1)
        assert w.dst.sealed(oid(1)) is None
        for i in range(3):
            w.om.unwant(oid(i), 0)


async def test_a_batch_whose_pulls_are_all_given_up_is_cancelled() -> None:
    async with world() as w:
        w.peers.stall.add(ADDR[N1])
        for i in range(3):
            w.source(N1).put(oid(i), b"x")
            w.om.want(oid(i), 0)
            w.locate(oid(i), 1, N1)
        await w.until(lambda: w.peers.in_flight == 1)
        w.om.unwant(oid(0), 0)
        w.om.unwant(oid(1), 0)
        await asyncio.sleep(0.01)
        assert w.peers.in_flight == 1  # one still waits for it
        w.om.unwant(oid(2), 0)
        await w.until(lambda: w.peers.in_flight == 0)
        assert w.om.failures == 0


async def test_small_objects_without_room_wait_with_their_bytes_in_hand() -> None:
    cfg = Config.for_test(transfer={"pull_timeout_s": 0.1})
    async with world(cfg, capacity=1000) as w:
        w.dst.put(oid(99), b"\0" * 990)
        w.source(N1).put(oid(1), b"y" * 100)
        w.om.want(oid(1), 0)
        w.locate(oid(1), 100, N1)
        await asyncio.sleep(0.4)
        assert w.om.failures == 0 and w.dst.sealed(oid(1)) is None
        steps = len(w.peers.steps)
        w.dst.delete(oid(99))
        w.om.space_freed()
        assert await w.sealed(oid(1)) == b"y" * 100
        assert len(w.peers.steps) == steps  # not fetched again
        w.om.unwant(oid(1), 0)


async def test_close_cancels_everything_in_flight() -> None:
    dst = FakeStore()
    peers = FakePeers()
    peers.stall.add(ADDR[N1])
    om = ObjectManager(dst, Config.for_test(), ME, peers, ADDR.get)
    for i, n in enumerate((10, 10 * CHUNK)):
        peers.stores.setdefault(ADDR[N1], FakeStore()).put(oid(i), b"z" * n)
        om.want(oid(i), 0)
        om.on_locations(ObjectRow(oid(i), LocationState.PRESENT, n, nodes=(N1,)))
    async with asyncio.timeout(5):
        while peers.in_flight < 2:
            await asyncio.sleep(0.002)
    await om.close()
    assert om.tasks() == 0
    dst.check()
    peers.check()
    om.policy.check()
    om.want(oid(5), 0)  # after close: accepted, but nothing starts
    om.on_locations(ObjectRow(oid(5), LocationState.PRESENT, 1, nodes=(N1,)))
    await asyncio.sleep(0.01)
    assert om.tasks() == 0


# ----------------------------------------------------------------------------- cancellation


async def _steps_of(run: Callable[[World], Any], **kw: Any) -> int:
    """How many steps a pull takes when nothing cancels it."""
    async with world(**kw) as w:
        await run(w)
        return len(w.peers.steps)


def _large(w: World) -> Any:
    async def run() -> None:
        data = pattern(3 * CHUNK + 5)
        w.source(N1).put(oid(1), data)
        w.om.want(oid(1), 0)
        w.locate(oid(1), len(data), N1)
        assert await w.sealed(oid(1)) == data
        w.om.unwant(oid(1), 0)

    return run()


def _small(w: World) -> Any:
    async def run() -> None:
        for i in range(3):
            w.source(N1).put(oid(i), b"s%d" % i)
            w.om.want(oid(i), 0)
            w.locate(oid(i), 2, N1)
        for i in range(3):
            await w.sealed(oid(i))
            w.om.unwant(oid(i), 0)

    return run()


def _two_sources_one_failing(w: World) -> Any:
    async def run() -> None:
        data = pattern(2 * CHUNK + 1, 2)
        w.source(N1).put(oid(1), data)
        w.source(N2).put(oid(1), data)
        w.peers.fail[ADDR[N1]] = "down"
        w.om.want(oid(1), 0)
        w.locate(oid(1), len(data), N1, N2)
        assert await w.sealed(oid(1)) == data
        w.om.unwant(oid(1), 0)

    return run()


SCENARIOS = {"large": _large, "small": _small, "failover": _two_sources_one_failing}


@pytest.mark.parametrize("how", ["unwant", "close"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_cancel_at_every_step(scenario: str, how: str) -> None:
    run = SCENARIOS[scenario]
    total = await _steps_of(run)
    assert total >= 1
    for k in range(1, total + 1):
        await _cancel_at(run, how, k, N2 if scenario == "failover" else N1)


async def _cancel_at(run: Callable[[World], Any], how: str, k: int, source: bytes) -> None:
    """Run the scenario, give its pulls up at the k-th step, check nothing is left."""
    dst = FakeStore()
    peers = FakePeers()
    om = ObjectManager(dst, Config.for_test(), ME, peers, ADDR.get)
    w = World(dst, peers, FakeSpillReader(dst), om)
    count = 0
    cancelled = asyncio.Event()

    async def on_step(step: Step) -> None:
        nonlocal count
        count += 1
        if count == k:
            if how == "unwant":
                for o in list(om.policy.pulls):
                    while o in om.policy.pulls:
                        om.unwant(o, 0)
            else:
                asyncio.get_running_loop().create_task(om.close())
            cancelled.set()
            await asyncio.sleep(0)  # the cancellation lands in this await

    peers.on_step = on_step
    task = asyncio.ensure_future(run(w))
    async with asyncio.timeout(10):
        # (A run whose sources are picked at random may end before its k-th step.)
        await w.until(lambda: cancelled.is_set() or task.done())
        await w.until(lambda: om.tasks() == 0)
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    await om.close()
    if how == "unwant":
        assert not om.policy.pulls
    om.policy.check()
    assert om.tasks() == 0
    assert not om._attempts and not om._batched and len(om.slots) == 0
    peers.check()
    dst.check()
    # No half-written copy: whatever is here is sealed and whole.
    for o, e in dst.objects.items():
        assert bytes(e.data) == peers.stores[ADDR[source]].data_of(o)


async def test_cancel_at_every_step_while_waiting_for_room() -> None:
    """The memory wait is an await too: cancel there, and before and after it."""
    for k in range(1, 6):
        await _cancel_around_room(k)


async def _cancel_around_room(k: int) -> None:
    dst = FakeStore(capacity=4 * CHUNK)
    dst.put(oid(99), b"\0" * (4 * CHUNK - 1))
    peers = FakePeers()
    om = ObjectManager(dst, Config.for_test(), ME, peers, ADDR.get)
    peers.stores[ADDR[N1]] = src = FakeStore()
    data = pattern(3 * CHUNK)
    src.put(oid(1), data)
    count = 0

    async def on_step(step: Step) -> None:
        nonlocal count
        count += 1
        if count == k:
            om.unwant(oid(1), 0)
            await asyncio.sleep(0)

    peers.on_step = on_step
    om.want(oid(1), 0)
    om.on_locations(ObjectRow(oid(1), LocationState.PRESENT, len(data), nodes=(N1,)))
    await asyncio.sleep(0.02)
    if oid(1) in om.policy.pulls:
        # Now waiting for room (steps 1-2 done): give up here, or free it.
        if k == 3:
            om.unwant(oid(1), 0)
        else:
            dst.delete(oid(99))
            om.space_freed()
    async with asyncio.timeout(10):
        while om.tasks():
            await asyncio.sleep(0.002)
    if oid(1) in om.policy.pulls:  # it came whole
        assert dst.data_of(oid(1)) == data
        om.unwant(oid(1), 0)
    await om.close()
    assert not om.policy.pulls
    om.policy.check()
    peers.check()
    if oid(99) in dst.objects:
        dst.delete(oid(99))
    dst.check()


class _SteppedPeers:
    """A real PeerClient behind a hook awaited before each call and each body read."""

    def __init__(self, client: PeerClient, hook: Callable[[str], Any]) -> None:
        self.client = client
        self.hook = hook

    async def fetch_first(self, address: str, o: bytes, chunk: int, deadline: float) -> Any:
        await self.hook("first")
        first = await self.client.fetch_first(address, o, chunk, deadline)
        hook = self.hook

        class _Wrapped:
            size, meta, length = first.size, first.meta, first.length

            async def read_into(self, view: memoryview, deadline: float) -> None:
                await hook("body")
                await first.read_into(view, deadline)

            def close(self) -> None:
                first.close()

        return _Wrapped()

    async def fetch_chunk(
        self, address: str, o: bytes, offset: int, view: memoryview, deadline: float
    ) -> None:
        await self.hook("chunk")
        await self.client.fetch_chunk(address, o, offset, view, deadline)
        await self.hook("chunk-done")

    async def fetch_many(self, address: str, oids: list[bytes], deadline: float) -> list[Small]:
        await self.hook("many")
        out = await self.client.fetch_many(address, oids, deadline)
        await self.hook("many-done")
        return out

    def close(self) -> None:
        self.client.close()


async def no_restore(o: bytes, timeout: float) -> bool:
    return False


@pytest.mark.parametrize("size", [10, 5 * CHUNK + 3], ids=["small", "large"])
async def test_cancel_at_every_step_over_real_sockets(size: int) -> None:
    src = FakeStore()
    data = pattern(size, 7)
    src.put(oid(1), data)
    server = TransferServer(src, Config.for_test(), no_restore, credentials=CREDS)
    await server.start("127.0.0.1", 0)
    try:
        k = 1
        # Each round cancels one step later, until a round ends before its k-th step.
        while not await _cancel_over_sockets(server, src, data, k):
            k += 1
        assert k > 2
    finally:
        await server.close()


async def _cancel_over_sockets(server: TransferServer, src: FakeStore, data: bytes, k: int) -> bool:
    """Pull ``oid(1)``, giving it up at the k-th step; True if it finished first."""
    client = PeerClient(ME, credentials=CREDS, idle_s=30)
    dst = FakeStore()
    count = 0
    om: ObjectManager | None = None

    async def hook(what: str) -> None:
        nonlocal count
        count += 1
        if count == k:
            assert om is not None
            om.unwant(oid(1), 0)
        # Let the cancellation, if any, land inside a real socket wait too.
        await asyncio.sleep(0)

    om = ObjectManager(
        dst, Config.for_test(), ME, _SteppedPeers(client, hook), {b"S": server.address}.get
    )
    om.want(oid(1), 0)
    om.on_locations(ObjectRow(oid(1), LocationState.PRESENT, len(data), nodes=(b"S",)))
    async with asyncio.timeout(10):
        while om.tasks() or (oid(1) in om.policy.pulls and dst.sealed(oid(1)) is None):
            await asyncio.sleep(0.002)
    done = dst.sealed(oid(1)) is not None
    if done:
        assert bytes(dst.objects[oid(1)].data) == data
        if oid(1) in om.policy.pulls:
            om.unwant(oid(1), 0)
    await om.close()
    assert not om.policy.pulls
    om.policy.check()
    dst.check()
    # Every socket still open is idle in the pool and alive.
    idle = client.pool.idle_sockets()
    assert set(idle) == client.pool.open
    for s in idle:
        with pytest.raises(BlockingIOError):
            s.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    client.close()
    # The server lets go of every lease (its side of the connections closes too).
    for _ in range(100):
        if all(e.leases == 0 for e in src.objects.values()):
            break
        await asyncio.sleep(0.01)
    src.check()
    if count < k:  # finished before the k-th step: every step was tried
        assert done
        return True
    return False


def test_transfer_error_is_an_objstore_error() -> None:
    from objstore.errors import ObjectStoreError

    assert issubclass(TransferError, ObjectStoreError)
