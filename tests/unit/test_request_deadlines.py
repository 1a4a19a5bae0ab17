"""The client's request deadlines (one timer for every bounded request) and the
undo of a reply that comes in the very turn its caller gave up.

Pure: a Client with a fake transport (no node); the real node paths are in
tests/integration/test_timeouts.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from objstore._proto.local import local_pb2 as pb
from objstore.client import Client
from objstore.errors import NodeUnavailableError


class _Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)


def _client(timeout: float) -> Client:
    c = Client("/nonexistent.sock", warm=False, request_timeout=timeout)
    c._loop = asyncio.get_running_loop()
    c._transport = _Transport()  # type: ignore[assignment]
    return c


def _stats_request() -> pb.Request:
    req = pb.Request()
    req.stats.SetInParent()
    return req


async def _in_flight(c: Client, undo: list[pb.Reply]) -> tuple[pb.Request, asyncio.Task[pb.Reply]]:
    """A bounded stats request sent, its reply not come yet."""
    req = _stats_request()
    task = asyncio.ensure_future(c._call_once(req, undo.append, bounded=True))
    await asyncio.sleep(0)
    return req, task


def _reply(rid: int) -> pb.Reply:
    reply = pb.Reply(id=rid)
    reply.put.offset = 4096
    return reply


async def test_a_bounded_request_without_a_reply_fails_at_its_deadline() -> None:
    c = _client(0.05)
    undo: list[pb.Reply] = []
    t0 = time.monotonic()
    with pytest.raises(NodeUnavailableError, match="did not answer a stats request within 0.05s"):
        await c._call_once(_stats_request(), undo.append, bounded=True)
    assert 0.04 <= time.monotonic() - t0 < 5
    # The late reply is undone through the orphan callback.
    (rid,) = c._orphans
    c._on_reply(_reply(rid))
    assert [r.id for r in undo] == [rid]
    assert not c._pending and not c._late and not c._deadlines


async def test_answered_requests_leave_no_deadline_behind() -> None:
    c = _client(30.0)
    for _ in range(100):
        req = _stats_request()
        task = asyncio.ensure_future(c._call_once(req, None, bounded=True))
        await asyncio.sleep(0)
        c._on_reply(_reply(req.id))
        await task
    assert not c._deadlines and not c._pending
    # One timer for all of them, armed at the first deadline, not one per request.
    assert c._deadline_timer is not None
    c._deadline_timer.cancel()


async def test_only_requests_past_their_deadline_fail() -> None:
    c = _client(0.2)
    first = _stats_request()
    t1 = asyncio.ensure_future(c._call_once(first, None, bounded=True))
    await asyncio.sleep(0.1)
    second = _stats_request()
    t2 = asyncio.ensure_future(c._call_once(second, None, bounded=True))
    with pytest.raises(NodeUnavailableError):
        await t1
    assert not t2.done()  # its own deadline is 0.1 s later
    c._on_reply(_reply(second.id))
    assert (await t2).id == second.id


async def test_a_reply_in_the_turn_of_the_timeout_is_undone() -> None:
    """The deadline fails the request, and its reply arrives before the caller
    resumes: the caller undoes the reply (a put it no longer returns)."""
    c = _client(30.0)
    undo: list[pb.Reply] = []
    req, task = await _in_flight(c, undo)
    ((_, rid),) = c._deadlines
    c._deadlines[0] = (asyncio.get_running_loop().time() - 1.0, rid)  # past it now
    c._expire_requests()
    c._on_reply(_reply(req.id))  # same turn: the task has not resumed
    with pytest.raises(NodeUnavailableError):
        await task
    assert [r.id for r in undo] == [req.id]
    assert not c._late and not c._orphans


@pytest.mark.parametrize("error", [False, True])
async def test_a_reply_in_the_turn_of_a_cancellation_is_undone(error: bool) -> None:
    """The caller is cancelled and its reply arrives before it resumes: a reply
    that did something is undone; an error reply did nothing and needs no undo."""
    c = _client(30.0)
    undo: list[pb.Reply] = []
    req, task = await _in_flight(c, undo)
    task.cancel()
    reply = _reply(req.id)
    if error:
        reply.error.message = "no room"
    c._on_reply(reply)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [r.id for r in undo] == ([] if error else [req.id])
    assert not c._late and not c._orphans
