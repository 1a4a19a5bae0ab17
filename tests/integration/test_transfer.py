"""Objects read across nodes: real head and node processes on 127.0.0.1.

A get on one node of an object another node holds pulls it in chunks over
the data plane into a secondary copy, verified by CRC before it is sealed.
Chunks are 64 KiB here (``OBJSTORE_TRANSFER_CHUNK_SIZE``) so that multi-chunk
paths run with small objects.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import time

import numpy as np
import pytest
from auth_peer import prove
from waits import round_trip, until

import objstore
from objstore.auth import (
    cache_path,
    read_token_file,
)
from objstore.transfer import wire

KiB = 1 << 10
MiB = 1 << 20
CHUNK = 64 * KiB
ENV = {
    "OBJSTORE_TRANSFER_CHUNK_SIZE": "64KiB",
    "OBJSTORE_TRANSFER_MAX_BYTES_IN_FLIGHT": "1MiB",
    "OBJSTORE_TRANSFER_PULL_TIMEOUT_S": "3",
}


def pattern(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


@pytest.fixture
def tcluster(cluster_factory):
    return cluster_factory(2, env=ENV, memory="128MiB")


@pytest.mark.slow
async def test_sizes_around_the_chunk_size(tcluster) -> None:
    a = tcluster.nodes[0]
    sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 12345]
    async with objstore.connect(a.socket) as ca, objstore.connect(tcluster.head.socket) as ch:
        refs = [await ca.put(pattern(n, n)) for n in sizes]
        arr = np.arange(100_000, dtype=np.float64).reshape(1000, 100)
        aref = await ca.put(arr)
        for n, ref in zip(sizes, refs):
            got = await ch.get(ref, timeout=20)
            assert bytes(got) == pattern(n, n), n
        got_arr = await ch.get(aref, timeout=20)
        assert isinstance(got_arr, np.ndarray) and got_arr.dtype == arr.dtype
        assert np.array_equal(got_arr, arr) and not got_arr.flags.writeable
        st = await ch.stats()
        assert st["pulled"] == len(sizes) + 1
        assert st["bytes_pulled"] >= sum(sizes) + arr.nbytes
        # Now a secondary copy here: a second get needs no transfer.
        assert bytes(await ch.get(refs[-1])) == pattern(sizes[-1], sizes[-1])
        assert (await ch.stats())["pulled"] == len(sizes) + 1
        assert (await ca.stats())["bytes_served"] >= sum(sizes)


@pytest.mark.slow
async def test_four_readers_of_one_object_cause_one_transfer(tcluster) -> None:
    a = tcluster.nodes[0]
    data = pattern(5 * MiB + 7, 1)
    async with objstore.connect(a.socket) as ca:
        ref = await ca.put(data)
        readers = [await objstore.connect(tcluster.head.socket) for _ in range(4)]
        try:
            got = await asyncio.gather(*(r.get(ref, timeout=30) for r in readers))
            assert all(bytes(g) == data for g in got)
            st = await readers[0].stats()
            assert st["pulled"] == 1 and st["bytes_pulled"] == len(data)
            served = (await ca.stats())["bytes_served"]
            assert served == len(data)
        finally:
            for r in readers:
                await r.close()


@pytest.mark.slow
async def test_ten_thousand_small_objects_in_one_get(tcluster) -> None:
    a = tcluster.nodes[0]
    async with objstore.connect(a.socket) as ca, objstore.connect(tcluster.head.socket) as ch:
        refs = [await ca.put(i.to_bytes(4, "little") * 256) for i in range(10_000)]
        t0 = time.monotonic()
        values = await ch.get(refs, timeout=120)
        took = time.monotonic() - t0
        assert [bytes(v)[:4] for v in values] == [i.to_bytes(4, "little") for i in range(10_000)]
        assert (await ch.stats())["pulled"] == 10_000
        print(f"10,000 x 1 KiB across nodes in one get: {10_000 / took:.0f} objects/s")


async def test_a_killed_source_with_another_copy_elsewhere(cluster_factory) -> None:
    c = cluster_factory(2, env=ENV, memory="128MiB")
    a, b = c.nodes
    data = pattern(2 * MiB, 2)
    async with objstore.connect(a.socket) as ca, objstore.connect(c.head.socket) as ch:
        ref = await ca.put(data)
        assert bytes(await ch.get(ref, timeout=20)) == data  # a second copy on the head

        async def two_copies() -> bool:
            from objstore.directory.client import DirectoryAdmin

            async with DirectoryAdmin(c.directory) as d:
                (row,) = await d.lookup([ref._id])
            return len(row.nodes) == 2

        deadline = time.monotonic() + 15
        while not await two_copies():
            assert time.monotonic() < deadline, "the head's copy was never reported"
            await asyncio.sleep(0.05)
        a.kill()
        async with objstore.connect(b.socket) as cb:
            t0 = time.monotonic()
            assert bytes(await cb.get(ref, timeout=30)) == data
            assert time.monotonic() - t0 < 15


async def test_a_frozen_only_holder_fails_a_get_after_fetch_timeout(cluster_factory) -> None:
    """The only node holding the object is SIGSTOPped: connections to it hang.  The
    get elsewhere raises ObjectFetchTimedOutError after ``fetch_timeout_s`` (1 s),
    long before its own timeout, the 30 s pull timeout and the node's death (20 s)."""
    env = {
        **ENV,
        "OBJSTORE_TRANSFER_FETCH_TIMEOUT_S": "1",
        "OBJSTORE_TRANSFER_PULL_TIMEOUT_S": "30",
        "OBJSTORE_DIRECTORY_NODE_TIMEOUT_S": "20",
    }
    c = cluster_factory(1, env=env, memory="128MiB")
    (a,) = c.nodes
    data = pattern(4 * CHUNK, 4)
    async with objstore.connect(a.socket) as ca, objstore.connect(c.head.socket) as ch:
        ref = await ca.put(data)

        async def located() -> bool:
            from objstore.directory.client import DirectoryAdmin

            async with DirectoryAdmin(c.directory) as d:
                (row,) = await d.lookup([ref._id])
            return bool(row.nodes)

        await until(located, 15, "the object reported by its node")
        a.allow_loop_stall = True  # it is frozen on purpose
        a.proc.send_signal(signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(objstore.errors.ObjectFetchTimedOutError) as info:
                await ch.get(ref, timeout=15)
            took = time.monotonic() - t0
        finally:
            a.proc.send_signal(signal.SIGCONT)
        assert 0.9 <= took < 8, took
        # The client made the right class from the error code: a GetTimeoutError too.
        assert type(info.value) is objstore.errors.ObjectFetchTimedOutError
        assert isinstance(info.value, objstore.GetTimeoutError)
        assert isinstance(info.value, TimeoutError)
        message = str(info.value)
        assert f"node {c.head.ready['node_id']} made no progress" in message
        assert ref.hex() in message
        assert f"tried node {a.ready['node_id']}" in message
        assert f"put on node {a.ready['node_id']} (its owner)" in message
        # Thawed, the holder serves again: the next get pulls it.
        assert bytes(await ch.get(ref, timeout=30)) == data
    assert "gets failed: fetch timed out" in c.head.stderr()


@pytest.mark.slow
async def test_one_gib_object(cluster_factory) -> None:
    c = cluster_factory(1, memory="1200MiB")
    a = c.nodes[0]
    data = np.random.default_rng(3).integers(0, 2**63, (1 << 30) // 8, dtype=np.int64)
    async with objstore.connect(a.socket) as ca, objstore.connect(c.head.socket) as ch:
        ref = await ca.put(data)
        t0 = time.monotonic()
        got = await ch.get(ref, timeout=120)
        took = time.monotonic() - t0
        assert got.nbytes == 1 << 30 and np.array_equal(got, data)
        print(f"1 GiB pulled in {took:.2f} s ({(1 << 30) / took / 1e9:.2f} GB/s)")
    del got, data


@pytest.mark.slow
async def test_data_plane_garbage_closes_that_connection_only(tcluster) -> None:
    a = tcluster.nodes[0]
    host, port = _host_port(str(a.ready["address"]))
    async with objstore.connect(a.socket) as ca, objstore.connect(tcluster.head.socket) as ch:
        ref = await ca.put(pattern(300 * KiB, 4))
        loop = asyncio.get_running_loop()

        token = read_token_file(cache_path(tcluster.directory))

        async def exchange(payload: bytes) -> bytes:
            """``payload`` on a new connection that proved the token; the reply."""
            r, w = await asyncio.open_connection(host, port)
            await prove(r, w, token)
            w.write(payload)
            await w.drain()
            try:
                return await asyncio.wait_for(r.read(1 << 20), 5)
            finally:
                w.close()

        # Random bytes and a wrong version: the connection is closed, nothing answered.
        assert await exchange(os.urandom(wire.REQUEST.size)) == b""
        bad_version = struct.pack("<4sBBH20sQQ", wire.MAGIC, 99, wire.FETCH, 0, ref._id, 0, 10)
        assert await exchange(bad_version) == b""
        # An unknown object: a NOT_FOUND reply, the connection stays usable.
        reply = await exchange(wire.encode_request(wire.FETCH, os.urandom(20), 0, CHUNK))
        assert wire.decode_reply(reply[: wire.REPLY.size])[0] == wire.NOT_FOUND
        # A range outside the object, or a chunk larger than allowed: BAD_REQUEST, closed.
        reply = await exchange(wire.encode_request(wire.FETCH, ref._id, 10 * MiB, 10))
        assert wire.decode_reply(reply[: wire.REPLY.size])[0] == wire.BAD_REQUEST
        reply = await exchange(wire.encode_request(wire.FETCH, ref._id, 0, 100 * MiB))
        assert wire.decode_reply(reply[: wire.REPLY.size])[0] == wire.BAD_REQUEST
        # A truncated request, then silence.
        s = socket.create_connection((host, port))
        s.sendall(b"OSXF\x01")
        s.close()
        del loop
        # The node carries on: a real pull works.
        assert bytes(await ch.get(ref, timeout=20)) == pattern(300 * KiB, 4)
    assert "bad request" in a.stderr()


class Proxy:
    """A TCP proxy the test can stall (stop forwarding) or cut (close every link)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.flowing = asyncio.Event()
        self.flowing.set()
        # Cleared: requests still reach the target, its replies stop.
        self.replies_flowing = asyncio.Event()
        self.replies_flowing.set()
        # While set, a link whose one end closed keeps the other end open
        # (so a source does not learn of a dead destination from the proxy).
        self.hold = False
        self.released = asyncio.Event()
        self.links: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", port)
        self.port = port

    async def _link(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(*self.target)
        except OSError:
            w.close()
            return
        self.links |= {w, uw}

        async def pipe(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, back: bool = False
        ) -> None:
            try:
                while data := await src.read(1 << 16):
                    await self.flowing.wait()
                    if back:
                        await self.replies_flowing.wait()
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                if self.hold:
                    await self.released.wait()
                dst.close()

        await asyncio.gather(pipe(r, uw), pipe(ur, w, back=True))

    def cut(self) -> None:
        for w in list(self.links):
            w.close()
        self.links.clear()

    async def close(self) -> None:
        self.released.set()
        self.cut()
        if self.server is not None:
            self.server.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
async def test_a_link_that_stalls_or_drops(cluster_factory, node_factory) -> None:
    c = cluster_factory(0, env=ENV, memory="128MiB")
    real, front = _free_port(), _free_port()
    proxy = Proxy(("127.0.0.1", real))
    await proxy.start(front)
    env = {**ENV, "OBJSTORE_NODE_ADVERTISE": f"127.0.0.1:{front}"}
    a = c.add_node("--port", str(real), env=env, memory="128MiB")
    try:
        async with objstore.connect(a.socket) as ca, objstore.connect(c.head.socket) as ch:
            refs = [await ca.put(pattern(2 * MiB, 10 + i)) for i in range(3)]
            # Through the proxy: fine.
            assert bytes(await ch.get(refs[0], timeout=20)) == pattern(2 * MiB, 10)
            # Stalled: each attempt times out (3 s); the get ends with a clear
            # error at its own timeout, not later.
            proxy.flowing.clear()
            t0 = time.monotonic()
            with pytest.raises(objstore.GetTimeoutError, match=refs[1].hex()):
                await ch.get(refs[1], timeout=4)
            # At its own 4 s timeout, not after more 3 s attempts (generous for a loaded machine).
            assert time.monotonic() - t0 < 10
            # Dropped mid-transfer, then flowing again: the retry succeeds.
            waiting = asyncio.ensure_future(ch.get(refs[2], timeout=30))
            await asyncio.sleep(0.3)
            proxy.cut()
            proxy.flowing.set()
            assert bytes(await waiting) == pattern(2 * MiB, 12)
            # Nothing torn was left behind: the stalled object arrives whole later.
            assert bytes(await ch.get(refs[1], timeout=30)) == pattern(2 * MiB, 11)
    finally:
        await proxy.close()
    assert "pull from a source failed" in c.head.stderr()


@pytest.mark.slow
async def test_sends_to_a_node_declared_dead_are_cancelled(cluster_factory) -> None:
    """A source stuck sending to a node that died aborts those sends when the directory says so."""
    # Chunks of 8 MiB, so a stalled link leaves the source inside its sends.
    big = {
        **ENV,
        "OBJSTORE_TRANSFER_CHUNK_SIZE": "8MiB",
        "OBJSTORE_TRANSFER_MAX_BYTES_IN_FLIGHT": "64MiB",
    }
    c = cluster_factory(0, env=big, memory="256MiB")
    real, front = _free_port(), _free_port()
    proxy = Proxy(("127.0.0.1", real))
    await proxy.start(front)
    env = {**big, "OBJSTORE_NODE_ADVERTISE": f"127.0.0.1:{front}"}
    a = c.add_node("--port", str(real), env=env, memory="256MiB")
    b = c.add_node(env=big, memory="256MiB")
    try:
        async with objstore.connect(a.socket) as ca:
            warm = await ca.put(b"w" * 1000)
            ref = await ca.put(pattern(64 * MiB, 3))
            async with objstore.connect(b.socket, reconnect=False) as cb:
                # B's connection to A proves the token while replies flow; the
                # stalled pull's first chunk below reuses it (a new connection
                # would stall in its handshake, before any send). The warm-up
                # is small: a connection that carried megabytes has TCP buffers
                # grown large enough to swallow a whole 8 MiB chunk, and the
                # source would not be left inside its send.
                assert bytes(await cb.get(warm, timeout=30)) == b"w" * 1000
                proxy.replies_flowing.clear()
                proxy.hold = True
                pending = asyncio.ensure_future(cb.get(ref, timeout=30))
                # The source fills the stalled link, then waits in its sends.
                await asyncio.sleep(1.5)
                b.kill()
                with pytest.raises((objstore.NodeUnavailableError, ConnectionError)):
                    await pending
            # Declared dead after 3 s of silence; the source hears and cancels.
            deadline = time.monotonic() + 15
            while "transfers to a dead node cancelled" not in a.stderr():
                assert time.monotonic() < deadline, a.stderr()[-3000:]
                await asyncio.sleep(0.2)
            line = next(
                x for x in a.stderr().splitlines() if "transfers to a dead node cancelled" in x
            )
            assert b.ready["node_id"] in line
            assert "sends=0" not in line, line
            # The source still serves others.
            proxy.released.set()
            proxy.hold = False
            proxy.replies_flowing.set()
            async with objstore.connect(c.head.socket) as ch:
                assert bytes(await ch.get(ref, timeout=30)) == pattern(64 * MiB, 3)
    finally:
        await proxy.close()


@pytest.mark.slow
async def test_secondary_copies_are_evicted_lru_and_the_directory_hears(cluster_factory) -> None:
    c = cluster_factory(0, env=ENV, memory="128MiB")
    small = c.add_node(env=ENV, memory="32MiB")
    async with objstore.connect(c.head.socket) as ch, objstore.connect(small.socket) as cs:
        refs = [await ch.put(pattern(12 * MiB, 20 + i)) for i in range(3)]
        mine = await cs.put(pattern(4 * MiB, 30))  # a primary there: never evicted
        for i, ref in enumerate(refs):
            view = await cs.get(ref, timeout=30)
            assert bytes(view) == pattern(12 * MiB, 20 + i)
            del view  # released: the copy becomes evictable
            await round_trip(cs)
        st = await cs.stats()
        assert st["evictions"] >= 1 and st["pulled"] == 3
        assert bytes(await cs.get(mine)) == pattern(4 * MiB, 30)
        # The first copy (least recently used) went; the directory was told.
        from objstore.directory.client import DirectoryAdmin

        small_id = bytes.fromhex(str(small.ready["node_id"]))
        deadline = time.monotonic() + 15
        while True:
            async with DirectoryAdmin(c.directory) as d:
                (row,) = await d.lookup([refs[0]._id])
            if small_id not in row.nodes:
                break
            assert time.monotonic() < deadline, "the eviction was never reported"
            await asyncio.sleep(0.05)
        assert not await cs.contains(refs[0])
        # Gets of it pull it again.
        assert bytes(await cs.get(refs[0], timeout=30)) == pattern(12 * MiB, 20)


@pytest.mark.slow
async def test_a_pull_with_no_room_waits_for_memory_then_goes_on(cluster_factory) -> None:
    """No secondary to evict, no fallback: the pull waits for a free, not for a retry."""
    c = cluster_factory(0, env=ENV, memory="128MiB")
    a = c.add_node(env=ENV, memory="128MiB")
    # Attempts of 30 s: a pull that only went on at its next attempt would take that long.
    slow_retry = {**ENV, "OBJSTORE_TRANSFER_PULL_TIMEOUT_S": "30"}
    b = c.add_node(env={**slow_retry, "OBJSTORE_PLASMA_FALLBACK_MAX_BYTES": "0"}, memory="16MiB")
    async with objstore.connect(a.socket) as ca, objstore.connect(b.socket) as cb:
        remote = await ca.put(pattern(8 * MiB, 5))
        local = await cb.put(pattern(12 * MiB, 6))
        pending = asyncio.ensure_future(cb.get(remote, timeout=60))
        # Nothing to wait on that says "the pull is waiting for room": give it a second.
        done, _ = await asyncio.wait({pending}, timeout=1.0)
        assert not done
        t0 = time.monotonic()
        await cb.delete(local)
        assert bytes(await pending) == pattern(8 * MiB, 5)
        assert time.monotonic() - t0 < 10.0  # on the free, far from the next attempt
    assert "pull from a source failed" not in b.stderr()
