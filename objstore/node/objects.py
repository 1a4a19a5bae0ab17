"""The node's object service: what create, put, seal, get, wait and delete mean here.

The local socket server (:mod:`objstore.plasma.server`) turns frames into
calls of :class:`ObjectService` and its answers into replies; everything a
request means in a cluster is decided here, with the store, the directory,
the transfer and the spill manager behind it:

* **Names** are unique cluster-wide: a named create claims its name in the
  directory first (and gives it back if the create fails); a get of a name
  this node does not know asks the directory; a delete by such a name asks
  the directory for the id, then deletes by id here and everywhere.
* **Gets** of objects that are not sealed here wait: a spilled object is
  restored here (no directory round trip); any other missing object is
  subscribed to in the directory and pulled from a node that has it.  Every
  object of a get is pinned for its client while the get waits for the
  others, and a waited-for object is pinned at the moment it is sealed, so
  nothing evicts or spills it before the reply.
* The **directory's notifications** come here: a lost object fails the gets
  waiting for it (``ObjectLostError``), a deleted one too
  (``ObjectNotFoundError``); new locations go to the pull policy; frees
  delete local copies; dead nodes stop being served.
* The **store's events** come here too (:class:`~objstore.plasma.api.StoreEvents`)
  and go on to the directory (copies added and gone), the spill manager
  (primaries sealed, read, unheld, deleted) and the transfer (memory freed).

The store reports to the service and the service calls the store: that one
cycle of a node is tied once, by :meth:`ObjectService.bind` in ``Node.start``,
before any client connects.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog

from objstore.config import Config
from objstore.errors import (
    GetTimeoutError,
    NodeUnavailableError,
    ObjectFetchTimedOutError,
    ObjectFreedError,
    ObjectLostError,
    ObjectNotFoundError,
    ObjectReconstructionFailedError,
    ObjectStoreError,
    OwnerDiedError,
)
from objstore.ids import OBJECT_ID_SIZE
from objstore.locations import LocationState, ObjectRow, Usage
from objstore.node.ports import Directory, PeerServer, Puller, Spill
from objstore.node.refs import RefActions, RefTable
from objstore.plasma.api import Entry
from objstore.plasma.lifecycle import ObjectState
from objstore.plasma.store import ClientState, ObjectEntry, PlasmaStore
from objstore.tasks import TaskSet

__all__ = ["ObjectService", "Parts", "GET", "WAIT"]

log = structlog.get_logger("objstore.node.objects")

# Priorities of a waiting request, as the pull policy knows them.
GET = 0
WAIT = 1
# Gets and deletes of more objects than this are served in slices of this many.
BATCH = 8192
# Waits of one get started per loop turn (see _wait_all).
WAIT_SLICE = 256
# Objects freed by reference counting per turn of the event loop.
FREE_NOW = 2000

_SEALED = ObjectState.SEALED
_SPILLED = ObjectState.SPILLED
_CREATING = ObjectState.CREATING
_DELETED = ObjectState.DELETED
_ABORTED = ObjectState.ABORTED


def _ids(blob: bytes) -> list[bytes]:
    """Concatenated 20-byte ids; anything else is a client's bug."""
    n = OBJECT_ID_SIZE
    if len(blob) % n:
        raise ObjectStoreError(f"an id list of {len(blob)} bytes is not whole 20-byte ids")
    return [blob[i : i + n] for i in range(0, len(blob), n)]


def freed_error(oid: bytes) -> ObjectFreedError:
    return ObjectFreedError(
        f"object {oid.hex()} was freed: it was deleted, or no reference to it was left"
    )


@dataclass(frozen=True)
class Parts:
    """The components behind a node's object service (None: not on this node)."""

    store: PlasmaStore
    spill: Spill | None = None
    directory: Directory | None = None
    puller: Puller | None = None
    peer_server: PeerServer | None = None
    spill_target: str = ""


async def _spawn_sliced(
    fn: Callable[[bytes], Coroutine[Any, Any, None]],
    oids: list[bytes],
    out: list[asyncio.Task[None]],
) -> None:
    """A task ``fn(oid)`` per id, added to ``out``, :data:`WAIT_SLICE` per loop turn.

    A task's first step (subscribe, want, register its waiter) runs in the loop
    turn after it is made: made all at once, 10,000 of them would keep the loop
    for a third of a second.  ``out`` holds the tasks made so far if this is
    cancelled part way (the caller cancels them)."""
    loop = asyncio.get_running_loop()
    for start in range(0, len(oids), WAIT_SLICE):
        if start:
            await asyncio.sleep(0)
        out.extend(loop.create_task(fn(o)) for o in oids[start : start + WAIT_SLICE])


class ObjectService:
    """See the module docstring."""

    def __init__(self, config: Config, node_id: bytes) -> None:
        self.config = config
        self.node_id = node_id
        self._parts: Parts | None = None
        self._reapers = TaskSet("reap")
        # Connected clients (the server adds and removes them).
        self.clients = 0
        self._by_id: dict[int, ClientState] = {}
        # Reference counting (objstore/node/refs.py), and its pending actions.
        self.refs = RefTable(config.lifecycle.borrow_grace_s, self._is_primary)
        self._todo = RefActions()
        self._applying = False
        self._free_q: collections.deque[bytes] = collections.deque()
        self._freeing = False
        self._grace_timer: asyncio.TimerHandle | None = None
        self._grace_at = 0.0
        # oid -> client id -> where the ref was made (OBJSTORE_RECORD_CALL_SITES).
        self.sites: dict[bytes, dict[int, str]] = {}
        self.freed_by_refs = 0
        # Recreation: objects whose putter can recreate them, attempts asked so
        # far, and the ones that could not be (id -> why), for later gets.
        self._recreatable: set[bytes] = set()
        self._recreations: dict[bytes, int] = {}
        self._unrecoverable: dict[bytes, str] = {}
        self._replacing: bytes | None = None
        self.recreations_asked = 0
        # Objects put elsewhere, lost, that their owner can recreate: gets here
        # wait for that until the timer fails them (lifecycle.recreate_wait_s).
        self._recreation_waits: dict[bytes, asyncio.TimerHandle] = {}
        # Replicas: objects put here with replicas=N (id -> N); copies this
        # node keeps for objects put elsewhere (pinned by `_replica_holder`, so
        # never evicted, until the object is deleted); puts waiting for their
        # copies (id -> N, future).
        self._replicas_wanted: dict[bytes, int] = {}
        self._replica_copies: set[bytes] = set()
        self._replica_holder = ClientState(-1, self._replica_invalidated)
        self._replica_waits: dict[bytes, tuple[int, asyncio.Future[ObjectRow]]] = {}
        self._replica_held: dict[bytes, int] = {}
        self._replicating: set[bytes] = set()
        self._replica_tasks = TaskSet("replica")
        self.replicas_made = 0

    # ------------------------------------------------------------ wiring
    def bind(self, parts: Parts) -> None:
        """Give the service its components (once, before serving)."""
        if self._parts is not None:
            raise RuntimeError("the object service is bound already")
        self._parts = parts

    @property
    def parts(self) -> Parts:
        if self._parts is None:
            raise RuntimeError("the object service is not bound yet")
        return self._parts

    @property
    def store(self) -> PlasmaStore:
        return self.parts.store

    async def close(self) -> None:
        """Stop freeing gone clients' objects (the node is stopping)."""
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        for timer in self._recreation_waits.values():
            timer.cancel()
        self._recreation_waits.clear()
        await self._reapers.close()
        await self._replica_tasks.close()

    # ------------------------------------------------------------ reference counting
    def _is_primary(self, oid: bytes) -> bool:
        entry = self.store.entry(oid)
        return (
            entry is not None
            and entry.primary
            and entry.state is not _DELETED
            and entry.state is not _ABORTED
        )

    def put_held(
        self,
        client: ClientState,
        oid: bytes,
        name: str,
        contained: bytes,
        site: str,
        recreatable: bool = False,
    ) -> None:
        """A put by ``client`` succeeded: its connection holds the object, and the
        object holds the refs its value contains."""
        if recreatable:
            self._recreatable.add(oid)
            directory = self.parts.directory
            if directory is not None:
                # Sent after the copy's own report: gets on other nodes then
                # wait for a recreation when every copy is lost.
                directory.recreatable(oid)
        out = self._todo
        inner = _ids(contained) if contained else ()
        self.refs.put(client.client_id, oid, bool(name), inner, time.monotonic(), out)
        if site:
            self.sites.setdefault(oid, {})[client.client_id] = site
        if out:
            self._apply_refs()

    def refs_changed(
        self,
        client: ClientState,
        added: bytes,
        dropped: bytes,
        pickled: bytes,
        sites: list[str],
    ) -> None:
        """A client's process made its first refs to ``added``, let go of its last
        ones to ``dropped``, pickled refs to ``pickled`` (in that order of effect:
        a pickle's grace starts before the drop that follows it)."""
        if client.closed:
            return
        refs, now, out = self.refs, time.monotonic(), self._todo
        cid = client.client_id
        if pickled:
            refs.pickled(_ids(pickled), now, out)
            self._arm_grace()
        if added:
            ids = _ids(added)
            refs.add(cid, ids, now, out)
            if sites:
                for oid, site in zip(ids, sites):
                    if site:
                        self.sites.setdefault(oid, {})[cid] = site
        if dropped:
            ids = _ids(dropped)
            refs.drop(cid, ids, now, out)
            if self.sites:
                for oid in ids:
                    by = self.sites.get(oid)
                    if by is not None:
                        by.pop(cid, None)
                        if not by:
                            del self.sites[oid]
        if out:
            self._apply_refs()

    # ------------------------------------------------------------ replicas
    async def replicate(self, client: ClientState, oid: bytes, count: int, timeout: float) -> None:
        """A put with replicas=``count``: return once ``count`` distinct live nodes
        keep a copy (this one included), or raise :class:`NodeUnavailableError`."""
        if count < 2:
            return
        entry = self.store.entry(oid)
        if entry is None or not entry.primary or entry.owner is not client:
            raise ObjectNotFoundError(f"object {oid.hex()} was not put by this client here")
        directory = self.parts.directory
        if directory is None:
            raise NodeUnavailableError(
                f"replicas={count} needs a cluster; this node runs alone (no directory)"
            )
        timeout = min(timeout, self.config.lifecycle.replica_timeout_s)
        self._replicas_wanted[oid] = count
        directory.replicas(oid, count)
        fut: asyncio.Future[ObjectRow] = asyncio.get_running_loop().create_future()
        self._replica_waits[oid] = (count, fut)
        directory.watch(oid)
        row: ObjectRow | None = None
        try:
            async with asyncio.timeout(timeout):
                row = await fut
        except TimeoutError:
            raise NodeUnavailableError(
                f"replicas={count}: only {self._held_copies(oid)} of {count} copies of "
                f"object {oid.hex()} were kept within {timeout:g}s "
                "(lifecycle.replica_timeout_s; the nodes asked did not report a copy)"
            ) from None
        finally:
            directory.unwatch(oid)
            self._replica_waits.pop(oid, None)
            self._replica_held.pop(oid, None)
        log.debug("replicas kept", object_id=oid.hex(), nodes=[n.hex() for n in row.replica_nodes])

    def _held_copies(self, oid: bytes) -> int:
        return self._replica_held.get(oid, 1)

    def _replica_row(self, row: ObjectRow) -> None:
        """A row of an object whose put waits for its replicas."""
        wait = self._replica_waits.get(row.object_id)
        if wait is None:
            return
        count, fut = wait
        if fut.done():
            return
        if row.state == LocationState.DELETED or row.state == LocationState.LOST:
            fut.set_exception(freed_error(row.object_id))
        elif row.replicas >= count:
            held = len(row.replica_nodes)
            self._replica_held[row.object_id] = held
            if held >= count:
                fut.set_result(row)
            elif held + row.replicas_asked < count:
                fut.set_exception(
                    NodeUnavailableError(
                        f"replicas={count}: the cluster has no node left to keep a copy of "
                        f"object {row.object_id.hex()} on ({held} kept, "
                        f"{row.replicas_asked} being made; a copy needs a distinct live node)"
                    )
                )

    def replicas_snapshot(self) -> list[tuple[bytes, int]]:
        store = self.store
        out = []
        for oid, count in list(self._replicas_wanted.items()):
            if store.entry(oid) is None:
                del self._replicas_wanted[oid]
            else:
                out.append((oid, count))
        return out

    def on_replicate(self, ids: list[bytes]) -> None:
        """The directory chose this node to keep copies of these objects."""
        for oid in ids:
            if oid in self._replicating:
                continue
            self._replicating.add(oid)
            self._replica_tasks.spawn(self._keep_replica(oid), name="replica")

    async def _keep_replica(self, oid: bytes) -> None:
        """Pull the object (if it is not here), pin it and report the copy."""
        store = self.store
        timeout = self.config.lifecycle.replica_timeout_s
        try:
            async with asyncio.timeout(timeout):
                while True:
                    entry = store.sealed(oid)
                    if entry is not None and entry.segment >= 0:
                        break
                    await self._wait_one(oid, None, WAIT)
            if entry.primary:
                return  # put here: the primary copy is kept anyway
            if oid not in self._replica_copies:
                store.hold(oid, entry, self._replica_holder)
                self._replica_copies.add(oid)
                self.replicas_made += 1
            directory = self.parts.directory
            if directory is not None:
                # Reported again even if it was here: the directory counts it now.
                directory.added(oid, entry.size, False)
            log.debug("replica kept", object_id=oid.hex(), size=entry.size)
        except TimeoutError:
            log.warning(
                "a replica could not be made in time; the directory asks another node",
                object_id=oid.hex(),
                seconds=timeout,
            )
        except ObjectStoreError as exc:
            log.info("a replica could not be made", object_id=oid.hex(), error=str(exc))
        finally:
            self._replicating.discard(oid)

    def _replica_invalidated(self, ids: list[bytes]) -> None:
        """Objects this node keeps replicas of were deleted: let go of them."""
        loop = asyncio.get_running_loop()
        for oid in ids:
            if oid in self._replica_copies:
                self._replica_copies.discard(oid)
                loop.call_soon(self.store.unpin, oid, self._replica_holder)

    # ------------------------------------------------------------ recreation
    def object_lost(self, oid: bytes, exc: ObjectStoreError) -> ObjectStoreError | None:
        """A primary's last copy is gone: ask its owner to recreate it, if it can."""
        if oid not in self._recreatable:
            return exc
        h = self.refs.holds(oid)
        owner = self._by_id.get(h.owner) if h is not None and h.owner else None
        if owner is None or owner.closed:
            return OwnerDiedError(
                f"object {oid.hex()} is lost ({exc}) and the process that put it, which "
                "could have recreated it, is gone"
            )
        tried = self._recreations.get(oid, 0)
        limit = self.config.lifecycle.max_recreations
        if tried >= limit:
            why = self._unrecoverable.get(oid, str(exc))
            return ObjectReconstructionFailedError(
                f"object {oid.hex()} is lost and was recreated {tried} time(s) already "
                f"(lifecycle.max_recreations={limit}): {why}"
            )
        self._recreations[oid] = tried + 1
        self.recreations_asked += 1
        log.warning(
            "object lost; asking its owner to recreate it",
            object_id=oid.hex(),
            owner_pid=owner.pid,
            attempt=tried + 1,
            error=str(exc),
        )
        owner.recreate([oid])
        return None

    def replace_lost(self, oid: bytes) -> None:
        """A recreated put is coming for ``oid``: drop its lost entry here (its
        damaged spill copy goes with it); its holders keep holding it."""
        entry = self.store.entry(oid)
        if entry is None or entry.state is not _SPILLED:
            return
        self._replacing = oid
        try:
            self.store.delete_many([oid], by_directory=True)
        finally:
            self._replacing = None

    def recreate_failed(self, client: ClientState, oid: bytes, message: str) -> None:
        """The owner could not recreate ``oid``: fail its gets, here and later."""
        self._unrecoverable[oid] = message
        self._recreations[oid] = self.config.lifecycle.max_recreations
        err = ObjectReconstructionFailedError(
            f"object {oid.hex()} is lost and its owner (pid {client.pid}) could not "
            f"recreate it: {message}"
        )
        n = self.store.fail_waiters(oid, err)
        log.error(
            "recreation failed", object_id=oid.hex(), owner_pid=client.pid, error=message, gets=n
        )

    def recreatable_snapshot(self) -> list[bytes]:
        contains = self.store.contains
        return [oid for oid in self._recreatable if contains(oid)]

    def _lost_elsewhere(self, row: ObjectRow) -> None:
        """A LOST row of an object this node waits for: fail its gets, unless its
        owner can recreate it; then they wait up to ``recreate_wait_s`` for it."""
        oid = row.object_id
        wait_s = self.config.lifecycle.recreate_wait_s
        if not row.recreatable or wait_s <= 0:
            n = self.store.fail_waiters(
                oid,
                ObjectLostError(
                    f"object {oid.hex()} is lost: every copy was on nodes that "
                    "died, and it was never spilled"
                ),
            )
            if n:
                log.info("gets failed: object lost", object_id=oid.hex(), gets=n)
            return
        if oid in self._recreation_waits:
            return
        loop = asyncio.get_running_loop()
        self._recreation_waits[oid] = loop.call_later(wait_s, self._recreation_overdue, oid, row)
        log.info(
            "object lost; its gets here wait for its owner to recreate it",
            object_id=oid.hex(),
            owner_node=row.primary.hex() if row.primary else None,
            seconds=wait_s,
        )

    def _recreation_overdue(self, oid: bytes, row: ObjectRow) -> None:
        self._recreation_waits.pop(oid, None)
        if self.store.contains(oid):
            return
        wait_s = self.config.lifecycle.recreate_wait_s
        owner = f" (put on node {row.primary.hex()})" if row.primary else ""
        n = self.store.fail_waiters(
            oid,
            ObjectLostError(
                f"object {oid.hex()}{owner} is lost: every copy was on nodes that died; "
                f"its owner could recreate it, but it was not back within {wait_s:g}s "
                "(lifecycle.recreate_wait_s)"
            ),
        )
        log.info(
            "gets failed: a lost object was not recreated in time", object_id=oid.hex(), gets=n
        )

    def _recreation_back(self, oid: bytes) -> None:
        timer = self._recreation_waits.pop(oid, None)
        if timer is not None:
            timer.cancel()
            log.info("a lost object is back (recreated)", object_id=oid.hex())

    def _forget_recreation(self, oid: bytes) -> None:
        self._recreatable.discard(oid)
        self._recreations.pop(oid, None)
        self._unrecoverable.pop(oid, None)

    def _apply_refs(self) -> None:
        """Do what the ref table asked: free primaries nothing holds (here and
        everywhere), tell the directory of borrows.  Frees forget objects, which
        may let go of what their values held: loop until nothing is left, freeing
        at most :data:`FREE_NOW` objects per turn of the loop (a client that drops
        or leaves 100,000 refs at once must not stall the node)."""
        if self._applying:
            return
        self._applying = True
        try:
            todo = self._todo
            store = self.store
            directory = self.parts.directory
            queue = self._free_q
            budget = FREE_NOW
            while todo or (queue and budget > 0):
                borrow, todo.borrow = todo.borrow, []
                unborrow, todo.unborrow = todo.unborrow, []
                if directory is not None:
                    for oid in borrow:
                        directory.borrowed(oid)
                    for oid in unborrow:
                        directory.unborrowed(oid)
                if todo.free:
                    queue.extend(todo.free)
                    todo.free = []
                if not queue or budget <= 0:
                    continue
                n = min(budget, len(queue))
                chunk = [queue.popleft() for _ in range(n)]
                budget -= n
                # An object still being written is aborted by its creator's reap.
                state_of = store.state_of
                chunk = [o for o in chunk if state_of(o) is not _CREATING]
                self.freed_by_refs += len(chunk)
                store.delete_many(chunk)
                now = time.monotonic()
                for oid in chunk:
                    # Not in the table any more (or never sealed): still forget it.
                    self.refs.forget(oid, now, todo)
                    self.sites.pop(oid, None)
            if queue and not self._freeing:
                self._freeing = True
                self._reapers.spawn(self._free_later(), "free")
        finally:
            self._applying = False

    async def _free_later(self) -> None:
        try:
            while self._free_q:
                await asyncio.sleep(0)
                self._apply_refs()
        finally:
            self._freeing = False

    def _arm_grace(self) -> None:
        nxt = self.refs.expire(time.monotonic(), self._todo)
        if nxt is None:
            return
        if self._grace_timer is not None and self._grace_at <= nxt:
            return
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        loop = asyncio.get_running_loop()
        self._grace_at = nxt
        # A little after the deadline: the monotonic clock and the loop's agree.
        self._grace_timer = loop.call_at(
            loop.time() + max(0.0, nxt - time.monotonic()) + 0.01, self._grace_over
        )

    def _grace_over(self) -> None:
        self._grace_timer = None
        self._arm_grace()
        if self._todo:
            self._apply_refs()

    def on_borrowed(self, ids: list[bytes]) -> None:
        """The directory: other nodes hold refs to these objects put here."""
        self.refs.borrowed(ids)

    def on_unborrowed(self, ids: list[bytes]) -> None:
        """The directory: no other node holds a ref to these objects any more."""
        self.refs.unborrowed(ids, time.monotonic(), self._todo)
        if self._todo:
            self._apply_refs()

    def borrowed_snapshot(self) -> list[bytes]:
        """Objects put elsewhere that processes here hold (the directory's full report)."""
        return self.refs.borrowed_snapshot()

    # ------------------------------------------------------------ clients
    def segment_fd(self, segment_id: int) -> tuple[int, int] | None:
        """(fd, size) of a segment a client may map, or None."""
        seg = self.store.segment(segment_id)
        return (seg.fd, seg.size) if seg is not None else None

    def connected(self, client: ClientState) -> None:
        self.clients += 1
        self._by_id[client.client_id] = client

    def disconnected(self, client: ClientState) -> None:
        """A client went away: its refs and pins go now (objects nothing else
        refers to are freed), its unsealed objects in the background."""
        self.clients -= 1
        self._by_id.pop(client.client_id, None)
        store = self.store
        store.disconnect(client)
        if not self._let_go(client):
            # A client that held more: the rest in later turns of the loop.
            self._reapers.spawn(self._let_go_rest(client), "let-go")
        if client.owned:
            self._reapers.spawn(self._reap(client), "reap")

    def _let_go(self, client: ClientState) -> bool:
        """Up to FREE_NOW of a gone client's refs count no more; True when none is left."""
        done = self.refs.client_gone(client.client_id, time.monotonic(), self._todo, FREE_NOW)
        if self._todo:
            self._apply_refs()
        return done

    async def _let_go_rest(self, client: ClientState) -> None:
        while True:
            await asyncio.sleep(0)
            if self._let_go(client):
                return

    def _still_referred(self, oid: bytes) -> bool:
        return self.refs.held(oid, time.monotonic())

    async def _reap(self, client: ClientState) -> None:
        aborted, freed = await self.store.reap(client, keep=self._still_referred)
        if aborted or freed:
            log.info(
                "client gone", client=client.client_id, pid=client.pid, aborted=aborted, freed=freed
            )

    # ------------------------------------------------------------ create / put / seal
    def create_now(
        self, client: ClientState, oid: bytes, size: int, meta: bytes, name: str
    ) -> ObjectEntry | None:
        """Create at once, or None: call :meth:`create` (room to make, a name to claim).

        Raises at once what the local checks find (a name taken here, bad sizes).
        """
        if self._must_claim(client, oid, name):
            return None
        return self.store.create_now(oid, size, meta, client, name)

    def _must_claim(self, client: ClientState, oid: bytes, name: str) -> bool:
        """A named create in a cluster claims its name first (after the local checks)."""
        if name and self.parts.directory is not None:
            self.store.precheck_create(oid, name, client)
            return True
        return False

    async def create(
        self, client: ClientState, oid: bytes, size: int, meta: bytes, name: str
    ) -> ObjectEntry:
        """Create, making room and claiming the name in the cluster first."""
        store = self.store
        return await self._claiming(
            oid, name, size, lambda: store.create(oid, size, meta, client, name)
        )

    def put_inline_now(
        self, client: ClientState, oid: bytes, data: bytes, meta: bytes, name: str
    ) -> ObjectEntry | None:
        """Create, copy and seal a small payload at once, or None (see :meth:`create_now`)."""
        if self._must_claim(client, oid, name):
            return None
        return self.store.put_inline(oid, data, meta, client, name)

    async def put_inline(
        self, client: ClientState, oid: bytes, data: bytes, meta: bytes, name: str
    ) -> ObjectEntry:
        store = self.store
        return await self._claiming(
            oid, name, len(data), lambda: store.put_inline_slow(oid, data, meta, client, name)
        )

    async def _claiming(
        self,
        oid: bytes,
        name: str,
        size: int,
        create: Callable[[], Awaitable[ObjectEntry]],
    ) -> ObjectEntry:
        """Run ``create``; a name is claimed in the directory before, given back on failure."""
        directory = self.parts.directory
        if not name or directory is None:
            return await create()
        await directory.reserve_name(name, oid, size)
        try:
            return await create()
        except BaseException:
            directory.deleted(oid)  # give the name back
            raise

    def seal(self, client: ClientState, oid: bytes) -> None:
        self.store.seal(oid, client)

    def abort(self, client: ClientState, oid: bytes) -> None:
        self.store.abort(oid, client)

    def release(self, client: ClientState, oids: list[bytes]) -> None:
        release = self.store.release
        for oid in oids:
            release(oid, client)

    def note_owned(self, client: ClientState, compact_every: int) -> None:
        """Keep a client's list of owned ids from growing with its deletes (amortized)."""
        if client.stale >= compact_every and 2 * client.stale >= len(client.owned):
            self.store.compact_owned(client)

    # ------------------------------------------------------------ get
    def get_now(
        self, client: ClientState, ids: list[bytes], name: str
    ) -> tuple[list[bytes], list[ObjectEntry]] | None:
        """The ids (the name's last) and their objects pinned for ``client`` (one pin
        per id), or None when the get must wait (:meth:`get`).  Raises for an object
        that is gone."""
        store = self.store
        if name:
            oid = store.named(name)
            if oid is None:
                if self.parts.directory is not None:
                    return None
                raise ObjectNotFoundError(f"no object is named {name!r}")
            ids = [*ids, oid]
        if len(ids) > BATCH:
            return None
        readable = store.readable
        entries = []
        for oid in ids:
            entry = readable(oid)
            if entry is None:
                return None
            entries.append(entry)
        pin = store.pin_for_get
        for oid, entry in zip(ids, entries):
            pin(oid, entry, client)
        return ids, entries

    async def get(
        self, client: ClientState, ids: list[bytes], name: str, timeout: float | None
    ) -> tuple[list[bytes], list[ObjectEntry]]:
        """Wait for every object (at most ``timeout`` s) and return them pinned for
        ``client``, one pin per id (the name's id last)."""
        store = self.store
        if name:
            ids = [*ids, await self._resolve(name, timeout)]
        held: list[bytes] = []  # a pin each, for the get's duration
        try:
            try:
                async with asyncio.timeout(timeout):
                    missing: list[bytes] = []
                    for i, oid in enumerate(dict.fromkeys(ids)):
                        entry = store.readable(oid)
                        if entry is None:
                            missing.append(oid)
                        else:
                            store.hold(oid, entry, client)
                            held.append(oid)
                        if i % BATCH == BATCH - 1:
                            await asyncio.sleep(0)
                    await self._wait_all(missing, client, held)
            except ObjectFetchTimedOutError:
                raise  # a pull stalled (a TimeoutError too, but not the get's own)
            except TimeoutError:
                pending = [oid.hex() for oid in dict.fromkeys(ids) if store.sealed(oid) is None]
                after = "" if timeout is None else f" after {timeout:.3f}s"
                raise GetTimeoutError(
                    f"get timed out{after} waiting for {len(pending)} "
                    f"object(s): {', '.join(pending[:5])}{' ...' if len(pending) > 5 else ''}"
                ) from None
            entries: list[ObjectEntry] = []
            pinned = 0
            try:
                for start in range(0, len(ids), BATCH):
                    if client.closed:  # its disconnect released every pin already
                        raise ObjectStoreError("client disconnected")
                    for oid in ids[start : start + BATCH]:
                        entry = store.entry(oid)
                        if entry is None or entry.state is not _SEALED:
                            # Deleted while the get waited for the others.
                            raise freed_error(oid)
                        store.pin_for_get(oid, entry, client)
                        pinned += 1
                        entries.append(entry)
                    if start + BATCH < len(ids):
                        await asyncio.sleep(0)
            except BaseException:
                for oid in ids[:pinned]:
                    store.unpin(oid, client)
                raise
            return ids, entries
        finally:
            for oid in held:
                store.unpin(oid, client)

    async def check_earlier(
        self, ids: list[bytes], gone_nodes: list[bytes], timeout: float | None
    ) -> None:
        """Raise :class:`ObjectLostError` for the first of ``ids`` (objects a client had
        in a session with an earlier node process on this socket) of which no copy is
        left: none here (in any state) and, in a cluster, no live copy on a node other
        than ``gone_nodes`` and this one, nor a spill copy.  Returns when every one may
        still come (the get then waits, pulls or restores as usual)."""
        store = self.store
        absent = [oid for oid in dict.fromkeys(ids) if store.entry(oid) is None]
        if not absent:
            return
        directory = self.parts.directory
        if directory is None:
            raise _lost_with_node(absent[0])
        gone = {*gone_nodes, self.node_id}
        try:
            async with asyncio.timeout(timeout):
                rows = await directory.lookup(absent)
        except TimeoutError:
            raise GetTimeoutError(
                f"get timed out after {timeout}s asking the directory about "
                f"{len(absent)} object(s) of an earlier session"
            ) from None
        for row in rows:
            live = any(n not in gone for n in row.nodes)
            if row.state == LocationState.PRESENT and (live or row.spilled_url):
                continue
            raise _lost_with_node(row.object_id)

    async def _resolve(self, name: str, timeout: float | None) -> bytes:
        """The id of a named object, asking the directory when this node does not know it."""
        store = self.store
        oid = store.named(name)
        if oid is not None:
            return oid
        directory = self.parts.directory
        if directory is None:
            raise ObjectNotFoundError(f"no object is named {name!r}")
        try:
            async with asyncio.timeout(timeout):
                row = await directory.resolve_name(name)
        except TimeoutError:
            raise GetTimeoutError(f"get timed out resolving the name {name!r}") from None
        if store.was_deleted(row.object_id):
            # Deleted here a moment ago; the directory has not heard yet.
            raise ObjectNotFoundError(f"no object is named {name!r}")
        return row.object_id

    async def _wait_all(self, oids: list[bytes], client: ClientState, held: list[bytes]) -> None:
        """Wait for every object at once (each subscribed and pulled now, not in turn);
        each one sealed is pinned for ``client`` and added to ``held``."""
        if not oids:
            return
        if len(oids) == 1:
            await self._wait_one(oids[0], client, GET)
            held.append(oids[0])
            return

        async def one(oid: bytes) -> None:
            await self._wait_one(oid, client, GET)
            held.append(oid)

        waits: list[asyncio.Task[None]] = []
        try:
            await _spawn_sliced(one, oids, waits)
            await asyncio.gather(*waits)
        finally:
            for w in waits:
                w.cancel()
            # Cancelled waits release what they pinned themselves; let them run.
            await asyncio.gather(*waits, return_exceptions=True)

    async def _wait_one(self, oid: bytes, client: ClientState | None, priority: int) -> Entry:
        """Wait until the object is sealed here: restored if it is spilled here,
        else found in the cluster (subscribed and pulled) unless it is being made here."""
        parts = self.parts
        store = parts.store
        state = store.state_of(oid)
        if state is _SPILLED and parts.spill is not None:
            parts.spill.restore(oid)
            return await store.wait_sealed(oid, client)
        directory = parts.directory
        if directory is None or state is _CREATING:
            return await store.wait_sealed(oid, client)
        puller = parts.puller
        if puller is not None:
            puller.want(oid, priority)
        directory.watch(oid)
        try:
            if puller is None or priority != GET:
                # A wait is not failed by a stalled pull: it ends on its own timeout.
                return await store.wait_sealed(oid, client)
            return await self._sealed_unless(oid, client, puller.fetch_failure(oid))
        finally:
            directory.unwatch(oid)
            if puller is not None:
                puller.unwant(oid, priority)

    async def _sealed_unless(
        self, oid: bytes, client: ClientState | None, failure: asyncio.Future[None]
    ) -> Entry:
        """``store.wait_sealed(oid, client)``, unless ``failure`` (the pull stalled:
        ``ObjectFetchTimedOutError``) comes first; that is raised then.

        The wait runs in this task, so it is registered before this returns to
        the loop (a LOST notification right after finds it).  The failure
        cancels this task, as ``asyncio.timeout`` does, and the cancellation is
        taken back here; a cancellation from outside (the get's timeout, its
        client gone) stays one.  ``wait_sealed`` itself drops its waiter and a
        pin taken at the seal when it is cancelled."""
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        waiting, fired = True, False

        def stalled(_: asyncio.Future[None]) -> None:
            nonlocal fired
            if waiting:  # not once the wait is over (done callbacks run later)
                fired = True
                task.cancel()

        failure.add_done_callback(stalled)
        try:
            return await self.store.wait_sealed(oid, client)
        except asyncio.CancelledError:
            if fired and task.uncancel() <= cancelling:
                exc = failure.exception()
                assert isinstance(exc, ObjectStoreError), exc
                raise type(exc)(*exc.args) from None  # one per get: the future's is shared
            raise
        finally:
            waiting = False
            failure.remove_done_callback(stalled)

    async def restore_for_peer(self, oid: bytes, timeout: float) -> bool:
        """Make a spilled object readable here for another node (True when it is)."""
        try:
            async with asyncio.timeout(timeout):
                await self._wait_local(oid)
            return True
        except (TimeoutError, ObjectStoreError) as exc:
            log.info(
                "a spilled object could not be restored for a peer",
                object_id=oid.hex(),
                error=str(exc) or type(exc).__name__,
            )
            return False

    async def _wait_local(self, oid: bytes) -> None:
        parts = self.parts
        if parts.store.state_of(oid) is _SPILLED and parts.spill is not None:
            parts.spill.restore(oid)
        await parts.store.wait_sealed(oid)

    # ------------------------------------------------------------ wait
    def wait_now(self, ids: list[bytes], num: int, timeout: float | None) -> list[bytes] | None:
        """The ready ids if ``num`` of them are ready (or ``timeout`` is 0), else None."""
        distinct = len(set(ids))
        if num > distinct:
            raise ObjectStoreError(
                f"num_returns={num} is more than the {distinct} distinct refs given"
            )
        contains = self.store.contains
        ready = [oid for oid in ids if contains(oid)]
        if len(set(ready)) >= num or timeout == 0:
            return ready
        return None

    async def wait(self, ids: list[bytes], num: int, timeout: float | None) -> list[bytes]:
        """Wait until ``num`` of the objects are ready, or ``timeout``; the ready ids.

        Ready, as in Ray: a get of it would not wait.  That is an object sealed
        here, and also one found gone while waiting (freed, deleted, lost): its
        get raises at once, and leaving it pending would end the wait early
        with fewer than ``num`` ready ids and no hint why."""
        store = self.store
        pending = [oid for oid in dict.fromkeys(ids) if not store.contains(oid)]
        need = num - (len(set(ids)) - len(pending))
        gone: set[bytes] = set()

        async def one(oid: bytes) -> None:
            try:
                await self._wait_one(oid, None, WAIT)
            except ObjectStoreError:
                gone.add(oid)

        tasks: list[asyncio.Task[None]] = []
        try:
            async with asyncio.timeout(timeout):
                await _spawn_sliced(one, pending, tasks)
                for fut in asyncio.as_completed(tasks):
                    await fut
                    need -= 1
                    if need <= 0:
                        break
        except TimeoutError:
            pass
        finally:
            for t in tasks:
                t.cancel()
        return [oid for oid in ids if oid in gone or store.contains(oid)]

    def contains(self, oid: bytes) -> bool:
        return self.store.contains(oid)

    # ------------------------------------------------------------ delete
    def delete_now(self, ids: list[bytes], name: str) -> int | None:
        """Delete at once, or None: call :meth:`delete` (others nodes to ask, or many ids)."""
        store = self.store
        if self.parts.directory is not None:
            if name and not store.has_name(name):
                return None
            # Not here, and not deleted here a moment ago (its report may be on its way).
            if any(store.entry(oid) is None and not store.was_deleted(oid) for oid in ids):
                return None
        if name:
            ids = [*ids, store.lookup_name(name)]
        if len(ids) > BATCH:
            return None
        return store.delete_many(ids)

    async def delete(self, ids: list[bytes], name: str) -> int:
        """Delete objects here and on every node holding a copy; how many were deleted."""
        store = self.store
        directory = self.parts.directory
        # Ids the directory is asked to delete itself (not reported by a delete here).
        ask: list[bytes] = []
        if name:
            if store.has_name(name) or directory is None:
                ids = [*ids, store.lookup_name(name)]
            else:
                # A name this node does not know as a primary: the directory knows its
                # id, and this node may hold a secondary copy of it.
                row = await directory.resolve_name(name)
                ask.append(row.object_id)
                if store.entry(row.object_id) is not None:
                    store.delete_many([row.object_id], by_directory=True)
        if directory is not None:
            ask += [oid for oid in ids if store.entry(oid) is None and not store.was_deleted(oid)]
        local = [oid for oid in ids if store.entry(oid) is not None]
        n = 0
        for start in range(0, len(local), BATCH):
            n += store.delete_many(local[start : start + BATCH])
            if start + BATCH < len(local):
                await asyncio.sleep(0)
        if directory is not None and ask:
            step = self.config.directory.max_lookup
            for start in range(0, len(ask), step):
                n += await directory.delete(ask[start : start + step])
        return n

    # ------------------------------------------------------------ the directory's word
    def on_update(self, rows: list[ObjectRow]) -> None:
        """Subscribed objects changed: fail the gets of lost or deleted ones, pull the others."""
        store = self.store
        puller = self.parts.puller
        for row in rows:
            if self._replica_waits:
                self._replica_row(row)
            if row.state == LocationState.LOST:
                self._lost_elsewhere(row)
            else:
                if self._recreation_waits:
                    self._recreation_back(row.object_id)
                if row.state == LocationState.DELETED:
                    store.fail_waiters(row.object_id, freed_error(row.object_id))
            if puller is not None:
                # PRESENT elsewhere: pull it (one pull however many gets wait).
                puller.on_locations(row)

    def on_free(self, ids: list[bytes]) -> None:
        """Objects deleted on another node: free the copies here."""
        n = self.store.delete_many(ids, by_directory=True)
        refs, now, out = self.refs, time.monotonic(), self._todo
        for oid in ids:
            # Borrowed here without a copy: no store event tells the ref table.
            refs.forget(oid, now, out)
        if out:
            self._apply_refs()
        log.debug("objects deleted elsewhere freed here", requested=len(ids), freed=n)

    def on_dead(self, node_ids: list[bytes]) -> None:
        """Nodes declared dead: stop serving their transfers."""
        peer_server = self.parts.peer_server
        if peer_server is not None:
            for nid in node_ids:
                peer_server.drop_destination(nid)

    # -- what the directory client reads of the node
    def snapshot(self) -> list[tuple[bytes, int, bool, str]]:
        return self.store.snapshot()

    def spilled_snapshot(self) -> list[tuple[bytes, str]]:
        spill = self.parts.spill
        return spill.copies_snapshot() if spill is not None else []

    def usage(self) -> Usage:
        store = self.store
        spill = self.parts.spill
        return Usage(
            memory_used=store.used,
            memory_total=store.capacity,
            pinned_bytes=store.pinned_bytes,
            objects=len(store),
            spilled_bytes=spill.spilled_bytes if spill is not None else 0,
            fallback_used=store.fallback_used,
            clients=self.clients,
        )

    def spilled(self, oid: bytes, url: str) -> None:
        """The spill manager wrote an object's copy (the directory hears of its URL)."""
        directory = self.parts.directory
        if directory is not None:
            directory.spilled(oid, url)

    # ------------------------------------------------------------ the store's events
    def object_sealed(self, oid: bytes, entry: Entry, name: str) -> None:
        parts = self.parts
        if parts.directory is not None:
            parts.directory.added(oid, entry.size, entry.primary, name)
        if parts.spill is not None and entry.primary and entry.segment == 0:
            parts.spill.sealed(oid, entry)

    def object_read(self, oid: bytes, entry: Entry) -> None:
        spill = self.parts.spill
        if spill is not None:
            spill.touched(oid, entry)

    def object_unheld(self, oid: bytes, entry: Entry) -> None:
        spill = self.parts.spill
        if spill is not None:
            spill.unheld(oid, entry)

    def object_deleted(self, oid: bytes, entry: Entry, by_directory: bool) -> None:
        if oid == self._replacing:  # a recreated value takes its place
            return
        self._forget_recreation(oid)
        if self._replicas_wanted:
            self._replicas_wanted.pop(oid, None)
        self.refs.forget(oid, time.monotonic(), self._todo)
        if self._todo:
            self._apply_refs()
        parts = self.parts
        if parts.directory is not None and not by_directory:
            parts.directory.deleted(oid)
        if parts.spill is not None and entry.primary:
            parts.spill.deleted(oid, entry)

    def object_evicted(self, oid: bytes) -> None:
        directory = self.parts.directory
        if directory is not None:
            directory.removed(oid)

    def object_dropped(self, oid: bytes, entry: Entry) -> None:
        spill = self.parts.spill
        if spill is not None and entry.primary:
            spill.dropped(oid, entry)

    def object_aborted(self, oid: bytes, name: str) -> None:
        self.refs.forget(oid, time.monotonic(), self._todo)
        if self._todo:
            self._apply_refs()
        directory = self.parts.directory
        if name and directory is not None:
            directory.deleted(oid)  # frees the name reserved in the directory

    def space_freed(self) -> None:
        puller = self.parts.puller
        if puller is not None:
            puller.space_freed()

    async def make_room(self, nbytes: int) -> int:
        spill = self.parts.spill
        return await spill.make_room(nbytes) if spill is not None else 0

    def room_error(self) -> ObjectStoreError | None:
        spill = self.parts.spill
        return spill.last_error if spill is not None else None

    # ------------------------------------------------------------ views
    def stats(self) -> dict[str, Any]:
        """The node's counters, by the names of the local protocol's ``StatsReply``."""
        parts = self.parts
        out: dict[str, Any] = dict(parts.store.stats())
        out["clients"] = self.clients
        directory = parts.directory
        if directory is not None:
            out["directory"] = f"{directory.host}:{directory.port}"
        if parts.puller is not None:
            out["pulled"] = parts.puller.pulled
            out["bytes_pulled"] = parts.puller.bytes_pulled
            out["relayed_pulls"] = parts.puller.relayed
            out["relayed_from_partial"] = parts.puller.relayed_from_partial
            out["relay_switches"] = parts.puller.relay_switches
        if parts.peer_server is not None:
            out["chunks_served"] = parts.peer_server.chunks_sent
            out["bytes_served"] = parts.peer_server.bytes_sent
            out["refused_peers"] = parts.peer_server.refused
            out["relayed_chunks"] = parts.peer_server.relayed_chunks
        spill = parts.spill
        if spill is not None:
            sp = spill.stats()
            out.update(
                spilled_objects=sp["spilled_objects"],
                spilled_bytes=sp["spilled_bytes"],
                spill_files=sp["spill_files"],
                bytes_spilled=sp["bytes_written"],
                restored=sp["restored"],
                bytes_restored=sp["bytes_restored"],
                spill_write_errors=sp["write_errors"],
                restore_errors=sp["restore_errors"],
                spill_files_deleted=sp["files_deleted"],
                spill=parts.spill_target,
            )
        return out

    def _refs_row(self, oid: bytes) -> dict[str, Any]:
        """What holds an object here, for ``python -m objstore memory``."""
        h = self.refs.holds(oid)
        if h is None:
            return {}
        by_id = self._by_id
        owner = by_id.get(h.owner) if h.owner else None
        sites = self.sites.get(oid)
        return {
            "owner_pid": owner.pid if owner is not None else 0,
            "holder_pids": sorted(c.pid for cid in h.clients if (c := by_id.get(cid)) is not None),
            "contained_in": list(h.containers),
            "grace": h.grace_until > time.monotonic(),
            "borrowed": h.borrowed,
            "call_sites": sorted(set(sites.values())) if sites else [],
        }

    def list_objects(self, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """(objects in the table, up to ``limit`` of them described for ``memory``)."""
        store = self.store
        spill = self.parts.spill
        rows = []
        for oid, entry in store.iter_objects(limit):
            pins = sum(entry.pinners.values()) if entry.pinners else 0
            rows.append(
                {
                    "object_id": oid,
                    "data_size": entry.size,
                    "state": entry.state.name,
                    "name": store.name_of(oid),
                    "primary": entry.primary,
                    "pins": pins + (1 if entry.mapped else 0),
                    "segment": max(entry.segment, 0),
                    "metadata": entry.meta,
                    "spill_url": spill.url_of(oid) if spill is not None else "",
                    **self._refs_row(oid),
                }
            )
        return len(store), rows


def _lost_with_node(oid: bytes) -> ObjectLostError:
    return ObjectLostError(
        f"object {oid.hex()} is lost: the node restarted (or the client's connection to "
        "it was lost) and no copy of it is left, in memory, on another node or spilled"
    )
