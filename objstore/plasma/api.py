"""The store as the rest of a node sees it: the typed seams of ``objstore.plasma``.

Nothing outside ``plasma`` touches the object table, the arena or the
allocator: the transfer and spill packages use :class:`Store`, the store
reports what happens to objects through one :class:`StoreEvents` given at
its construction, and the local socket server serves a :class:`LocalObjects`
(the node's object service).  Import-linter keeps it so
(``pyproject.toml``): ``transfer`` and ``spill`` import ``objstore.plasma.api``
and nothing else of ``plasma``.

Every method here runs on the node's event loop and, unless it is ``async``,
returns without suspending.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any, NamedTuple, Protocol

from objstore.errors import ObjectStoreError
from objstore.plasma.lifecycle import ObjectState
from objstore.plasma.table import ClientState, ObjectEntry

__all__ = [
    "ObjectState",
    "Entry",
    "Space",
    "Lease",
    "Store",
    "StoreEvents",
    "ClientState",
    "ObjectEntry",
    "LocalObjects",
]


class Entry(Protocol):
    """One object in the node's table, read-only.

    ``segment`` is 0 for the arena, a fallback segment's id, or -1 while the
    object is spilled (it then holds no memory).
    """

    @property
    def state(self) -> ObjectState: ...
    @property
    def segment(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def meta(self) -> bytes: ...
    @property
    def primary(self) -> bool: ...


class Space(NamedTuple):
    """Memory that belongs to no object yet (a restore's destination)."""

    segment: int
    offset: int
    size: int


class Lease(Protocol):
    """A pin the node itself holds on a sealed object: its memory is not
    reused (freed, spilled, evicted) until :meth:`release`.

    A context manager too: ``with store.lease(oid) as entry: ...``.  Releasing
    twice is harmless.
    """

    @property
    def entry(self) -> Entry: ...
    def release(self) -> None: ...
    def __enter__(self) -> Entry: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Store(Protocol):
    """What the transfer and spill packages may do with the node's store."""

    @property
    def capacity(self) -> int:
        """Bytes in the arena."""
        ...

    @property
    def largest_free(self) -> int:
        """The largest block the arena could hand out now (no eviction)."""
        ...

    @property
    def free_bytes(self) -> int:
        """Arena bytes free or held by evictable copies (pull admission)."""
        ...

    # -- queries (no side effects)
    def entry(self, oid: bytes) -> Entry | None:
        """The object in any state, or None if the table does not hold it."""
        ...

    def sealed(self, oid: bytes) -> Entry | None:
        """The object if it is readable here now (SEALED), else None."""
        ...

    def state_of(self, oid: bytes) -> ObjectState | None:
        """The object's state here, or None."""
        ...

    def contains(self, oid: bytes) -> bool:
        """Whether a sealed copy is here (in memory, or spilled and restorable)."""
        ...

    def held(self, oid: bytes) -> bool:
        """Whether a view may be reading the object (a pin, a lease, the owner's mapping)."""
        ...

    # -- reading
    def lease(self, oid: bytes) -> Lease:
        """Pin a sealed object for the node's own read; ObjectNotFoundError if it is not sealed."""
        ...

    def view(self, entry: Entry) -> memoryview:
        """A writable view of an object's bytes in the node's own mapping (release it after use)."""
        ...

    async def wait_sealed(self, oid: bytes) -> Entry:
        """Wait until the object is sealed here (bounded by the caller); asks no other node."""
        ...

    # -- secondary copies (the pulling side)
    def create_secondary_now(self, oid: bytes, size: int, meta: bytes) -> Entry | None:
        """A secondary copy in state CREATING, or None when room must be made first."""
        ...

    async def create_secondary(self, oid: bytes, size: int, meta: bytes) -> Entry:
        """A secondary copy in state CREATING, making room (evicting, spilling) and
        waiting for memory to be freed while there is none; the caller bounds the wait."""
        ...

    def seal_secondary(self, oid: bytes) -> None:
        """Seal a pulled copy; the gets waiting for it hold it pinned from this moment."""
        ...

    def discard_partial(self, oid: bytes) -> None:
        """Drop a secondary copy that failed while being written; gets keep waiting."""
        ...

    # -- spilling
    def invalidate_mappings(self, oids: Iterable[bytes]) -> None:
        """Ask owners that read these objects through their own mapping to let go."""
        ...

    def free_spilled(self, oid: bytes) -> int:
        """A sealed primary whose bytes are in a spill file and that nobody holds:
        free its memory (state SPILLED).  Returns the bytes freed."""
        ...

    async def allocate(self, size: int) -> Space:
        """Room for ``size`` bytes outside any object (a restore), made as a create makes it."""
        ...

    def space_view(self, space: Space) -> memoryview:
        """A writable view of allocated space (release it after use)."""
        ...

    def free_allocation(self, space: Space) -> None:
        """Give back what :meth:`allocate` returned (a restore that failed)."""
        ...

    def restored(self, oid: bytes, space: Space) -> None:
        """A SPILLED object's bytes are back in ``space``: readable again; waiting gets wake."""
        ...

    def lost(self, oid: bytes, exc: ObjectStoreError) -> int:
        """A primary's last copy is gone: recreated by its owner if it can be
        (waiting gets carry on), else the waiting gets fail; how many failed."""
        ...

    def fail_waiters(self, oid: bytes, exc: ObjectStoreError) -> int:
        """Fail the gets waiting for an object (lost, deleted elsewhere, unrestorable)."""
        ...


class StoreEvents(Protocol):
    """What the store reports, and the room it asks for (the node's object service)."""

    def object_sealed(self, oid: bytes, entry: Entry, name: str) -> None:
        """A copy became readable here: a put, or a pulled secondary."""
        ...

    def object_read(self, oid: bytes, entry: Entry) -> None:
        """A client got a primary copy (least recently used primaries spill first)."""
        ...

    def object_unheld(self, oid: bytes, entry: Entry) -> None:
        """A sealed primary's last pin, lease or mapping went."""
        ...

    def object_deleted(self, oid: bytes, entry: Entry, by_directory: bool) -> None:
        """A delete reached the object here (``by_directory``: another node asked for it)."""
        ...

    def object_evicted(self, oid: bytes) -> None:
        """A secondary copy was evicted to make room."""
        ...

    def object_dropped(self, oid: bytes, entry: Entry) -> None:
        """The object left the table (freed, aborted or evicted)."""
        ...

    def object_aborted(self, oid: bytes, name: str) -> None:
        """An unsealed object was aborted (its creator gave up or went away)."""
        ...

    def object_lost(self, oid: bytes, exc: ObjectStoreError) -> ObjectStoreError | None:
        """A primary's last copy is gone (its spill copy is damaged or missing):
        None if its owner was asked to recreate it (waiting gets carry on), else
        the error to fail the waiting gets with."""
        ...

    def space_freed(self) -> None:
        """Memory was given back (pulls waiting for room may go)."""
        ...

    async def make_room(self, nbytes: int) -> int:
        """Free memory by spilling until a block of ``nbytes`` exists; the bytes freed
        (0: nothing more can go, the store tries its fallback)."""
        ...

    def room_error(self) -> ObjectStoreError | None:
        """Why making room last failed (a full spill disk), while it keeps failing."""
        ...


class LocalObjects(Protocol):
    """What the local socket server serves: the node's object service
    (``objstore.node.objects.ObjectService``).  Each ``*_now`` call answers at
    once or returns None, and the server then awaits the call of the same name."""

    def segment_fd(self, segment_id: int) -> tuple[int, int] | None: ...
    def connected(self, client: ClientState) -> None: ...
    def disconnected(self, client: ClientState) -> None: ...
    def note_owned(self, client: ClientState, compact_every: int) -> None: ...

    def create_now(
        self, client: ClientState, oid: bytes, size: int, meta: bytes, name: str
    ) -> Entry | None: ...
    async def create(
        self, client: ClientState, oid: bytes, size: int, meta: bytes, name: str
    ) -> Entry: ...
    def put_inline_now(
        self, client: ClientState, oid: bytes, data: bytes, meta: bytes, name: str
    ) -> Entry | None: ...
    async def put_inline(
        self, client: ClientState, oid: bytes, data: bytes, meta: bytes, name: str
    ) -> Entry: ...
    def seal(self, client: ClientState, oid: bytes) -> None: ...
    def abort(self, client: ClientState, oid: bytes) -> None: ...
    def release(self, client: ClientState, oids: list[bytes]) -> None: ...
    def put_held(
        self,
        client: ClientState,
        oid: bytes,
        name: str,
        contained: bytes,
        site: str,
        recreatable: bool = False,
    ) -> None: ...
    def replace_lost(self, oid: bytes) -> None: ...
    def recreate_failed(self, client: ClientState, oid: bytes, message: str) -> None: ...
    async def replicate(
        self, client: ClientState, oid: bytes, count: int, timeout: float
    ) -> None: ...
    def refs_changed(
        self,
        client: ClientState,
        added: bytes,
        dropped: bytes,
        pickled: bytes,
        sites: list[str],
    ) -> None: ...

    def get_now(
        self, client: ClientState, ids: list[bytes], name: str
    ) -> tuple[list[bytes], list[ObjectEntry]] | None: ...
    async def get(
        self, client: ClientState, ids: list[bytes], name: str, timeout: float | None
    ) -> tuple[list[bytes], list[ObjectEntry]]: ...
    async def check_earlier(
        self, ids: list[bytes], gone_nodes: list[bytes], timeout: float | None
    ) -> None:
        """ObjectLostError for an id of a client's earlier session that no copy is left of."""
        ...

    def wait_now(self, ids: list[bytes], num: int, timeout: float | None) -> list[bytes] | None: ...
    async def wait(self, ids: list[bytes], num: int, timeout: float | None) -> list[bytes]: ...
    def delete_now(self, ids: list[bytes], name: str) -> int | None: ...
    async def delete(self, ids: list[bytes], name: str) -> int: ...
    def contains(self, oid: bytes) -> bool: ...

    def stats(self) -> dict[str, Any]: ...
    def list_objects(self, limit: int) -> tuple[int, list[dict[str, Any]]]: ...
