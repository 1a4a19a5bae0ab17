"""The directory's bookkeeping: nodes, object locations, names, subscriptions.

:class:`DirectoryState` is pure: no sockets, no clock of its own (every call
that needs the time takes ``now``), no tasks.  The gRPC server in
:mod:`objstore.directory.server` decodes requests, calls it and sends what it
says; the tests drive it directly.

Model (Ray's GCS object directory, simplified where Ray needs an owner
process per object):

* A *node* registers with a random *session*; it stays alive while its
  heartbeats come within ``node_timeout``.  A node id registered again by a
  different session while the first is alive is refused; a node that was
  declared dead registers again as a new node and reports everything anew.
* An *object record* holds the size, the node of the primary copy, the set of
  nodes holding a copy, an optional name and spill URL.  States: PENDING (a
  name was reserved for an object being created), PRESENT, LOST (every copy
  was on nodes that died and no spilled copy survives).  Deleted objects are
  dropped and remembered in a bounded list, so a lookup says DELETED rather
  than UNKNOWN for a while.
* A *subscriber* is one node's stream.  It subscribes to objects; every
  change of a subscribed object marks it pending on the subscriber, and the
  stream sends the current state of pending objects.  Pending changes
  coalesce per object, so a subscriber that does not read costs at most one
  entry per subscription, however many changes happen.
* *Frees*: when an object is deleted, every other node holding a copy is told
  to free it; the ids wait on the node's record until its stream takes them.
* *Borrowers* (:class:`~objstore.directory.borrowers.Borrowers`): nodes whose
  processes hold refs to an object put on another node.  When an object gains
  its first borrower or loses its last, its primary node is told (the ids wait
  on the primary's record, like frees); when it loses its last borrower and
  its primary node is gone, the object is deleted (unless it is named).
  Borrower sets are not persisted: nodes report theirs in full after each
  registration.

One module of about 800 lines, for a reason: nodes, objects, names, spill
copies and subscriptions are one state whose invariants tie them together
(``check()`` tests them all after every step of a hypothesis state machine);
each operation touches several of them in one step.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from objstore.directory.borrowers import Borrowers
from objstore.directory.relays import RelayTree
from objstore.directory.replicas import Candidate, Replicas
from objstore.errors import (
    InvalidRequestError,
    NotRegisteredError,
    ObjectExistsError,
    ObjectNotFoundError,
    TooManySubscriptionsError,
)
from objstore.ids import NODE_ID_SIZE, OBJECT_ID_SIZE
from objstore.locations import LocationState, ObjectRow, Usage

__all__ = [
    "DirectoryState",
    "NodeRecord",
    "ObjectRecord",
    "Subscriber",
    "Usage",
    "NotRegisteredError",
    "InvalidRequestError",
    "TooManySubscriptionsError",
    "ObjectRow",
    "PENDING",
    "PRESENT",
    "LOST",
    "UNKNOWN",
    "DELETED",
    "split_ids",
    "SESSION_SIZE",
]

# Object states, with the numbers of ``ObjectState`` in directory.proto.
UNKNOWN = LocationState.UNKNOWN
PENDING = LocationState.PENDING
PRESENT = LocationState.PRESENT
LOST = LocationState.LOST
DELETED = LocationState.DELETED

_EMPTY: frozenset[bytes] = frozenset()
SESSION_SIZE = 16


def split_ids(blob: bytes, size: int = OBJECT_ID_SIZE, what: str = "object ids") -> list[bytes]:
    """Cut ids sent back to back into a list; a ragged length is an error."""
    if len(blob) % size:
        raise InvalidRequestError(
            f"{what}: {len(blob)} bytes is not a multiple of the id size {size}"
        )
    return [blob[i : i + size] for i in range(0, len(blob), size)]


@dataclass(slots=True)
class NodeRecord:
    """One node the directory knows of."""

    node_id: bytes
    session: bytes
    address: str = ""
    socket: str = ""
    hostname: str = ""
    pid: int = 0
    registered_at: float = 0.0
    alive: bool = True
    usage: Usage = field(default_factory=Usage)
    # Monotonic time of the last sign of life (not persisted: set at load).
    last_seen: float = 0.0
    # Object ids with a copy on this node.
    objects: set[bytes] = field(default_factory=set)
    # During a full report: ids not reported again yet.
    unconfirmed: set[bytes] | None = None
    # Ids of objects deleted elsewhere that this node must free.
    frees: dict[bytes, None] = field(default_factory=dict)
    # Ids of named objects being created here (reserved, not reported yet).
    pending: set[bytes] = field(default_factory=set)
    # Objects primary here whose borrowed state changed since last sent; their
    # current state is read when the stream takes them (``take_borrow_notes``).
    borrow_notes: dict[bytes, None] = field(default_factory=dict)
    # During a full report: the borrows reported so far (replace the node's set at the end).
    borrow_sync: set[bytes] | None = None
    # Objects this node was chosen to keep a replica of, not sent yet.
    replicate: dict[bytes, None] = field(default_factory=dict)


class ObjectRecord:
    """One object (kept small: the directory holds millions)."""

    __slots__ = ("state", "size", "primary", "nodes", "name", "spilled_url", "spilled_node")

    def __init__(self, state: int, size: int, primary: bytes | None) -> None:
        self.state = state
        self.size = size
        self.primary = primary
        self.nodes: frozenset[bytes] = _EMPTY
        self.name = ""
        self.spilled_url = ""
        self.spilled_node: bytes | None = None


class Subscriber:
    """One node's subscription stream."""

    __slots__ = ("node_id", "subscribed", "pending", "dead_nodes", "wake", "closed")

    def __init__(self, node_id: bytes, wake: Callable[[], None] = lambda: None) -> None:
        self.node_id = node_id
        self.subscribed: set[bytes] = set()
        # Subscribed ids whose state changed since last sent (coalesced).
        self.pending: dict[bytes, None] = {}
        # Nodes declared dead since last sent (every stream hears of every death).
        self.dead_nodes: list[bytes] = []
        self.wake = wake
        self.closed = False


def _no_op(_key: bytes) -> None:
    return None


class DirectoryState:
    """Nodes, objects, names and subscriptions; see the module docstring."""

    def __init__(
        self,
        node_timeout: float = 10.0,
        deleted_memory: int = 100_000,
        max_subscriptions: int = 1_000_000,
        replica_timeout: float = 30.0,
        relay_fanout: int = 2,
    ) -> None:
        self.node_timeout = node_timeout
        self.nodes: dict[bytes, NodeRecord] = {}
        self.objects: dict[bytes, ObjectRecord] = {}
        self.names: dict[str, bytes] = {}
        # object id -> subscribers of it.
        self.subscriptions: dict[bytes, set[Subscriber]] = {}
        # node id -> its current stream.
        self.streams: dict[bytes, Subscriber] = {}
        self.deleted: OrderedDict[bytes, None] = OrderedDict()
        self.deleted_memory = deleted_memory
        self.max_subscriptions = max_subscriptions
        self.n_locations = 0
        # Nodes whose death is being processed (see ``declare_dead_steps``).
        self.dying: set[bytes] = set()
        self.n_lost = 0
        self.spilled_objects = 0
        self.spilled_bytes = 0
        # Persistence hooks (``WriteBehind.mark_*``): called with each changed key.
        self.on_dirty_node: Callable[[bytes], None] = _no_op
        self.on_dirty_object: Callable[[bytes], None] = _no_op
        # Interned location sets: most objects share one of a few.
        self._sets: dict[frozenset[bytes], frozenset[bytes]] = {}
        # Object id <-> borrower node ids (only live nodes: a death drops its borrows).
        self.borrowers = Borrowers()
        # Objects deleted because their last borrower left after their primary node.
        self.n_orphans_deleted = 0
        # Objects put with replicas=N: who keeps their copies (not persisted:
        # primaries report their counts again in full reports).
        self.replicas = Replicas(replica_timeout)
        # Objects whose owner can recreate them (not persisted either: their
        # nodes report them again in full reports).
        self.recreatable: set[bytes] = set()
        # Large objects being received, and from whom (not persisted: a pull
        # whose attachment is forgotten goes on, and the next one attaches anew).
        self.relays = RelayTree(relay_fanout)
        # The latest time a caller gave (deadlines of replica asks made without one).
        self.now = 0.0

    # ------------------------------------------------------------------ nodes
    def register(
        self,
        node_id: bytes,
        session: bytes,
        now: float,
        wall: float,
        *,
        address: str = "",
        socket: str = "",
        hostname: str = "",
        pid: int = 0,
        usage: Usage | None = None,
    ) -> NodeRecord:
        """A node (re-)joins.  Raises ObjectExistsError for a live node id of another session."""
        if len(node_id) != NODE_ID_SIZE:
            raise InvalidRequestError(f"a node id is {NODE_ID_SIZE} bytes, got {len(node_id)}")
        if len(session) != SESSION_SIZE:
            raise InvalidRequestError(f"a session is {SESSION_SIZE} bytes, got {len(session)}")
        if node_id in self.dying:
            raise NotRegisteredError(
                f"node {node_id.hex()} was declared dead a moment ago; register again shortly"
            )
        node = self.nodes.get(node_id)
        if node is not None and node.alive and node.session != session:
            if now - node.last_seen <= self.node_timeout:
                raise ObjectExistsError(
                    f"node {node_id.hex()} is registered already by another live process "
                    f"(pid {node.pid} on {node.hostname or '?'}); a node id is unique"
                )
            self.declare_dead(node_id)
            node = None
        if node is not None and node.alive:
            # The same process again (after a directory restart or a lost
            # connection): it keeps its locations until its full report.
            node.last_seen = now
        else:
            if node is not None:
                self._forget_node(node_id)
            node = NodeRecord(node_id, session, registered_at=wall, last_seen=now)
            self.nodes[node_id] = node
        node.address = address
        node.socket = socket
        node.hostname = hostname
        node.pid = pid
        if usage is not None:
            node.usage = usage
        self.on_dirty_node(node_id)
        self.now = max(self.now, now)
        # A node joined: objects short of replicas may have a place now.
        for oid in list(self.replicas.short):
            self._replicate(oid)
        return node

    def live_node(self, node_id: bytes, session: bytes, now: float | None = None) -> NodeRecord:
        """The record of a registered, live node of this session (a sign of life if ``now``)."""
        node = self.nodes.get(node_id)
        if node is None:
            raise NotRegisteredError(f"node {node_id.hex()} is not registered")
        if not node.alive:
            raise NotRegisteredError(f"node {node_id.hex()} was declared dead; register again")
        if node.session != session:
            raise NotRegisteredError(
                f"node {node_id.hex()} is registered by another process; register again"
            )
        if now is not None:
            node.last_seen = now
            self.now = max(self.now, now)
        return node

    def heartbeat(self, node_id: bytes, session: bytes, usage: Usage, now: float) -> None:
        """A node is alive and says how full it is."""
        node = self.live_node(node_id, session, now)
        node.usage = usage

    def check_deaths(self, now: float) -> list[bytes]:
        """Declare dead every node silent for longer than ``node_timeout``."""
        dead = self.silent_nodes(now)
        for nid in dead:
            self.declare_dead(nid)
        return dead

    def silent_nodes(self, now: float) -> list[bytes]:
        """Live nodes silent for longer than ``node_timeout``."""
        return [
            nid
            for nid, node in self.nodes.items()
            if node.alive and now - node.last_seen > self.node_timeout
        ]

    def declare_dead(self, node_id: bytes) -> int:
        """Remove a node's copies; objects left with none are lost.  Returns objects lost."""
        lost = 0
        for lost in self.declare_dead_steps(node_id):
            pass
        return lost

    def declare_dead_steps(self, node_id: bytes, step: int = 10_000) -> Iterator[int]:
        """:meth:`declare_dead` in steps of ``step`` objects, yielding the objects lost so far.

        The server lets its event loop turn between steps: a node holding a
        million objects takes about a second to remove.  Until the last step
        the node cannot register again (it is told to retry).
        """
        node = self.nodes[node_id]
        node.alive = False
        node.frees.clear()
        node.borrow_notes.clear()
        node.replicate.clear()
        node.unconfirmed = None
        node.borrow_sync = None
        objects, node.objects = node.objects, set()
        pending, node.pending = node.pending, set()
        stream = self.streams.pop(node_id, None)
        if stream is not None:
            self.drop_subscriber(stream)
        self.on_dirty_node(node_id)
        self.relays.node_dead(node_id)
        self.dying.add(node_id)
        lost = 0
        try:
            for i, oid in enumerate(objects):
                rec = self.objects.get(oid)
                if rec is not None:
                    lost += self._remove_location(oid, rec, node_id, dying=True)
                if i % step == step - 1:
                    yield lost
            # Objects spilled to a local file there whose memory copy had left
            # (so not in ``node.objects``): the file died with the node.  A scan
            # of every object, but deaths are rare.
            everything = list(self.objects)
            for i, oid in enumerate(everything):
                rec = self.objects.get(oid)
                if (
                    rec is not None
                    and rec.spilled_node == node_id
                    and not self._spill_survives(rec, node_id)
                ):
                    self._clear_spill(rec)
                    if not rec.nodes and rec.state == PRESENT:
                        rec.state = LOST
                        self.n_lost += 1
                        lost += 1
                    self._changed(oid)
                if i % (4 * step) == 4 * step - 1:
                    yield lost
            # Objects being created there (a name reserved, never sealed) are
            # lost too, and their names free: no bytes of them ever existed.
            for oid in pending:
                rec = self.objects.get(oid)
                if rec is not None and rec.state == PENDING:
                    rec.state = LOST
                    self.n_lost += 1
                    lost += 1
                    if rec.name:
                        self.names.pop(rec.name, None)
                        rec.name = ""
                    self._changed(oid)
            # Its borrows end: primaries hear of the objects nobody borrows now
            # (and those whose primary is gone too are deleted).
            self._unborrowed(self.borrowers.drop_node(node_id))
            # Replicated objects it held or was making copies of get new places.
            for oid in self.replicas.drop_node(node_id):
                self._replicate(oid)
        finally:
            self.dying.discard(node_id)
        yield lost

    def _forget_node(self, node_id: bytes) -> None:
        node = self.nodes.pop(node_id)
        if node.alive:
            self.declare_dead(node_id)
        self.on_dirty_node(node_id)

    # ------------------------------------------------------------------ locations
    def _intern(self, nodes: frozenset[bytes]) -> frozenset[bytes]:
        got = self._sets.get(nodes)
        if got is not None:
            return got
        if len(self._sets) < 65536:
            self._sets[nodes] = nodes
        return nodes

    def _changed(self, oid: bytes) -> None:
        self.on_dirty_object(oid)
        subs = self.subscriptions.get(oid)
        if subs:
            for sub in subs:
                if oid not in sub.pending:
                    sub.pending[oid] = None
                    if len(sub.pending) == 1:
                        sub.wake()

    def _add_location(
        self, oid: bytes, node: NodeRecord, size: int, primary: bool, name: str
    ) -> None:
        rec = self.objects.get(oid)
        nid = node.node_id
        if rec is None:
            if oid in self.deleted:
                # Deleted while this report was on its way: the node frees it.
                self._queue_free(node, oid)
                return
            rec = ObjectRecord(PRESENT, size, nid if primary else None)
            self.objects[oid] = rec
        elif rec.state != PRESENT:
            if rec.state == LOST:
                self.n_lost -= 1
            rec.state = PRESENT
            if rec.spilled_url:
                # ``spilled_bytes`` stays the sum of the spilled objects' sizes.
                self.spilled_bytes += size - rec.size
            rec.size = size
        if primary:
            if rec.primary is None:
                rec.primary = nid
            node.pending.discard(oid)
        if name and not rec.name:
            owner = self.names.get(name)
            if owner is None:
                self.names[name] = oid
                rec.name = name
        if nid not in rec.nodes:
            rec.nodes = self._intern(rec.nodes | {nid})
            node.objects.add(oid)
            self.n_locations += 1
        if node.unconfirmed is not None:
            node.unconfirmed.discard(oid)
        if primary and rec.primary == nid and oid in self.borrowers:
            # Borrowed before (or while) its primary reported it: tell the primary.
            self._note_borrow(node, oid)
        if oid in self.replicas:
            self.replicas.reported(oid, nid)
            self._replicate(oid)
        if oid in self.relays:
            self.relays.completed(oid, nid)
        self._changed(oid)

    def _remove_location(self, oid: bytes, rec: ObjectRecord, nid: bytes, dying: bool) -> int:
        """Drop one copy; returns 1 if that lost the object."""
        if nid not in rec.nodes:
            return 0
        rec.nodes = self._intern(rec.nodes - {nid})
        self.n_locations -= 1
        lost = 0
        if not rec.nodes and rec.state == PRESENT and not self._spill_survives(rec, nid):
            if dying:
                rec.state = LOST
                self.n_lost += 1
                lost = 1
            elif not rec.spilled_url:
                # The last copy went away without a delete (a well-behaved node
                # spills or deletes primaries; a secondary copy can be the last
                # one when the primary's node died), whoever held it: nothing
                # is PRESENT with no copy anywhere (``load`` agrees).
                rec.state = LOST
                self.n_lost += 1
                lost = 1
        if dying and rec.spilled_node == nid and not self._spill_survives(rec, nid):
            self._clear_spill(rec)
        if oid in self.replicas and self.replicas.removed(oid, nid):
            self._replicate(oid)
        self._changed(oid)
        return lost

    @staticmethod
    def _spill_survives(rec: ObjectRecord, dead: bytes) -> bool:
        """A spilled copy outlives its node only in shared storage (not a local file)."""
        if not rec.spilled_url:
            return False
        return not (rec.spilled_url.startswith("file:") and rec.spilled_node == dead)

    def _clear_spill(self, rec: ObjectRecord) -> None:
        if rec.spilled_url:
            self.spilled_objects -= 1
            self.spilled_bytes -= rec.size
        rec.spilled_url = ""
        rec.spilled_node = None

    def report(
        self,
        node_id: bytes,
        session: bytes,
        now: float,
        *,
        added: Iterable[tuple[bytes, int, bool]] = (),
        names: dict[int, str] | None = None,
        removed: Iterable[bytes] = (),
        deleted: Iterable[bytes] = (),
        spilled: Iterable[tuple[bytes, str]] = (),
        borrowed: Iterable[bytes] = (),
        unborrowed: Iterable[bytes] = (),
        replicas: Iterable[tuple[bytes, int]] = (),
        recreatable: Iterable[bytes] = (),
        sync_begin: bool = False,
        sync_end: bool = False,
    ) -> None:
        """Apply one location report of a live node (a sign of life too).

        In order: added copies, borrows, ends of borrows, removed copies,
        spill URLs, deletes.  Borrows between ``sync_begin`` and ``sync_end``
        are the node's whole borrow set, which replaces its old one at the end.
        """
        node = self.live_node(node_id, session, now)
        if sync_begin:
            node.unconfirmed = set(node.objects)
            node.borrow_sync = set()
        for i, (oid, size, primary) in enumerate(added):
            self._add_location(oid, node, size, primary, names.get(i, "") if names else "")
        for oid, count in replicas:
            self.want_replicas(node_id, oid, count)
        self.mark_recreatable(node_id, recreatable)
        if node.borrow_sync is not None:
            node.borrow_sync.update(borrowed)
            node.borrow_sync.difference_update(unborrowed)
        else:
            self._borrowed(self.borrowers.borrow(node_id, borrowed))
            self._unborrowed(self.borrowers.unborrow(node_id, unborrowed))
        for oid in removed:
            rec = self.objects.get(oid)
            if rec is not None:
                node.objects.discard(oid)
                self._remove_location(oid, rec, node_id, dying=False)
        for oid, url in spilled:
            rec = self.objects.get(oid)
            if rec is None or not url:
                continue
            if not rec.spilled_url:
                self.spilled_objects += 1
                self.spilled_bytes += rec.size
            rec.spilled_url = url
            rec.spilled_node = node_id
            self._changed(oid)
        self.delete(deleted, requester=node_id)
        if sync_end and node.borrow_sync is not None:
            held, node.borrow_sync = node.borrow_sync, None
            gained, lost = self.borrowers.replace(node_id, held)
            self._borrowed(gained)
            self._unborrowed(lost)
        if sync_end and node.unconfirmed is not None:
            stale, node.unconfirmed = node.unconfirmed, None
            for oid in stale:
                rec = self.objects.get(oid)
                if rec is None:
                    continue
                if rec.primary == node_id and not rec.spilled_url:
                    # A primary copy is never evicted: it was deleted while
                    # this node could not report it.
                    self.delete([oid], requester=node_id)
                else:
                    node.objects.discard(oid)
                    self._remove_location(oid, rec, node_id, dying=False)

    # ------------------------------------------------------------------ names
    def reserve_name(
        self, node_id: bytes, session: bytes, name: str, oid: bytes, size: int, now: float
    ) -> None:
        """Claim ``name`` for an object about to be created on ``node_id``."""
        self.live_node(node_id, session, now)
        if not name:
            raise InvalidRequestError("reserve_name: the name is empty")
        if len(oid) != OBJECT_ID_SIZE:
            raise InvalidRequestError(f"an object id is {OBJECT_ID_SIZE} bytes, got {len(oid)}")
        taken = self.names.get(name)
        if taken is not None:
            if taken == oid:
                return
            raise ObjectExistsError(f"the name {name!r} is taken by object {taken.hex()}")
        rec = self.objects.get(oid)
        if rec is not None:
            if rec.name:
                raise ObjectExistsError(f"object {oid.hex()} is named {rec.name!r} already")
            raise ObjectExistsError(f"object {oid.hex()} exists already")
        rec = ObjectRecord(PENDING, size, node_id)
        rec.name = name
        self.nodes[node_id].pending.add(oid)
        self.objects[oid] = rec
        self.names[name] = oid
        self.deleted.pop(oid, None)
        self._changed(oid)

    def resolve_name(self, name: str) -> bytes:
        """The id of a named object."""
        oid = self.names.get(name)
        if oid is None:
            raise ObjectNotFoundError(f"no object is named {name!r}")
        return oid

    # ------------------------------------------------------------------ delete
    def delete(self, oids: Iterable[bytes], requester: bytes | None = None) -> int:
        """Delete objects everywhere: copies on other nodes are freed.  Returns how many."""
        n = 0
        for oid in oids:
            rec = self.objects.pop(oid, None)
            self.borrowers.forget(oid)
            self.replicas.forget(oid)
            self.recreatable.discard(oid)
            self.relays.object_gone(oid)
            if rec is None:
                # Never heard of (a put deleted before its report went out, or
                # gone already): still remembered and told to subscribers, so a
                # get waiting for it elsewhere fails instead of waiting on.
                if oid not in self.deleted and len(oid) == OBJECT_ID_SIZE:
                    self._remember_deleted(oid)
                    self._changed(oid)
                continue
            n += 1
            if rec.state == LOST:
                self.n_lost -= 1
            if rec.name:
                self.names.pop(rec.name, None)
            if rec.spilled_url:
                self._clear_spill(rec)
            for nid in rec.nodes:
                self.n_locations -= 1
                node = self.nodes.get(nid)
                if node is None:
                    continue
                node.objects.discard(oid)
                if nid != requester:
                    self._queue_free(node, oid)
            # A primary still being created elsewhere must be dropped there too.
            if rec.state == PENDING and rec.primary:
                node = self.nodes.get(rec.primary)
                if node is not None:
                    node.pending.discard(oid)
                    if rec.primary != requester:
                        self._queue_free(node, oid)
            self._remember_deleted(oid)
            self._changed(oid)
        return n

    def _remember_deleted(self, oid: bytes) -> None:
        self.deleted[oid] = None
        if len(self.deleted) > self.deleted_memory:
            self.deleted.popitem(last=False)

    def _queue_free(self, node: NodeRecord, oid: bytes) -> None:
        if not node.alive:
            return
        node.frees[oid] = None
        stream = self.streams.get(node.node_id)
        if stream is not None and len(node.frees) == 1:
            stream.wake()

    def take_frees(self, node_id: bytes, limit: int) -> list[bytes]:
        """Up to ``limit`` ids the node must free (removed from its record)."""
        node = self.nodes.get(node_id)
        return _take(node.frees, limit) if node is not None else []

    # ------------------------------------------------------------------ relays
    def relay(
        self,
        node_id: bytes,
        session: bytes,
        oid: bytes,
        exclude: Iterable[bytes] = (),
        now: float | None = None,
    ) -> bytes | None:
        """Attach ``node_id`` as a receiver of ``oid``: the node to pull it from.

        None when no copy has room for another receiver (pull from a copy of
        your choosing), or the object is not present.  See
        :mod:`objstore.directory.relays`."""
        self.live_node(node_id, session, now)
        rec = self.objects.get(oid)
        if rec is None or rec.state != PRESENT or node_id in rec.nodes:
            self.relays.detach(oid, node_id)
            return None
        holders = [n for n in rec.nodes if (h := self.nodes.get(n)) is not None and h.alive]
        return self.relays.attach(oid, node_id, holders, set(exclude))

    def unrelay(self, node_id: bytes, session: bytes, oid: bytes) -> None:
        """``node_id`` stopped receiving ``oid`` (it gave up, or its pull failed)."""
        self.live_node(node_id, session)
        self.relays.detach(oid, node_id)

    # ------------------------------------------------------------------ recreation
    def mark_recreatable(self, node_id: bytes, oids: Iterable[bytes]) -> None:
        """A node holding these objects says their owner can recreate them
        (put with recreate=fn); their rows say so from now on."""
        for oid in oids:
            rec = self.objects.get(oid)
            if rec is None or oid in self.recreatable:
                continue
            if rec.primary != node_id and node_id not in rec.nodes:
                continue  # neither put there nor held there: not that node's to say
            self.recreatable.add(oid)
            self._changed(oid)

    # ------------------------------------------------------------------ replicas
    def want_replicas(self, node_id: bytes, oid: bytes, count: int) -> None:
        """The object's primary node asks for ``count`` copies on distinct live nodes."""
        rec = self.objects.get(oid)
        if rec is None or rec.primary != node_id or count < 2:
            return  # deleted already, not its primary, or nothing to do
        self.replicas.want(oid, count, node_id)
        self._replicate(oid)
        self._changed(oid)

    def _replicate(self, oid: bytes) -> None:
        """Ask more nodes for copies while held and asked ones are fewer than wanted."""
        rec = self.objects.get(oid)
        if rec is None or rec.state != PRESENT or not rec.nodes:
            return  # nothing to copy from (lost, or only spilled): a report brings it back
        candidates = [
            Candidate(
                nid,
                max(0, n.usage.memory_total - n.usage.memory_used),
                nid in rec.nodes,
            )
            for nid, n in self.nodes.items()
            if n.alive and nid not in self.dying
        ]
        chosen = self.replicas.plan(oid, candidates, self.now)
        for nid in chosen:
            node = self.nodes[nid]
            node.replicate[oid] = None
            stream = self.streams.get(nid)
            if stream is not None and len(node.replicate) == 1:
                stream.wake()
        if chosen:
            self._changed(oid)

    def check_replicas(self, now: float) -> int:
        """Asks past their deadline go to other nodes; returns the objects planned again."""
        self.now = max(self.now, now)
        late = self.replicas.expire(now)
        for oid in late:
            self._replicate(oid)
            self._changed(oid)
        return len(late)

    def take_replications(self, node_id: bytes, limit: int) -> list[bytes]:
        """Up to ``limit`` ids the node was asked to keep a replica of (removed from its record)."""
        node = self.nodes.get(node_id)
        return _take(node.replicate, limit) if node is not None else []

    # ------------------------------------------------------------------ borrowers
    def _primary_holder(self, oid: bytes, rec: ObjectRecord) -> NodeRecord | None:
        """The object's primary node, if it is alive and still holds the object
        (in memory or as its spill copy); None if it is dead, unknown, or a new
        process under the same id that does not have it."""
        if rec.primary is None:
            return None
        node = self.nodes.get(rec.primary)
        if node is None or not node.alive:
            return None
        if oid in node.objects or rec.spilled_node == rec.primary or oid in node.pending:
            return node
        return None

    def _note_borrow(self, node: NodeRecord, oid: bytes) -> None:
        node.borrow_notes[oid] = None
        stream = self.streams.get(node.node_id)
        if stream is not None and len(node.borrow_notes) == 1:
            stream.wake()

    def _borrowed(self, oids: Iterable[bytes]) -> None:
        """These objects gained their first borrower: tell their primaries."""
        for oid in oids:
            rec = self.objects.get(oid)
            if rec is None:
                continue  # the primary's report is on its way: it is told when it comes
            node = self._primary_holder(oid, rec)
            if node is not None:
                self._note_borrow(node, oid)

    def _unborrowed(self, oids: Iterable[bytes]) -> None:
        """These objects lost their last borrower: tell their primaries; an
        object whose primary node is gone has no holder left and is deleted
        (a named one lives until it is deleted by name).

        An object with no primary recorded (only secondary copies reported so
        far, e.g. after a directory restart before its primary reported in
        full) is kept: its primary may be about to report it.
        """
        orphans = []
        for oid in oids:
            rec = self.objects.get(oid)
            if rec is None:
                continue
            node = self._primary_holder(oid, rec)
            if node is not None:
                self._note_borrow(node, oid)
            elif rec.primary is not None and not rec.name:
                orphans.append(oid)
        if orphans:
            self.n_orphans_deleted += self.delete(orphans)

    def take_borrow_notes(self, node_id: bytes, limit: int) -> tuple[list[bytes], list[bytes]]:
        """Up to ``limit`` objects primary on the node whose borrowed state changed:
        (borrowed now, unborrowed now), each object in one of the two by its
        *current* state.  Objects deleted since, or no longer primary there,
        are dropped."""
        node = self.nodes.get(node_id)
        if node is None or not node.borrow_notes:
            return [], []
        borrowed: list[bytes] = []
        unborrowed: list[bytes] = []
        notes = node.borrow_notes
        taken = []
        for oid in notes:
            if len(borrowed) + len(unborrowed) >= limit:
                break
            taken.append(oid)
            rec = self.objects.get(oid)
            if rec is None or rec.primary != node_id:
                continue
            (borrowed if oid in self.borrowers else unborrowed).append(oid)
        for oid in taken:
            del notes[oid]
        return borrowed, unborrowed

    # ------------------------------------------------------------------ lookups
    def row(self, oid: bytes) -> ObjectRow:
        """One object's current state."""
        rec = self.objects.get(oid)
        if rec is None:
            return ObjectRow(oid, DELETED if oid in self.deleted else UNKNOWN)
        return ObjectRow(
            oid,
            rec.state,
            rec.size,
            rec.primary,
            tuple(rec.nodes),
            rec.name,
            rec.spilled_url,
            rec.spilled_node,
            tuple(self.borrowers.by_object.get(oid, ())),
            *self._replica_columns(oid, rec),
            oid in self.recreatable,
        )

    def _replica_columns(self, oid: bytes, rec: ObjectRecord) -> tuple[int, tuple[bytes, ...], int]:
        replicas = self.replicas
        if oid not in replicas:
            return 0, (), 0
        held = tuple(n for n in replicas.held(oid) if n in rec.nodes)
        return replicas.wanted(oid), held, replicas.asked(oid)

    def lookup(self, oids: Iterable[bytes]) -> list[ObjectRow]:
        """Current state of each object, in order."""
        return [self.row(oid) for oid in oids]

    # ------------------------------------------------------------------ subscriptions
    def attach(self, sub: Subscriber) -> Subscriber | None:
        """Make ``sub`` its node's stream; returns the stream it replaces (to close)."""
        old = self.streams.get(sub.node_id)
        if old is not None:
            self.drop_subscriber(old)
        self.streams[sub.node_id] = sub
        node = self.nodes.get(sub.node_id)
        if node is not None and (node.frees or node.borrow_notes):
            sub.wake()
        return old

    def subscribe(self, sub: Subscriber, oids: Iterable[bytes]) -> None:
        """Subscribe; each object's current state is queued at once."""
        if sub.closed:
            # A message read after the stream was dropped (replaced, or its
            # node declared dead) is ignored: nothing would drop a closed
            # stream's subscriptions again.
            return
        for oid in oids:
            if oid in sub.subscribed:
                sub.pending[oid] = None
                continue
            if len(sub.subscribed) >= self.max_subscriptions:
                raise TooManySubscriptionsError(
                    f"a stream holds at most {self.max_subscriptions} subscriptions"
                )
            sub.subscribed.add(oid)
            self.subscriptions.setdefault(oid, set()).add(sub)
            sub.pending[oid] = None
        if sub.pending:
            sub.wake()

    def unsubscribe(self, sub: Subscriber, oids: Iterable[bytes]) -> None:
        """Stop sending changes of these objects."""
        for oid in oids:
            if oid not in sub.subscribed:
                continue
            sub.subscribed.discard(oid)
            sub.pending.pop(oid, None)
            subs = self.subscriptions.get(oid)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self.subscriptions[oid]

    def drop_subscriber(self, sub: Subscriber) -> None:
        """A stream ended: forget its subscriptions."""
        sub.closed = True
        self.unsubscribe(sub, list(sub.subscribed))
        sub.pending.clear()
        if self.streams.get(sub.node_id) is sub:
            del self.streams[sub.node_id]
        sub.wake()

    def take_pending(self, sub: Subscriber, limit: int) -> list[ObjectRow]:
        """Up to ``limit`` changed subscribed objects, as rows (removed from pending)."""
        pending = sub.pending
        if not pending:
            return []
        oids = []
        for oid in pending:
            oids.append(oid)
            if len(oids) >= limit:
                break
        for oid in oids:
            del pending[oid]
        return self.lookup(oids)

    @property
    def n_subscriptions(self) -> int:
        return sum(len(s.subscribed) for s in self.streams.values())

    # ------------------------------------------------------------------ persistence
    def encode_node(self, node_id: bytes) -> bytes | None:
        """The persisted form of a node record (None: gone)."""
        node = self.nodes.get(node_id)
        if node is None:
            return None
        u = node.usage
        head = struct.pack(
            "<B16sQd7Q",
            1 if node.alive else 0,
            node.session,
            node.pid & 0xFFFFFFFFFFFFFFFF,
            node.registered_at,
            u.memory_used,
            u.memory_total,
            u.pinned_bytes,
            u.objects,
            u.spilled_bytes,
            u.fallback_used,
            u.clients,
        )
        return head + _pack_strs(node.address, node.socket, node.hostname)

    def encode_object(self, oid: bytes) -> bytes | None:
        """The persisted form of an object record (None: gone)."""
        rec = self.objects.get(oid)
        if rec is None:
            return None
        nodes = b"".join(sorted(rec.nodes))
        return (
            struct.pack(
                "<BQ16s16sH",
                rec.state,
                rec.size,
                rec.primary or b"\0" * NODE_ID_SIZE,
                rec.spilled_node or b"\0" * NODE_ID_SIZE,
                len(rec.nodes),
            )
            + nodes
            + _pack_strs(rec.name, rec.spilled_url)
        )

    def load(self, nodes: dict[bytes, bytes], objects: dict[bytes, bytes], now: float) -> None:
        """Rebuild from persisted records; live nodes get a full timeout to come back."""
        zero = b"\0" * NODE_ID_SIZE
        for nid, blob in nodes.items():
            alive, session, pid, registered, *usage = struct.unpack_from("<B16sQd7Q", blob)
            address, socket, hostname = _unpack_strs(blob, struct.calcsize("<B16sQd7Q"), 3)
            node = NodeRecord(
                nid,
                session,
                address,
                socket,
                hostname,
                pid,
                registered,
                bool(alive),
                Usage(*usage),
                last_seen=now,
            )
            self.nodes[nid] = node
        head = struct.calcsize("<BQ16s16sH")
        for oid, blob in objects.items():
            state, size, primary, snode, count = struct.unpack_from("<BQ16s16sH", blob)
            end = head + count * NODE_ID_SIZE
            locs = [blob[i : i + NODE_ID_SIZE] for i in range(head, end, NODE_ID_SIZE)]
            name, url = _unpack_strs(blob, end, 2)
            rec = ObjectRecord(state, size, primary if primary != zero else None)
            live = [n for n in locs if n in self.nodes and self.nodes[n].alive]
            rec.nodes = self._intern(frozenset(live))
            for n in live:
                self.nodes[n].objects.add(oid)
            self.n_locations += len(live)
            rec.name = name
            if url:
                rec.spilled_url = url
                rec.spilled_node = snode if snode != zero else None
                self.spilled_objects += 1
                self.spilled_bytes += size
            if name:
                self.names[name] = oid
            if state == LOST:
                self.n_lost += 1
            elif state == PENDING:
                # ``node.pending`` is not persisted: rebuilt here, so that the
                # creator's death still turns the object LOST and frees its name.
                creator = self.nodes.get(rec.primary or b"")
                if creator is not None and creator.alive:
                    creator.pending.add(oid)
                else:
                    rec.state = LOST
                    self.n_lost += 1
            elif state == PRESENT and not live and not rec.spilled_url:
                rec.state = LOST
                self.n_lost += 1
            self.objects[oid] = rec


def _take(queue: dict[bytes, None], limit: int) -> list[bytes]:
    """The oldest ``limit`` ids of an insertion-ordered queue, removed from it."""
    out: list[bytes] = []
    for oid in queue:
        out.append(oid)
        if len(out) >= limit:
            break
    for oid in out:
        del queue[oid]
    return out


def _pack_strs(*values: str) -> bytes:
    out = bytearray()
    for v in values:
        b = v.encode()
        out += struct.pack("<I", len(b))
        out += b
    return bytes(out)


def _unpack_strs(blob: bytes, offset: int, n: int) -> list[str]:
    out = []
    for _ in range(n):
        (length,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        out.append(blob[offset : offset + length].decode())
        offset += length
    return out
