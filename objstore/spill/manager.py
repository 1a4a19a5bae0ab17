"""The spill manager: the asyncio driver of the spill policy.

The node's object service tells it what happens to primaries (``sealed``,
``touched``, ``unheld``, ``deleted``, ``dropped``), forwards the store's
requests for room (``make_room``) and the gets that wait for a spilled object
(``restore``).  It reaches the store only through
:class:`objstore.plasma.api.Store`.  The decisions are
:mod:`objstore.spill.policy`'s; this module does the I/O:

* **Spilling.**  A create that finds no room (``make_room``) or primaries over
  ``spill.threshold`` of the arena (after a seal) start a batch.  A write has
  four steps: a synchronous start (lease the objects, ask owners that read
  them through their own mapping to let go, plan), the I/O (records built in
  a thread -- CRC-32, optional zstd -- and written as one fused file by the
  backend, straight from the store's memory), a synchronous finish (record
  the copies, tell the directory, free each object nobody holds: state
  SPILLED), and, for a create waiting for the room, a bounded wait for the
  owners' releases (``spill.unmap_wait_s``) once no other candidate can go.
  An object still held is freed when its last holder lets go (``unheld``),
  while memory is short.
* **Making room** goes on while candidates nobody holds remain: one found held
  becomes the most recently used (the next batch takes others), one found gone
  is forgotten; only when every candidate left is held does it wait for a
  release, and it gives up at ``spill.make_room_timeout_s``.
* **Restoring** is :mod:`objstore.spill.restore`'s (its room is made here too).
* **Deleting.**  Each file counts its live copies; the last one gone deletes
  the file (local or S3).  Files of an earlier run are removed at start, this
  run's at close.
* **Errors.**  A failed write (full disk, S3 refusing) leaves the objects in
  memory, is logged once per streak of failures, and makes further spills
  wait with exponential backoff; the create that needed the room hears of it
  through :attr:`SpillManager.last_error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from objstore.backoff import Backoff
from objstore.config import Config
from objstore.errors import ObjectLostError, ObjectNotFoundError, ObjectStoreError
from objstore.plasma.api import Entry, Lease, ObjectState, Store
from objstore.spill.backends.base import Buffer, SpillBackend, run_in_thread
from objstore.spill.files import SpillFiles
from objstore.spill.policy import Batch, SpillPolicy, SpillState
from objstore.spill.records import build_record
from objstore.spill.restore import Restorer
from objstore.spill.restore_queue import RestoreQueue
from objstore.spill.urls import SpillURL
from objstore.streak import FailureStreak
from objstore.tasks import TaskSet

__all__ = ["SpillManager"]

log = structlog.get_logger("objstore.spill")

_SPILLED = ObjectState.SPILLED


@dataclass(eq=False)
class _Write:
    """One write batch between its start and its finish.

    ``oids``, ``metas``, ``leases`` and ``views`` are parallel: the objects
    leased for the write, each with its metadata and a view of its memory.
    """

    batch_id: int
    oids: list[bytes] = field(default_factory=list)
    metas: list[bytes] = field(default_factory=list)
    leases: list[Lease] = field(default_factory=list)
    views: list[memoryview] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


class SpillManager:
    """Spills primaries under memory pressure and restores them on demand."""

    def __init__(
        self,
        store: Store,
        config: Config,
        backend: SpillBackend,
        on_spilled: Callable[[bytes, str], None] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.backend = backend
        self.on_spilled = on_spilled
        sc = self._sc = config.spill
        self.policy = SpillPolicy.from_config(store.capacity, sc)
        self.files = SpillFiles()
        # object id -> its spill copy; every id here is in `files` (and the other
        # way round), and is a primary the store's table holds (in memory or SPILLED).
        self.copies: dict[bytes, SpillURL] = {}
        # Objects whose memory this manager freed (SPILLED now) -> their size.
        # Invariant: spilled_bytes == sum of the sizes; every id here is in `copies`.
        self._spilled: dict[bytes, int] = {}
        self.spilled_bytes = 0
        # Background spills and restores (cancelled at close); file deletions
        # (awaited at close, not cancelled).
        self._tasks = TaskSet("spill")
        self._deletes = TaskSet("spill-delete")
        self._restorer = Restorer(store, backend, sc, self.make_room, self._restored, self._tasks)
        # Objects a batch chose that were still held (a reader, or the owner's
        # mapping): freed as soon as they are let go, while memory is short.
        # Every id here is COPIED or FREEING in the policy, or gone from it.
        self._awaiting: set[bytes] = set()
        self._background: asyncio.Task[None] | None = None
        # Set whenever memory is freed by a spill (makers of room look again).
        self._freed = asyncio.Event()
        self._room_waiters = 0
        # Failed writes: one warning per streak, and no new write before _not_before.
        self._streak = FailureStreak(
            log,
            "spilling failed; objects stay in memory, retrying with backoff",
            "spilling works again",
            first=sc.write_backoff_first_s,
            maximum=sc.write_backoff_max_s,
        )
        self._not_before = 0.0
        self._last_error: ObjectStoreError | None = None
        self._closed = False
        self._deletes_closed = False
        # Counters (``status``).
        self.objects_written = 0
        self.bytes_written = 0
        self.files_written = 0
        self.files_deleted = 0
        self.write_errors = 0

    # ------------------------------------------------------------ life
    async def start(self) -> None:
        """Prepare the backend and remove the files an earlier run left."""
        removed = await self.backend.start()
        if removed:
            log.info(
                "spill files of an earlier run removed", files=removed, backend=repr(self.backend)
            )

    async def close(self) -> None:
        """Stop spilling and restoring; delete this run's files (bounded); close the backend.

        Callers of :meth:`make_room` are the node's (creates): they end before this.
        """
        self._closed = True
        self._restorer.close()
        await self._tasks.close()
        self._restorer.close()  # what a restore finished while being cancelled
        # The objects die with the node: so do their files (an unclean exit
        # leaves them to the next start's cleanup).  Deletions already on
        # their way finish too.
        for base in self.files.files():
            self._spawn_delete(base)
        if len(self._deletes):
            try:
                async with asyncio.timeout(self._sc.shutdown_delete_timeout_s):
                    await self._deletes.drain()
            except TimeoutError:
                log.warning("spill files not all deleted at shutdown", files=len(self._deletes))
        self._deletes_closed = True
        await self._deletes.close()
        await self.backend.close()

    # ------------------------------------------------------------ the object service's calls
    def sealed(self, oid: bytes, entry: Entry) -> None:
        """A primary was sealed in the arena: a candidate to spill."""
        if self._closed or oid in self.policy or not entry.primary or entry.segment != 0:
            return
        self.policy.add(oid, entry.size, has_copy=oid in self.copies)
        self._maybe_spill_in_background()

    def touched(self, oid: bytes, entry: Entry) -> None:
        """A client reads a primary: it becomes the most recently used."""
        if oid in self.policy:
            self.policy.touch(oid)
        self._restorer.touched(oid)

    def unheld(self, oid: bytes, entry: Entry) -> None:
        """A sealed primary's last pin, lease or mapping went."""
        # An object a batch chose, let go of at last: free it if memory is short.
        # (Others stay: which to free is the policy's choice, least recently used.)
        if (
            oid in self._awaiting
            and oid in self.copies
            and oid in self.policy
            and self.policy.state(oid) is SpillState.COPIED
            and (self._room_waiters or self.policy.need())
            and self.store.sealed(oid) is not None
        ):
            self._free(oid)

    def deleted(self, oid: bytes, entry: Entry) -> None:
        """A delete reached the object, maybe still held: it is no candidate any more."""
        if oid in self.policy:
            self.policy.remove(oid)
        self._awaiting.discard(oid)
        self._restorer.cancel(oid)

    def dropped(self, oid: bytes, entry: Entry) -> None:
        """The object left the store's table: its spill copy goes (and its file, if last)."""
        if oid in self.policy:
            self.policy.remove(oid)
        self._awaiting.discard(oid)
        self._restorer.cancel(oid)
        self.spilled_bytes -= self._spilled.pop(oid, 0)
        if self.copies.pop(oid, None) is None:
            return
        gone = self.files.release(oid)
        if gone is not None:
            self._spawn_delete(gone)

    def restore(self, oid: bytes) -> None:
        """A get waits for a SPILLED object: read it back (once however many gets wait)."""
        if self._closed:
            return
        entry = self.store.entry(oid)
        if entry is None or entry.state is not _SPILLED:
            return
        url = self.copies.get(oid)
        if url is None:
            self.store.fail_waiters(
                oid, ObjectLostError(f"object {oid.hex()} is spilled but its copy is unknown")
            )
            return
        self._restorer.request(oid, url)

    def _restored(self, oid: bytes, entry: Entry) -> None:
        """The restorer made ``oid`` readable again; its copy stays valid."""
        self.spilled_bytes -= self._spilled.pop(oid, 0)
        if not self._closed and oid not in self.policy:
            self.policy.add(oid, entry.size, has_copy=oid in self.copies)

    # ------------------------------------------------------------ making room
    async def make_room(self, nbytes: int) -> int:
        """Spill until a free block of ``nbytes`` exists (the store asks, for a create
        or a restore).

        Returns the bytes freed (at least 1 when the room is there), 0 when
        nothing more could go (everything held, writes failing, the deadline
        passed): the store then tries its fallback.
        """
        store = self.store
        freed = 0
        # Objects this call gave back held (now the most recently used): when a
        # batch holds only these, every candidate left is held.
        seen_held: set[bytes] = set()
        self._room_waiters += 1
        try:
            async with asyncio.timeout(self._sc.make_room_timeout_s):
                while store.largest_free < nbytes and not self._closed:
                    await self._wait_backoff()
                    batch = self.policy.next_batch(extra=nbytes, force=True)
                    log.debug(
                        "make room",
                        need=nbytes,
                        largest_free=store.largest_free,
                        batch=batch and (len(batch.write), len(batch.free_only)),
                        writes=self.policy.writes_in_flight,
                    )
                    if batch is None:
                        if not self.policy.writes_in_flight:
                            break  # no candidate left
                        # Another write is in flight: what it frees may be enough.
                        await self._wait_unmaps(nbytes)
                        continue
                    got, held, gone = self._free_batch(batch.free_only)
                    if batch.write:
                        # Those still held keep their place: a later batch hands them
                        # out again, to free only (or to give back if still held).
                        got += (await self._write(batch))[0]
                    freed += got
                    if got or batch.write or gone or not held <= seen_held:
                        # Candidates nobody holds may remain: the next batch takes
                        # them (the held ones are the most recently used now).
                        seen_held |= held
                        continue
                    # Every candidate left is held: by views whose release may be on
                    # its way, or by owners just asked to let go.  Wait a little.
                    if not await self._wait_unmaps(nbytes):
                        break
        except TimeoutError:
            log.debug("making room timed out", needed=nbytes, freed=freed)
        except ObjectStoreError as exc:
            log.debug("spilling could not make room", needed=nbytes, error=str(exc))
        finally:
            self._room_waiters -= 1
            if not self._room_waiters and not self.policy.need():
                self._awaiting.clear()  # memory is not short any more
        if store.largest_free >= nbytes:
            return max(1, freed)
        return freed

    async def _wait_freed(self, timeout: float) -> bool:
        """Wait until a spill frees memory, at most ``timeout`` s; whether one did."""
        self._freed.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._freed.wait()
        except TimeoutError:
            return False
        return True

    async def _wait_backoff(self) -> None:
        delay = self._not_before - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def _maybe_spill_in_background(self) -> None:
        if self.policy.need() and self._background is None and not self._closed:
            self._background = self._tasks.spawn(self._spill_over_threshold(), name="spill")

    async def _spill_over_threshold(self) -> None:
        """Background spilling while primaries are over the threshold."""
        try:
            while not self._closed and self.policy.need():
                await self._wait_backoff()
                batch = self.policy.next_batch()
                if batch is None:
                    if not self.policy.writes_in_flight:
                        return
                    await self._wait_freed(self._sc.unmap_wait_s)
                    continue
                freed, _, gone = self._free_batch(batch.free_only)
                if batch.write:
                    freed += (await self._write(batch))[0]
                if not freed and not batch.write and not gone:
                    return  # everything handed out is held: wait for the next seal or release
        except ObjectStoreError:
            pass  # logged where it happened; the next seal tries again after the backoff
        finally:
            self._background = None

    def _free_batch(self, oids: tuple[bytes, ...]) -> tuple[int, set[bytes], int]:
        """Free objects that have a copy already; give back those still held.

        Returns (bytes freed, the objects held, how many were gone).  A held
        one becomes the most recently used candidate, and is freed by
        ``unheld`` when its holders let go while memory is still short.
        """
        freed = gone = 0
        held: set[bytes] = set()
        store = self.store
        for oid in oids:
            if store.sealed(oid) is None:  # deleted or freed meanwhile: not a candidate
                self.policy.remove(oid)
                self._awaiting.discard(oid)
                gone += 1
            elif store.held(oid):
                self.policy.cancel(oid)
                self._awaiting.add(oid)
                held.add(oid)
            else:
                freed += self._free(oid)
        if held:
            store.invalidate_mappings(sorted(held))
        return freed, held, gone

    def _free(self, oid: bytes) -> int:
        """Free a written object's memory (sealed, with a copy, held by nobody)."""
        n = self.store.free_spilled(oid)
        self._awaiting.discard(oid)
        self.policy.remove(oid)
        self._spilled[oid] = n
        self.spilled_bytes += n
        self._freed.set()
        return n

    # ------------------------------------------------------------ writing
    async def _write(self, batch: Batch) -> tuple[int, list[bytes]]:
        """Write ``batch.write`` as one fused file; free what nobody holds.

        Returns the bytes freed and the objects written that are still held
        (freed by ``unheld`` when let go, while memory is short: a maker of
        room waits for that with :meth:`_wait_unmaps`).
        """
        w = self._start_write(batch)
        if not w.oids:  # every one of them went meanwhile
            self.policy.written(w.batch_id, ok=True)
            return 0, []
        try:
            base, offsets, total = await self._write_io(w)
        except BaseException as exc:
            self._abort_write(w, exc)
            raise
        return self._finish_write(w, base, offsets, total)

    def _start_write(self, batch: Batch) -> _Write:
        """Lease the objects, ask owners reading them through their mapping to let go."""
        store = self.store
        w = _Write(batch.batch_id)
        try:
            for oid in batch.write:
                try:
                    lease = store.lease(oid)
                except ObjectNotFoundError:
                    self.policy.remove(oid)  # not sealed any more: nothing to write
                    continue
                w.leases.append(lease)
                w.oids.append(oid)
                w.metas.append(bytes(lease.entry.meta))
                w.views.append(store.view(lease.entry))
        except BaseException:
            self._release(w)
            self.policy.written(w.batch_id, ok=False)
            raise
        # Owners reading through their own mapping: let go (answered during the write).
        store.invalidate_mappings(w.oids)
        return w

    async def _write_io(self, w: _Write) -> tuple[str, list[tuple[int, int]], int]:
        """Build the records (in a thread) and write them: (base URL, record ranges, bytes)."""
        parts, offsets, total = await run_in_thread(self._build, w)
        base = await self.backend.write(parts, total)
        return base, offsets, total

    def _build(self, w: _Write) -> tuple[list[Buffer], list[tuple[int, int]], int]:
        """(In a thread) the records' buffers, each record's (offset, size), the total."""
        parts: list[Buffer] = []
        offsets: list[tuple[int, int]] = []
        pos = 0
        level = self._sc.compression
        for oid, meta, view in zip(w.oids, w.metas, w.views, strict=True):
            bufs = build_record(oid, meta, view, level)
            n = sum(memoryview(b).nbytes for b in bufs)
            parts.extend(bufs)
            offsets.append((pos, n))
            pos += n
        return parts, offsets, pos

    def _abort_write(self, w: _Write, exc: BaseException) -> None:
        """The write failed or was cancelled: the objects are candidates again."""
        self._release(w)
        self.policy.written(w.batch_id, ok=False)
        if isinstance(exc, ObjectStoreError):
            self.write_errors += 1
            self._last_error = exc
            delay = self._streak.failed(exc, objects=len(w.oids), backend=repr(self.backend))
            self._not_before = time.monotonic() + delay

    def _finish_write(
        self, w: _Write, base: str, offsets: list[tuple[int, int]], total: int
    ) -> tuple[int, list[bytes]]:
        """Record the copies, then free the objects nobody holds: (bytes freed, held ones)."""
        self._streak.ok()
        self._not_before = 0.0
        self._last_error = None
        log.debug(
            "spilled",
            objects=len(w.oids),
            bytes=total,
            file=base,
            seconds=round(time.monotonic() - w.started, 4),
        )
        # Objects deleted during the write are not in `live`: their records are dead.
        live = self.policy.written(w.batch_id, ok=True)
        self.files_written += 1
        self.objects_written += len(w.oids)
        self.bytes_written += total
        if not self.files.add_file(base, live):
            self._spawn_delete(base)
        live_set = set(live)
        for oid, (off, size) in zip(w.oids, offsets, strict=True):
            if oid in live_set:
                self.copies[oid] = SpillURL(base, off, size)
        self._release(w)
        if self.on_spilled is not None:
            for oid in live:
                self.on_spilled(oid, str(self.copies[oid]))
        store = self.store
        freed = 0
        held: list[bytes] = []
        for oid in live:
            # Freed by `unheld` as the leases went, or deleted: nothing to do.
            if oid not in self.policy or self.policy.state(oid) is not SpillState.COPIED:
                continue
            if store.sealed(oid) is None:
                continue
            if store.held(oid):
                held.append(oid)
                self._awaiting.add(oid)
            else:
                freed += self._free(oid)
        return freed, held

    def _release(self, w: _Write) -> None:
        """Let go of a write's views, then of its leases."""
        for view in w.views:
            with contextlib.suppress(BufferError):
                view.release()
        w.views.clear()
        for lease in w.leases:
            lease.release()
        w.leases.clear()

    async def _wait_unmaps(self, need: int) -> bool:
        """Wait (``spill.unmap_wait_s`` at most) for holders of written objects to let
        go -- owners answering the invalidation, views released -- until a block of
        ``need`` bytes exists.  Returns whether memory was freed meanwhile."""
        deadline = time.monotonic() + self._sc.unmap_wait_s
        freed = False
        while self.store.largest_free < need:
            left = deadline - time.monotonic()
            if left <= 0 or not await self._wait_freed(left):
                break
            freed = True
        return freed

    @property
    def last_error(self) -> ObjectStoreError | None:
        """The error of the last spill write, while writes keep failing."""
        return self._last_error

    # ------------------------------------------------------------ files
    def _spawn_delete(self, base: str) -> None:
        if not self._deletes_closed:  # else the next start of the node deletes it
            self._deletes.spawn(self._delete_file(base), name="spill-delete")

    async def _delete_file(self, base: str) -> None:
        backoff = Backoff(self._sc.restore_retry_first_s, self._sc.restore_retry_max_s)
        while True:
            try:
                await self.backend.delete(base)
            except ObjectStoreError as exc:
                if backoff.failures >= self._sc.restore_retries:
                    log.warning("cannot delete a spill file", file=base, error=str(exc))
                    return
                await asyncio.sleep(backoff.failed())
            else:
                self.files_deleted += 1
                return

    # ------------------------------------------------------------ views
    @property
    def restores(self) -> RestoreQueue:
        """The restores pending and in flight."""
        return self._restorer.queue

    @property
    def spilled_objects(self) -> int:
        """Objects whose memory a spill freed (SPILLED now)."""
        return len(self._spilled)

    @property
    def tasks(self) -> int:
        """Background tasks running (spills, restores, file deletions)."""
        return len(self._tasks) + len(self._deletes)

    def stats(self) -> dict[str, int]:
        """Counters for ``status``."""
        r = self._restorer
        return {
            "spilled_objects": self.spilled_objects,
            "spilled_bytes": self.spilled_bytes,
            "spill_files": len(self.files),
            "objects_written": self.objects_written,
            "bytes_written": self.bytes_written,
            "files_written": self.files_written,
            "files_deleted": self.files_deleted,
            "restored": r.restored,
            "bytes_restored": r.bytes_restored,
            "write_errors": self.write_errors,
            "restore_errors": r.restore_errors,
        }

    def url_of(self, oid: bytes) -> str:
        """The spill URL of an object's copy, or ""."""
        url = self.copies.get(oid)
        return str(url) if url is not None else ""

    def copies_snapshot(self) -> list[tuple[bytes, str]]:
        """(id, URL) of every spill copy (the directory's full reports)."""
        return [(oid, str(url)) for oid, url in self.copies.items()]
