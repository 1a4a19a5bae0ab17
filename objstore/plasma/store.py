"""The node's store: the object table and the memory, driven on the event loop.

:class:`PlasmaStore` is thin: the decisions are the pure
:class:`~objstore.plasma.table.ObjectTable`'s, the places in memory are
:class:`~objstore.plasma.memory.Memory`'s; the store applies the table's
:class:`~objstore.plasma.table.Actions`, keeps the gets that wait for an
object to be sealed, makes room for a create (evicting, then asking the
events' ``make_room`` to spill, then the disk fallback) and reports what
happens through the :class:`~objstore.plasma.api.StoreEvents` it was built
with.  A request that needs neither waiting nor room never suspends.

Gets that wait for an object are pinned for their client at the moment it is
sealed (or restored), so nothing can evict or spill it between the seal and
the get's reply.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType

from objstore.config import Config, format_size
from objstore.errors import (
    ObjectNotFoundError,
    ObjectStoreError,
    ObjectStoreFullError,
    OutOfDiskError,
)
from objstore.plasma.api import Entry, Space, StoreEvents
from objstore.plasma.arena import Arena, Segment
from objstore.plasma.lifecycle import ObjectState
from objstore.plasma.memory import Memory
from objstore.plasma.table import Actions, ClientState, ObjectEntry, ObjectTable

__all__ = ["PlasmaStore", "ClientState", "ObjectEntry", "NullEvents"]

_SEALED = ObjectState.SEALED


class NullEvents:
    """Events nobody listens to: a store on its own (tests, tools)."""

    def object_sealed(self, oid: bytes, entry: Entry, name: str) -> None: ...
    def object_read(self, oid: bytes, entry: Entry) -> None: ...
    def object_unheld(self, oid: bytes, entry: Entry) -> None: ...
    def object_deleted(self, oid: bytes, entry: Entry, by_directory: bool) -> None: ...
    def object_evicted(self, oid: bytes) -> None: ...
    def object_dropped(self, oid: bytes, entry: Entry) -> None: ...
    def object_aborted(self, oid: bytes, name: str) -> None: ...
    def object_lost(self, oid: bytes, exc: ObjectStoreError) -> ObjectStoreError | None:
        return exc

    def space_freed(self) -> None: ...

    async def make_room(self, nbytes: int) -> int:
        return 0

    def room_error(self) -> ObjectStoreError | None:
        return None


class _Waiter:
    """A get waiting for an object to be sealed here."""

    __slots__ = ("fut", "client", "entry")

    def __init__(self, fut: asyncio.Future[None], client: ClientState | None) -> None:
        self.fut = fut
        self.client = client
        # Set (and pinned for `client`) when the object was sealed for it.
        self.entry: ObjectEntry | None = None


class _Lease:
    """A pin of the node's own (see :class:`objstore.plasma.api.Lease`)."""

    __slots__ = ("_store", "_oid", "entry", "_live")

    def __init__(self, store: PlasmaStore, oid: bytes, entry: ObjectEntry) -> None:
        self._store = store
        self._oid = oid
        self.entry = entry
        self._live = True

    def release(self) -> None:
        if self._live:
            self._live = False
            self._store.unpin(self._oid, self._store.table.node)

    def __enter__(self) -> ObjectEntry:
        return self.entry

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class PlasmaStore:
    """The object table and the memory of one node; see the module docstring."""

    def __init__(self, config: Config, events: StoreEvents | None = None) -> None:
        self.config = config
        pc = config.plasma
        self.events: StoreEvents = events if events is not None else NullEvents()
        self.table = ObjectTable(pc.deleted_memory)
        self.memory = Memory(config)
        self.max_metadata = pc.max_metadata_bytes
        # object id -> gets waiting for it to be sealed here.
        self._waiters: dict[bytes, list[_Waiter]] = {}
        # Set when memory is given back while secondary creates wait for room.
        self._space = asyncio.Event()
        self._space_waiters = 0
        self.started = time.monotonic()

    # ------------------------------------------------------------ memory facts
    @property
    def capacity(self) -> int:
        return self.memory.capacity

    @property
    def arena(self) -> Arena:
        return self.memory.arena

    @property
    def used(self) -> int:
        """Bytes allocated in the arena."""
        return self.memory.used

    @property
    def largest_free(self) -> int:
        return self.memory.largest_free

    @property
    def free_bytes(self) -> int:
        return self.memory.free_bytes

    @property
    def pinned_bytes(self) -> int:
        return self.table.pinned_bytes

    @property
    def fallback_used(self) -> int:
        return self.memory.fallback_used

    @property
    def fallback_dir(self) -> str:
        return self.memory.fallback_dir

    def segment(self, segment_id: int) -> Segment | None:
        """A segment clients may map (0: the arena), or None."""
        return self.memory.segments.get(segment_id)

    # ------------------------------------------------------------ applying actions
    def _apply(self, out: Actions, by_directory: bool = False) -> None:
        """Do what the table asked for (see :class:`~objstore.plasma.table.Actions`)."""
        events = self.events
        memory = self.memory
        if out.unevictable:
            for oid in out.unevictable:
                memory.eviction.remove(oid)
        if out.evictable:
            for oid, size in out.evictable:
                memory.eviction.add(oid, memory.allocated_size(size))
        if out.deleted:
            for oid, entry in out.deleted:
                events.object_deleted(oid, entry, by_directory)
        if out.dropped:
            for oid, entry in out.dropped:
                events.object_dropped(oid, entry)
        if out.free:
            for segment, offset, size in out.free:
                memory.release(segment, offset, size)
            self._freed()
        if out.unheld:
            for oid, entry in out.unheld:
                events.object_unheld(oid, entry)
        if out.notify:
            for client, ids in out.notify.items():
                if not client.closed:
                    client.invalidate(ids)

    def _freed(self) -> None:
        if self._space_waiters:
            self._space.set()
        self.events.space_freed()

    def _evict(self, oid: bytes) -> None:
        out = Actions()
        self.table.evict(oid, out)
        self.events.object_evicted(oid)
        self._apply(out)

    # ------------------------------------------------------------ create
    def _check_create(
        self, oid: bytes, size: int, meta: bytes, name: str, client: ClientState | None
    ) -> None:
        self.table.precheck_create(oid, name, client)
        if size < 0:
            raise ObjectStoreError(f"an object size cannot be negative, got {size}")
        if len(meta) > self.max_metadata:
            raise ObjectStoreError(
                f"metadata of {format_size(len(meta))} ({len(meta)} bytes) is over the limit of "
                f"{format_size(self.max_metadata)} (plasma.max_metadata_bytes)"
            )

    def create_now(
        self,
        oid: bytes,
        size: int,
        meta: bytes,
        client: ClientState | None,
        name: str = "",
        primary: bool = True,
    ) -> ObjectEntry | None:
        """Create without waiting; None when room must be made first (see :meth:`create`)."""
        self._check_create(oid, size, meta, name, client)
        got = self.memory.allocate_now(size, self._evict)
        if got is None:
            return None
        return self.table.register(oid, got[0], got[1], size, meta, client, name, primary)

    async def create(
        self,
        oid: bytes,
        size: int,
        meta: bytes,
        client: ClientState | None,
        name: str = "",
        primary: bool = True,
    ) -> ObjectEntry:
        """Reserve ``size`` bytes for a new object in state CREATING, making room."""
        entry = self.create_now(oid, size, meta, client, name, primary)
        if entry is not None:
            return entry
        got = await self._make_room(size)
        try:
            # Checks again: the world may have changed while room was made.
            self._check_create(oid, size, meta, name, client)
        except BaseException:
            self.memory.release(got[0], got[1], size)
            self._freed()
            raise
        return self.table.register(oid, got[0], got[1], size, meta, client, name, primary)

    async def _make_room(self, size: int) -> tuple[int, int]:
        """The slow path of a create: eviction, then spilling, then the disk fallback."""
        memory = self.memory
        got = memory.allocate_now(size, self._evict)
        if got is not None:
            return got
        freed = await self.events.make_room(memory.allocated_size(size))
        if freed:
            got = memory.allocate_now(size, self._evict)
            if got is not None:
                return got
        try:
            return await memory.allocate_fallback(size, self.table.pinned_bytes)
        except ObjectStoreFullError as exc:
            # No room in memory nor in the fallback: if spilling failed because
            # its disk is full, that is what the caller needs to hear.
            spill_error = self.events.room_error()
            if isinstance(spill_error, OutOfDiskError):
                raise OutOfDiskError(f"{exc}; spilling failed: {spill_error}") from spill_error
            raise

    def create_secondary_now(self, oid: bytes, size: int, meta: bytes) -> ObjectEntry | None:
        return self.create_now(oid, size, meta, None, primary=False)

    async def create_secondary(self, oid: bytes, size: int, meta: bytes) -> ObjectEntry:
        """A secondary copy; waits while nothing can be freed (the caller bounds it)."""
        if size > self.memory.capacity and size > self.memory.fallback_max:
            raise self.memory.full_error(size, self.table.pinned_bytes)
        while True:
            try:
                return await self.create(oid, size, meta, None, primary=False)
            except ObjectStoreFullError:
                # Every secondary is evicted and the fallback is full: wait until
                # something frees memory (a delete, a release), then try again.
                self._space.clear()
                self._space_waiters += 1
                try:
                    await self._space.wait()
                finally:
                    self._space_waiters -= 1

    def put_inline(
        self, oid: bytes, data: bytes, meta: bytes, client: ClientState, name: str = ""
    ) -> ObjectEntry | None:
        """Create, copy and seal a small payload; None when room must be made first."""
        entry = self.create_now(oid, len(data), meta, client, name)
        if entry is None:
            return None
        self._write_and_seal(oid, entry, data, client)
        return entry

    async def put_inline_slow(
        self, oid: bytes, data: bytes, meta: bytes, client: ClientState, name: str = ""
    ) -> ObjectEntry:
        """:meth:`put_inline` when room had to be made."""
        entry = await self.create(oid, len(data), meta, client, name)
        self._write_and_seal(oid, entry, data, client)
        return entry

    def _write_and_seal(
        self, oid: bytes, entry: ObjectEntry, data: bytes, client: ClientState
    ) -> None:
        if data:
            mm = self.memory.segments[entry.segment].mm
            mm[entry.offset : entry.offset + len(data)] = data
        self.seal(oid, client)

    # ------------------------------------------------------------ seal / abort
    def seal(self, oid: bytes, client: ClientState | None) -> ObjectEntry:
        """Make a CREATING object immutable and visible; the waiting gets get it pinned."""
        table = self.table
        entry, evictable = table.seal(oid, client)
        self._hand_to_waiters(oid, entry)
        if evictable and oid in table.evictable:
            self.memory.eviction.add(oid, self.memory.allocated_size(entry.size))
        self.events.object_sealed(oid, entry, table.names_by_id.get(oid, ""))
        return entry

    def seal_secondary(self, oid: bytes) -> None:
        self.seal(oid, None)

    def _hand_to_waiters(self, oid: bytes, entry: ObjectEntry) -> None:
        """The object is readable: pin it for every waiting get, and wake them."""
        waiters = self._waiters.pop(oid, None)
        if waiters is None:
            return
        for w in waiters:
            if w.fut.done():
                continue
            if w.client is not None and not w.client.closed:
                if self.table.pin(oid, entry, w.client):
                    self.memory.eviction.remove(oid)
                w.entry = entry
            w.fut.set_result(None)

    def abort(self, oid: bytes, client: ClientState | None) -> None:
        """Drop a CREATING object and reclaim its memory at once."""
        name = self.table.names_by_id.get(oid, "")
        out = Actions()
        if self.table.abort(oid, client, out) is None:
            return
        self._apply(out)
        self.events.object_aborted(oid, name)
        self._wake_empty(oid)

    def _wake_empty(self, oid: bytes) -> None:
        """Waiting gets look again (the object is gone: they find out why)."""
        for w in self._waiters.pop(oid, ()):
            if not w.fut.done():
                w.fut.set_result(None)

    def discard_partial(self, oid: bytes) -> None:
        out = Actions()
        if self.table.discard_partial(oid, out) is not None:
            self._apply(out)

    def lost(self, oid: bytes, exc: ObjectStoreError) -> int:
        err = self.events.object_lost(oid, exc)
        return 0 if err is None else self.fail_waiters(oid, err)

    def fail_waiters(self, oid: bytes, exc: ObjectStoreError) -> int:
        """Fail the gets waiting for an object; returns how many."""
        n = 0
        for w in self._waiters.pop(oid, ()):
            if not w.fut.done():
                w.fut.set_exception(exc)
                n += 1
        return n

    def waiting(self, oid: bytes) -> int:
        """How many gets wait for the object here."""
        return len(self._waiters.get(oid, ()))

    # ------------------------------------------------------------ queries
    def entry(self, oid: bytes) -> ObjectEntry | None:
        return self.table.get(oid)

    def sealed(self, oid: bytes) -> ObjectEntry | None:
        return self.table.sealed(oid)

    def readable(self, oid: bytes) -> ObjectEntry | None:
        """The sealed entry, None (not yet), or the error of an object that is gone."""
        return self.table.readable(oid)

    def state_of(self, oid: bytes) -> ObjectState | None:
        return self.table.state_of(oid)

    def contains(self, oid: bytes) -> bool:
        return self.table.contains(oid)

    def held(self, oid: bytes) -> bool:
        entry = self.table.get(oid)
        return entry is not None and self.table.held(entry)

    def was_deleted(self, oid: bytes) -> bool:
        return self.table.was_deleted(oid)

    def lookup_name(self, name: str) -> bytes:
        return self.table.lookup_name(name)

    def named(self, name: str) -> bytes | None:
        """The id of the object of this name here, or None."""
        return self.table.names.get(name)

    def precheck_create(self, oid: bytes, name: str, client: ClientState | None) -> None:
        """Raise what a create of ``oid`` named ``name`` would fail with here."""
        self.table.precheck_create(oid, name, client)

    def name_of(self, oid: bytes) -> str:
        return self.table.names_by_id.get(oid, "")

    def has_name(self, name: str) -> bool:
        return name in self.table.names

    def view(self, entry: Entry) -> memoryview:
        """A writable view of an object's bytes in the node's own mapping."""
        return self.memory.view(entry.segment, entry.offset, entry.size)

    def space_view(self, space: Space) -> memoryview:
        return self.memory.view(space.segment, space.offset, space.size)

    # ------------------------------------------------------------ waiting, pins, leases
    async def wait_sealed(self, oid: bytes, client: ClientState | None = None) -> ObjectEntry:
        """Wait until the object is sealed here; with ``client``, return it pinned for
        that client (release with :meth:`unpin`).  Asks no other node: the caller
        bounds the wait and asks the cluster."""
        while True:
            entry = self.table.readable(oid)
            if entry is not None:
                if client is not None and self.table.pin(oid, entry, client):
                    self.memory.eviction.remove(oid)
                return entry
            w = _Waiter(asyncio.get_running_loop().create_future(), client)
            self._waiters.setdefault(oid, []).append(w)
            try:
                await w.fut
            except BaseException:
                lst = self._waiters.get(oid)
                if lst is not None and w in lst:
                    lst.remove(w)
                    if not lst:
                        del self._waiters[oid]
                if w.entry is not None and client is not None:
                    self.unpin(oid, client)  # pinned at the seal, never handed over
                raise
            if w.entry is not None:
                return w.entry

    def hold(self, oid: bytes, entry: ObjectEntry, client: ClientState) -> None:
        """Pin for ``client`` without counting a get (a get holding what it has while
        it waits for the rest); release with :meth:`unpin`."""
        if self.table.pin(oid, entry, client):
            self.memory.eviction.remove(oid)

    def pin_for_get(self, oid: bytes, entry: ObjectEntry, client: ClientState) -> None:
        """``client`` got the object: it holds a view until it releases it."""
        table = self.table
        table.gets += 1
        if table.pin(oid, entry, client):
            self.memory.eviction.remove(oid)
        if entry.primary:
            self.events.object_read(oid, entry)

    def unpin(self, oid: bytes, client: ClientState) -> None:
        """Drop one pin the node took for ``client`` (never the owner's mapping)."""
        out = Actions()
        self.table.unpin(oid, client, out)
        self._apply(out)

    def release(self, oid: bytes, client: ClientState) -> None:
        """A client's release: one view fewer, or the owner letting go of its mapping."""
        out = Actions()
        self.table.release(oid, client, out)
        if out.free or out.evictable or out.unheld or out.dropped:
            self._apply(out)

    def lease(self, oid: bytes) -> _Lease:
        """Pin a sealed object for the node's own read."""
        entry = self.table.sealed(oid)
        if entry is None:
            raise ObjectNotFoundError(f"object {oid.hex()} is not sealed here")
        if self.table.pin(oid, entry, self.table.node):
            self.memory.eviction.remove(oid)
        return _Lease(self, oid, entry)

    # ------------------------------------------------------------ spill / restore
    def invalidate_mappings(self, oids: Iterable[bytes]) -> None:
        for client, ids in self.table.mapped_owners(oids).items():
            client.invalidate(ids)

    def free_spilled(self, oid: bytes) -> int:
        out = Actions()
        entry = self.table.spill(oid, out)
        self._apply(out)
        return entry.size

    async def allocate(self, size: int) -> Space:
        """Room for ``size`` bytes outside any object (a restore)."""
        got = self.memory.allocate_now(size, self._evict)
        if got is None:
            got = await self._make_room(size)
        return Space(got[0], got[1], size)

    def free_allocation(self, space: Space) -> None:
        self.memory.release(space.segment, space.offset, space.size)
        self._freed()

    def restored(self, oid: bytes, space: Space) -> None:
        entry = self.table.restore(oid, space.segment, space.offset)
        self._hand_to_waiters(oid, entry)

    # ------------------------------------------------------------ delete
    def delete(self, oid: bytes) -> bool:
        return self.delete_many([oid]) == 1

    def delete_many(self, oids: Iterable[bytes], by_directory: bool = False) -> int:
        """Delete objects; each holding client hears of its ids in one invalidation.

        ``by_directory``: another node asked for it (the directory knows already).
        """
        out = Actions()
        n = 0
        table = self.table
        try:
            for oid in oids:
                n += table.delete(oid, out)
        finally:
            self._apply(out, by_directory)
        return n

    # ------------------------------------------------------------ clients
    def disconnect(self, client: ClientState) -> None:
        """A client went away: its pins go now; its objects in :meth:`reap`."""
        out = Actions()
        self.table.disconnect(client, out)
        self._apply(out)

    async def reap(
        self,
        client: ClientState,
        batch: int = 2000,
        keep: Callable[[bytes], bool] | None = None,
    ) -> tuple[int, int]:
        """Abort a gone client's unsealed objects and free its unnamed ones but
        those ``keep`` says something still refers to, in batches that yield to
        the loop; returns (aborted, freed)."""
        owned, client.owned = client.owned, []
        aborted = freed = 0
        table = self.table
        for start in range(0, len(owned), batch):
            out = Actions()
            gone: list[tuple[bytes, str]] = []
            for oid in owned[start : start + batch]:
                name = table.names_by_id.get(oid, "")
                what = table.reap_one(oid, client, out, keep)
                if what == "aborted":
                    aborted += 1
                    gone.append((oid, name))
                elif what == "freed":
                    freed += 1
            self._apply(out)
            for oid, name in gone:
                self.events.object_aborted(oid, name)
                self._wake_empty(oid)
            if start + batch < len(owned):
                await asyncio.sleep(0)
        return aborted, freed

    def compact_owned(self, client: ClientState) -> None:
        self.table.compact_owned(client)

    # ------------------------------------------------------------ introspection
    def snapshot(self) -> list[tuple[bytes, int, bool, str]]:
        return self.table.snapshot()

    def iter_objects(self, limit: int = 0) -> Iterator[tuple[bytes, ObjectEntry]]:
        return self.table.iter_objects(limit)

    def __len__(self) -> int:
        return len(self.table.objects)

    def stats(self) -> dict[str, int | float]:
        """Counters for ``status`` and logs."""
        table, memory = self.table, self.memory
        creating = table.n_creating
        return {
            "capacity": memory.capacity,
            "used": memory.used,
            "fallback_used": memory.fallback_used,
            "pinned_bytes": table.pinned_bytes,
            "objects": len(table.objects),
            "sealed": len(table.objects) - creating - table.n_deleted,
            "creating": creating,
            "evictable_bytes": memory.eviction.evictable_bytes,
            "evictions": table.evictions,
            "largest_free": memory.largest_free,
            "puts": table.puts,
            "gets": table.gets,
            "uptime_s": time.monotonic() - self.started,
            "prefaulted": memory.arena.populated,
            "pid": os.getpid(),
        }

    def check(self) -> None:
        """The table's invariants, and memory's agreement with it (tests)."""
        table, memory = self.table, self.memory
        table.check()
        assert set(memory.eviction._lru) == table.evictable
        arena = sum(memory.allocated_size(e.size) for e in table.objects.values() if e.segment == 0)
        assert memory.used >= arena  # allocations for restores in flight add to it
        for w in (w for lst in self._waiters.values() for w in lst):
            assert not w.fut.done() or w.entry is None or w.client is not None

    def close(self) -> None:
        """Release every segment (the node is shutting down)."""
        for waiters in self._waiters.values():
            for w in waiters:
                if not w.fut.done():
                    w.fut.cancel()
        self._waiters.clear()
        self.memory.close()
        self.table.objects.clear()
