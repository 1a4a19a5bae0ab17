"""The object table of one node: create, seal, abort, get, release, delete.

:class:`PlasmaStore` owns the arena, the allocator, the fallback segments and
every object's entry.  It runs on the node's event loop; everything here is
synchronous bookkeeping except the waits (a get of an object not sealed yet)
and making room (which may evict, and later spill), so a request that needs
neither never suspends.

Ownership and pins
------------------
* The client that creates an object *owns* it: the object lives while that
  client is connected, or until it is deleted.  A named object outlives its
  owner's connection and lives until it is deleted.
* Every client that gets an object from the node holds a *pin* on it
  (counted per client) until it tells the store it has no view left
  (``release``).  The owner also keeps the location it wrote to (``mapped``):
  it reads its own object without asking, until the node invalidates that
  mapping (the object is deleted or spilled) and the owner answers with a
  release once its views are gone.
* Memory is returned to the allocator only when the object is deleted (or
  aborted, or spilled) and neither a pin nor the owner's mapping holds it: a
  zero-copy view can never see its bytes reused.
* Objects put on this node are *primary* copies and are never evicted.
  Secondary copies (pulled from other nodes, from the transfer issue on) with
  no owner and no pins are *evictable*, in LRU order, through
  :class:`~objstore.plasma.eviction.EvictionPolicy`.
* Primary copies are *spilled* instead (``spiller``, the spill manager): the
  bytes go to a file and the memory is freed (state SPILLED, ``segment`` -1);
  a get of a spilled object asks the spiller to restore it.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import structlog

from objstore.config import Config, format_size
from objstore.errors import (
    ObjectExistsError,
    ObjectLostError,
    ObjectNotFoundError,
    ObjectStoreError,
    ObjectStoreFullError,
    OutOfDiskError,
)
from objstore.ids import OBJECT_ID_SIZE
from objstore.plasma.allocator import Allocator
from objstore.plasma.arena import Arena, FallbackSegment, Segment
from objstore.plasma.eviction import EvictionPolicy
from objstore.plasma.lifecycle import ObjectEvent, ObjectState, transition

__all__ = [
    "PlasmaStore",
    "ClientState",
    "ObjectEntry",
    "Location",
    "SpillHook",
    "StoreListener",
    "RemoteWatcher",
]

log = structlog.get_logger("objstore.plasma.store")

_CREATING = ObjectState.CREATING
_SEALED = ObjectState.SEALED
_DELETED = ObjectState.DELETED
_SPILLED = ObjectState.SPILLED

# The spill manager (a later issue) plugs in here: asked for `nbytes` of room,
# it spills primary copies and returns how many bytes it freed.
SpillHook = Callable[[int], Awaitable[int]]


class StoreListener(Protocol):
    """Hears of location changes (the directory client, in a cluster)."""

    def added(self, oid: bytes, size: int, primary: bool, name: str = "") -> None: ...

    def removed(self, oid: bytes) -> None: ...

    def deleted(self, oid: bytes) -> None: ...


class Spiller(Protocol):
    """The spill manager, as the store sees it (``objstore.spill.manager``)."""

    def sealed(self, oid: bytes, entry: ObjectEntry) -> None:
        """A primary copy was sealed (or restored) in memory."""

    def touched(self, oid: bytes, entry: ObjectEntry) -> None:
        """A primary copy was read (least recently used primaries spill first)."""

    def unheld(self, oid: bytes, entry: ObjectEntry) -> None:
        """A sealed primary's last pin or mapping went (a spilled copy may free it now)."""

    def dropped(self, oid: bytes, entry: ObjectEntry) -> None:
        """A primary left the table (deleted, aborted); its spill copy is not needed."""

    def restore(self, oid: bytes, entry: ObjectEntry) -> None:
        """A get waits for a SPILLED object: bring it back (once, however many ask)."""

    @property
    def last_error(self) -> ObjectStoreError | None:
        """The error of the last spill write, while writes keep failing."""


class RemoteWatcher(Protocol):
    """Told of each get (priority 0) or wait (1) that starts or stops waiting
    for an object that is not here."""

    def watch(self, oid: bytes, priority: int) -> None: ...

    def unwatch(self, oid: bytes, priority: int) -> None: ...


class ClientState:
    """What the store knows about one connected client."""

    __slots__ = ("client_id", "pid", "owned", "stale", "pinned", "invalidate", "closed")

    def __init__(
        self, client_id: int, invalidate: Callable[[list[bytes]], None], pid: int = 0
    ) -> None:
        self.client_id = client_id
        self.pid = pid
        # Ids this client created, in creation order.  An id stays here after the
        # object is deleted; entries are checked against `ObjectEntry.owner` on use.
        self.owned: list[bytes] = []
        # How many ids in `owned` no longer name an object this client owns.
        self.stale = 0
        # object id -> pins this client holds (every id here has this client in
        # the entry's `pinners` with the same count).
        self.pinned: dict[bytes, int] = {}
        # Called with ids of deleted objects this client holds (owner or pins).
        self.invalidate = invalidate
        self.closed = False

    def __repr__(self) -> str:
        return f"<client {self.client_id} pid={self.pid}>"


class ObjectEntry:
    """One object in the table (kept small: a node holds millions)."""

    __slots__ = (
        "state",
        "segment",
        "offset",
        "size",
        "meta",
        "owner",
        "pinners",
        "primary",
        "mapped",
    )

    def __init__(
        self,
        segment: int,
        offset: int,
        size: int,
        meta: bytes,
        owner: ClientState | None,
        primary: bool,
    ) -> None:
        self.state = _CREATING
        self.segment = segment
        self.offset = offset
        self.size = size
        self.meta = meta
        self.owner = owner
        # None, or client -> pin count (only clients other than the owner).
        self.pinners: dict[ClientState, int] | None = None
        self.primary = primary
        # The owner reads the object through the location it wrote to, without
        # pins, until it answers an invalidation with a release.
        self.mapped = owner is not None


@dataclass(frozen=True, slots=True)
class Location:
    """Where a sealed object's bytes are."""

    object_id: bytes
    segment: int
    offset: int
    size: int
    meta: bytes


def _close_unused_segment(fut: asyncio.Future[FallbackSegment]) -> None:
    """A fallback segment finished creating after its create was cancelled."""
    if not fut.cancelled() and fut.exception() is None:
        fut.result().close()


class PlasmaStore:
    """The node's object table, arena and fallback segments."""

    def __init__(self, config: Config, spill_hook: SpillHook | None = None) -> None:
        self.config = config
        pc = config.plasma
        self.capacity = config.memory_bytes
        self.arena = Arena(self.capacity)
        self.allocator = Allocator(self.capacity)
        self.eviction = EvictionPolicy()
        self.fallback_dir = pc.fallback_dir or tempfile.gettempdir()
        self.fallback_max = pc.fallback_max_bytes
        self.fallback_used = 0
        self._next_segment = 1
        # segment id -> fallback segment; each holds exactly one object.
        self.segments: dict[int, Segment] = {0: self.arena}
        # Every live object (CREATING, SEALED or DELETED-but-still-held).
        self.objects: dict[bytes, ObjectEntry] = {}
        # name -> object id and back; every id here is in `objects` and not DELETED.
        self.names: dict[str, bytes] = {}
        self.names_by_id: dict[bytes, str] = {}
        # object id -> futures of gets waiting for it to be sealed.
        self._seal_waiters: dict[bytes, list[tuple[asyncio.Future[None], int]]] = {}
        # Ids of objects recently deleted (False) or aborted unsealed (True), so a
        # get of one fails at once instead of waiting for an object that is gone.
        self._deleted: OrderedDict[bytes, bool] = OrderedDict()
        self._deleted_max = pc.deleted_memory
        # Canonical metadata values, so a million objects share a handful of bytes objects.
        self._metas: dict[bytes, bytes] = {}
        self.spill_hook = spill_hook
        # In a cluster: the directory client hears of every copy added or gone,
        # and of every object gets wait for that is not here.
        self.listener: StoreListener | None = None
        self.remote: RemoteWatcher | None = None
        # Called whenever memory is given back (pulls waiting for room retry).
        self.on_space: Callable[[], None] | None = None
        self.spiller: Spiller | None = None
        self._quiet = False
        self.pinned_bytes = 0
        # Objects in state CREATING, and DELETED ones still held (kept, not counted).
        self.n_creating = 0
        self.n_deleted = 0
        self.evictions = 0
        self.puts = 0
        self.gets = 0
        self.started = time.monotonic()
        self._fallback_warned = False

    # ------------------------------------------------------------------ helpers
    def close(self) -> None:
        """Release every segment (the node is shutting down)."""
        for waiters in self._seal_waiters.values():
            for fut, _ in waiters:
                if not fut.done():
                    fut.cancel()
        self._seal_waiters.clear()
        for seg in list(self.segments.values()):
            seg.close()
        self.segments.clear()
        self.objects.clear()

    def _canonical_meta(self, meta: bytes) -> bytes:
        canon = self._metas.get(meta)
        if canon is None:
            if len(self._metas) < 1024:
                self._metas[meta] = meta
            return meta
        return canon

    def _remember_deleted(self, object_id: bytes, aborted: bool = False) -> None:
        if self._deleted_max <= 0:
            return
        self._deleted[object_id] = aborted
        if len(self._deleted) > self._deleted_max:
            self._deleted.popitem(last=False)

    def was_deleted(self, object_id: bytes) -> bool:
        """Whether this node deleted (or aborted) the object recently."""
        return object_id in self._deleted

    def _check_id(self, object_id: bytes) -> None:
        if len(object_id) != OBJECT_ID_SIZE:
            raise ObjectStoreError(f"object ids are {OBJECT_ID_SIZE} bytes, got {len(object_id)}")

    @property
    def used(self) -> int:
        """Bytes allocated in the arena."""
        return self.allocator.used

    def location(self, object_id: bytes, entry: ObjectEntry) -> Location:
        """The location of an entry, for replies."""
        return Location(object_id, entry.segment, entry.offset, entry.size, entry.meta)

    def view(self, entry: ObjectEntry) -> memoryview:
        """A writable view of an entry's bytes in the node's own mapping."""
        seg = self.segments[entry.segment]
        return memoryview(seg.mm)[entry.offset : entry.offset + entry.size]

    # ------------------------------------------------------------------ create
    def _allocate_now(self, size: int) -> tuple[int, int] | None:
        """Arena space, evicting secondary copies if that makes room."""
        offset = self.allocator.allocate(size)
        if offset is not None:
            return 0, offset
        need = self.allocator.allocated_size(size)
        # Evict least recently used secondaries, `need` bytes at a time, until a
        # block fits (the free bytes may be there already, but in pieces).
        while self.eviction.evictable_bytes:
            for oid in self.eviction.choose_victims(need):
                self._evict(oid)
            offset = self.allocator.allocate(size)
            if offset is not None:
                return 0, offset
        return None

    async def _make_room(self, size: int) -> tuple[int, int]:
        """Slow path of create: eviction, then spilling, then the disk fallback."""
        got = self._allocate_now(size)
        if got is not None:
            return got
        if self.spill_hook is not None:
            freed = await self.spill_hook(self.allocator.allocated_size(size))
            if freed:
                got = self._allocate_now(size)
                if got is not None:
                    return got
        try:
            return await self._allocate_fallback(size)
        except ObjectStoreFullError as exc:
            # No room in memory nor in the fallback: if spilling failed because
            # its disk is full, that is what the caller needs to hear.
            spill_error = self.spiller.last_error if self.spiller is not None else None
            if isinstance(spill_error, OutOfDiskError):
                raise OutOfDiskError(f"{exc}; spilling failed: {spill_error}") from spill_error
            raise

    async def _allocate_fallback(self, size: int) -> tuple[int, int]:
        """A file-backed segment for one object (created in a thread: it touches the disk)."""
        if size + self.fallback_used > self.fallback_max:
            raise self._full_error(size)
        # Bookkeeping first, so concurrent creates see the room as taken.
        segment_id = self._next_segment
        self._next_segment += 1
        self.fallback_used += size
        fut = asyncio.get_running_loop().run_in_executor(
            None, FallbackSegment.create, segment_id, self.fallback_dir, size
        )
        try:
            seg = await asyncio.shield(fut)
        except asyncio.CancelledError:
            self.fallback_used -= size
            fut.add_done_callback(_close_unused_segment)
            raise
        except OutOfDiskError as exc:
            self.fallback_used -= size
            raise ObjectStoreFullError(f"{self._full_error(size)}; {exc}") from exc
        except BaseException:
            self.fallback_used -= size
            raise
        self.fallback_used += seg.size - size
        self.segments[segment_id] = seg
        if not self._fallback_warned:
            self._fallback_warned = True
            log.warning(
                "arena full: using file-backed fallback allocations",
                directory=self.fallback_dir,
                size=size,
            )
        return segment_id, 0

    def _full_error(self, size: int) -> ObjectStoreFullError:
        return ObjectStoreFullError(
            f"no room for an object of {format_size(size)} ({size} bytes): the arena holds "
            f"{format_size(self.capacity)} with {format_size(self.allocator.used)} in use "
            f"({format_size(self.pinned_bytes)} pinned, largest free block "
            f"{format_size(self.allocator.largest_free)}), and the fallback holds "
            f"{format_size(self.fallback_used)} of {format_size(self.fallback_max)}"
        )

    def precheck_create(self, object_id: bytes, name: str, client: ClientState | None) -> None:
        self._check_id(object_id)
        if object_id in self.objects:
            raise ObjectExistsError(f"object {object_id.hex()} exists already")
        if name:
            taken = self.names.get(name)
            if taken is not None:
                raise ObjectExistsError(f"the name {name!r} is taken by object {taken.hex()}")
        if client is not None and client.closed:
            raise ObjectStoreError("client disconnected")

    def create_now(
        self,
        object_id: bytes,
        size: int,
        meta: bytes,
        client: ClientState | None,
        name: str = "",
        primary: bool = True,
    ) -> ObjectEntry | None:
        """Create without waiting; None when room must be made first (see :meth:`create`)."""
        self.precheck_create(object_id, name, client)
        if size < 0:
            raise ObjectStoreError(f"an object size cannot be negative, got {size}")
        got = self._allocate_now(size)
        if got is None:
            return None
        return self._register(object_id, got, size, meta, client, name, primary)

    async def create(
        self,
        object_id: bytes,
        size: int,
        meta: bytes,
        client: ClientState | None,
        name: str = "",
        primary: bool = True,
    ) -> ObjectEntry:
        """Reserve ``size`` bytes for a new object in state CREATING."""
        entry = self.create_now(object_id, size, meta, client, name, primary)
        if entry is not None:
            return entry
        got = await self._make_room(size)
        try:
            # Checks again: the world may have changed while room was made.
            self.precheck_create(object_id, name, client)
        except BaseException:
            self._release_space(got[0], got[1], size)
            raise
        return self._register(object_id, got, size, meta, client, name, primary)

    def _register(
        self,
        object_id: bytes,
        got: tuple[int, int],
        size: int,
        meta: bytes,
        client: ClientState | None,
        name: str,
        primary: bool,
    ) -> ObjectEntry:
        segment, offset = got
        entry = ObjectEntry(segment, offset, size, self._canonical_meta(meta), client, primary)
        self.objects[object_id] = entry
        self.n_creating += 1
        if client is not None:
            client.owned.append(object_id)
        if name:
            self.names[name] = object_id
            self.names_by_id[object_id] = name
        return entry

    def _release_space(self, segment: int, offset: int, size: int) -> None:
        if segment < 0:
            return  # spilled: holds no memory
        if segment == 0:
            self.allocator.free(offset, size)
        else:
            seg = self.segments.pop(segment)
            self.fallback_used -= seg.size
            seg.close()
        if self.on_space is not None:
            self.on_space()

    # ------------------------------------------------------------------ seal / abort
    def seal(self, object_id: bytes, client: ClientState | None) -> ObjectEntry:
        """Make a CREATING object immutable and visible; wake waiting gets."""
        entry = self.objects.get(object_id)
        if entry is None:
            raise ObjectNotFoundError(f"cannot seal unknown object {object_id.hex()}")
        if client is not None and entry.owner is not client:
            raise ObjectStoreError(f"object {object_id.hex()} was created by another client")
        entry.state = transition(entry.state, ObjectEvent.SEAL, object_id)
        self.n_creating -= 1
        self.puts += 1
        if not entry.primary:
            self._maybe_evictable(object_id, entry)
        elif self.spiller is not None and entry.segment == 0:
            self.spiller.sealed(object_id, entry)
        if self.listener is not None:
            self.listener.added(
                object_id, entry.size, entry.primary, self.names_by_id.get(object_id, "")
            )
        self._wake_waiters(object_id)
        return entry

    def _wake_waiters(self, object_id: bytes) -> None:
        """Gets waiting for this object look at it again (sealed, or gone)."""
        waiters = self._seal_waiters.pop(object_id, None)
        if waiters is not None:
            remote = self.remote
            for fut, priority in waiters:
                if remote is not None and priority >= 0:
                    remote.unwatch(object_id, priority)
                if not fut.done():
                    fut.set_result(None)

    def put_inline(
        self, object_id: bytes, data: bytes, meta: bytes, client: ClientState, name: str = ""
    ) -> ObjectEntry | None:
        """Create, copy and seal a small payload; None when room must be made first."""
        entry = self.create_now(object_id, len(data), meta, client, name)
        if entry is None:
            return None
        self._write_and_seal(object_id, entry, data, client)
        return entry

    async def put_inline_slow(
        self, object_id: bytes, data: bytes, meta: bytes, client: ClientState, name: str = ""
    ) -> ObjectEntry:
        """:meth:`put_inline` when room had to be made."""
        entry = await self.create(object_id, len(data), meta, client, name)
        self._write_and_seal(object_id, entry, data, client)
        return entry

    def _write_and_seal(
        self, object_id: bytes, entry: ObjectEntry, data: bytes, client: ClientState
    ) -> None:
        if data:
            self.segments[entry.segment].mm[entry.offset : entry.offset + len(data)] = data
        self.seal(object_id, client)

    def abort(self, object_id: bytes, client: ClientState | None) -> None:
        """Drop a CREATING object and reclaim its memory at once."""
        entry = self.objects.get(object_id)
        if entry is None:
            return
        if client is not None and entry.owner is not client:
            raise ObjectStoreError(f"object {object_id.hex()} was created by another client")
        self._abort(object_id, entry)

    def _abort(self, object_id: bytes, entry: ObjectEntry) -> None:
        transition(entry.state, ObjectEvent.ABORT, object_id)
        if self.listener is not None and object_id in self.names_by_id:
            self.listener.deleted(object_id)  # frees the name reserved in the directory
        self._drop(object_id, entry)
        self._remember_deleted(object_id, aborted=True)
        # Gets waiting for the seal wake up and find it gone (ObjectLostError).
        self._wake_waiters(object_id)

    def discard_partial(self, object_id: bytes) -> None:
        """Drop a secondary copy that failed while being written (a pull that
        will try another source): gets waiting for the object keep waiting."""
        entry = self.objects.get(object_id)
        if entry is None or entry.primary or entry.state is not _CREATING:
            return
        transition(entry.state, ObjectEvent.ABORT, object_id)
        self._drop(object_id, entry)

    def fail_waiters(self, object_id: bytes, exc: ObjectStoreError) -> int:
        """Fail the gets waiting for an object (lost or deleted elsewhere); returns how many."""
        waiters = self._seal_waiters.pop(object_id, None)
        if waiters is None:
            return 0
        n = 0
        for fut, priority in waiters:
            if self.remote is not None and priority >= 0:
                self.remote.unwatch(object_id, priority)
            if not fut.done():
                fut.set_exception(exc)
                n += 1
        return n

    # ------------------------------------------------------------------ get / release
    def lookup_name(self, name: str) -> bytes:
        """The id of a named object."""
        oid = self.names.get(name)
        if oid is None:
            raise ObjectNotFoundError(f"no object is named {name!r}")
        return oid

    def get_now(self, object_id: bytes) -> ObjectEntry | None:
        """The sealed entry, or None if it is not sealed here (yet)."""
        entry = self.objects.get(object_id)
        if entry is not None:
            if entry.state is _SEALED:
                return entry
            if entry.state is _DELETED:
                raise ObjectNotFoundError(f"object {object_id.hex()} was deleted")
            if entry.state is _SPILLED and self.spiller is not None:
                self.spiller.restore(object_id, entry)
            return None
        aborted = self._deleted.get(object_id)
        if aborted is not None:
            if aborted:
                raise ObjectLostError(
                    f"object {object_id.hex()} was never sealed: its creator aborted it or went away"
                )
            raise ObjectNotFoundError(f"object {object_id.hex()} was deleted")
        self._check_id(object_id)
        return None

    def state_of(self, object_id: bytes) -> ObjectState | None:
        """The object's state here, or None; asks for nothing (no restore)."""
        entry = self.objects.get(object_id)
        return entry.state if entry is not None else None

    async def wait_sealed(
        self, object_id: bytes, priority: int = 0, local: bool = False
    ) -> ObjectEntry:
        """Wait until the object is sealed here (the caller bounds it with a timeout).

        ``priority``: 0 for a get, 1 for a wait (in a cluster, pulls of objects
        gets wait for go first).  ``local``: do not ask other nodes (a spilled
        object being restored here).
        """
        while True:
            entry = self.get_now(object_id)
            if entry is not None:
                return entry
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            # A local waiter is kept with priority -1: it watches nothing remote.
            item = (fut, -1 if local else priority)
            self._seal_waiters.setdefault(object_id, []).append(item)
            remote = None if local else self.remote
            if remote is not None:
                remote.watch(object_id, priority)
            try:
                await fut
            finally:
                if not fut.done() or fut.cancelled():
                    lst = self._seal_waiters.get(object_id)
                    if lst is not None and item in lst:
                        lst.remove(item)
                        if not lst:
                            del self._seal_waiters[object_id]
                        if remote is not None:
                            remote.unwatch(object_id, priority)

    def pin(
        self, object_id: bytes, entry: ObjectEntry, client: ClientState, count: bool = True
    ) -> None:
        """Record that ``client`` holds a view of the object.

        ``count=False``: not a get (the node's own reads: a spill write).
        """
        if count:
            self.gets += 1
            if entry.primary and self.spiller is not None:
                self.spiller.touched(object_id, entry)
        pinners = entry.pinners
        if pinners is None:
            entry.pinners = pinners = {}
            self.pinned_bytes += entry.size
            if not entry.primary:
                self.eviction.remove(object_id)
        pinners[client] = pinners.get(client, 0) + 1
        client.pinned[object_id] = client.pinned.get(object_id, 0) + 1

    def release(self, object_id: bytes, client: ClientState) -> None:
        """``client`` holds one view fewer (or, as owner of a deleted object, none)."""
        entry = self.objects.get(object_id)
        if entry is None:
            client.pinned.pop(object_id, None)
            return
        count = client.pinned.get(object_id)
        if count:
            self._unpin(object_id, entry, client, 1)
        elif entry.owner is client and entry.mapped:
            # The owner's answer to an invalidation: it no longer reads the object
            # through its own mapping.
            entry.mapped = False
            if entry.state is _DELETED:
                entry.owner = None
                self._maybe_free(object_id, entry)
            else:
                self._unheld(object_id, entry)

    def _unpin(self, object_id: bytes, entry: ObjectEntry, client: ClientState, n: int) -> None:
        count = client.pinned.get(object_id, 0) - n
        if count > 0:
            client.pinned[object_id] = count
            assert entry.pinners is not None
            entry.pinners[client] = count
            return
        client.pinned.pop(object_id, None)
        pinners = entry.pinners
        if pinners is not None:
            pinners.pop(client, None)
            if not pinners:
                entry.pinners = None
                self.pinned_bytes -= entry.size
        self._maybe_free(object_id, entry)
        if object_id in self.objects:
            if not entry.primary:
                self._maybe_evictable(object_id, entry)
            else:
                self._unheld(object_id, entry)

    def _unheld(self, object_id: bytes, entry: ObjectEntry) -> None:
        if (
            self.spiller is not None
            and entry.state is _SEALED
            and entry.pinners is None
            and not entry.mapped
        ):
            self.spiller.unheld(object_id, entry)

    def held(self, entry: ObjectEntry) -> bool:
        """Whether a view may be reading the object's memory (a pin, or the owner's mapping)."""
        return entry.pinners is not None or entry.mapped

    def _maybe_evictable(self, object_id: bytes, entry: ObjectEntry) -> None:
        # Only arena copies: evicting a fallback segment frees no arena memory.
        if (
            entry.segment == 0
            and entry.state is _SEALED
            and entry.owner is None
            and entry.pinners is None
            and object_id not in self.eviction
        ):
            self.eviction.add(object_id, self.allocator.allocated_size(entry.size))

    def _evict(self, object_id: bytes) -> None:
        entry = self.objects[object_id]
        # Invariant: only sealed, unowned, unpinned secondary copies are in the policy.
        entry.state = transition(entry.state, ObjectEvent.DELETE, object_id)
        self.evictions += 1
        if self.listener is not None:
            self.listener.removed(object_id)
        self._drop(object_id, entry)

    # ------------------------------------------------------------------ spill / restore
    def free_spilled(self, object_id: bytes, entry: ObjectEntry) -> int:
        """A sealed primary whose bytes are safely in a spill file, held by nobody:
        free its memory (state SPILLED).  Returns the bytes freed."""
        if self.held(entry):
            raise ObjectStoreError(f"object {object_id.hex()} is still held; it cannot be freed")
        entry.state = transition(entry.state, ObjectEvent.SPILL, object_id)
        segment, offset = entry.segment, entry.offset
        entry.segment, entry.offset = -1, 0
        self._release_space(segment, offset, entry.size)
        return entry.size

    def restored(self, object_id: bytes, entry: ObjectEntry, got: tuple[int, int]) -> None:
        """A SPILLED object's bytes are back at ``got`` (segment, offset): readable again."""
        entry.state = transition(entry.state, ObjectEvent.RESTORE, object_id)
        entry.segment, entry.offset = got
        if self.spiller is not None and entry.segment == 0:
            self.spiller.sealed(object_id, entry)
        self._wake_waiters(object_id)

    def invalidate_mappings(self, object_ids: Iterable[bytes]) -> None:
        """Ask the owners that read these objects through their own mapping to let go."""
        notify: dict[ClientState, list[bytes]] = {}
        for oid in object_ids:
            entry = self.objects.get(oid)
            if entry is not None and entry.mapped and entry.owner is not None:
                notify.setdefault(entry.owner, []).append(oid)
        for client, ids in notify.items():
            if not client.closed:
                client.invalidate(ids)

    async def allocate(self, size: int) -> tuple[int, int]:
        """Room for ``size`` bytes outside any object (a restore): (segment, offset)."""
        got = self._allocate_now(size)
        if got is None:
            got = await self._make_room(size)
        return got

    def free_allocation(self, got: tuple[int, int], size: int) -> None:
        """Give back what :meth:`allocate` returned (a restore that failed)."""
        self._release_space(got[0], got[1], size)

    # ------------------------------------------------------------------ delete
    def delete(self, object_id: bytes) -> bool:
        """Delete an object: no new gets; memory returns once no client holds it."""
        return self.delete_many([object_id]) == 1

    def delete_many(self, object_ids: Iterable[bytes], report: bool = True) -> int:
        """Delete objects; each holding client hears of its ids in one invalidation.

        ``report=False``: the directory asked for it (it knows already).
        """
        notify: dict[ClientState, list[bytes]] = {}
        n = 0
        self._quiet = not report
        try:
            for object_id in object_ids:
                n += self._delete_one(object_id, notify)
        finally:
            self._quiet = False
            for client, ids in notify.items():
                if not client.closed:
                    client.invalidate(ids)
        return n

    def _delete_one(self, object_id: bytes, notify: dict[ClientState, list[bytes]]) -> bool:
        entry = self.objects.get(object_id)
        if entry is None or entry.state is _DELETED:
            return False
        if entry.state is _CREATING:
            raise ObjectStoreError(
                f"object {object_id.hex()} is still being written; delete it once it is sealed"
            )
        entry.state = transition(entry.state, ObjectEvent.DELETE, object_id)
        self.n_deleted += 1
        name = self.names_by_id.pop(object_id, None)
        if name is not None:
            del self.names[name]
        self.eviction.remove(object_id)
        self._remember_deleted(object_id)
        if self.listener is not None and not self._quiet:
            self.listener.deleted(object_id)
        if entry.owner is not None:
            notify.setdefault(entry.owner, []).append(object_id)
            entry.owner.stale += 1
        if entry.pinners:
            for client in entry.pinners:
                if client is not entry.owner:  # heard of it already
                    notify.setdefault(client, []).append(object_id)
        self._maybe_free(object_id, entry)
        return True

    def _maybe_free(self, object_id: bytes, entry: ObjectEntry) -> None:
        if entry.state is _DELETED and not entry.mapped and entry.pinners is None:
            entry.state = transition(entry.state, ObjectEvent.RELEASE_LAST, object_id)
            self.n_deleted -= 1
            self._drop(object_id, entry)

    def _drop(self, object_id: bytes, entry: ObjectEntry) -> None:
        del self.objects[object_id]
        if entry.primary and self.spiller is not None:
            self.spiller.dropped(object_id, entry)
        if entry.state is _CREATING:
            self.n_creating -= 1
        name = self.names_by_id.pop(object_id, None)
        if name is not None:
            del self.names[name]
        if entry.pinners is not None:
            self.pinned_bytes -= entry.size
            entry.pinners = None
        self._release_space(entry.segment, entry.offset, entry.size)

    # ------------------------------------------------------------------ clients
    def disconnect(self, client: ClientState) -> None:
        """A client went away: release its pins now; its objects go in :meth:`reap`."""
        client.closed = True
        for object_id, count in list(client.pinned.items()):
            entry = self.objects.get(object_id)
            if entry is None:
                continue
            self._unpin(object_id, entry, client, count)
        client.pinned.clear()

    async def reap(self, client: ClientState, batch: int = 2000) -> None:
        """Abort a gone client's unsealed objects and free its unnamed ones.

        Runs in batches that yield to the event loop, so a client that leaves a
        million objects behind does not stall everyone else.
        """
        owned, client.owned = client.owned, []
        aborted = freed = 0
        for start in range(0, len(owned), batch):
            for object_id in owned[start : start + batch]:
                entry = self.objects.get(object_id)
                if entry is None or entry.owner is not client:
                    continue
                if entry.state is _CREATING:
                    self._abort(object_id, entry)
                    aborted += 1
                    continue
                entry.owner = None
                entry.mapped = False
                if entry.state is _DELETED:
                    self._maybe_free(object_id, entry)
                elif object_id not in self.names_by_id:
                    self.delete(object_id)
                    freed += 1
                elif not entry.primary:
                    self._maybe_evictable(object_id, entry)
            if start + batch < len(owned):
                await asyncio.sleep(0)
        if aborted or freed:
            log.info(
                "client gone", client=client.client_id, pid=client.pid, aborted=aborted, freed=freed
            )

    def compact_owned(self, client: ClientState) -> None:
        """Drop ids of objects the client no longer owns from its list.

        Called when at least half the list is stale, so its cost is amortized
        over the deletions that made it stale.
        """
        objects = self.objects
        client.owned = [
            oid for oid in client.owned if (e := objects.get(oid)) is not None and e.owner is client
        ]
        client.stale = 0

    # ------------------------------------------------------------------ introspection
    def contains(self, object_id: bytes) -> bool:
        """Whether a sealed copy is here (in memory, or spilled and restorable)."""
        entry = self.objects.get(object_id)
        return entry is not None and (entry.state is _SEALED or entry.state is _SPILLED)

    def snapshot(self) -> list[tuple[bytes, int, bool, str]]:
        """Every sealed object as (id, size, primary, name), for a full report."""
        names = self.names_by_id
        return [
            (oid, e.size, e.primary, names.get(oid, ""))
            for oid, e in self.objects.items()
            if e.state is _SEALED or e.state is _SPILLED
        ]

    def iter_objects(self, limit: int = 0) -> Iterable[tuple[bytes, ObjectEntry]]:
        """Objects in the table, at most ``limit`` (0: all)."""
        for i, item in enumerate(self.objects.items()):
            if limit and i >= limit:
                return
            yield item

    def stats(self) -> dict[str, int | float]:
        """Counters for ``status`` and logs."""
        creating = self.n_creating
        sealed = len(self.objects) - creating - self.n_deleted
        return {
            "capacity": self.capacity,
            "used": self.allocator.used,
            "fallback_used": self.fallback_used,
            "pinned_bytes": self.pinned_bytes,
            "objects": len(self.objects),
            "sealed": sealed,
            "creating": creating,
            "evictable_bytes": self.eviction.evictable_bytes,
            "evictions": self.evictions,
            "largest_free": self.allocator.largest_free,
            "puts": self.puts,
            "gets": self.gets,
            "uptime_s": time.monotonic() - self.started,
            "prefaulted": self.arena.populated,
            "pid": os.getpid(),
        }
