"""The object directory with real node processes: a head and nodes on 127.0.0.1.

Covers registration, heartbeats, death detection, location reports and batch
lookups, subscriptions (snapshot then changes), cluster-wide names, deletes
from another node, lost objects, a directory restart with SQLite and with
Redis, a subscriber that never reads, and bad requests of every kind.
Raw requests go through the generated grpclib stub, as a node's would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpclib.const
import pytest
from conftest import CLUSTER_ENV, run_cli
from grpclib import GRPCError
from grpclib.const import Status
from redis_server import redis_url  # noqa: F401  (fixture)
from waits import round_trip

import objstore
from objstore.auth import generate_token, member_credentials, write_token_file
from objstore.config import SecurityConfig
from objstore.directory.client import DirectoryAdmin
from objstore.directory.codec import join_ids, pb, table_to_rows
from objstore.directory.guard import open_channel
from objstore.directory.state import DELETED, LOST, PRESENT, UNKNOWN
from objstore.errors import (
    NodeUnavailableError,
    ObjectExistsError,
    ObjectLostError,
    ObjectNotFoundError,
)

MiB = 1 << 20
SUBSCRIBE = "/objstore.directory.v1.Directory/Subscribe"


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 10.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what} (last: {last!r})")


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeNode:
    """A node as the directory sees it, driven by the test through raw RPCs."""

    def __init__(self, address: str) -> None:
        # The token the head published on this machine, as a node's would be.
        creds = member_credentials(SecurityConfig(), address)
        self.channel = open_channel(*_host_port(address), creds)
        self.stub = pb.DirectoryStub(self.channel)
        self.node_id = os.urandom(16)
        self.session = os.urandom(16)
        self._beat: asyncio.Task[None] | None = None

    async def register(self) -> None:
        await self.stub.register(
            pb.RegisterRequest(node_id=self.node_id, session=self.session, pid=1, hostname="fake"),
            timeout=5,
        )
        self._beat = asyncio.ensure_future(self._heartbeats())

    async def _heartbeats(self) -> None:
        while True:
            await self.stub.heartbeat(
                pb.HeartbeatRequest(node_id=self.node_id, session=self.session), timeout=5
            )
            await asyncio.sleep(0.2)

    async def report(self, **fields: Any) -> None:
        await self.stub.report(
            pb.LocationReport(node_id=self.node_id, session=self.session, **fields), timeout=10
        )

    async def add(self, oids: list[bytes], size: int = 10) -> None:
        for i in range(0, len(oids), 2000):
            chunk = oids[i : i + 2000]
            await self.report(
                added_ids=join_ids(chunk),
                added_sizes=[size] * len(chunk),
                added_primary=[True] * len(chunk),
            )

    def subscribe_stream(self) -> Any:
        return self.channel.request(
            SUBSCRIBE, grpclib.const.Cardinality.STREAM_STREAM, pb.SubscribeRequest, pb.Notification
        )

    async def close(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, GRPCError, OSError):
                await self._beat
        self.channel.close()


async def _status(address: str) -> pb.ClusterStatusReply:
    async with DirectoryAdmin(address) as d:
        return await d.cluster_status()


async def _lookup(address: str, oids: list[bytes]) -> list[Any]:
    async with DirectoryAdmin(address) as d:
        return await d.lookup(oids)


async def _node_alive(address: str, node_id: str) -> bool | None:
    for n in (await _status(address)).nodes:
        if n.node_id.hex() == node_id:
            return n.alive
    return None


# ---------------------------------------------------------------------- membership
@pytest.mark.slow
async def test_nodes_register_and_show_in_status(cluster) -> None:
    st = await _status(cluster.directory)
    by_id = {n.node_id.hex(): n for n in st.nodes}
    expected = [cluster.head, *cluster.nodes]
    assert set(by_id) == {str(n.ready["node_id"]) for n in expected}
    for n in expected:
        rec = by_id[str(n.ready["node_id"])]
        assert rec.alive and rec.pid == n.pid and rec.socket == n.socket
        assert rec.head == (n is cluster.head)
        assert rec.usage.memory_total == 64 * MiB
    for n in cluster.nodes:
        assert n.ready["directory"] == cluster.directory

    code, out, err = await run_cli("status", "--directory", cluster.directory, "--json")
    assert code == 0, err
    js = json.loads(out)
    assert js["totals"]["nodes"] == 3 and js["totals"]["alive"] == 3
    assert js["totals"]["memory_total"] == 3 * 64 * MiB
    code, out, err = await run_cli("status", "--directory", cluster.directory)
    assert code == 0, err
    assert "(head)" in out and out.count("alive") >= 3 and "3 alive of 3" in out
    # A node in a cluster answers for the cluster too.
    code, out, err = await run_cli("status", "--socket", cluster.nodes[0].socket, "--json")
    assert code == 0, err
    js = json.loads(out)
    assert js["node_id"] == cluster.nodes[0].ready["node_id"]
    assert js["directory"] == cluster.directory and js["cluster"]["totals"]["alive"] == 3
    code, out, err = await run_cli("status", "--socket", cluster.nodes[0].socket)
    assert code == 0, err
    assert cluster.directory in out and "3 alive of 3" in out


@pytest.mark.slow
async def test_heartbeats_carry_usage(cluster) -> None:
    a = cluster.nodes[0]
    async with objstore.connect(a.socket) as c:
        held = [await c.put(b"u" * (2 * MiB)), await c.put(b"v")]  # noqa: F841 - alive

        async def usage_seen() -> bool:
            for n in (await _status(cluster.directory)).nodes:
                if n.node_id.hex() == a.ready["node_id"]:
                    return n.usage.memory_used >= 2 * MiB and n.usage.objects == 2
            return False

        await until(usage_seen, 10, "heartbeat with the new usage")


@pytest.mark.slow
async def test_death_detection_and_a_node_that_comes_back(cluster) -> None:
    a = cluster.nodes[0]
    async with objstore.connect(a.socket) as c:
        ref = await c.put(b"kept while alive", name="comes-back")
        await until(lambda: _present(cluster.directory, ref._id), 10, "the object reported")
        # Stopped for longer than the node timeout (3 s): declared dead.
        a.proc.send_signal(signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            await until(
                lambda: _dead(cluster.directory, str(a.ready["node_id"])), 10, "node declared dead"
            )
            assert time.monotonic() - t0 < 9
            assert (await _lookup(cluster.directory, [ref._id]))[0].state == LOST
        finally:
            a.proc.send_signal(signal.SIGCONT)
        # Back: it registers again as a new node and reports what it holds.
        await until(lambda: _alive(cluster.directory, str(a.ready["node_id"])), 10, "re-registered")
        rows = await until(
            lambda: _present(cluster.directory, ref._id), 10, "the object present again"
        )
        assert rows.primary.hex() == a.ready["node_id"]
        assert bytes(await c.get(ref)) == b"kept while alive"
    a.allow_loop_stall = True  # it was stopped on purpose
    assert "directory connection lost; reconnecting" in a.stderr() or "registered" in a.stderr()
    assert "node declared dead" in cluster.head.stderr()


async def _dead(address: str, node_id: str) -> bool:
    return await _node_alive(address, node_id) is False


async def _alive(address: str, node_id: str) -> bool:
    return await _node_alive(address, node_id) is True


async def _present(address: str, oid: bytes) -> Any:
    row = (await _lookup(address, [oid]))[0]
    return row if row.state == PRESENT and row.nodes else None


# ---------------------------------------------------------------------- locations
@pytest.mark.slow
async def test_locations_reported_and_batch_lookup(cluster) -> None:
    a, b = cluster.nodes
    async with objstore.connect(a.socket) as ca, objstore.connect(b.socket) as cb:
        refs = [await ca.put(i.to_bytes(4, "little")) for i in range(3000)]
        other = await cb.put(b"on b")
        ids = [r._id for r in refs]

        async def all_present() -> bool:
            rows = await _lookup(cluster.directory, ids)
            return all(r.state == PRESENT for r in rows)

        await until(all_present, 10, "3,000 objects reported")
        rows = await _lookup(cluster.directory, [*ids, other._id, os.urandom(20)])
        a_id = bytes.fromhex(str(a.ready["node_id"]))
        for r, oid in zip(rows[:3000], ids):
            assert r.object_id == oid and r.primary == a_id and r.nodes == (a_id,) and r.size == 4
        assert rows[3000].nodes == (bytes.fromhex(str(b.ready["node_id"])),)
        assert rows[3001].state == UNKNOWN and rows[3001].nodes == ()

        assert await ca.delete(refs[:10]) == 10
        await until(
            lambda: _all_state(cluster.directory, ids[:10], DELETED), 10, "deletes reported"
        )
        st = await _status(cluster.directory)
        assert st.objects == 2991 and st.locations == 2991

        code, out, err = await run_cli(
            "memory", "--directory", cluster.directory, "--json", "--limit", "0"
        )
        assert code == 0, err
        mem = json.loads(out)
        assert mem["total"] == 2991
        entry = next(o for o in mem["objects"] if o["object_id"] == other.hex())
        assert entry["locations"] == [b.ready["node_id"]] and entry["pinned"] is True
        code, out, err = await run_cli("memory", "--socket", b.socket, "--json")
        assert code == 0, err
        (obj,) = json.loads(out)["objects"]
        assert obj["locations"] == [b.ready["node_id"]]
        assert obj["primary_node"] == b.ready["node_id"]


async def _all_state(address: str, oids: list[bytes], state: int) -> bool:
    return all(r.state == state for r in await _lookup(address, oids))


@pytest.mark.slow
async def test_subscription_snapshot_then_changes(cluster) -> None:
    a = cluster.nodes[0]
    fake = FakeNode(cluster.directory)
    await fake.register()
    try:
        async with objstore.connect(a.socket) as ca:
            ref = await ca.put(b"watched")
            await until(lambda: _present(cluster.directory, ref._id), 10, "reported")
            future = os.urandom(20)
            async with fake.subscribe_stream() as stream:
                await stream.send_message(
                    pb.SubscribeRequest(
                        node_id=fake.node_id,
                        session=fake.session,
                        subscribe_ids=join_ids([ref._id, future]),
                    )
                )
                seen: dict[bytes, Any] = {}
                while len(seen) < 2:
                    note = await asyncio.wait_for(stream.recv_message(), 5)
                    seen.update((r.object_id, r) for r in table_to_rows(note.updates))
                assert seen[ref._id].state == PRESENT
                assert seen[ref._id].nodes == (bytes.fromhex(str(a.ready["node_id"])),)
                assert seen[future].state == UNKNOWN
                # A change: the future object appears on another (fake) node.
                await fake.add([future], size=77)
                note = await asyncio.wait_for(stream.recv_message(), 5)
                (row,) = table_to_rows(note.updates)
                assert row.object_id == future and row.state == PRESENT and row.size == 77
                assert row.nodes == (fake.node_id,)
                # Another: the watched object is deleted on its node.
                await ca.delete(ref)
                note = await asyncio.wait_for(stream.recv_message(), 5)
                (row,) = table_to_rows(note.updates)
                assert row.object_id == ref._id and row.state == DELETED
                # Unsubscribed objects are quiet.  The probe, subscribed in the same
                # message, is the fence: its snapshot says the unsubscribe was applied, and
                # its change, reported after the removal, is the next (and only) news.
                probe = os.urandom(20)
                await stream.send_message(
                    pb.SubscribeRequest(unsubscribe_ids=future, subscribe_ids=probe)
                )
                note = await asyncio.wait_for(stream.recv_message(), 5)
                assert [r.object_id for r in table_to_rows(note.updates)] == [probe]
                await fake.report(removed_ids=future)
                await fake.add([probe], size=5)
                note = await asyncio.wait_for(stream.recv_message(), 5)
                (row,) = table_to_rows(note.updates)
                assert row.object_id == probe and row.state == PRESENT
                await stream.cancel()
    finally:
        await fake.close()


# ---------------------------------------------------------------------- names and deletes
@pytest.mark.slow
async def test_names_are_unique_cluster_wide(cluster) -> None:
    a, b = cluster.nodes
    async with (
        objstore.connect(a.socket) as ca,
        objstore.connect(b.socket) as cb,
        objstore.connect(cluster.head.socket) as ch,
    ):
        ref = await ca.put(b"weights", name="model")
        with pytest.raises(ObjectExistsError, match="'model'"):
            await cb.put(b"other", name="model")
        with pytest.raises(ObjectExistsError, match="'model'"):
            await ch.put(b"other", name="model")
        # B knows the name through the directory and pulls the bytes from A.
        assert bytes(await cb.get("model", timeout=10)) == b"weights"
        with pytest.raises(ObjectNotFoundError, match="'nothing'"):
            await cb.get("nothing", timeout=0.5)
        rows = await _lookup(cluster.directory, [ref._id])
        assert rows[0].name == "model"
        # Deleting it by name from B frees the name everywhere.
        assert await cb.delete("model") == 1
        await until(lambda: _all_state(cluster.directory, [ref._id], DELETED), 10, "deleted")
        await until(lambda: _not(ca.contains(ref)), 10, "A freed it")
        with pytest.raises(ObjectNotFoundError):
            await ca.get(ref, timeout=1)
        ref2 = await cb.put(b"new weights", name="model")
        assert bytes(await cb.get("model")) == b"new weights"
        assert (await _lookup(cluster.directory, [ref2._id]))[0].primary == bytes.fromhex(
            str(b.ready["node_id"])
        )
        with pytest.raises(ObjectNotFoundError, match="'never-was'"):
            await cb.delete("never-was")


@pytest.mark.slow
async def test_named_put_racing_on_two_nodes_gives_one_winner(cluster) -> None:
    a, b = cluster.nodes
    async with objstore.connect(a.socket) as ca, objstore.connect(b.socket) as cb:
        for i in range(20):
            results = await asyncio.gather(
                ca.put(b"a", name=f"race-{i}"),
                cb.put(b"b", name=f"race-{i}"),
                return_exceptions=True,
            )
            wins = [r for r in results if isinstance(r, objstore.ObjectRef)]
            losses = [r for r in results if isinstance(r, ObjectExistsError)]
            assert len(wins) == 1 and len(losses) == 1, results
        st = await until(lambda: _objects_at_least(cluster.directory, 20), 10, "reports")
        assert st.objects == 20


async def _not(coro: Awaitable[bool]) -> bool:
    return not await coro


async def _objects_at_least(address: str, n: int) -> Any:
    st = await _status(address)
    return st if st.objects >= n else None


@pytest.mark.slow
async def test_delete_from_another_node_frees_every_copy(cluster) -> None:
    a, b = cluster.nodes
    async with objstore.connect(a.socket) as ca, objstore.connect(b.socket) as cb:
        refs = [await ca.put(b"x" * 1000) for _ in range(50)]
        held = await ca.get(refs[0])  # a view on A
        await until(lambda: _all_state(cluster.directory, [r._id for r in refs], PRESENT), 10, "")
        assert await cb.delete(refs) == 50

        async def gone() -> bool:
            return (await ca.stats())["sealed"] == 0

        await until(gone, 10, "A freed its copies")
        assert not await ca.contains(refs[1])
        with pytest.raises(ObjectNotFoundError):
            await ca.get(refs[1], timeout=1)
        assert bytes(held) == b"x" * 1000  # a view keeps its bytes until released
        assert await cb.delete(refs) == 0


# ---------------------------------------------------------------------- lost objects
@pytest.mark.slow
async def test_objects_of_a_dead_node_are_lost_not_waited_for(cluster) -> None:
    a, b = cluster.nodes
    async with objstore.connect(a.socket) as ca, objstore.connect(b.socket) as cb:
        ref = await ca.put(b"only on a")
        await until(lambda: _present(cluster.directory, ref._id), 10, "reported")
        t0 = time.monotonic()
        a.kill()
        # B's get cannot pull from a dead node; it waits until the death is
        # known, then fails: the object had no other copy.
        waiting = asyncio.ensure_future(cb.get(ref, timeout=60))
        await round_trip(cb)
        assert not waiting.done()
        with pytest.raises(ObjectLostError, match=ref.hex()):
            await waiting
        assert await _dead(cluster.directory, str(a.ready["node_id"]))  # failed once it was known
        # Soon after the death is detected (timeout 3 s), far from the get's 60 s.
        assert time.monotonic() - t0 < 10
        t1 = time.monotonic()
        with pytest.raises(ObjectLostError, match="died"):
            await cb.get(ref, timeout=30)
        assert time.monotonic() - t1 < 10  # at once, not at the get's timeout
        st = await _status(cluster.directory)
        assert st.lost_objects == 1
        assert not next(n for n in st.nodes if n.node_id.hex() == a.ready["node_id"]).alive
        code, out, err = await run_cli("memory", "--directory", cluster.directory)
        assert code == 0 and ref.hex() in out and "lost" in out, err


# ---------------------------------------------------------------------- restarts
async def _restart_directory(cluster_factory, node_factory, head_args: list[str]) -> None:
    port = _free_port()
    args = [*head_args, "--directory-port", str(port)]
    c = cluster_factory(2, *args)
    a, b = c.nodes
    old_head_id = str(c.head.ready["node_id"])
    async with objstore.connect(a.socket) as ca, objstore.connect(b.socket) as cb:
        named = await ca.put(b"named", name="survives")
        plain = [await ca.put(i.to_bytes(2, "little")) for i in range(500)]
        on_b = await cb.put(b"on b")
        ids = [named._id, on_b._id, *(r._id for r in plain)]
        await until(lambda: _all_state(c.directory, ids, PRESENT), 10, "reported")
        # A get on B waiting for an object nobody has put (yet), through the restart.
        unknown = objstore.ObjectRef.from_hex(os.urandom(20).hex())
        waiting = asyncio.ensure_future(cb.get(unknown, timeout=60))
        # B subscribed to it (a stopping directory writes what is dirty: no wait for that).
        await until(lambda: _subscriptions_at_least(c.directory, 1), 10, "B's subscription")
        assert not waiting.done()
        assert c.head.stop() == 0
        # While the directory is down the nodes keep serving their clients.
        extra = await ca.put(b"put while the directory was down")
        assert bytes(await ca.get(plain[0])) == (0).to_bytes(2, "little")
        with pytest.raises(NodeUnavailableError):
            await asyncio.wait_for(cb.put(b"x", name="needs the directory"), 30)
        t0 = time.monotonic()
        head2 = node_factory(*args, env=CLUSTER_ENV, memory="64MiB")
        assert head2.ready["directory"] == c.directory
        # The nodes come back on their own (backoff) and report in full.
        for n in (a, b):
            await until(lambda n=n: _alive(c.directory, str(n.ready["node_id"])), 10, "rejoined")
        await until(lambda: _all_state(c.directory, [*ids, extra._id], PRESENT), 10, "objects back")
        assert time.monotonic() - t0 < 15
        assert not waiting.done()  # still waiting, not failed by the restart
        with pytest.raises(ObjectExistsError, match="survives"):
            await cb.put(b"y", name="survives")
        # The old head never comes back: declared dead after the node timeout.
        await until(lambda: _dead(c.directory, old_head_id), 10, "old head dead")
        # The waiting get still has its subscription: a delete of that id on A reaches it.
        assert await ca.delete(unknown) == 0
        with pytest.raises(ObjectNotFoundError):
            await asyncio.wait_for(waiting, 10)
        assert await ca.delete(named) == 1
        assert "directory state recovered" in head2.stderr()
    a.allow_loop_stall = b.allow_loop_stall = False


@pytest.mark.slow
async def test_directory_restart_with_sqlite(cluster_factory, node_factory, tmp_path) -> None:
    await _restart_directory(
        cluster_factory, node_factory, ["--state-dir", str(tmp_path / "state")]
    )
    assert (tmp_path / "state" / "directory.sqlite3").exists()


@pytest.mark.slow
async def test_directory_restart_with_redis(
    cluster_factory,
    node_factory,
    redis_url,  # noqa: F811
    tmp_path,
) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/5"
    # No --state-dir to keep the cluster token in: the restarted head is given
    # the same one (a fresh token would lock the members out, as it should).
    token = tmp_path / "token"
    write_token_file(str(token), generate_token())
    await _restart_directory(
        cluster_factory, node_factory, ["--directory-store", url, "--token-file", str(token)]
    )


# ---------------------------------------------------------------------- slow subscriber
def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
async def test_a_subscriber_that_never_reads_costs_bounded_memory(cluster_factory) -> None:
    # A generous node timeout: this test loads the machine on purpose.
    c = cluster_factory(0, env={"OBJSTORE_DIRECTORY_NODE_TIMEOUT_S": "20"})
    reader = FakeNode(c.directory)
    writer = FakeNode(c.directory)
    await reader.register()
    await writer.register()
    try:
        oids = [os.urandom(20) for _ in range(10_000)]
        async with reader.subscribe_stream() as stream:
            await stream.send_message(
                pb.SubscribeRequest(
                    node_id=reader.node_id, session=reader.session, subscribe_ids=join_ids(oids)
                )
            )
            await until(lambda: _subscriptions(c.directory, 10_000), 10, "subscribed")
            before = _rss(c.head.pid)
            # 40 rounds of 10,000 changes (400,000 updates for a stream that never reads).
            for _ in range(20):
                await writer.add(oids)
                for i in range(0, len(oids), 2000):
                    await writer.report(removed_ids=join_ids(oids[i : i + 2000]))
            grown = _rss(c.head.pid) - before
            # Pending changes coalesce per object: bounded by the 10,000 subscriptions.
            assert grown < 64 * MiB, f"directory grew by {grown / MiB:.1f} MiB"
            t0 = time.monotonic()
            rows = await _lookup(c.directory, oids[:1000])
            # The backlog does not hold up other requests (a stall would end at the 10 s
            # request timeout; a lookup takes milliseconds).
            assert len(rows) == 1000 and time.monotonic() - t0 < 5
            st = await _status(c.directory)
            assert st.subscriptions == 10_000
            await stream.cancel()
        await until(lambda: _subscriptions(c.directory, 0), 10, "stream dropped")
    finally:
        await reader.close()
        await writer.close()


async def _subscriptions(address: str, n: int) -> bool:
    return (await _status(address)).subscriptions == n


async def _subscriptions_at_least(address: str, n: int) -> bool:
    return (await _status(address)).subscriptions >= n


# ---------------------------------------------------------------------- bad input
@pytest.mark.slow
async def test_bad_requests_get_clear_errors_and_the_directory_keeps_serving(
    cluster_factory,
) -> None:
    c = cluster_factory(0)
    fake = FakeNode(c.directory)
    stub = fake.stub
    nid, sess = fake.node_id, fake.session

    async def status_of(coro: Awaitable[Any]) -> GRPCError:
        with pytest.raises(GRPCError) as info:
            await coro
        return info.value

    try:
        # Unknown node: reports and heartbeats refused, the node is told to register.
        e = await status_of(stub.report(pb.LocationReport(node_id=nid, session=sess)))
        assert e.status is Status.FAILED_PRECONDITION and "not registered" in e.message
        e = await status_of(stub.heartbeat(pb.HeartbeatRequest(node_id=nid, session=sess)))
        assert e.status is Status.FAILED_PRECONDITION
        async with fake.subscribe_stream() as stream:
            await stream.send_message(pb.SubscribeRequest(node_id=nid, session=sess), end=True)
            with pytest.raises(GRPCError) as info:
                await stream.recv_message()
            assert info.value.status is Status.FAILED_PRECONDITION
        # Malformed registrations.
        e = await status_of(stub.register(pb.RegisterRequest(node_id=b"abc", session=sess)))
        assert e.status is Status.INVALID_ARGUMENT and "16 bytes" in e.message
        e = await status_of(stub.register(pb.RegisterRequest(node_id=nid, session=b"")))
        assert e.status is Status.INVALID_ARGUMENT
        await fake.register()
        # The same node id from another process while this one is alive.
        e = await status_of(stub.register(pb.RegisterRequest(node_id=nid, session=os.urandom(16))))
        assert e.status is Status.ALREADY_EXISTS and "registered already" in e.message
        # Ragged ids, mismatched columns, too many entries, too many ids.
        e = await status_of(stub.lookup(pb.LookupRequest(object_ids=b"x" * 21)))
        assert e.status is Status.INVALID_ARGUMENT and "multiple" in e.message
        e = await status_of(fake.report(added_ids=os.urandom(40), added_sizes=[1]))
        assert e.status is Status.INVALID_ARGUMENT and "differ" in e.message
        e = await status_of(
            fake.report(added_ids=os.urandom(20), added_sizes=[1], named_index=[5], names=["n"])
        )
        assert e.status is Status.INVALID_ARGUMENT
        e = await status_of(fake.report(removed_ids=os.urandom(20 * 2001)))
        assert e.status is Status.INVALID_ARGUMENT and "at most 2000" in e.message
        e = await status_of(stub.lookup(pb.LookupRequest(object_ids=os.urandom(20 * 100_001))))
        assert e.status is Status.INVALID_ARGUMENT and "at most 100000" in e.message
        # Oversized: refused before it is read.
        e = await status_of(stub.lookup(pb.LookupRequest(object_ids=b"\0" * (17 * MiB))))
        assert e.status is Status.RESOURCE_EXHAUSTED and "over the limit" in e.message
        # Names: empty, or for an id that is not one.
        e = await status_of(
            stub.reserve_name(
                pb.ReserveNameRequest(node_id=nid, session=sess, name="", object_id=os.urandom(20))
            )
        )
        assert e.status is Status.INVALID_ARGUMENT
        e = await status_of(
            stub.reserve_name(
                pb.ReserveNameRequest(node_id=nid, session=sess, name="n", object_id=b"short")
            )
        )
        assert e.status is Status.INVALID_ARGUMENT
        e = await status_of(stub.resolve_name(pb.ResolveNameRequest(name="nobody")))
        assert e.status is Status.NOT_FOUND
        # Garbage on the port: that connection fails, nobody else notices.
        host, port = _host_port(c.directory)
        for junk in (
            b"GET / HTTP/1.1\r\n\r\n",
            os.urandom(5000),
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(300),
        ):
            r, w = await asyncio.open_connection(host, port)
            w.write(junk)
            await w.drain()
            try:
                await asyncio.wait_for(r.read(65536), 5)
            except (ConnectionError, TimeoutError):
                pass
            w.close()
        # A dead node's requests are refused; it must register again.
        await fake.close()
        await until(lambda: _dead(c.directory, nid.hex()), 10, "fake node dead")
        fake2 = FakeNode(c.directory)
        try:
            e = await status_of(
                fake2.stub.report(
                    pb.LocationReport(
                        node_id=nid, session=sess, added_ids=os.urandom(20), added_sizes=[1]
                    )
                )
            )
            assert e.status is Status.FAILED_PRECONDITION and "dead" in e.message
        finally:
            await fake2.close()
        # Still serving.
        st = await _status(c.directory)
        assert st.objects == 0 and any(n.alive for n in st.nodes)
        async with objstore.connect(c.head.socket) as ch:
            ref = await ch.put(b"fine", name="still-serving")
            assert bytes(await ch.get("still-serving")) == b"fine"
            assert (await _lookup(c.directory, [ref._id]))[0].name == "still-serving"
    finally:
        await fake.close()


async def test_cli_directory_errors(tmp_path) -> None:
    code, out, err = await run_cli("status", "--directory", "nonsense")
    assert code == 1 and "HOST:PORT" in err and "Traceback" not in err
    port = _free_port()
    code, out, err = await run_cli("memory", "--directory", f"127.0.0.1:{port}", "--json")
    assert code == 1 and f"127.0.0.1:{port}" in err and "Traceback" not in err and out == ""
