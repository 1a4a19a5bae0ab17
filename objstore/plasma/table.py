"""The node's object table, pure: entries, states, pins, owners and names.

:class:`ObjectTable` holds no memory, no sockets, no clock and no asyncio.  The
async store (:mod:`objstore.plasma.store`) calls it and applies what it
returns: an :class:`Actions` of ranges to give back to the allocator, clients
to notify, copies that became (or stopped being) evictable, primaries that
nobody holds any more, objects that left the table.  :meth:`ObjectTable.check`
asserts every invariant below; the tests call it after each step.

Ownership and pins
------------------
* The client that creates an object *owns* it: the object lives while that
  client is connected, or until it is deleted.  A named object outlives its
  owner's connection and lives until it is deleted.
* Every client that gets an object holds a *pin* on it (counted per client)
  until it tells the node it has no view left (``release``).  The node's own
  reads (a chunk being sent, a record being spilled) hold pins of the node's
  own client, :attr:`ObjectTable.node`.  The owner also keeps the location it
  wrote to (``mapped``): it reads its own object without asking, until the
  node invalidates that mapping (the object is deleted or spilled) and the
  owner answers with a release once its views are gone.
* Memory is given back only when the object is deleted (or aborted, evicted,
  spilled) and neither a pin nor the owner's mapping holds it: a zero-copy
  view can never see its bytes reused.
* Objects put on this node are *primary* copies, never evicted (spilled
  instead).  Secondary copies (pulled from other nodes) that are sealed, in
  the arena, without owner and without pins are *evictable*.

Invariants (checked by :meth:`ObjectTable.check`)
-------------------------------------------------
* ``names`` and ``names_by_id`` mirror each other and name only objects in
  ``objects`` that are not DELETED.
* ``entry.pinners`` is None or a non-empty dict; for every client in it,
  ``client.pinned[oid]`` equals its count, and the other way round.
* ``pinned_bytes`` is the sum of the sizes of entries with pinners;
  ``n_creating`` and ``n_deleted`` count the entries in those states.
* ``evictable`` is exactly the set of sealed, unowned, unpinned secondary
  copies in the arena (segment 0).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator

from objstore.errors import (
    ObjectExistsError,
    ObjectFreedError,
    ObjectLostError,
    ObjectNotFoundError,
    ObjectStoreError,
)
from objstore.ids import OBJECT_ID_SIZE
from objstore.plasma.lifecycle import ObjectEvent, ObjectState, transition

__all__ = ["ObjectTable", "ObjectEntry", "ClientState", "Actions", "META_INTERN_MAX"]

_CREATING = ObjectState.CREATING
_SEALED = ObjectState.SEALED
_DELETED = ObjectState.DELETED
_SPILLED = ObjectState.SPILLED


def _freed(oid: bytes) -> ObjectFreedError:
    return ObjectFreedError(
        f"object {oid.hex()} was freed: it was deleted, or no reference to it was left"
    )


#: Metadata values up to this size are shared between entries (format tags).
META_INTERN_MAX = 64
_META_INTERN_COUNT = 1024


def _no_recreate(_ids: list[bytes]) -> None:
    pass


class ClientState:
    """What the node knows about one connected client."""

    __slots__ = (
        "client_id",
        "pid",
        "owned",
        "stale",
        "pinned",
        "invalidate",
        "recreate",
        "closed",
    )

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
        # Called with ids of deleted or spilled objects this client holds.
        self.invalidate = invalidate
        # Called with ids of lost objects this client put with recreate=.
        self.recreate: Callable[[list[bytes]], None] = _no_recreate
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
        # 0: the arena; > 0: a fallback segment; -1: spilled (holds no memory).
        self.segment = segment
        self.offset = offset
        self.size = size
        self.meta = meta
        self.owner = owner
        # None, or client -> pin count.
        self.pinners: dict[ClientState, int] | None = None
        self.primary = primary
        # The owner reads the object through the location it wrote to, without
        # pins, until it answers an invalidation with a release.
        self.mapped = owner is not None

    def __repr__(self) -> str:
        return (
            f"<entry {self.state.name} {self.size}B seg={self.segment}@{self.offset}"
            f"{' primary' if self.primary else ''}>"
        )


class Actions:
    """What one call into the table asks its caller to do, in order of kind.

    Lists are made on first use: most calls leave most of them empty.
    """

    __slots__ = ("free", "notify", "evictable", "unevictable", "unheld", "dropped", "deleted")

    def __init__(self) -> None:
        # (segment, offset, size) to give back to the memory part.
        self.free: list[tuple[int, int, int]] | None = None
        # client -> ids it must stop reading (an invalidation to send).
        self.notify: dict[ClientState, list[bytes]] | None = None
        # Secondaries that became evictable (id, size) / stopped being evictable.
        self.evictable: list[tuple[bytes, int]] | None = None
        self.unevictable: list[bytes] | None = None
        # Sealed primaries that nobody holds any more.
        self.unheld: list[tuple[bytes, ObjectEntry]] | None = None
        # Objects that left the table.
        self.dropped: list[tuple[bytes, ObjectEntry]] | None = None
        # Objects this call deleted.
        self.deleted: list[tuple[bytes, ObjectEntry]] | None = None

    def _free(self, segment: int, offset: int, size: int) -> None:
        if segment < 0:
            return  # spilled: holds no memory
        if self.free is None:
            self.free = []
        self.free.append((segment, offset, size))

    def _notify(self, client: ClientState, oid: bytes) -> None:
        if self.notify is None:
            self.notify = {}
        self.notify.setdefault(client, []).append(oid)

    def __repr__(self) -> str:
        parts = [f"{k}={getattr(self, k)!r}" for k in self.__slots__ if getattr(self, k)]
        return f"<Actions {' '.join(parts)}>"


class ObjectTable:
    """The entries of one node; see the module docstring."""

    def __init__(self, deleted_memory: int = 65536) -> None:
        # Every live object (CREATING, SEALED, SPILLED, or DELETED but still held).
        self.objects: dict[bytes, ObjectEntry] = {}
        # name -> object id and back; every id here is in `objects` and not DELETED.
        self.names: dict[str, bytes] = {}
        self.names_by_id: dict[bytes, str] = {}
        # Ids of objects recently deleted (False) or aborted unsealed (True), so a
        # get of one fails at once instead of waiting for an object that is gone.
        self._deleted: OrderedDict[bytes, bool] = OrderedDict()
        self._deleted_max = deleted_memory
        # Small metadata values shared between entries (a handful of format tags).
        self._metas: dict[bytes, bytes] = {}
        # Ids of the sealed, unowned, unpinned secondary copies in the arena.
        self.evictable: set[bytes] = set()
        # The node's own pins (leases): a client that never disconnects.
        self.node = ClientState(0, lambda ids: None)
        self.pinned_bytes = 0
        self.n_creating = 0
        self.n_deleted = 0
        self.puts = 0
        self.gets = 0
        self.evictions = 0

    # ------------------------------------------------------------ queries
    def get(self, oid: bytes) -> ObjectEntry | None:
        """The entry in any state, or None."""
        return self.objects.get(oid)

    def sealed(self, oid: bytes) -> ObjectEntry | None:
        """The entry if it is SEALED, else None."""
        entry = self.objects.get(oid)
        return entry if entry is not None and entry.state is _SEALED else None

    def readable(self, oid: bytes) -> ObjectEntry | None:
        """For a get: the SEALED entry, None if it is not sealed here (yet), or the
        error of an object that is gone (deleted, or aborted before its seal)."""
        entry = self.objects.get(oid)
        if entry is not None:
            if entry.state is _SEALED:
                return entry
            if entry.state is _DELETED:
                raise _freed(oid)
            return None
        aborted = self._deleted.get(oid)
        if aborted is not None:
            if aborted:
                raise ObjectLostError(
                    f"object {oid.hex()} was never sealed: its creator aborted it or went away"
                )
            raise _freed(oid)
        self.check_id(oid)
        return None

    def state_of(self, oid: bytes) -> ObjectState | None:
        entry = self.objects.get(oid)
        return entry.state if entry is not None else None

    def contains(self, oid: bytes) -> bool:
        """Whether a sealed copy is here (in memory, or spilled and restorable)."""
        entry = self.objects.get(oid)
        return entry is not None and (entry.state is _SEALED or entry.state is _SPILLED)

    def was_deleted(self, oid: bytes) -> bool:
        """Whether this node deleted (or aborted) the object recently."""
        return oid in self._deleted

    @staticmethod
    def held(entry: ObjectEntry) -> bool:
        """Whether a view may be reading the object (a pin, or the owner's mapping)."""
        return entry.pinners is not None or entry.mapped

    def lookup_name(self, name: str) -> bytes:
        oid = self.names.get(name)
        if oid is None:
            raise ObjectNotFoundError(f"no object is named {name!r}")
        return oid

    @staticmethod
    def check_id(oid: bytes) -> None:
        if len(oid) != OBJECT_ID_SIZE:
            raise ObjectStoreError(f"object ids are {OBJECT_ID_SIZE} bytes, got {len(oid)}")

    def snapshot(self) -> list[tuple[bytes, int, bool, str]]:
        """Every sealed object as (id, size, primary, name), for a full report."""
        names = self.names_by_id
        return [
            (oid, e.size, e.primary, names.get(oid, ""))
            for oid, e in self.objects.items()
            if e.state is _SEALED or e.state is _SPILLED
        ]

    def iter_objects(self, limit: int = 0) -> Iterator[tuple[bytes, ObjectEntry]]:
        """Objects in the table, at most ``limit`` (0: all)."""
        for i, item in enumerate(self.objects.items()):
            if limit and i >= limit:
                return
            yield item

    # ------------------------------------------------------------ create / seal / abort
    def precheck_create(self, oid: bytes, name: str, client: ClientState | None) -> None:
        """Raise what a create of ``oid`` (named ``name``) by ``client`` would fail with."""
        self.check_id(oid)
        if oid in self.objects:
            raise ObjectExistsError(f"object {oid.hex()} exists already")
        if name:
            taken = self.names.get(name)
            if taken is not None:
                raise ObjectExistsError(f"the name {name!r} is taken by object {taken.hex()}")
        if client is not None and client.closed:
            raise ObjectStoreError("client disconnected")

    def _canonical_meta(self, meta: bytes) -> bytes:
        if len(meta) > META_INTERN_MAX:
            return meta  # freed with its entry
        canon = self._metas.get(meta)
        if canon is None:
            if len(self._metas) < _META_INTERN_COUNT:
                self._metas[meta] = meta
            return meta
        return canon

    def register(
        self,
        oid: bytes,
        segment: int,
        offset: int,
        size: int,
        meta: bytes,
        client: ClientState | None,
        name: str,
        primary: bool,
    ) -> ObjectEntry:
        """A new object in state CREATING at (segment, offset) (checked by the caller)."""
        entry = ObjectEntry(segment, offset, size, self._canonical_meta(meta), client, primary)
        self.objects[oid] = entry
        self.n_creating += 1
        if client is not None:
            client.owned.append(oid)
        if name:
            self.names[name] = oid
            self.names_by_id[oid] = name
        return entry

    def seal(self, oid: bytes, client: ClientState | None) -> tuple[ObjectEntry, bool]:
        """Make a CREATING object SEALED; returns (entry, whether it is evictable now)."""
        entry = self.objects.get(oid)
        if entry is None:
            raise ObjectNotFoundError(f"cannot seal unknown object {oid.hex()}")
        if client is not None and entry.owner is not client:
            raise ObjectStoreError(f"object {oid.hex()} was created by another client")
        entry.state = transition(entry.state, ObjectEvent.SEAL, oid)
        self.n_creating -= 1
        self.puts += 1
        return entry, self._becomes_evictable(oid, entry)

    def abort(self, oid: bytes, client: ClientState | None, out: Actions) -> ObjectEntry | None:
        """Drop a CREATING object (by its creator, or the node); None if it is not here."""
        entry = self.objects.get(oid)
        if entry is None:
            return None
        if client is not None and entry.owner is not client:
            raise ObjectStoreError(f"object {oid.hex()} was created by another client")
        entry.state = transition(entry.state, ObjectEvent.ABORT, oid)
        self._drop(oid, entry, out)
        self._remember_deleted(oid, aborted=True)
        return entry

    def discard_partial(self, oid: bytes, out: Actions) -> ObjectEntry | None:
        """Drop a secondary copy that failed while being written (not remembered:
        gets waiting for the object keep waiting for another copy)."""
        entry = self.objects.get(oid)
        if entry is None or entry.primary or entry.state is not _CREATING:
            return None
        entry.state = transition(entry.state, ObjectEvent.ABORT, oid)
        self._drop(oid, entry, out)
        return entry

    # ------------------------------------------------------------ pins
    def pin(self, oid: bytes, entry: ObjectEntry, client: ClientState) -> bool:
        """``client`` holds one more view; True if the object was evictable until now."""
        pinners = entry.pinners
        was_evictable = False
        if pinners is None:
            entry.pinners = pinners = {}
            self.pinned_bytes += entry.size
            if oid in self.evictable:
                self.evictable.discard(oid)
                was_evictable = True
        pinners[client] = pinners.get(client, 0) + 1
        client.pinned[oid] = client.pinned.get(oid, 0) + 1
        return was_evictable

    def unpin(self, oid: bytes, client: ClientState, out: Actions, n: int = 1) -> None:
        """``client`` holds ``n`` views fewer (never the owner's mapping: see :meth:`release`)."""
        count = client.pinned.get(oid, 0)
        if not count:
            return
        entry = self.objects.get(oid)
        if entry is None:
            client.pinned.pop(oid, None)
            return
        left = count - n
        if left > 0:
            client.pinned[oid] = left
            assert entry.pinners is not None
            entry.pinners[client] = left
            return
        client.pinned.pop(oid, None)
        pinners = entry.pinners
        if pinners is not None:
            pinners.pop(client, None)
            if not pinners:
                entry.pinners = None
                self.pinned_bytes -= entry.size
        self._after_unhold(oid, entry, out)

    def release(self, oid: bytes, client: ClientState, out: Actions) -> None:
        """A client's release: one view fewer, or (the owner, holding no pin) its
        answer to an invalidation: it no longer reads through its own mapping."""
        if client.pinned.get(oid):
            self.unpin(oid, client, out)
            return
        entry = self.objects.get(oid)
        if entry is None:
            client.pinned.pop(oid, None)
            return
        if entry.owner is client and entry.mapped:
            entry.mapped = False
            if entry.state is _DELETED:
                entry.owner = None
            self._after_unhold(oid, entry, out)

    def _after_unhold(self, oid: bytes, entry: ObjectEntry, out: Actions) -> None:
        """A pin or the mapping went: free, make evictable, or report unheld."""
        if entry.state is _DELETED:
            self._maybe_free(oid, entry, out)
            return
        if entry.pinners is not None:
            return
        if not entry.primary:
            if self._becomes_evictable(oid, entry):
                if out.evictable is None:
                    out.evictable = []
                out.evictable.append((oid, entry.size))
        elif entry.state is _SEALED and not entry.mapped:
            if out.unheld is None:
                out.unheld = []
            out.unheld.append((oid, entry))

    def _becomes_evictable(self, oid: bytes, entry: ObjectEntry) -> bool:
        # Only arena copies: evicting a fallback segment frees no arena memory.
        if (
            not entry.primary
            and entry.segment == 0
            and entry.state is _SEALED
            and entry.owner is None
            and entry.pinners is None
            and oid not in self.evictable
        ):
            self.evictable.add(oid)
            return True
        return False

    def evict(self, oid: bytes, out: Actions) -> ObjectEntry:
        """Evict an evictable secondary copy (its memory goes back at once)."""
        entry = self.objects[oid]
        if oid not in self.evictable:
            raise ObjectStoreError(f"object {oid.hex()} is not evictable")
        self.evictable.discard(oid)
        entry.state = transition(entry.state, ObjectEvent.EVICT, oid)
        self.evictions += 1
        self._drop(oid, entry, out)
        return entry

    # ------------------------------------------------------------ spill / restore
    def spill(self, oid: bytes, out: Actions) -> ObjectEntry:
        """A sealed primary whose bytes are in a spill file, held by nobody: its
        memory goes back (state SPILLED)."""
        entry = self.objects.get(oid)
        if entry is None:
            raise ObjectNotFoundError(f"object {oid.hex()} is not here")
        if self.held(entry):
            raise ObjectStoreError(f"object {oid.hex()} is still held; it cannot be freed")
        entry.state = transition(entry.state, ObjectEvent.SPILL, oid)
        out._free(entry.segment, entry.offset, entry.size)
        entry.segment, entry.offset = -1, 0
        return entry

    def restore(self, oid: bytes, segment: int, offset: int) -> ObjectEntry:
        """A SPILLED object's bytes are back at (segment, offset): SEALED again."""
        entry = self.objects[oid]
        entry.state = transition(entry.state, ObjectEvent.RESTORE, oid)
        entry.segment, entry.offset = segment, offset
        return entry

    def mapped_owners(self, oids: Iterable[bytes]) -> dict[ClientState, list[bytes]]:
        """The live owners that read these objects through their own mapping."""
        notify: dict[ClientState, list[bytes]] = {}
        for oid in oids:
            entry = self.objects.get(oid)
            owner = entry.owner if entry is not None and entry.mapped else None
            if owner is not None and not owner.closed:
                notify.setdefault(owner, []).append(oid)
        return notify

    # ------------------------------------------------------------ delete
    def delete(self, oid: bytes, out: Actions) -> bool:
        """Delete an object: no new gets; its memory goes once nobody holds it."""
        entry = self.objects.get(oid)
        if entry is None or entry.state is _DELETED:
            return False
        if entry.state is _CREATING:
            raise ObjectStoreError(
                f"object {oid.hex()} is still being written; delete it once it is sealed"
            )
        entry.state = transition(entry.state, ObjectEvent.DELETE, oid)
        self.n_deleted += 1
        name = self.names_by_id.pop(oid, None)
        if name is not None:
            del self.names[name]
        if oid in self.evictable:
            self.evictable.discard(oid)
            if out.unevictable is None:
                out.unevictable = []
            out.unevictable.append(oid)
        self._remember_deleted(oid)
        if out.deleted is None:
            out.deleted = []
        out.deleted.append((oid, entry))
        if entry.owner is not None:
            out._notify(entry.owner, oid)
            entry.owner.stale += 1
        if entry.pinners:
            for client in entry.pinners:
                if client is not entry.owner and client is not self.node:
                    out._notify(client, oid)
        self._maybe_free(oid, entry, out)
        return True

    def _maybe_free(self, oid: bytes, entry: ObjectEntry, out: Actions) -> None:
        if entry.state is _DELETED and not entry.mapped and entry.pinners is None:
            entry.state = transition(entry.state, ObjectEvent.RELEASE_LAST, oid)
            self.n_deleted -= 1
            self._drop(oid, entry, out)

    def _drop(self, oid: bytes, entry: ObjectEntry, out: Actions) -> None:
        del self.objects[oid]
        if entry.state is _CREATING or entry.state is ObjectState.ABORTED:
            self.n_creating -= 1
        name = self.names_by_id.pop(oid, None)
        if name is not None:
            del self.names[name]
        if entry.pinners is not None:
            self.pinned_bytes -= entry.size
            for client in entry.pinners:
                client.pinned.pop(oid, None)
            entry.pinners = None
        out._free(entry.segment, entry.offset, entry.size)
        if out.dropped is None:
            out.dropped = []
        out.dropped.append((oid, entry))

    def _remember_deleted(self, oid: bytes, aborted: bool = False) -> None:
        if self._deleted_max <= 0:
            return
        self._deleted[oid] = aborted
        if len(self._deleted) > self._deleted_max:
            self._deleted.popitem(last=False)

    # ------------------------------------------------------------ clients
    def disconnect(self, client: ClientState, out: Actions) -> None:
        """A client went away: its pins go now; its objects in :meth:`reap_one`."""
        client.closed = True
        for oid, count in list(client.pinned.items()):
            if oid in self.objects:
                self.unpin(oid, client, out, count)
        client.pinned.clear()

    def reap_one(
        self,
        oid: bytes,
        client: ClientState,
        out: Actions,
        keep: Callable[[bytes], bool] | None = None,
    ) -> str:
        """One object a gone client owned: 'aborted', 'freed', or '' (kept or not its).

        ``keep(oid)``: something else still refers to it (reference counting),
        so it outlives its owner's connection like a named object.
        """
        entry = self.objects.get(oid)
        if entry is None or entry.owner is not client:
            return ""
        if entry.state is _CREATING:
            self.abort(oid, None, out)
            return "aborted"
        entry.owner = None
        entry.mapped = False
        if entry.state is _DELETED:
            self._maybe_free(oid, entry, out)
            return ""
        if oid not in self.names_by_id and (keep is None or not keep(oid)):
            self.delete(oid, out)
            return "freed"
        # A named (or still referred to) object outlives its owner.
        if not entry.primary and self._becomes_evictable(oid, entry):
            if out.evictable is None:
                out.evictable = []
            out.evictable.append((oid, entry.size))
        elif entry.primary and entry.state is _SEALED and entry.pinners is None:
            if out.unheld is None:
                out.unheld = []
            out.unheld.append((oid, entry))
        return ""

    def compact_owned(self, client: ClientState) -> None:
        """Drop ids of objects the client no longer owns from its list (amortized)."""
        objects = self.objects
        client.owned = [
            oid for oid in client.owned if (e := objects.get(oid)) is not None and e.owner is client
        ]
        client.stale = 0

    # ------------------------------------------------------------ checks
    def check(self) -> None:
        """Assert the invariants of the module docstring (tests)."""
        objs = self.objects
        creating = sum(1 for e in objs.values() if e.state is _CREATING)
        deleted = sum(1 for e in objs.values() if e.state is _DELETED)
        assert self.n_creating == creating, (self.n_creating, creating)
        assert self.n_deleted == deleted, (self.n_deleted, deleted)
        assert all(e.state in (_CREATING, _SEALED, _SPILLED, _DELETED) for e in objs.values()), (
            "an entry in a terminal state is still in the table"
        )
        assert len(self.names) == len(self.names_by_id)
        for name, oid in self.names.items():
            assert self.names_by_id[oid] == name
            assert oid in objs and objs[oid].state is not _DELETED
        pinned = 0
        clients: set[ClientState] = set()
        for oid, e in objs.items():
            assert not e.mapped or e.owner is not None, f"{oid.hex()} mapped without an owner"
            assert (e.segment < 0) == (e.state is _SPILLED), f"{oid.hex()} {e!r}"
            if e.pinners is not None:
                assert e.pinners, "an empty pinners dict must be None"
                pinned += e.size
                for client, count in e.pinners.items():
                    assert count > 0
                    assert client.pinned.get(oid) == count, (oid.hex(), client, count)
                    clients.add(client)
        assert self.pinned_bytes == pinned, (self.pinned_bytes, pinned)
        for client in clients | {self.node}:
            for oid, count in client.pinned.items():
                pinned_entry = objs.get(oid)
                assert pinned_entry is not None and pinned_entry.pinners
                assert pinned_entry.pinners.get(client) == count
        evictable = {
            oid
            for oid, e in objs.items()
            if not e.primary
            and e.segment == 0
            and e.state is _SEALED
            and e.owner is None
            and e.pinners is None
        }
        assert self.evictable == evictable, self.evictable ^ evictable
