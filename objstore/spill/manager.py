"""The spill manager: the asyncio driver of the spill policy.

It is the store's :class:`~objstore.plasma.store.Spiller` and its
``spill_hook``.  The decisions are :mod:`objstore.spill.policy`'s; this module
does the I/O:

* **Spilling.**  A create that finds no room (``make_room``) or primaries over
  ``spill.threshold`` of the arena (after a seal) start a batch: the objects
  are pinned, owners that read them through their own mapping are asked to
  let go (an invalidation; their release comes back while the file is being
  written), the records are built in a thread (CRC-32, optional zstd) and
  written as one fused file by the backend, straight from the arena.  Then
  each object nobody holds is freed (state SPILLED); one still held is freed
  when its last holder lets go, if memory is still short.
* **Restoring.**  A get of a spilled object asks for a restore (one however
  many gets wait); pending restores are taken together, grouped by file, and
  records that follow each other in a file are read with one call.  Each is
  read straight into new arena space, checked (header, CRC) in a thread, and
  made readable again; its spill copy stays valid, so spilling it again only
  frees memory.  A corrupt or missing record fails the waiting gets with
  :class:`~objstore.errors.ObjectLostError`; a transient error is retried.
* **Deleting.**  Each file counts its live copies; the last one gone deletes
  the file (local or S3).  Files of an earlier run are removed at start.
* **Errors.**  A failed write (full disk, S3 refusing) leaves the objects in
  memory, is logged once per streak of failures, and makes further spills
  wait with exponential backoff; the create that needed the room gets the
  error (:class:`~objstore.errors.OutOfDiskError`) if the fallback cannot
  take it either.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from objstore.config import Config
from objstore.errors import ObjectLostError, ObjectStoreError
from objstore.plasma.lifecycle import ObjectState
from objstore.plasma.store import ClientState, ObjectEntry, PlasmaStore
from objstore.spill.backend import SpillBackend, SpillCorruptError, SpillIOError, SpillURL
from objstore.spill.fused import (
    HEADER_SIZE,
    build_record,
    decode_header,
    decompress_into,
    record_size,
    verify,
)
from objstore.spill.policy import (
    RestoreGroup,
    RestoreItem,
    RestoreQueue,
    SpillFiles,
    SpillPolicy,
    SpillState,
)

__all__ = ["SpillManager"]

log = structlog.get_logger("objstore.spill")

_SEALED = ObjectState.SEALED
_SPILLED = ObjectState.SPILLED

# How long a create that spilled waits for owners to let go of what was written.
_UNMAP_WAIT_S = 2.0
# Bytes of restores handed out at once (records of one file read together).
_RESTORE_GROUP_BYTES = 256 * 1024 * 1024
# Restores of one object retried on transient errors, with these pauses.
_RESTORE_RETRIES = (0.05, 0.25, 1.0, 2.0)
# Backoff after a failed spill write: first, then doubled up to the last.
_BACKOFF_S = (0.1, 5.0)


class _Copy:
    """Where an object's spill copy is: its file and the record's range."""

    __slots__ = ("base", "offset", "size")

    def __init__(self, base: str, offset: int, size: int) -> None:
        self.base = base
        self.offset = offset
        self.size = size

    def url(self) -> str:
        return str(SpillURL(self.base, self.offset, self.size))


class SpillManager:
    """Spills primaries under memory pressure and restores them on demand."""

    def __init__(
        self,
        store: PlasmaStore,
        config: Config,
        backend: SpillBackend,
        on_spilled: Callable[[bytes, str], None] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.backend = backend
        self.on_spilled = on_spilled
        sc = config.spill
        self.compress_level = sc.compression
        self.policy = SpillPolicy.from_config(store.capacity, sc)
        self.files = SpillFiles()
        self.restores = RestoreQueue()
        # object id -> its spill copy; every id here is in `files` (and the other
        # way round), and is a primary in the store's table.
        self.copies: dict[bytes, _Copy] = {}
        # Pins objects while their records are written (so no delete frees them).
        self._pins = ClientState(-2, lambda ids: None)
        # Restored objects held for the gets that asked for them, until one of
        # them pins it (or a second passes): else the next spill could free
        # it again before they read it.
        self._fresh: dict[bytes, asyncio.TimerHandle] = {}
        # Objects a batch chose that were still held (a reader, or the owner's
        # mapping): freed as soon as they are let go, while memory is short.
        self._awaiting: set[bytes] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        # File deletions in flight: awaited, not cancelled, at close.
        self._deletes: set[asyncio.Task[Any]] = set()
        self._background: asyncio.Task[None] | None = None
        self._restore_kick = False
        # Set whenever memory is freed by a spill (creates waiting for room look again).
        self._freed = asyncio.Event()
        self._room_waiters = 0
        # Failed writes: no new write before this loop time; failures in a row.
        self._not_before = 0.0
        self._failures = 0
        self._last_error: ObjectStoreError | None = None
        self._closed = False
        # Counters (``status``).
        self.spilled_objects = 0  # objects in state SPILLED now
        self.spilled_bytes = 0  # their bytes
        self.objects_written = 0
        self.bytes_written = 0
        self.files_written = 0
        self.files_deleted = 0
        self.restored = 0
        self.bytes_restored = 0
        self.write_errors = 0
        self.restore_errors = 0

    # ------------------------------------------------------------ life
    async def start(self) -> None:
        """Prepare the backend and remove the files an earlier run left."""
        removed = await self.backend.start()
        if removed:
            log.info(
                "spill files of an earlier run removed", files=removed, backend=repr(self.backend)
            )
        self.store.spiller = self
        self.store.spill_hook = self.make_room

    async def close(self) -> None:
        self._closed = True
        self.store.spill_hook = None
        self.store.spiller = None
        for timer in self._fresh.values():
            timer.cancel()
        self._fresh.clear()
        tasks = list(self._tasks)
        if self._background is not None:
            tasks.append(self._background)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        # The objects die with the node: so do their files (an unclean exit
        # leaves them to the next start's cleanup).  Deletions already on
        # their way finish too.
        files = self.files.files()
        pending = list(self._deletes)
        if files or pending:
            try:
                async with asyncio.timeout(10.0):
                    await asyncio.gather(
                        *pending,
                        *(self.backend.delete(f) for f in files),
                        return_exceptions=True,
                    )
            except TimeoutError:
                log.warning(
                    "spill files not all deleted at shutdown", files=len(files) + len(pending)
                )
        await self.backend.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        tasks = self._deletes if name == "spill-delete" else self._tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    # ------------------------------------------------------------ the store's calls
    def sealed(self, oid: bytes, entry: ObjectEntry) -> None:
        if oid in self.policy:
            return
        self.policy.add(oid, entry.size, has_copy=oid in self.copies)
        if self.policy.need() and self._background is None and not self._closed:
            self._background = asyncio.get_running_loop().create_task(
                self._spill_over_threshold(), name="spill"
            )

    def touched(self, oid: bytes, entry: ObjectEntry) -> None:
        if oid in self.policy:
            self.policy.touch(oid)
        timer = self._fresh.get(oid)
        if timer is not None:
            # A get pins it now (right after this call): let go of it then.
            timer.cancel()
            self._fresh[oid] = asyncio.get_running_loop().call_later(0, self._unfresh, oid)

    def _unfresh(self, oid: bytes) -> None:
        self._fresh.pop(oid, None)
        if oid in self._pins.pinned:
            self.store.release(oid, self._pins)

    def unheld(self, oid: bytes, entry: ObjectEntry) -> None:
        # An object a batch chose, let go of at last: free it if memory is short.
        # (Others stay: which to free is the policy's choice, least recently used.)
        if (
            oid in self._awaiting
            and oid in self.copies
            and oid in self.policy
            and self.policy.state(oid) is SpillState.COPIED
            and (self._room_waiters or self.policy.need())
        ):
            self._free(oid, entry)

    def dropped(self, oid: bytes, entry: ObjectEntry) -> None:
        if oid in self.policy:
            self.policy.remove(oid)
        if entry.segment < 0:  # it was spilled (it is DELETED by now)
            self.spilled_objects -= 1
            self.spilled_bytes -= entry.size
        self.restores.cancel(oid)
        self._awaiting.discard(oid)
        copy = self.copies.pop(oid, None)
        if copy is None:
            return
        gone = self.files.release(oid)
        if gone is not None:
            self._spawn(self._delete_file(gone), "spill-delete")

    def restore(self, oid: bytes, entry: ObjectEntry) -> None:
        copy = self.copies.get(oid)
        if copy is None:
            self.store.fail_waiters(
                oid, ObjectLostError(f"object {oid.hex()} is spilled but its copy is unknown")
            )
            return
        new = self.restores.request(oid, copy.base, copy.offset, copy.size)
        if new and not self._restore_kick:
            self._restore_kick = True
            asyncio.get_running_loop().call_soon(self._start_restores)

    # ------------------------------------------------------------ spilling
    async def make_room(self, nbytes: int) -> int:
        """The store's ``spill_hook``: spill until a free block of ``nbytes`` exists.

        Returns the bytes freed (at least 1 when the room is there), 0 when
        nothing more could go (everything held, or writes failing): the store
        then tries its fallback.
        """
        freed = 0
        store = self.store
        self._room_waiters += 1
        try:
            deadline = time.monotonic() + 2 * _UNMAP_WAIT_S + self.config.transfer.pull_timeout_s
            while store.allocator.largest_free < nbytes and not self._closed:
                if time.monotonic() > deadline:
                    break
                await self._wait_backoff()
                batch = self.policy.next_batch(extra=nbytes, force=True)
                log.debug(
                    "make room",
                    need=nbytes,
                    largest_free=store.allocator.largest_free,
                    batch=batch and (len(batch.write), len(batch.free_only)),
                    writes=self.policy.writes_in_flight,
                )
                if batch is None:
                    if not self.policy.writes_in_flight:
                        break
                    # Another write is in flight: what it frees may be enough.
                    self._freed.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_UNMAP_WAIT_S):
                            await self._freed.wait()
                    continue
                self._freed.clear()
                got, held = self._free_batch(batch.free_only)
                if batch.write:
                    got += await self._write(batch.batch_id, batch.write, wait_unmap=True)
                freed += got
                if not got and not batch.write:
                    # Everything handed out is held: by views whose release may be
                    # on its way, or by owners just asked to let go.  Wait a little.
                    if not held:
                        break
                    try:
                        async with asyncio.timeout(_UNMAP_WAIT_S):
                            await self._freed.wait()
                    except TimeoutError:
                        break
        except ObjectStoreError as exc:
            log.debug("spilling could not make room", needed=nbytes, error=str(exc))
        finally:
            self._room_waiters -= 1
            if not self._room_waiters and not self.policy.need():
                self._awaiting.clear()  # memory is not short any more
        if store.allocator.largest_free >= nbytes:
            return max(1, freed)
        return freed

    async def _wait_backoff(self) -> None:
        delay = self._not_before - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _spill_over_threshold(self) -> None:
        """Background spilling while primaries are over the threshold."""
        try:
            while not self._closed and self.policy.need():
                await self._wait_backoff()
                batch = self.policy.next_batch()
                if batch is None:
                    if not self.policy.writes_in_flight:
                        return
                    await asyncio.sleep(0.01)
                    continue
                freed, _ = self._free_batch(batch.free_only)
                if batch.write:
                    freed += await self._write(batch.batch_id, batch.write, wait_unmap=False)
                if not freed and not batch.write:
                    return  # everything handed out is held: wait for the next seal or release
        except ObjectStoreError:
            pass  # logged where it happened; the next seal tries again after the backoff
        finally:
            self._background = None

    def _free_batch(self, oids: tuple[bytes, ...]) -> tuple[int, int]:
        """Free objects that have a copy already; cancel those still held.

        Returns (bytes freed, objects held): a held one is freed by ``unheld``
        when its holders let go while memory is still short.
        """
        freed = held = 0
        store = self.store
        for oid in oids:
            entry = store.objects.get(oid)
            if entry is None or entry.state is not _SEALED:
                if oid in self.policy:
                    self.policy.cancel(oid)
                continue
            if store.held(entry):
                store.invalidate_mappings([oid])
                self.policy.cancel(oid)
                self._awaiting.add(oid)
                held += 1
                continue
            freed += self._free(oid, entry)
        return freed, held

    def _free(self, oid: bytes, entry: ObjectEntry) -> int:
        """Free a written object's memory (it must not be held)."""
        self._awaiting.discard(oid)
        self.policy.remove(oid)
        n = self.store.free_spilled(oid, entry)
        self.spilled_objects += 1
        self.spilled_bytes += n
        self._freed.set()
        return n

    async def _write(self, batch_id: int, oids: tuple[bytes, ...], wait_unmap: bool) -> int:
        """Write one fused file of ``oids``; free those nobody holds.  Returns the bytes freed."""
        store = self.store
        entries: list[tuple[bytes, ObjectEntry]] = []
        for oid in oids:
            entry = store.objects[oid]
            store.pin(oid, entry, self._pins, count=False)
            entries.append((oid, entry))
        # Owners reading through their own mapping: let go (answered during the write).
        store.invalidate_mappings(oids)
        t0 = time.monotonic()
        try:
            try:
                parts, offsets, total = await asyncio.to_thread(self._build, entries)
                base = await self.backend.write(parts, total)
            except ObjectStoreError as exc:
                self._write_failed(exc, len(oids))
                self.policy.written(batch_id, ok=False)
                raise
            except BaseException:
                self.policy.written(batch_id, ok=False)
                raise
            self._write_ok()
            log.debug(
                "spilled",
                objects=len(entries),
                bytes=total,
                file=base,
                seconds=round(time.monotonic() - t0, 4),
            )
            live = self.policy.written(batch_id, ok=True)
            self.files_written += 1
            self.objects_written += len(entries)
            self.bytes_written += total
            if live:
                self.files.add_file(base, live)
            else:
                self._spawn(self._delete_file(base), "spill-delete")
            live_set = set(live)
            for (oid, _entry), (off, size) in zip(entries, offsets, strict=True):
                if oid in live_set:
                    copy = self.copies[oid] = _Copy(base, off, size)
                    if self.on_spilled is not None:
                        self.on_spilled(oid, copy.url())
        finally:
            for oid, entry in entries:
                if oid in store.objects:
                    store.release(oid, self._pins)
        freed = 0
        held: list[bytes] = []
        for oid in live:
            current = store.objects.get(oid)
            if current is None or current.state is not _SEALED or oid not in self.policy:
                continue
            if store.held(current):
                held.append(oid)
                self._awaiting.add(oid)
            elif self.policy.state(oid) is SpillState.COPIED:
                freed += self._free(oid, current)
        if held and wait_unmap:
            # Owners answer the invalidation with a release; `unheld` frees then.
            deadline = time.monotonic() + _UNMAP_WAIT_S
            while time.monotonic() < deadline:
                still = [
                    o
                    for o in held
                    if (e := store.objects.get(o)) is not None and e.state is _SEALED
                ]
                if not still:
                    break
                self._freed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        await self._freed.wait()
            freed += sum(
                e.size
                for o in held
                if (e := store.objects.get(o)) is not None and e.state is _SPILLED
            )
        return freed

    def _build(
        self, entries: list[tuple[bytes, ObjectEntry]]
    ) -> tuple[list[Any], list[tuple[int, int]], int]:
        """(In a thread) the records' buffers, each record's (offset, size), the total."""
        parts: list[Any] = []
        offsets: list[tuple[int, int]] = []
        pos = 0
        store = self.store
        for oid, entry in entries:
            bufs = build_record(oid, entry.meta, store.view(entry), self.compress_level)
            n = sum(memoryview(b).nbytes for b in bufs)
            parts.extend(bufs)
            offsets.append((pos, n))
            pos += n
        return parts, offsets, pos

    def _write_failed(self, exc: ObjectStoreError, n: int) -> None:
        self.write_errors += 1
        self._failures += 1
        self._last_error = exc
        lo, hi = _BACKOFF_S
        delay = min(hi, lo * 2 ** (self._failures - 1))
        self._not_before = time.monotonic() + delay
        if self._failures == 1:
            log.warning(
                "spilling failed; objects stay in memory, retrying with backoff",
                error=str(exc),
                objects=n,
                backend=repr(self.backend),
            )
        else:
            log.debug("spilling failed again", error=str(exc), failures=self._failures)

    def _write_ok(self) -> None:
        if self._failures:
            log.info("spilling works again", failures=self._failures)
        self._failures = 0
        self._not_before = 0.0
        self._last_error = None

    @property
    def last_error(self) -> ObjectStoreError | None:
        """The error of the last spill write, while writes keep failing."""
        return self._last_error

    # ------------------------------------------------------------ restoring
    def _start_restores(self) -> None:
        self._restore_kick = False
        if self._closed:
            return
        for group in self.restores.take(_RESTORE_GROUP_BYTES):
            self._spawn(self._restore_group(group), "restore")

    async def _restore_group(self, group: RestoreGroup) -> None:
        """Restore the objects of one file: consecutive records read with one call."""
        runs: list[list[RestoreItem]] = []
        for item in group.items:
            if runs and runs[-1][-1].offset + runs[-1][-1].size == item.offset:
                runs[-1].append(item)
            else:
                runs.append([item])
        await asyncio.gather(*(self._restore_run(group.file_key, run) for run in runs))

    async def _restore_run(self, base: str, run: list[RestoreItem]) -> None:
        store = self.store
        # Space first (a restore may spill others to make it); then one read.
        spaces: list[tuple[RestoreItem, ObjectEntry, tuple[int, int]]] = []
        try:
            for item in run:
                entry = store.objects.get(item.object_id)
                if entry is None or entry.state is not _SPILLED:
                    log.debug(
                        "restore skipped",
                        object_id=item.object_id.hex(),
                        state=entry.state.name if entry else None,
                    )
                    self.restores.done(item.object_id)
                    continue
                got = await store.allocate(entry.size)
                spaces.append((item, entry, got))
            errors: list[SpillCorruptError | None] = []
            for delay in (*_RESTORE_RETRIES, None):
                try:
                    errors = await self._read_run(base, spaces)
                    break
                except SpillIOError as exc:
                    if delay is None:
                        raise
                    log.debug("restore failed; retrying", error=str(exc), file=base)
                    await asyncio.sleep(delay)
        except BaseException as exc:
            for _, entry, got in spaces:
                store.free_allocation(got, entry.size)
            for item in run:
                if self.restores.is_in_flight(item.object_id):
                    self.restores.done(item.object_id)
                    if isinstance(exc, ObjectStoreError):
                        self._restore_failed(item.object_id, exc)
            if not isinstance(exc, ObjectStoreError):
                raise
            return
        for (item, entry, got), error in zip(spaces, errors, strict=True):
            self.restores.done(item.object_id)
            if error is not None:
                store.free_allocation(got, entry.size)
                self._restore_failed(item.object_id, error)
                continue
            current = store.objects.get(item.object_id)
            if current is not entry or entry.state is not _SPILLED:
                store.free_allocation(got, entry.size)  # deleted meanwhile
                continue
            self.spilled_objects -= 1
            self.spilled_bytes -= entry.size
            self.restored += 1
            self.bytes_restored += entry.size
            oid = item.object_id
            store.pin(oid, entry, self._pins, count=False)
            store.restored(oid, entry, got)
            old = self._fresh.pop(oid, None)
            if old is not None:
                old.cancel()
            self._fresh[oid] = asyncio.get_running_loop().call_later(1.0, self._unfresh, oid)

    async def _read_run(
        self, base: str, spaces: list[tuple[RestoreItem, ObjectEntry, tuple[int, int]]]
    ) -> list[SpillCorruptError | None]:
        """Read consecutive records into their new space and check each one.

        Returns each record's damage (None: intact).  A damaged record loses
        only its own object: when the read itself fails (a truncated or
        missing file), each record is read alone to tell which are intact.
        """
        if not spaces:
            return []
        store = self.store
        dests: list[memoryview] = []
        checks: list[tuple[RestoreItem, ObjectEntry, bytearray, memoryview, bytearray | None]] = []
        for item, entry, (segment, offset) in spaces:
            head = bytearray(HEADER_SIZE + len(entry.meta))
            target = memoryview(store.segments[segment].mm)[offset : offset + entry.size]
            if item.size == record_size(len(entry.meta), entry.size):
                stored = None
                dests += [memoryview(head), target]
            else:  # compressed: read the stored payload aside, then decompress
                stored = bytearray(item.size - len(head))
                dests += [memoryview(head), memoryview(stored)]
            checks.append((item, entry, head, target, stored))
        try:
            try:
                await self.backend.read_into(base, spaces[0][0].offset, dests)
            except SpillCorruptError as exc:
                if len(spaces) == 1:
                    return [exc]
                return [(await self._read_run(base, [one]))[0] for one in spaces]
            return await asyncio.to_thread(self._check_run, checks)
        finally:
            for _, _, _, target, _ in checks:
                with contextlib.suppress(BufferError):
                    target.release()

    @staticmethod
    def _check_run(
        checks: list[tuple[RestoreItem, ObjectEntry, bytearray, memoryview, bytearray | None]],
    ) -> list[SpillCorruptError | None]:
        errors: list[SpillCorruptError | None] = []
        for item, entry, head, target, stored in checks:
            try:
                header = decode_header(head, expect_oid=item.object_id, expect_size=item.size)
                meta = bytes(head[HEADER_SIZE:])
                if header.data_size != entry.size or meta != entry.meta:
                    raise SpillCorruptError(
                        f"spill record of object {item.object_id.hex()} does not match the "
                        f"object ({header.data_size} bytes, expected {entry.size})"
                    )
                if stored is not None:
                    decompress_into(header, stored, target)
                verify(header, meta, target)
            except SpillCorruptError as exc:
                errors.append(exc)
            else:
                errors.append(None)
        return errors

    def _restore_failed(self, oid: bytes, exc: ObjectStoreError) -> None:
        self.restore_errors += 1
        copy = self.copies.get(oid)
        where = copy.url() if copy is not None else "?"
        if isinstance(exc, SpillCorruptError):
            err: ObjectStoreError = ObjectLostError(
                f"object {oid.hex()} is lost: its spill copy at {where} is damaged ({exc})"
            )
        else:
            err = exc
        n = self.store.fail_waiters(oid, err)
        log.error("restore failed", object_id=oid.hex(), url=where, error=str(exc), gets=n)

    # ------------------------------------------------------------ files
    async def _delete_file(self, base: str) -> None:
        for delay in (*_RESTORE_RETRIES, None):
            try:
                await self.backend.delete(base)
                self.files_deleted += 1
                return
            except ObjectStoreError as exc:
                if delay is None:
                    log.warning("cannot delete a spill file", file=base, error=str(exc))
                    return
                await asyncio.sleep(delay)

    # ------------------------------------------------------------ views
    def stats(self) -> dict[str, int]:
        return {
            "spilled_objects": self.spilled_objects,
            "spilled_bytes": self.spilled_bytes,
            "spill_files": len(self.files),
            "objects_written": self.objects_written,
            "bytes_written": self.bytes_written,
            "files_written": self.files_written,
            "files_deleted": self.files_deleted,
            "restored": self.restored,
            "bytes_restored": self.bytes_restored,
            "write_errors": self.write_errors,
            "restore_errors": self.restore_errors,
        }

    def url_of(self, oid: bytes) -> str:
        """The spill URL of an object's copy, or ""."""
        copy = self.copies.get(oid)
        return copy.url() if copy is not None else ""
