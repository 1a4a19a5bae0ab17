"""Restoring spilled objects: reading their records back into the store for waiting gets.

A get of a spilled object asks for a restore (:meth:`Restorer.request`; one
however many gets wait).  Pending restores are taken together on the next
loop tick, grouped by file (:class:`~objstore.spill.restore_queue.RestoreQueue`),
and records that follow each other in a file are read with one call.  Each
object first gets room in the store -- made by spilling others when memory is
short, as a create makes it, within ``spill.make_room_timeout_s`` -- then its
record is read straight into that room, checked in a thread
(:func:`~objstore.spill.records.check_record`) and made readable again
(``Store.restored``).  Its spill copy stays valid, so spilling it again only
frees memory.

A damaged or missing record fails the gets of its own object only, with
:class:`~objstore.errors.ObjectLostError`; a transient error is retried
(``spill.restore_retries``, with backoff); running out of room fails the gets
with :class:`~objstore.errors.ObjectStoreFullError`.  A restored object is held
by a lease for a moment (until a get reads it, at most :data:`FRESH_HOLD_S`),
so that a spill does not free it again before the gets that asked for it run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from functools import partial

import structlog

from objstore.backoff import Backoff
from objstore.config import SpillConfig, format_size
from objstore.errors import ObjectLostError, ObjectStoreError, ObjectStoreFullError
from objstore.plasma.api import Entry, Lease, ObjectState, Space, Store
from objstore.spill.backends.base import SpillBackend, run_in_thread
from objstore.spill.errors import SpillCorruptError, SpillIOError
from objstore.spill.records import ReadPlan, check_record, read_plan
from objstore.spill.restore_queue import RestoreGroup, RestoreItem, RestoreQueue
from objstore.spill.urls import SpillURL
from objstore.tasks import TaskSet

__all__ = ["Restorer", "FRESH_HOLD_S"]

log = structlog.get_logger("objstore.spill")

FRESH_HOLD_S = 1.0
"""Longest a restored object stays leased for the gets that asked for it."""

_SPILLED = ObjectState.SPILLED

# One object of a run being restored: what to read, the object, its new room.
_Slot = tuple[RestoreItem, Entry, Space]


class Restorer:
    """Reads spilled objects back into ``store`` (see the module docstring).

    ``make_room(nbytes)`` spills to make room (the spill manager's);
    ``on_restored(oid, entry)`` is called for each object readable again;
    restores run as tasks of ``tasks`` (the manager closes it).
    """

    def __init__(
        self,
        store: Store,
        backend: SpillBackend,
        config: SpillConfig,
        make_room: Callable[[int], Awaitable[int]],
        on_restored: Callable[[bytes, Entry], None],
        tasks: TaskSet,
    ) -> None:
        self.store = store
        self.backend = backend
        self.config = config
        self._make_room = make_room
        self._on_restored = on_restored
        self._tasks = tasks
        self.queue = RestoreQueue()
        # Restored objects leased for the gets that asked for them, with the timer
        # that lets go.  Every lease here is held (released when it leaves).
        self._fresh: dict[bytes, tuple[Lease, asyncio.TimerHandle]] = {}
        self._kick: asyncio.Handle | None = None
        # Restore tasks spawned whose body has not started yet.
        self._unstarted: set[asyncio.Task[None]] = set()
        self._closed = False
        self.restored = 0
        self.bytes_restored = 0
        self.restore_errors = 0

    # ------------------------------------------------------------ calls
    def request(self, oid: bytes, url: SpillURL) -> None:
        """Restore ``oid`` from its record at ``url`` (nothing if one is on its way)."""
        if self._closed:
            return
        new = self.queue.request(oid, url.base, url.offset, url.size)
        if new and self._kick is None:
            self._kick = asyncio.get_running_loop().call_soon(self._start)

    def cancel(self, oid: bytes) -> None:
        """``oid`` was deleted: drop its pending restore and its lease."""
        self.queue.cancel(oid)
        self._unfresh(oid)

    def touched(self, oid: bytes) -> None:
        """A get reads ``oid`` (and holds it by its own pin): let go of it."""
        self._unfresh(oid)

    def close(self) -> None:
        """No more restores; let go of every restored object (the tasks are the manager's)."""
        self._closed = True
        if self._kick is not None:
            self._kick.cancel()
            self._kick = None
        for oid in list(self._fresh):
            self._unfresh(oid)

    def _unfresh(self, oid: bytes) -> None:
        held = self._fresh.pop(oid, None)
        if held is not None:
            lease, timer = held
            timer.cancel()
            lease.release()

    def _hold(self, oid: bytes) -> None:
        self._unfresh(oid)
        lease = self.store.lease(oid)
        timer = asyncio.get_running_loop().call_later(FRESH_HOLD_S, self._unfresh, oid)
        self._fresh[oid] = (lease, timer)

    # ------------------------------------------------------------ the work
    def _start(self) -> None:
        self._kick = None
        if self._closed:
            return
        for group in self.queue.take(self.config.restore_group_bytes):
            task = self._tasks.spawn(self._restore_group(group), name="spill-restore")
            self._unstarted.add(task)
            task.add_done_callback(partial(self._ended, group))

    def _ended(self, group: RestoreGroup, task: asyncio.Task[None]) -> None:
        # A task cancelled before its first step never ran its body: its restores
        # are still in flight.  (One that ran finished each of them itself.)
        if task in self._unstarted:
            self._unstarted.discard(task)
            for item in group.items:
                self.queue.done(item.object_id)

    async def _restore_group(self, group: RestoreGroup) -> None:
        """Restore the objects of one file: consecutive records read with one call."""
        self._unstarted.discard(asyncio.current_task())  # type: ignore[arg-type]
        runs: list[list[RestoreItem]] = []
        for item in group.items:
            if runs and runs[-1][-1].offset + runs[-1][-1].size == item.offset:
                runs[-1].append(item)
            else:
                runs.append([item])
        # The restores of this group not finished yet (each is finished exactly once):
        # a run's task cancelled before it started leaves its own here.
        owed = {item.object_id for item in group.items}
        try:
            await asyncio.gather(*(self._restore_run(group.file_key, run, owed) for run in runs))
        finally:
            for oid in owed:
                self.queue.done(oid)

    async def _allocate(self, oid: bytes, size: int) -> Space:
        """Room for one object, made by spilling others if need be, within the deadline."""
        timeout = self.config.make_room_timeout_s
        try:
            async with asyncio.timeout(timeout):
                if self.store.largest_free < size:
                    await self._make_room(size)
                return await self.store.allocate(size)
        except TimeoutError as exc:
            raise ObjectStoreFullError(
                f"no room to restore object {oid.hex()} ({format_size(size)}) within "
                f"{timeout:g} s: the largest free block is {format_size(self.store.largest_free)} "
                f"of {format_size(self.store.capacity)}"
            ) from exc

    async def _restore_run(self, base: str, run: list[RestoreItem], owed: set[bytes]) -> None:
        store = self.store
        slots: list[_Slot] = []
        try:
            # Room first (a restore may spill others to make it); then one read.
            for item in run:
                entry = store.entry(item.object_id)
                if entry is None or entry.state is not _SPILLED:
                    log.debug(
                        "restore skipped",
                        object_id=item.object_id.hex(),
                        state=entry.state.name if entry else None,
                    )
                    owed.discard(item.object_id)
                    self.queue.done(item.object_id)
                    continue
                space = await self._allocate(item.object_id, entry.size)
                slots.append((item, entry, space))
            errors = await self._read_with_retries(base, slots)
        except BaseException as exc:
            for _, _, space in slots:
                store.free_allocation(space)
            for item in run:
                oid = item.object_id
                if oid in owed:
                    owed.discard(oid)
                    self.queue.done(oid)
                    if isinstance(exc, ObjectStoreError):
                        self._failed(oid, base, exc)
            if not isinstance(exc, ObjectStoreError):
                raise
            return
        for (item, _, space), error in zip(slots, errors, strict=True):
            oid = item.object_id
            owed.discard(oid)
            self.queue.done(oid)
            if error is not None:
                store.free_allocation(space)
                self._failed(oid, base, error)
                continue
            current = store.entry(oid)
            if current is None or current.state is not _SPILLED:
                store.free_allocation(space)  # deleted meanwhile
                continue
            store.restored(oid, space)
            self.restored += 1
            self.bytes_restored += current.size
            self._on_restored(oid, current)
            if store.sealed(oid) is not None:
                self._hold(oid)

    async def _read_with_retries(
        self, base: str, slots: list[_Slot]
    ) -> list[SpillCorruptError | None]:
        backoff = Backoff(self.config.restore_retry_first_s, self.config.restore_retry_max_s)
        while True:
            try:
                return await self._read_run(base, slots)
            except SpillIOError as exc:
                if backoff.failures >= self.config.restore_retries:
                    raise
                log.debug("restore failed; retrying", error=str(exc), file=base)
                await asyncio.sleep(backoff.failed())

    async def _read_run(self, base: str, slots: list[_Slot]) -> list[SpillCorruptError | None]:
        """Read consecutive records into their new room and check each one.

        Returns each record's damage (None: intact).  A damaged record loses
        only its own object: when the read itself fails (a truncated or
        missing file), each record is read alone to tell which are intact.
        """
        if not slots:
            return []
        plans: list[ReadPlan] = []
        try:
            for item, entry, space in slots:
                plans.append(read_plan(item.size, len(entry.meta), self.store.space_view(space)))
            try:
                await self.backend.read_into(
                    base, slots[0][0].offset, [d for p in plans for d in p.dests]
                )
            except SpillCorruptError as exc:
                if len(slots) == 1:
                    return [exc]
                return [(await self._read_run(base, [one]))[0] for one in slots]
            return await run_in_thread(_check_run, slots, plans)
        finally:
            for plan in plans:
                with contextlib.suppress(BufferError):
                    plan.target.release()

    def _failed(self, oid: bytes, base: str, exc: ObjectStoreError) -> None:
        self.restore_errors += 1
        if isinstance(exc, SpillCorruptError):
            err: ObjectStoreError = ObjectLostError(
                f"object {oid.hex()} is lost: its spill copy in {base} is damaged ({exc})"
            )
        else:
            err = exc
        n = self.store.lost(oid, err)
        log.error("restore failed", object_id=oid.hex(), file=base, error=str(exc), gets=n)


def _check_run(slots: list[_Slot], plans: list[ReadPlan]) -> list[SpillCorruptError | None]:
    """(In a thread) check each record read back; its damage, or None."""
    errors: list[SpillCorruptError | None] = []
    for (item, entry, _), plan in zip(slots, plans, strict=True):
        try:
            check_record(
                item.object_id, item.size, plan.head, plan.target, plan.stored, meta=entry.meta
            )
        except SpillCorruptError as exc:
            errors.append(exc)
        else:
            errors.append(None)
    return errors
