"""Cancelling spill work at every await point leaves nothing behind (httpcore's style).

Two ways to reach each await point: a StepBackend that blocks its k-th step
(``"write:before"``, ``"write:after"``, ``"read:before"``, ...) until the test
cancels, for k = 1, 2, ... until the work finishes first; and cancelling after
k turns of the event loop, which also lands inside the waits for threads
(records built, records checked).  After each cancellation: the policy, files
and restore queue are consistent, the store holds no lease nor allocation,
every spilled object has its copy, the disk holds exactly the files the
manager knows, the work done again succeeds, and closing leaves no task and no
file.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from _spill import (
    SIZE,
    check_manager,
    check_store_agrees,
    data,
    known_files,
    oid,
    spill_files,
    spilling,
    wait_until,
)
from fakes import SpillStore, StepBackend

from objstore.spill.backends import LocalBackend
from objstore.spill.manager import SpillManager

pytestmark = pytest.mark.timeout(120)

Setup = Callable[[SpillStore, SpillManager], Awaitable[None]]
Work = Callable[[SpillStore, SpillManager], Awaitable[object]]


async def _full(store: SpillStore, mgr: SpillManager) -> None:
    for i in range(16):
        await store.create(oid(i), data(i))


async def _two_spilled_and_full(store: SpillStore, mgr: SpillManager) -> None:
    await _full(store, mgr)
    await mgr.make_room(2 * SIZE)
    for i in (16, 17):
        await store.create(oid(i), data(i))
    assert store.spilled() == [oid(0), oid(1)] and store.largest_free == 0


async def _make_room(store: SpillStore, mgr: SpillManager) -> object:
    return await mgr.make_room(4 * SIZE)  # two files of two objects


async def _restore(store: SpillStore, mgr: SpillManager) -> object:
    """Stands for the restore task a get of a spilled object starts (see _start)."""
    raise AssertionError("not called")


async def _start(
    store: SpillStore, mgr: SpillManager, work: Work
) -> tuple[asyncio.Task[object], asyncio.Future[bytes] | None]:
    """The task to cancel: make_room itself, or the restore task a get started
    (memory is full: it makes room first).  With the get, for a restore."""
    if work is _make_room:
        return asyncio.ensure_future(_make_room(store, mgr)), None
    get = asyncio.ensure_future(store.get(oid(0)))
    async with asyncio.timeout(5):
        while not _restore_tasks(mgr):  # spawned on the next loop turns
            await asyncio.sleep(0)
    (task,) = _restore_tasks(mgr)
    return task, get


def _restore_tasks(mgr: SpillManager) -> list[asyncio.Task[object]]:
    return [t for t in mgr._tasks if t.get_name() == "spill-restore"]


@contextlib.asynccontextmanager
async def _case(root: Path) -> AsyncIterator[tuple[SpillStore, SpillManager, StepBackend]]:
    backend = StepBackend(LocalBackend([str(root)], "node"))
    async with spilling(root, backend, max_fused_object_count=2) as (store, mgr):
        yield store, mgr, backend


async def _check_after_cancel(
    root: Path, store: SpillStore, mgr: SpillManager, get: asyncio.Future[bytes] | None
) -> None:
    check_manager(mgr)
    check_store_agrees(store, mgr)
    assert all(e.leases == 0 for e in store.objects.values()), "a lease left"
    assert not store.spaces, "an allocation left"
    await wait_until(lambda: spill_files(root) == known_files(mgr))
    assert mgr.policy.writes_in_flight == 0 and mgr.restores.in_flight == 0
    # The work can be done again, and everything is still readable (a get of
    # the object whose restore was cancelled asks again: the first get wakes too).
    assert await mgr.make_room(4 * SIZE) > 0 and store.largest_free >= 4 * SIZE
    for o in sorted(store.objects):
        assert await store.get(o) == data(int.from_bytes(o, "big"))
    if get is not None:
        async with asyncio.timeout(5):
            assert await get == data(0)
    for o in list(store.objects):
        store.delete(o)


async def _finish(task: asyncio.Task[object], cancel: bool) -> None:
    if cancel:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        await task


CASES = pytest.mark.parametrize(
    ("setup", "work"),
    [(_full, _make_room), (_two_spilled_and_full, _restore)],
    ids=["make_room", "restore"],
)


@CASES
async def test_cancel_at_every_backend_step(tmp_path: Path, setup: Setup, work: Work) -> None:
    cancelled = 0
    for k in itertools.count(1):
        root = tmp_path / f"k{k}"
        async with _case(root) as (store, mgr, backend):
            await setup(store, mgr)
            backend.steps.clear()
            backend.cancel_at = k
            task, get = await _start(store, mgr, work)
            reached = asyncio.ensure_future(backend.reached.wait())
            await asyncio.wait([task, reached], return_when=asyncio.FIRST_COMPLETED)
            reached.cancel()
            finished = task.done()
            await _finish(task, cancel=not finished)
            steps = list(backend.steps)
            backend.cancel_at = None
            await _check_after_cancel(root, store, mgr, get)
        if finished:
            break
        cancelled += 1
    # make_room: two writes; restore: room made by a write, then one read.
    assert cancelled == 4, steps


@CASES
async def test_cancel_after_every_loop_turn(tmp_path: Path, setup: Setup, work: Work) -> None:
    cancelled = 0
    for k in range(400):
        root = tmp_path / f"k{k}"
        async with _case(root) as (store, mgr, _):
            await setup(store, mgr)
            task, get = await _start(store, mgr, work)
            for _ in range(k):
                if task.done():
                    break
                await asyncio.sleep(0)
            finished = task.done()
            await _finish(task, cancel=not finished)
            await _check_after_cancel(root, store, mgr, get)
        if finished:
            break
        cancelled += 1
    else:
        pytest.fail("the work never finished")
    assert cancelled >= 4
