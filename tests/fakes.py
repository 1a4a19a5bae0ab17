"""In-memory fakes of objstore's seams, kept in one place for the in-process tests.

* :class:`FakeStore` implements :class:`objstore.plasma.api.Store` over plain
  ``bytearray`` s, with a capacity, waiting gets, leases and a log of what was
  asked of it; :meth:`FakeStore.check` asserts that nothing leaked (no lease,
  no partial copy, no allocation left).
* :class:`FakeDirectory`, :class:`FakePuller`, :class:`FakeSpill`: what the
  node's object service talks to (``objstore.node.ports``), recording calls.
* :class:`FakePeers` (the transfer's peer transport), :class:`FakeSpillReader` and
  :class:`ScriptedPeer` (a raw data plane peer): see the transfer section.
* :class:`FakeNode` implements the directory client's
  :class:`~objstore.directory.api.NodeView` and
  :class:`~objstore.directory.api.DirectoryListener`: a node's objects and
  what the directory told it.

Each package's tests add their fakes below in a section of their own:

* spill: :class:`SpillStore` (a FakeStore that reports to a spill manager as
  the node's object service does) and :class:`StepBackend` (a spill backend
  that stops at chosen await points, for cancellation tests).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self

from objstore.auth import Credentials
from objstore.directory.api import DirectoryListener, NodeView
from objstore.errors import (
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectStoreError,
    ObjectStoreFullError,
)
from objstore.locations import LocationState, ObjectRow, Usage
from objstore.plasma.api import Entry, ObjectState, Space, Store
from objstore.spill.backends.base import Buffer, SpillBackend
from objstore.transfer.manager import SpillFetch
from objstore.transfer.peer import PeerTransport, Small, TransferError

__all__ = [
    "FakeEntry",
    "FakeStore",
    "FakeDirectory",
    "FakePuller",
    "FakeSpill",
    "Step",
    "FakePeers",
    "FakeSpillReader",
    "ScriptedPeer",
    "SpillStore",
    "StepBackend",
    "FakeNode",
    "DirectoryHooks",
]

# What in-process servers and clients prove themselves with (one token for all).
CREDS = Credentials.for_test()


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

    def lost(self, oid: bytes, exc: ObjectStoreError) -> int:
        """No owner to recreate anything here: the gets fail."""
        return self.fail_waiters(oid, exc)

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


# ----------------------------------------------------------------------------- node
# Fakes of what the node's object service talks to (objstore.node.ports).


@dataclass
class FakeDirectory:
    """The directory client as the object service sees it: records every hook call;
    names and deletes answered from ``names`` (name -> ObjectRow)."""

    host: str = "127.0.0.1"
    port: int = 1
    names: dict[str, ObjectRow] = field(default_factory=dict)
    calls: list[tuple[str, object]] = field(default_factory=list)
    watching: dict[bytes, int] = field(default_factory=dict)
    deleted_remote: list[bytes] = field(default_factory=list)

    def added(self, oid: bytes, size: int, primary: bool, name: str = "") -> None:
        self.calls.append(("added", oid))

    def removed(self, oid: bytes) -> None:
        self.calls.append(("removed", oid))

    def deleted(self, oid: bytes) -> None:
        self.calls.append(("deleted", oid))

    def spilled(self, oid: bytes, url: str) -> None:
        self.calls.append(("spilled", oid))

    def borrowed(self, oid: bytes) -> None:
        self.calls.append(("borrowed", oid))

    def unborrowed(self, oid: bytes) -> None:
        self.calls.append(("unborrowed", oid))

    def replicas(self, oid: bytes, count: int) -> None:
        self.calls.append(("replicas", oid))

    def recreatable(self, oid: bytes) -> None:
        self.calls.append(("recreatable", oid))

    def watch(self, oid: bytes) -> None:
        self.calls.append(("watch", oid))
        self.watching[oid] = self.watching.get(oid, 0) + 1

    def unwatch(self, oid: bytes) -> None:
        self.calls.append(("unwatch", oid))
        n = self.watching[oid] - 1
        if n:
            self.watching[oid] = n
        else:
            del self.watching[oid]

    async def reserve_name(self, name: str, oid: bytes, size: int) -> None:
        await asyncio.sleep(0)
        if name in self.names:
            raise ObjectExistsError(f"the name {name!r} is taken")
        self.names[name] = ObjectRow(oid, LocationState.PENDING, size, name=name)
        self.calls.append(("reserve", name))

    async def resolve_name(self, name: str) -> ObjectRow:
        await asyncio.sleep(0)
        row = self.names.get(name)
        if row is None:
            raise ObjectNotFoundError(f"no object is named {name!r}")
        return row

    async def delete(self, oids: list[bytes], names: list[str] = ()) -> int:  # type: ignore[assignment]
        await asyncio.sleep(0)
        self.deleted_remote.extend(oids)
        return len(oids)

    async def lookup(self, oids: list[bytes]) -> list[ObjectRow]:
        await asyncio.sleep(0)
        return [ObjectRow(oid, LocationState.UNKNOWN) for oid in oids]


@dataclass
class FakePuller:
    """The pulling side: records what the service asks for."""

    pulled: int = 0
    bytes_pulled: int = 0
    wanted: dict[bytes, int] = field(default_factory=dict)
    rows: list[ObjectRow] = field(default_factory=list)
    space: int = 0
    # Per object wanted by a get: the future a test fails to say "the pull stalled".
    failures: dict[bytes, asyncio.Future[None]] = field(default_factory=dict)

    def want(self, oid: bytes, priority: int) -> None:
        self.wanted[oid] = self.wanted.get(oid, 0) + 1

    def unwant(self, oid: bytes, priority: int) -> None:
        n = self.wanted[oid] - 1
        if n:
            self.wanted[oid] = n
        else:
            del self.wanted[oid]
            self.failures.pop(oid, None)

    def fetch_failure(self, oid: bytes) -> asyncio.Future[None]:
        assert oid in self.wanted, "fetch_failure() before want()"
        fut = self.failures.get(oid)
        if fut is None:
            fut = self.failures[oid] = asyncio.get_running_loop().create_future()
        return fut

    def on_locations(self, row: ObjectRow) -> None:
        self.rows.append(row)

    def space_freed(self) -> None:
        self.space += 1


@dataclass
class FakeSpill:
    """A spill manager that keeps 'spilled' bytes in a dict and restores on request
    (through the real store's allocate/restored)."""

    store: Any = None
    copies: dict[bytes, bytes] = field(default_factory=dict)
    calls: list[tuple[str, bytes]] = field(default_factory=list)
    last_error: ObjectStoreError | None = None
    spilled_bytes: int = 0

    def sealed(self, oid: bytes, entry: Entry) -> None:
        self.calls.append(("sealed", oid))

    def touched(self, oid: bytes, entry: Entry) -> None:
        self.calls.append(("touched", oid))

    def unheld(self, oid: bytes, entry: Entry) -> None:
        self.calls.append(("unheld", oid))

    def deleted(self, oid: bytes, entry: Entry) -> None:
        self.calls.append(("deleted", oid))

    def dropped(self, oid: bytes, entry: Entry) -> None:
        self.calls.append(("dropped", oid))
        self.copies.pop(oid, None)

    def spill(self, oid: bytes) -> None:
        """Spill a sealed, unheld primary now (tests call this)."""
        entry = self.store.sealed(oid)
        with self.store.view(entry) as v:
            self.copies[oid] = bytes(v)
        self.store.free_spilled(oid)

    def restore(self, oid: bytes) -> None:
        self.calls.append(("restore", oid))
        asyncio.get_running_loop().create_task(self._restore(oid))

    async def _restore(self, oid: bytes) -> None:
        data = self.copies[oid]
        space = await self.store.allocate(len(data))
        with self.store.space_view(space) as v:
            v[:] = data
        self.store.restored(oid, space)

    async def make_room(self, nbytes: int) -> int:
        return 0

    def stats(self) -> dict[str, int]:
        return dict.fromkeys(
            (
                "spilled_objects", "spilled_bytes", "spill_files", "bytes_written", "restored",
                "bytes_restored", "write_errors", "restore_errors", "files_deleted",
            ),
            0,
        )  # fmt: skip

    def url_of(self, oid: bytes) -> str:
        return f"mem://{oid.hex()}" if oid in self.copies else ""

    def copies_snapshot(self) -> list[tuple[bytes, str]]:
        return [(oid, self.url_of(oid)) for oid in self.copies]


# ----------------------------------------------------------------------------- transfer
#
# * :class:`FakePeers` implements :class:`objstore.transfer.peer.PeerTransport`
#   over FakeStores by address, with no sockets: each fetch passes through
#   steps where a test makes it slow (``delay``), fail (``fail``), stall
#   (``stall``), corrupt (``corrupt``) or cancelled at exactly that await
#   (``on_step``).
# * :class:`FakeSpillReader` implements :class:`objstore.transfer.manager.SpillFetch`
#   over a dict of URLs.
# * :class:`ScriptedPeer` is a raw TCP server on 127.0.0.1 port 0 whose
#   connections a test's coroutine answers byte by byte (bad CRCs, closing or
#   stalling sources).


@dataclass(frozen=True)
class Step:
    """One await of a fake fetch: what (``first``, ``body``, ``chunk``, ``many``), where, which."""

    what: str
    address: str
    oid: bytes
    offset: int = 0


class _FakeFirst:
    def __init__(self, peers: FakePeers, step: Step, entry: FakeEntry, chunk: int) -> None:
        self._peers = peers
        self._step = step
        self.size = entry.size
        self.meta = entry.meta
        self.length = min(chunk, entry.size)
        self._data = bytes(entry.data[: self.length])
        self._open = True
        peers.open_firsts.add(self)

    async def read_into(self, view: memoryview, deadline: float) -> None:
        if not self._open:
            raise AssertionError("first chunk read twice or after close")
        assert len(view) == self.length
        self._open = False
        self._peers.open_firsts.discard(self)
        s = self._step
        await self._peers._step(Step("body", s.address, s.oid), deadline)
        view[:] = self._data

    def close(self) -> None:
        self._open = False
        self._peers.open_firsts.discard(self)


class FakePeers:
    """A peer transport over :class:`FakeStore` s by address (see the section's comment)."""

    def __init__(self, stores: dict[str, FakeStore] | None = None) -> None:
        self.stores: dict[str, FakeStore] = stores if stores is not None else {}
        # Seconds every step takes (slow sources).
        self.delay = 0.0
        # address -> the error every step from it raises (failing sources).
        self.fail: dict[str, str] = {}
        # Addresses whose steps never end (stalled sources: the deadline ends them).
        self.stall: set[str] = set()
        # (address, object id) whose data fails its checksum.
        self.corrupt: set[tuple[str, bytes]] = set()
        # Awaited at every step (after the delay): a test cancels things here.
        self.on_step: Callable[[Step], Awaitable[None]] | None = None
        self.steps: list[Step] = []
        # Fetches running now, and first chunks handed out and not yet read or closed.
        self.in_flight = 0
        self.open_firsts: set[_FakeFirst] = set()
        self.closed = False

    async def _step(self, step: Step, deadline: float) -> None:
        self.steps.append(step)
        self.in_flight += 1
        try:
            async with asyncio.timeout_at(deadline):
                if self.delay:
                    await asyncio.sleep(self.delay)
                if step.address in self.stall:
                    await asyncio.Event().wait()
                if self.on_step is not None:
                    await self.on_step(step)
        except TimeoutError as exc:
            raise TransferError(f"{step.address}: no reply in time") from exc
        finally:
            self.in_flight -= 1
        if step.address in self.fail:
            raise TransferError(f"{step.address}: {self.fail[step.address]}")

    def _sealed(self, address: str, oid: bytes) -> FakeEntry:
        store = self.stores.get(address)
        if store is None:
            raise TransferError(f"{address}: connection refused")
        entry = store.sealed(oid)
        if entry is None:
            raise TransferError(f"{address}: source says not found")
        return entry

    async def fetch_first(
        self, address: str, oid: bytes, chunk: int, deadline: float
    ) -> _FakeFirst:
        step = Step("first", address, oid)
        await self._step(step, deadline)
        return _FakeFirst(self, step, self._sealed(address, oid), chunk)

    async def fetch_chunk(
        self, address: str, oid: bytes, offset: int, view: memoryview, deadline: float
    ) -> None:
        await self._step(Step("chunk", address, oid, offset), deadline)
        entry = self._sealed(address, oid)
        if offset + len(view) > entry.size:
            raise TransferError(f"{address}: chunk outside the object")
        if (address, oid) in self.corrupt:
            raise TransferError(f"{address}: chunk at {offset} failed its checksum")
        view[:] = entry.data[offset : offset + len(view)]

    async def fetch_many(self, address: str, oids: list[bytes], deadline: float) -> list[Small]:
        await self._step(Step("many", address, oids[0] if oids else b""), deadline)
        store = self.stores.get(address)
        if store is None:
            raise TransferError(f"{address}: connection refused")
        out = []
        for oid in oids:
            e = store.sealed(oid)
            if e is None:
                out.append(Small(0, b"", b"", "source says not found"))
            elif (address, oid) in self.corrupt:
                out.append(Small(e.size, e.meta, b"", "failed its checksum"))
            else:
                out.append(Small(e.size, e.meta, bytes(e.data)))
        return out

    def close(self) -> None:
        self.closed = True

    def check(self) -> None:
        """No fetch running, no first chunk left open."""
        assert self.in_flight == 0, f"{self.in_flight} fetches still running"
        assert not self.open_firsts, f"{len(self.open_firsts)} first chunks left open"


class FakeSpillReader:
    """Spill copies by URL, read into a store's sealed secondary copies."""

    def __init__(self, store: FakeStore) -> None:
        self.store = store
        # url -> (metadata, bytes).
        self.copies: dict[str, tuple[bytes, bytes]] = {}
        self.fail: set[str] = set()
        self.reads = 0

    def readable(self, url: str) -> bool:
        return url.startswith("fake://")

    async def fetch(self, oid: bytes, url: str) -> int:
        if url in self.fail or url not in self.copies:
            raise ObjectStoreError(f"{url}: cannot read")
        meta, data = self.copies[url]
        await asyncio.sleep(0)
        entry = await self.store.create_secondary(oid, len(data), meta)
        entry.data[:] = data
        self.store.seal_secondary(oid)
        self.reads += 1
        return len(data)


class ScriptedPeer:
    """A TCP server on 127.0.0.1 port 0; ``handler(reader, writer)`` answers each connection."""

    def __init__(
        self, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
    ) -> None:
        self.handler = handler
        self.server: asyncio.Server | None = None
        self.connections = 0
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def __aenter__(self) -> Self:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self._writers):
            w.close()
        await self.server.wait_closed()


def _conforms_transfer(
    peers: FakePeers, spill: FakeSpillReader
) -> tuple[PeerTransport, SpillFetch]:
    """mypy checks here that the transfer fakes follow their protocols."""
    return peers, spill


# --- spill


class SpillEvents(Protocol):
    """What :class:`SpillStore` tells its spiller (``SpillManager``'s upward calls)."""

    def sealed(self, oid: bytes, entry: Entry) -> None: ...
    def touched(self, oid: bytes, entry: Entry) -> None: ...
    def unheld(self, oid: bytes, entry: Entry) -> None: ...
    def deleted(self, oid: bytes, entry: Entry) -> None: ...
    def dropped(self, oid: bytes, entry: Entry) -> None: ...
    def restore(self, oid: bytes) -> None: ...
    async def make_room(self, nbytes: int) -> int: ...


@dataclass
class SpillStore(FakeStore):
    """A :class:`FakeStore` that tells a spiller what happens, as the node's object service.

    Set ``spiller`` (a ``SpillManager``).  Puts of primaries are reported
    sealed; :meth:`get` reads like a client's get (a restore if spilled, then a
    pin while it copies); :meth:`delete` deletes like a client's delete (a held
    object stays, DELETED, until its last holder goes); :meth:`create` makes
    room through the spiller first, as the real store's create does.  With
    ``answer_invalidations`` the owners let go of their mappings on the next
    loop tick after an invalidation.
    """

    spiller: SpillEvents | None = None
    answer_invalidations: bool = False

    def put(self, oid: bytes, data: bytes, meta: bytes = b"m", primary: bool = True) -> FakeEntry:
        entry = super().put(oid, data, meta, primary)
        if self.spiller is not None and primary:
            self.spiller.sealed(oid, entry)
        return entry

    async def create(self, oid: bytes, data: bytes, meta: bytes = b"m") -> FakeEntry:
        """A client's put of a primary: room is made by spilling, else ObjectStoreFullError."""
        if self.largest_free < len(data) and self.spiller is not None:
            await self.spiller.make_room(len(data))
        if self.largest_free < len(data):
            raise ObjectStoreFullError(
                f"no room for {len(data)} bytes: {self.used} of {self.capacity} in use"
            )
        return self.put(oid, data, meta)

    def pin(self, oid: bytes) -> None:
        """A client holds a view of the object."""
        self.objects[oid].client_pins += 1

    def unpin(self, oid: bytes) -> None:
        """A client's view went."""
        entry = self.objects[oid]
        assert entry.client_pins > 0
        entry.client_pins -= 1
        self._maybe_unheld(oid, entry)

    async def get(self, oid: bytes, timeout: float = 10.0) -> bytes:
        """A client's get: restored first if spilled; its bytes copied under a pin."""
        entry = self.objects.get(oid)
        if entry is None or entry.state is ObjectState.DELETED:
            raise ObjectNotFoundError(f"object {oid.hex()} is not here")
        if entry.state is ObjectState.SPILLED and self.spiller is not None:
            self.spiller.restore(oid)
        async with asyncio.timeout(timeout):
            entry = await self.wait_sealed(oid)
        if self.spiller is not None and entry.primary:
            self.spiller.touched(oid, entry)
        entry.client_pins += 1
        try:
            return bytes(entry.data)
        finally:
            self.unpin(oid)

    def delete(self, oid: bytes, tell: bool = True) -> None:
        """A client's delete (``tell=False``: the spiller is not told before the drop)."""
        entry = self.objects[oid]
        if self.spiller is not None and tell:
            self.spiller.deleted(oid, entry)
        self.log.append(("delete", oid))
        if self.held(oid):
            entry.state = ObjectState.DELETED
        else:
            self._drop(oid)

    def _drop(self, oid: bytes) -> None:
        entry = self.objects.pop(oid)
        if entry.segment >= 0:
            self._free(entry.size)
        if self.spiller is not None and entry.primary:
            self.spiller.dropped(oid, entry)

    def _maybe_unheld(self, oid: bytes, entry: FakeEntry) -> None:
        super()._maybe_unheld(oid, entry)
        if self.objects.get(oid) is not entry or self.held(oid):
            return
        if entry.state is ObjectState.DELETED:
            self._drop(oid)
        elif entry.state is ObjectState.SEALED and entry.primary and self.spiller is not None:
            self.spiller.unheld(oid, entry)

    def invalidate_mappings(self, oids: Iterable[bytes]) -> None:
        oids = list(oids)
        super().invalidate_mappings(oids)
        if self.answer_invalidations:
            for oid in oids:
                asyncio.get_running_loop().call_soon(self._unmap, oid)

    def _unmap(self, oid: bytes) -> None:
        entry = self.objects.get(oid)
        if entry is not None and entry.mapped:
            entry.mapped = False
            self._maybe_unheld(oid, entry)

    def spilled(self) -> list[bytes]:
        """The objects in state SPILLED."""
        return [o for o, e in self.objects.items() if e.state is ObjectState.SPILLED]


class StepBackend:
    """A ``SpillBackend`` around a real one that can stop at each of its await points.

    Every call passes two steps, ``"<method>:before"`` and ``"<method>:after"``
    the real call, recorded in ``steps``.  ``cancel_at = k`` blocks the k-th
    step forever (``reached`` is set; the test cancels the task); ``pause_at =
    name`` stops at the next step of that name until ``resume`` is set
    (``paused`` is set); ``fail[name]`` raises that error at that step once.
    A write stopped after the real write deletes its file, as a real backend's
    cancelled write does.
    """

    def __init__(self, inner: SpillBackend) -> None:
        self.inner = inner
        self.scheme = inner.scheme
        self.steps: list[str] = []
        self.cancel_at: int | None = None
        self.reached = asyncio.Event()
        self.pause_at: str | None = None
        self.paused = asyncio.Event()
        self.resume = asyncio.Event()
        self.fail: dict[str, BaseException] = {}

    async def _step(self, name: str) -> None:
        self.steps.append(name)
        exc = self.fail.pop(name, None)
        if exc is not None:
            raise exc
        if self.pause_at == name:
            self.pause_at = None
            self.paused.set()
            await self.resume.wait()
        if self.cancel_at == len(self.steps):
            self.reached.set()
            await asyncio.get_running_loop().create_future()  # until cancelled
        await asyncio.sleep(0)

    async def start(self) -> int:
        return await self.inner.start()

    async def write(self, parts: Sequence[Buffer], total: int) -> str:
        await self._step("write:before")
        base = await self.inner.write(parts, total)
        try:
            await self._step("write:after")
        except BaseException:
            await self.inner.delete(base)
            raise
        return base

    async def read_into(self, base: str, offset: int, dests: Sequence[memoryview]) -> None:
        await self._step("read:before")
        await self.inner.read_into(base, offset, dests)
        await self._step("read:after")

    async def delete(self, base: str) -> None:
        await self._step("delete:before")
        await self.inner.delete(base)
        await self._step("delete:after")

    async def close(self) -> None:
        await self.inner.close()


def _conforms_backend(backend: StepBackend) -> SpillBackend:
    """mypy checks here that StepBackend follows the SpillBackend protocol."""
    return backend


# ----------------------------------------------------------------------------- directory


class DirectoryHooks(Protocol):
    """The node-side hooks of :class:`~objstore.directory.client.DirectoryClient`."""

    def added(self, oid: bytes, size: int, primary: bool, name: str = "") -> None: ...

    def removed(self, oid: bytes) -> None: ...

    def deleted(self, oid: bytes) -> None: ...

    def spilled(self, oid: bytes, url: str) -> None: ...

    def borrowed(self, oid: bytes) -> None: ...

    def unborrowed(self, oid: bytes) -> None: ...

    def replicas(self, oid: bytes, count: int) -> None: ...

    def recreatable(self, oid: bytes) -> None: ...


@dataclass(eq=False)
class FakeNode:
    """A node as its directory client sees it: a NodeView and a DirectoryListener.

    ``objects`` and ``spilled`` are what the full report after each
    registration reads; :meth:`add`, :meth:`remove`, :meth:`delete` and
    :meth:`spill` change them and tell the attached client's hooks, as the
    store does; ``borrows`` (what :meth:`borrow` and :meth:`unborrow`
    change) is the node's borrow set for the full report.  Everything the
    directory tells the node is kept in ``updates``, ``frees``, ``dead``,
    ``borrow_notes`` (("borrowed" | "unborrowed", id) in order) and
    ``lent`` (the objects put here the directory says are borrowed now);
    :meth:`wait_for` waits for a condition on them.
    """

    objects: dict[bytes, tuple[int, bool, str]] = field(default_factory=dict)
    spilled: dict[bytes, str] = field(default_factory=dict)
    usage_now: Usage = field(default_factory=Usage)
    hooks: DirectoryHooks | None = None
    updates: list[ObjectRow] = field(default_factory=list)
    frees: list[bytes] = field(default_factory=list)
    dead: list[bytes] = field(default_factory=list)
    borrows: set[bytes] = field(default_factory=set)
    borrow_notes: list[tuple[str, bytes]] = field(default_factory=list)
    lent: set[bytes] = field(default_factory=set)
    # Replicas: counts of objects put here, and ids the directory asked this node to keep.
    replicated: dict[bytes, int] = field(default_factory=dict)
    replicate_asks: list[bytes] = field(default_factory=list)
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

    def borrowed_snapshot(self) -> list[bytes]:
        return list(self.borrows)

    def replicas_snapshot(self) -> list[tuple[bytes, int]]:
        return list(self.replicated.items())

    def recreatable_snapshot(self) -> list[bytes]:
        return []

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

    def on_borrowed(self, ids: list[bytes]) -> None:
        self.borrow_notes.extend(("borrowed", oid) for oid in ids)
        self.lent.update(ids)
        self._wake()

    def on_unborrowed(self, ids: list[bytes]) -> None:
        self.borrow_notes.extend(("unborrowed", oid) for oid in ids)
        self.lent.difference_update(ids)
        self._wake()

    def on_replicate(self, ids: list[bytes]) -> None:
        self.replicate_asks.extend(ids)
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

    def borrow(self, oid: bytes) -> None:
        self.borrows.add(oid)
        if self.hooks is not None:
            self.hooks.borrowed(oid)

    def unborrow(self, oid: bytes) -> None:
        self.borrows.discard(oid)
        if self.hooks is not None:
            self.hooks.unborrowed(oid)

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
                f"(updates={self.updates!r}, frees={self.frees!r}, dead={self.dead!r}, "
                f"borrow_notes={self.borrow_notes!r})"
            ) from None


def _conforms_node(node: FakeNode) -> tuple[NodeView, DirectoryListener]:
    """mypy checks here that FakeNode follows both protocols."""
    return node, node
