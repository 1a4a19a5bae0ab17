"""In-memory fakes of objstore's seams, kept in one place for the in-process tests.

* :class:`FakeStore` implements :class:`objstore.plasma.api.Store` over plain
  ``bytearray`` s, with a capacity, waiting gets, leases and a log of what was
  asked of it; :meth:`FakeStore.check` asserts that nothing leaked (no lease,
  no partial copy, no allocation left).
* :class:`FakeNode` implements the directory client's
  :class:`~objstore.directory.api.NodeView` and
  :class:`~objstore.directory.api.DirectoryListener`: a node's objects and
  what the directory told it.

Each package's tests add their fakes below in a section of their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

from objstore.directory.api import DirectoryListener, NodeView
from objstore.errors import ObjectNotFoundError, ObjectStoreError, ObjectStoreFullError
from objstore.locations import ObjectRow, Usage
from objstore.plasma.api import Entry, ObjectState, Space, Store

__all__ = ["FakeEntry", "FakeStore", "FakeNode", "DirectoryHooks"]


# ----------------------------------------------------------------------------- the store


@dataclass(eq=False)
class FakeEntry:
    """One object of a :class:`FakeStore`: its bytes live in ``data``."""

    state: ObjectState
    size: int
    meta: bytes
    primary: bool
    data: bytearray
    segment: int = 0
    offset: int = 0
    # Leases the node holds; pins that clients hold (tests set it to make an object held).
    leases: int = 0
    client_pins: int = 0
    # The owner still reads it through its own mapping (tests set it).
    mapped: bool = False


class _FakeLease:
    def __init__(self, store: FakeStore, oid: bytes, entry: FakeEntry) -> None:
        self._store = store
        self.oid = oid
        self.entry = entry
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.entry.leases -= 1
            self._store.log.append(("unlease", self.oid))
            self._store._maybe_unheld(self.oid, self.entry)

    def __enter__(self) -> FakeEntry:
        return self.entry

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


@dataclass
class FakeStore:
    """A :class:`~objstore.plasma.api.Store` in plain memory (see the module docstring).

    ``used`` counts the bytes of entries in memory and of allocations; a
    create or allocation that would pass ``capacity`` waits (``create_secondary``,
    ``allocate``) or returns None (``create_secondary_now``).
    """

    capacity: int = 64 << 20
    objects: dict[bytes, FakeEntry] = field(default_factory=dict)
    used: int = 0
    # Every call that changed something, in order: (what, object id or size).
    log: list[tuple[str, object]] = field(default_factory=list)
    # Allocations handed out and not given back: space.segment -> buffer.
    spaces: dict[int, bytearray] = field(default_factory=dict)
    # Invalidations asked for, and objects that became unheld.
    invalidated: list[bytes] = field(default_factory=list)
    unheld: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._space = asyncio.Event()
        self._next_space = 1000

    # -- helpers for tests
    def put(self, oid: bytes, data: bytes, meta: bytes = b"m", primary: bool = True) -> FakeEntry:
        """A sealed object (as a client's put would leave it)."""
        if oid in self.objects:
            raise ObjectStoreError(f"{oid.hex()} exists")
        entry = FakeEntry(ObjectState.SEALED, len(data), meta, primary, bytearray(data))
        self.objects[oid] = entry
        self.used += len(data)
        return entry

    def data_of(self, oid: bytes) -> bytes:
        return bytes(self.objects[oid].data)

    def check(self) -> None:
        """Nothing leaked: no lease, no partial copy, no allocation, no waiter."""
        for oid, e in self.objects.items():
            assert e.leases == 0, f"{oid.hex()} still leased ({e.leases})"
            assert e.state is not ObjectState.CREATING, f"{oid.hex()} left half written"
        assert not self.spaces, f"allocations not given back: {list(self.spaces)}"
        assert not any(self._waiters.values()), "gets still waiting"
        in_memory = sum(e.size for e in self.objects.values() if e.segment >= 0)
        assert self.used == in_memory, (self.used, in_memory)

    def _free(self, n: int) -> None:
        self.used -= n
        self._space.set()

    def _maybe_unheld(self, oid: bytes, entry: FakeEntry) -> None:
        if entry.state is ObjectState.SEALED and not self.held(oid):
            self.unheld.append(oid)

    def _wake(self, oid: bytes) -> None:
        for fut in self._waiters.pop(oid, []):
            if not fut.done():
                fut.set_result(None)

    # -- the Store protocol
    @property
    def largest_free(self) -> int:
        return self.capacity - self.used

    @property
    def free_bytes(self) -> int:
        return self.capacity - self.used

    def entry(self, oid: bytes) -> FakeEntry | None:
        return self.objects.get(oid)

    def sealed(self, oid: bytes) -> FakeEntry | None:
        e = self.objects.get(oid)
        return e if e is not None and e.state is ObjectState.SEALED else None

    def state_of(self, oid: bytes) -> ObjectState | None:
        e = self.objects.get(oid)
        return e.state if e is not None else None

    def contains(self, oid: bytes) -> bool:
        e = self.objects.get(oid)
        return e is not None and e.state in (ObjectState.SEALED, ObjectState.SPILLED)

    def held(self, oid: bytes) -> bool:
        e = self.objects.get(oid)
        return e is not None and (e.leases > 0 or e.client_pins > 0 or e.mapped)

    def lease(self, oid: bytes) -> _FakeLease:
        e = self.sealed(oid)
        if e is None:
            raise ObjectNotFoundError(f"object {oid.hex()} is not sealed here")
        e.leases += 1
        self.log.append(("lease", oid))
        return _FakeLease(self, oid, e)

    def view(self, entry: Entry) -> memoryview:
        assert isinstance(entry, FakeEntry)
        return memoryview(entry.data)

    async def wait_sealed(self, oid: bytes) -> FakeEntry:
        while True:
            e = self.sealed(oid)
            if e is not None:
                return e
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(oid, []).append(fut)
            try:
                await fut
            finally:
                lst = self._waiters.get(oid)
                if lst is not None and fut in lst:
                    lst.remove(fut)
                    if not lst:
                        del self._waiters[oid]

    def create_secondary_now(self, oid: bytes, size: int, meta: bytes) -> FakeEntry | None:
        if oid in self.objects:
            raise ObjectStoreError(f"object {oid.hex()} exists already")
        if self.used + size > self.capacity:
            return None
        entry = FakeEntry(ObjectState.CREATING, size, meta, False, bytearray(size))
        self.objects[oid] = entry
        self.used += size
        self.log.append(("create", oid))
        return entry

    async def create_secondary(self, oid: bytes, size: int, meta: bytes) -> FakeEntry:
        if size > self.capacity:
            raise ObjectStoreFullError(f"{size} bytes never fit in {self.capacity}")
        while True:
            entry = self.create_secondary_now(oid, size, meta)
            if entry is not None:
                return entry
            self._space.clear()
            await self._space.wait()

    def seal_secondary(self, oid: bytes) -> None:
        e = self.objects[oid]
        if e.state is not ObjectState.CREATING:
            raise ObjectStoreError(f"seal of {oid.hex()} in state {e.state.name}")
        e.state = ObjectState.SEALED
        self.log.append(("seal", oid))
        self._wake(oid)

    def discard_partial(self, oid: bytes) -> None:
        e = self.objects.get(oid)
        if e is None or e.primary or e.state is not ObjectState.CREATING:
            return
        del self.objects[oid]
        self.log.append(("discard", oid))
        self._free(e.size)

    def invalidate_mappings(self, oids: Iterable[bytes]) -> None:
        self.invalidated.extend(oids)

    def free_spilled(self, oid: bytes) -> int:
        e = self.objects[oid]
        if self.held(oid):
            raise ObjectStoreError(f"object {oid.hex()} is still held; it cannot be freed")
        if e.state is not ObjectState.SEALED:
            raise ObjectStoreError(f"free of {oid.hex()} in state {e.state.name}")
        e.state = ObjectState.SPILLED
        e.segment = -1
        e.data = bytearray()
        self.log.append(("free_spilled", oid))
        self._free(e.size)
        return e.size

    async def allocate(self, size: int) -> Space:
        while self.used + size > self.capacity:
            if size > self.capacity:
                raise ObjectStoreFullError(f"{size} bytes never fit in {self.capacity}")
            self._space.clear()
            await self._space.wait()
        self.used += size
        seg = self._next_space
        self._next_space += 1
        self.spaces[seg] = bytearray(size)
        return Space(seg, 0, size)

    def space_view(self, space: Space) -> memoryview:
        return memoryview(self.spaces[space.segment])[space.offset : space.offset + space.size]

    def free_allocation(self, space: Space) -> None:
        del self.spaces[space.segment]
        self._free(space.size)

    def restored(self, oid: bytes, space: Space) -> None:
        e = self.objects[oid]
        if e.state is not ObjectState.SPILLED:
            raise ObjectStoreError(f"restore of {oid.hex()} in state {e.state.name}")
        e.data = self.spaces.pop(space.segment)
        e.state = ObjectState.SEALED
        e.segment = 0
        self.log.append(("restored", oid))
        self._wake(oid)

    def fail_waiters(self, oid: bytes, exc: ObjectStoreError) -> int:
        n = 0
        for fut in self._waiters.pop(oid, []):
            if not fut.done():
                fut.set_exception(exc)
                n += 1
        return n

    # -- what clients would do (tests drive these)
    def delete(self, oid: bytes) -> None:
        """A client's delete: the object goes once nothing holds it."""
        e = self.objects.pop(oid)
        if e.segment >= 0:
            self._free(e.size)


def _conforms(store: FakeStore) -> Store:
    """mypy checks here that FakeStore follows the Store protocol."""
    return store


# ----------------------------------------------------------------------------- directory


class DirectoryHooks(Protocol):
    """The node-side hooks of :class:`~objstore.directory.client.DirectoryClient`."""

    def added(self, oid: bytes, size: int, primary: bool, name: str = "") -> None: ...

    def removed(self, oid: bytes) -> None: ...

    def deleted(self, oid: bytes) -> None: ...

    def spilled(self, oid: bytes, url: str) -> None: ...


@dataclass(eq=False)
class FakeNode:
    """A node as its directory client sees it: a NodeView and a DirectoryListener.

    ``objects`` and ``spilled`` are what the full report after each
    registration reads; :meth:`add`, :meth:`remove`, :meth:`delete` and
    :meth:`spill` change them and tell the attached client's hooks, as the
    store does.  Everything the directory tells the node is kept in
    ``updates``, ``frees`` and ``dead``; :meth:`wait_for` waits for a
    condition on them.
    """

    objects: dict[bytes, tuple[int, bool, str]] = field(default_factory=dict)
    spilled: dict[bytes, str] = field(default_factory=dict)
    usage_now: Usage = field(default_factory=Usage)
    hooks: DirectoryHooks | None = None
    updates: list[ObjectRow] = field(default_factory=list)
    frees: list[bytes] = field(default_factory=list)
    dead: list[bytes] = field(default_factory=list)
    # How often each was read (full reports, heartbeats).
    snapshots: int = 0
    usage_reads: int = 0
    # Set (and replaced) whenever the directory told the node something.
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    # -- NodeView
    def snapshot(self) -> list[tuple[bytes, int, bool, str]]:
        self.snapshots += 1
        return [(oid, size, primary, name) for oid, (size, primary, name) in self.objects.items()]

    def spilled_snapshot(self) -> list[tuple[bytes, str]]:
        return list(self.spilled.items())

    def usage(self) -> Usage:
        self.usage_reads += 1
        return self.usage_now

    # -- DirectoryListener
    def on_update(self, rows: list[ObjectRow]) -> None:
        self.updates.extend(rows)
        self._wake()

    def on_free(self, ids: list[bytes]) -> None:
        self.frees.extend(ids)
        for oid in ids:
            self.objects.pop(oid, None)
            self.spilled.pop(oid, None)
        self._wake()

    def on_dead(self, node_ids: list[bytes]) -> None:
        self.dead.extend(node_ids)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- what the store would do (tests drive these)
    def add(self, oid: bytes, size: int = 10, primary: bool = True, name: str = "") -> None:
        self.objects[oid] = (size, primary, name)
        if self.hooks is not None:
            self.hooks.added(oid, size, primary, name)

    def remove(self, oid: bytes) -> None:
        del self.objects[oid]
        if self.hooks is not None:
            self.hooks.removed(oid)

    def delete(self, oid: bytes) -> None:
        self.objects.pop(oid, None)
        self.spilled.pop(oid, None)
        if self.hooks is not None:
            self.hooks.deleted(oid)

    def spill(self, oid: bytes, url: str) -> None:
        self.spilled[oid] = url
        if self.hooks is not None:
            self.hooks.spilled(oid, url)

    # -- waiting
    def rows_of(self, oid: bytes) -> list[ObjectRow]:
        """Every update received for ``oid``, oldest first."""
        return [r for r in self.updates if r.object_id == oid]

    async def wait_for(
        self, predicate: Callable[[], object], timeout: float = 10.0, what: str = ""
    ) -> None:
        """Wait until ``predicate()`` is true, re-checking after each notification."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"not within {timeout}s: {what or predicate!r} "
                f"(updates={self.updates!r}, frees={self.frees!r}, dead={self.dead!r})"
            ) from None


def _conforms_node(node: FakeNode) -> tuple[NodeView, DirectoryListener]:
    """mypy checks here that FakeNode follows both protocols."""
    return node, node
