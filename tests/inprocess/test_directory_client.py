"""DirectoryClient against a real DirectoryServer in the test's loop, with fake nodes.

Registration and full reports, heartbeats and death, reports and lookups,
subscriptions and notifications, names, deletes, a directory restart on the
same port, request timeouts, and requests cancelled at every await.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from _directory import directory_config, member, no_new_tasks, oid, serving, until
from fakes import CREDS, FakeNode
from structlog.testing import capture_logs

from objstore.directory.client import DirectoryClient
from objstore.errors import NodeUnavailableError, ObjectExistsError, ObjectNotFoundError
from objstore.locations import LocationState, Usage

PRESENT = LocationState.PRESENT
LOST = LocationState.LOST
DELETED = LocationState.DELETED
UNKNOWN = LocationState.UNKNOWN
PENDING = LocationState.PENDING


# ---------------------------------------------------------------- registration, reports


async def test_registration_sends_a_full_report() -> None:
    node = FakeNode()
    x, y, z = oid(1), oid(2), oid(3)
    node.objects = {x: (100, True, "ex"), y: (200, False, ""), z: (300, True, "")}
    node.spilled = {z: "file:///spill/0#0"}
    async with serving() as server, member(server, node=node) as a:
        assert a.client.registered.is_set() and a.client.registrations == 1
        assert a.client.directory_id == server.directory_id
        rec = server.state.nodes[a.node_id]
        assert rec.alive and rec.objects == {x, y, z} and rec.socket == "fake.sock"
        rows = {r.object_id: r for r in server.state.lookup([x, y, z])}
        assert rows[x].state == PRESENT and rows[x].primary == a.node_id and rows[x].name == "ex"
        assert rows[y].primary is None and rows[y].nodes == (a.node_id,)
        assert rows[z].spilled_url == "file:///spill/0#0" and rows[z].spilled_node == a.node_id
        assert server.state.resolve_name("ex") == x


async def test_a_full_report_of_many_objects_goes_in_batches() -> None:
    node = FakeNode()
    ids = [oid(i) for i in range(5000)]
    node.objects = {i: (1, True, "") for i in ids}
    node.spilled = {i: f"s3://b/p#{n}" for n, i in enumerate(ids[:2500])}
    async with serving(directory_config(max_report=1000)) as server, member(server, node=node):
        assert len(server.state.objects) == 5000
        assert server.state.spilled_objects == 2500


async def test_reports_reach_lookups_of_other_nodes() -> None:
    x, y = oid(1), oid(2)
    async with serving() as server, member(server) as a, member(server) as b:
        a.node.add(x, 1000, primary=True)
        a.node.add(y, 5, primary=True)
        await a.client.flush_reports()
        [rx, ry] = await b.client.lookup([x, y])
        assert rx.state == PRESENT and rx.size == 1000 and rx.nodes == (a.node_id,)
        assert ry.primary == a.node_id
        b.node.add(x, 1000, primary=False)
        # A spilled primary stays this node's (its memory freed, its copy in the file).
        a.node.spill(y, "s3://bucket/p/f#0")
        await a.client.flush_reports()
        await b.client.flush_reports()
        [rx, ry] = await a.client.lookup([x, y])
        assert set(rx.nodes) == {a.node_id, b.node_id} and rx.primary == a.node_id
        assert ry.state == PRESENT and ry.nodes == (a.node_id,)
        assert ry.spilled_url == "s3://bucket/p/f#0" and ry.spilled_node == a.node_id
        # An evicted secondary copy.
        b.node.remove(x)
        await b.client.flush_reports()
        [rx] = await a.client.lookup([x])
        assert rx.nodes == (a.node_id,) and rx.state == PRESENT
        assert a.client.reports_sent >= 1


async def test_flush_reports_returns_once_the_directory_has_every_change() -> None:
    async with serving(directory_config(max_report=500)) as server, member(server) as a:
        await a.client.flush_reports()  # nothing waiting: returns at once
        ids = [oid(i) for i in range(2000)]
        for i in ids:
            a.node.add(i)
        await a.client.flush_reports()
        # No wait: everything is there the moment flush_reports returns.
        assert server.state.nodes[a.node_id].objects == set(ids)
        a.node.delete(ids[0])
        await a.client.flush_reports()
        assert server.state.row(ids[0]).state == DELETED
        assert a.client._flush_waiters == [] and not a.client._inflight


# ---------------------------------------------------------------- heartbeats and death


async def test_heartbeats_carry_usage() -> None:
    async with serving() as server, member(server) as a:
        a.node.usage_now = Usage(memory_used=7, memory_total=64, objects=3, clients=2)
        await until(lambda: server.state.nodes[a.node_id].usage == a.node.usage_now)


async def test_a_silent_node_is_declared_dead_and_the_others_hear() -> None:
    x, y = oid(1), oid(2)
    cfg = directory_config(node_timeout_s=0.5)
    async with serving(cfg) as server, member(server) as a:
        async with member(server) as b:
            b.node.add(x)
            b.node.add(y)
            a.node.add(y, primary=False)
            await b.client.flush_reports()
            await a.client.flush_reports()
            a.client.watch(x)
            await a.node.wait_for(lambda: a.node.rows_of(x), what="x's first row")
        # b stopped: no more heartbeats.  a's heartbeats keep it alive meanwhile.
        await a.node.wait_for(lambda: b.node_id in a.node.dead, what="b declared dead")
        assert server.state.nodes[a.node_id].alive
        assert not server.state.nodes[b.node_id].alive
        await a.node.wait_for(
            lambda: a.node.rows_of(x)[-1].state == LOST, what="x lost with its only node"
        )
        [rx, ry] = await a.client.lookup([x, y])
        assert rx.state == LOST
        assert ry.state == PRESENT and ry.nodes == (a.node_id,)


# ---------------------------------------------------------------- subscriptions


async def test_a_subscription_sends_the_current_row_then_changes() -> None:
    x = oid(1)
    async with serving() as server, member(server) as a, member(server, address="127.0.0.2:7") as b:
        a.client.watch(x)
        await a.node.wait_for(lambda: a.node.rows_of(x), what="the row at subscribe")
        assert a.node.rows_of(x)[0].state == UNKNOWN
        b.node.add(x, 64)
        await a.node.wait_for(lambda: a.node.rows_of(x)[-1].state == PRESENT, what="x present on b")
        row = a.node.rows_of(x)[-1]
        assert row.nodes == (b.node_id,) and row.size == 64
        assert a.client.addresses[b.node_id] == "127.0.0.2:7"
        assert a.client.notifications >= 2


async def test_an_unwatched_object_is_not_told_about_any_more() -> None:
    x, y = oid(1), oid(2)
    async with serving() as server, member(server) as a, member(server) as b:
        a.client.watch(x)
        a.client.watch(x)  # two gets wait for it: one subscription
        await a.node.wait_for(lambda: a.node.rows_of(x), what="x subscribed")
        a.client.unwatch(x)
        assert x in a.client.watches
        a.client.unwatch(x)
        a.client.watch(y)
        # One message: unsubscribe x, subscribe y; the server applies the former first.
        await a.node.wait_for(lambda: a.node.rows_of(y), what="y subscribed")
        seen = len(a.node.rows_of(x))
        b.node.add(x)
        b.node.add(y)
        await a.node.wait_for(lambda: a.node.rows_of(y)[-1].state == PRESENT, what="y present on b")
        # x changed before y, in the same report: had x been subscribed, its
        # row would have come first.
        assert len(a.node.rows_of(x)) == seen
        assert server.state.subscriptions.get(x) is None


async def test_a_delete_frees_the_copies_on_other_nodes() -> None:
    x = oid(1)
    async with serving() as server, member(server) as a, member(server) as b:
        a.node.add(x, primary=True)
        b.node.add(x, primary=False)
        await a.client.flush_reports()
        await b.client.flush_reports()
        a.node.objects.pop(x)  # the store frees it here, then tells the directory
        assert await a.client.delete([x]) == 1
        await b.node.wait_for(lambda: x in b.node.frees, what="b told to free x")
        assert x not in a.node.frees
        assert (await b.client.lookup([x]))[0].state == DELETED


async def test_watchers_hear_of_a_delete() -> None:
    x = oid(1)
    async with serving() as server, member(server) as a, member(server) as b:
        b.node.add(x)
        a.client.watch(x)
        await a.node.wait_for(lambda: a.node.rows_of(x) and a.node.rows_of(x)[-1].state == PRESENT)
        assert await b.client.delete([x]) == 1
        await a.node.wait_for(lambda: a.node.rows_of(x)[-1].state == DELETED, what="deleted")
        assert await b.client.delete([x]) == 0  # gone already


# ---------------------------------------------------------------- names


async def test_names_are_reserved_resolved_and_freed_by_a_delete() -> None:
    x, y = oid(1), oid(2)
    async with serving() as server, member(server) as a, member(server) as b:
        await a.client.reserve_name("weights", x, 1000)
        row = await b.client.resolve_name("weights")
        assert row.object_id == x and row.state == PENDING and row.name == "weights"
        with pytest.raises(ObjectExistsError):
            await b.client.reserve_name("weights", y, 10)
        await a.client.reserve_name("weights", x, 1000)  # the same claim again: fine
        a.node.add(x, 1000, name="weights")
        await a.client.flush_reports()
        row = await b.client.resolve_name("weights")
        assert row.state == PRESENT and row.nodes == (a.node_id,)
        assert await b.client.delete([], ["weights"]) == 1
        with pytest.raises(ObjectNotFoundError):
            await a.client.resolve_name("weights")
        with pytest.raises(ObjectNotFoundError):
            await a.client.delete([], ["weights"])
        # Free again: another node may claim it.
        await b.client.reserve_name("weights", y, 10)
        assert server.state.resolve_name("weights") == y


async def test_a_name_freed_by_a_local_delete_can_be_claimed_at_once() -> None:
    x, y = oid(1), oid(2)
    async with serving() as server, member(server) as a:
        a.node.add(x, name="n")
        await a.client.flush_reports()
        a.node.delete(x)
        # The request flushes the delete first: the name is free when it arrives.
        await a.client.reserve_name("n", y, 1)
        assert server.state.resolve_name("n") == y


# ---------------------------------------------------------------- the head's own client


async def test_the_head_client_in_process_works_like_the_others() -> None:
    x = oid(1)
    async with serving() as server, member(server, local=True) as head, member(server) as b:
        assert head.client.registered.is_set()
        head.client.watch(x)
        await head.node.wait_for(lambda: head.node.rows_of(x), what="subscribed")
        b.node.add(x)
        await head.node.wait_for(lambda: head.node.rows_of(x)[-1].state == PRESENT)
        head.node.add(x, primary=False)
        await head.client.flush_reports()
        assert await b.client.delete([x]) == 1
        await head.node.wait_for(lambda: x in head.node.frees, what="head told to free x")
        await head.client.reserve_name("h", oid(2), 1)
        with pytest.raises(ObjectExistsError):
            await head.client.reserve_name("h", oid(3), 1)


# ---------------------------------------------------------------- restart and timeouts


async def test_clients_reconnect_to_a_restarted_directory() -> None:
    x, y = oid(1), oid(2)
    cfg = directory_config()
    async with serving(cfg) as first:
        port = first.port
        async with member(first) as a, member(first) as b:
            a.node.add(x, name="kept")
            b.node.add(z := oid(3))
            await a.client.flush_reports()
            b.client.watch(y)
            await b.node.wait_for(lambda: b.node.rows_of(y), what="y subscribed")
            old_id = first.directory_id
            await first.stop()
            # Requests wait for the new session rather than fail at once; the
            # new session's full report comes before them.
            pending = asyncio.ensure_future(b.client.lookup([z]))
            async with serving(cfg, port=port) as second:
                await until(
                    lambda: a.client.registrations == 2 and b.client.registrations == 2,
                    what="both registered again",
                )
                assert a.client.directory_id == second.directory_id != old_id
                [rz] = await asyncio.wait_for(pending, 10)
                assert rz.state == PRESENT and rz.nodes == (b.node_id,)
                [rx] = await b.client.lookup([x])
                assert rx.state == PRESENT and rx.nodes == (a.node_id,)
                # The full report carried the name; the subscription was renewed.
                assert (await b.client.resolve_name("kept")).object_id == x
                a.node.add(y)
                await b.node.wait_for(
                    lambda: b.node.rows_of(y)[-1].state == PRESENT, what="y after the restart"
                )


async def test_one_warning_per_lost_connection_and_one_line_when_back() -> None:
    cfg = directory_config()
    async with serving(cfg) as first:
        port = first.port
        async with member(first) as a:
            with capture_logs() as logs:
                await first.stop()
                # Several failed tries in a row (nothing listens), with backoff.
                await until(lambda: a.client._streak.failures >= 3, what="three failed tries")
                async with serving(cfg, port=port):
                    await until(lambda: a.client.registrations == 2, what="registered again")
    mine = [e for e in logs if e["event"] in _CLIENT_LINES]
    warnings = [e for e in mine if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["directory connection lost; reconnecting"]
    back = [e for e in mine if e["event"] == "registered with the directory"]
    assert len(back) == 1 and back[0]["failures"] >= 3 and back[0]["log_level"] == "info"
    assert a.client._streak.failures == 0


_CLIENT_LINES = {"directory connection lost; reconnecting", "registered with the directory"}


async def test_requests_fail_within_the_request_timeout_when_the_directory_is_gone() -> None:
    cfg = directory_config(request_timeout_s=0.5)
    async with serving(cfg) as server, member(server) as a:
        await server.stop()
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: a.client.lookup([oid(1)]),
            lambda: a.client.reserve_name("n", oid(1), 1),
            lambda: a.client.delete([oid(1)]),
            lambda: a.client.resolve_name("n"),
        ]
        for call in calls:
            t0 = time.monotonic()
            with pytest.raises(NodeUnavailableError, match="did not answer within 0.5s"):
                await asyncio.wait_for(call(), 5)
            assert time.monotonic() - t0 < 0.5 + 0.5


async def test_start_fails_clearly_when_no_directory_listens() -> None:
    before = set(asyncio.all_tasks())
    async with serving() as server:
        cfg = server.config.replace(node={"directory": server.address})
    # The server is gone: nothing listens on its port now.
    node = FakeNode()
    client = DirectoryClient(cfg, b"n" * 16, node, node, credentials=CREDS)
    t0 = time.monotonic()
    with pytest.raises(NodeUnavailableError, match="is the head node running"):
        await client.start(timeout=0.5)
    assert time.monotonic() - t0 < 3.0
    await no_new_tasks(before)


# ---------------------------------------------------------------- cancellation


async def _cancel_at_every_step(make: Callable[[int], Awaitable[Any]], *, steps: int = 5000) -> int:
    """Run ``make(i)`` cancelled after 0, 1, 2, ... loop turns until one finishes first.

    Every await of the call, its flush and its RPC is a point where it is
    cancelled in one of the runs.  Returns the number of runs cancelled.
    """
    for turn in range(steps):
        task = asyncio.ensure_future(make(turn))
        for _ in range(turn):
            if task.done():
                break
            await asyncio.sleep(0)
        if task.done():
            await task
            return turn
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # a call cancelled after its answer came still returns it
    raise AssertionError(f"the call did not finish within {steps} loop turns")


@pytest.mark.parametrize("local", [False, True], ids=["grpc", "in-process"])
@pytest.mark.parametrize("request_name", ["reserve_name", "delete", "lookup"])
async def test_requests_cancelled_at_every_await(local: bool, request_name: str) -> None:
    async with serving() as server, member(server, local=local) as a:
        # The session is whole (its stream served) before the tasks are counted.
        a.client.watch(oid(9))
        await a.node.wait_for(lambda: a.node.rows_of(oid(9)), what="the stream works")
        before = set(asyncio.all_tasks())
        client = a.client

        async def call(i: int) -> Any:
            # A change first, so that the request's flush has something to wait for.
            a.node.add(oid(100_000 + i))
            if request_name == "reserve_name":
                return await client.reserve_name(f"name-{i}", oid(i), 1)
            if request_name == "delete":
                return await client.delete([oid(200_000 + i)])
            return await client.lookup([oid(1), oid(2)])

        cancelled = await _cancel_at_every_step(call)
        assert cancelled >= 3
        # The client still works: the same session, every change reported.
        await client.flush_reports()
        assert client.registrations == 1
        assert client._flush_waiters == [] and not client._inflight and not len(client.book)
        assert server.state.nodes[a.node_id].objects == set(a.node.objects)
        await client.reserve_name("after", oid(7), 1)
        assert (await client.lookup([oid(7)]))[0].state == PENDING
        # Nothing left running from the cancelled calls, here or in the server.
        await no_new_tasks(before)
