"""The pulling side: fetch objects that gets here wait for into secondary copies.

The node's object service tells :class:`ObjectManager` what gets and waits
want (:meth:`~ObjectManager.want`, :meth:`~ObjectManager.unwant`) and where
the directory says objects are (:meth:`~ObjectManager.on_locations`).  The
pure policy (:class:`~objstore.transfer.pull.PullManager`) decides which pulls
run and from which source, within the bytes in flight it admits; this class
turns each decision into a task and each task's end back into an event for
the policy.  It reaches other nodes only through a
:class:`~objstore.transfer.peer.PeerTransport` and the store only through
:class:`objstore.plasma.api.Store`.

A source is a :class:`NodeSource` (a node holding a copy) or a
:class:`SpillSource` (a spill copy this node can read itself, used when no
node holds the object).  An attempt from a node:

1. ask for the first chunk; the reply's header says the object's size and
   metadata;
2. create a secondary copy of that size and receive the first chunk straight
   into it; if the store has no room at once, receive the chunk into a
   buffer instead, let the source go, and wait for room here (waiting for
   local memory is not the source's fault: it is bounded by the pull's life,
   which ends when no get waits any more);
3. fetch the other chunks, a few at a time over pooled connections, each
   CRC-checked, then seal: the waiting gets wake.

Objects up to ``min(chunk_size, 256 KiB)`` are fetched many per request
instead, the pulls started in one turn of the loop from one source together.

Every request to a source is bounded by ``transfer.pull_timeout_s`` from when
one of this node's ``transfer.connections_per_peer`` slots for that source is
free.  A source that fails, stalls or sends a bad chunk ends the attempt; the
partial copy is discarded (never visible) and the policy picks another source,
or backs off when every source failed, until the directory's next word.

A pull that makes no progress for ``transfer.fetch_timeout_s`` while a source
is known (the policy's stall clock: no chunk came, no attempt succeeded; time
spent waiting for admission or for memory here does not count) fails the gets
waiting for it with :class:`~objstore.errors.ObjectFetchTimedOutError`: each
get races its wait against the future :meth:`ObjectManager.fetch_failure`
gives it.  Waits are not failed (a wait returns on its own timeout).  The pull
itself goes on: the failed gets leave it as any get that gives up, so it ends
with the last of them, or keeps trying (backing off) for the waits and the
gets that came after; each of those gets a full ``fetch_timeout_s`` from the
report.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from objstore.config import Config
from objstore.errors import ObjectFetchTimedOutError, ObjectStoreError
from objstore.locations import LocationState, ObjectRow
from objstore.plasma.api import Entry, Store
from objstore.streak import FailureStreak
from objstore.tasks import TaskSet
from objstore.transfer.peer import PeerTransport, Small, TransferError
from objstore.transfer.pull import Priority, PullManager, Stall, Start
from objstore.transfer.relay import PartialCopy, Partials, RelayDirectory

__all__ = ["ObjectManager", "NodeSource", "SpillSource", "Source", "SpillFetch", "TransferError"]

log = structlog.get_logger("objstore.transfer.manager")

# Objects up to this size (and the chunk size) are fetched many per request.
_SMALL_BYTES = 256 * 1024
# Most objects in one batched request.
_BATCH = 1000
# Sources whose failure streak is remembered (one warning per streak).
_STREAKS = 1024
# Chunks of one relayed pull in flight at once: a receiver attached below this
# node waits for them in order, so a deeper window delays every hop of a chain.
_RELAY_WINDOW = 2
# Senders one relayed pull gives up on before the attempt fails (the pull
# policy then backs off and tries again).
_MAX_SENDERS = 8
# Seconds the directory has to answer a relay request before the pull goes on
# without it.
_RELAY_ASK_S = 2.0


@dataclass(frozen=True, slots=True)
class NodeSource:
    """A node that holds a copy (fetched over the data plane)."""

    node_id: bytes

    def __str__(self) -> str:
        return f"node {self.node_id.hex()}"


@dataclass(frozen=True, slots=True)
class SpillSource:
    """A spill copy in storage this node reads itself (``SpillFetch.readable``)."""

    url: str

    def __str__(self) -> str:
        return self.url


Source = NodeSource | SpillSource


class SpillFetch(Protocol):
    """Reads spill copies written by any node (the spill package implements it)."""

    def readable(self, url: str) -> bool:
        """Whether this node can read the spill copy at ``url`` itself."""
        ...

    async def fetch(self, oid: bytes, url: str) -> int:
        """Read the copy at ``url`` into a sealed secondary copy here; returns its size."""
        ...


def _n(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


class _SourceSlots:
    """At most ``limit`` requests in flight to one source address at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # address -> (its semaphore, holders and waiters); absent when nobody uses it.
        self._slots: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, address: str) -> AsyncIterator[None]:
        slot = self._slots.get(address)
        if slot is None:
            slot = self._slots[address] = (asyncio.Semaphore(self.limit), [0])
        sem, users = slot
        users[0] += 1
        try:
            async with sem:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._slots[address]

    def __len__(self) -> int:
        return len(self._slots)


@dataclass(eq=False, slots=True)
class _Gets:
    """The gets here waiting for one object.  Counted here, not in the policy: the
    policy forgets a pull when it ends, and its gets leave after that."""

    count: int
    # Loop time the first of them started.
    since: float
    # Fails when the pull stalls; a new one then replaces it for later gets.
    failure: asyncio.Future[None]
    # The node the object was put on, when the directory's row said.
    owner: bytes | None = None
    last_error: str = ""


@dataclass(eq=False)
class _Batch:
    """Small objects fetched from one address in one request."""

    address: str
    starts: list[Start[Source]]
    task: asyncio.Task[None] | None = None
    # Ids whose pulls still wait for this batch (the others were given up).
    live: set[bytes] = field(default_factory=set)


class ObjectManager:
    """Pulls remote objects that gets on this node wait for (see the module docstring).

    ``peers`` belongs to the caller, who closes it after :meth:`close`.
    """

    def __init__(
        self,
        store: Store,
        config: Config,
        node_id: bytes,
        peers: PeerTransport,
        address_of: Callable[[bytes], str | None],
        spill_reader: SpillFetch | None = None,
        *,
        relay: RelayDirectory | None = None,
        partials: Partials | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.node_id = node_id
        self.peers = peers
        self.address_of = address_of
        self.spill_reader = spill_reader
        tc = config.transfer
        self.chunk = tc.chunk_size
        self.timeout = tc.pull_timeout_s
        self.fetch_timeout = tc.fetch_timeout_s
        self.small = min(self.chunk, _SMALL_BYTES)
        # Large objects are pulled through the directory's relay tree (and
        # served on to receivers attached below this node while they arrive).
        self.relay = relay if tc.relay_fanout > 0 else None
        self.relay_min = max(tc.relay_min_bytes, self.small + 1)
        self.partials = partials if partials is not None else Partials()
        self.policy: PullManager[Source] = PullManager(
            NodeSource(node_id), max_bytes_in_flight=tc.max_bytes_in_flight
        )
        self.slots = _SourceSlots(tc.connections_per_peer)
        self._tasks = TaskSet("pull")
        # Every pull the policy has in flight is in exactly one of these two
        # (once its task has started): its own task (one object from a node or
        # a spill copy, or a batched object waiting for room here) ...
        self._attempts: dict[bytes, asyncio.Task[None]] = {}
        # ... or the batch request it is part of.
        self._batched: dict[bytes, _Batch] = {}
        self._streaks: dict[Source, FailureStreak] = {}
        self._timer: asyncio.TimerHandle | None = None
        # Gets waiting here, per object (see _Gets), and the timer of the next stall.
        self._gets: dict[bytes, _Gets] = {}
        self._stall_timer: asyncio.TimerHandle | None = None
        self._kick_pending = False
        self._closed = False
        self.pulled = 0
        self.bytes_pulled = 0
        self.failures = 0
        self.pulled_from_spill = 0
        # Stalls that failed gets (ObjectFetchTimedOutError).
        self.fetch_timeouts = 0
        # Pulls through the relay tree; of them, those that pulled from a copy
        # still being received; and senders given up on mid-pull.
        self.relayed = 0
        self.relayed_from_partial = 0
        self.relay_switches = 0

    # -- driven by the node's object service
    def want(self, oid: bytes, priority: int) -> None:
        """A get (0) or wait (1) here started waiting for an object not here."""
        self.policy.want(oid, Priority(priority))
        if priority == Priority.GET:
            gets = self._gets.get(oid)
            if gets is None:
                loop = asyncio.get_running_loop()
                gets = self._gets[oid] = _Gets(0, loop.time(), loop.create_future())
            gets.count += 1

    def unwant(self, oid: bytes, priority: int) -> None:
        """One of them stopped waiting (the object came, or it gave up)."""
        if self.policy.unwant(oid, Priority(priority)):
            self._cancel(oid)
        if priority == Priority.GET:
            gets = self._gets.get(oid)
            if gets is not None:
                gets.count -= 1
                if not gets.count:
                    del self._gets[oid]  # its future, never done, goes with it
        self._kick()

    def fetch_failure(self, oid: bytes) -> asyncio.Future[None]:
        """A future that fails with :class:`ObjectFetchTimedOutError` when the pull
        of ``oid`` stalls (it never succeeds).  For a get between its
        ``want(oid, 0)`` and its ``unwant(oid, 0)``.  Shared by the gets of one
        object: wait on it (await it, or add a done callback), never cancel it."""
        return self._gets[oid].failure

    def on_locations(self, row: ObjectRow) -> None:
        """A subscribed object's state from the directory."""
        oid = row.object_id
        if row.primary is not None and (gets := self._gets.get(oid)) is not None:
            gets.owner = row.primary
        if row.state != LocationState.PRESENT or self.store.contains(oid):
            return
        sources: list[Source] = [NodeSource(n) for n in row.nodes if n != self.node_id]
        reader = self.spill_reader
        if (
            not sources
            and row.spilled_url
            and reader is not None
            and reader.readable(row.spilled_url)
        ):
            # No node holds it, but its spill copy is in storage this node reads.
            sources = [SpillSource(row.spilled_url)]
        self.policy.located(oid, row.size, sources, asyncio.get_running_loop().time())
        self._kick()

    def space_freed(self) -> None:
        """Memory was freed here: admission may let waiting pulls in."""
        if self.policy.pulls:
            self._kick()

    async def close(self) -> None:
        """Cancel every attempt and wait for them; nothing starts after."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        await self._tasks.close()
        self._attempts.clear()
        self._batched.clear()

    def tasks(self) -> int:
        """Tasks running (tests: 0 once every pull ended)."""
        return len(self._tasks)

    # -- policy -> tasks
    def _kick(self) -> None:
        """Start what the policy allows, once per loop turn however many events."""
        if not self._kick_pending and not self._closed:
            self._kick_pending = True
            asyncio.get_running_loop().call_soon(self._start_pulls)

    def _start_pulls(self) -> None:
        self._kick_pending = False
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        batches: dict[str, list[Start[Source]]] = {}
        for start in self.policy.next_pulls(now, self.store.free_bytes):
            src = start.node
            oid = start.object_id
            if isinstance(src, SpillSource):
                self._spawn(start, functools.partial(self._from_spill, oid, src))
                continue
            address = self.address_of(src.node_id)
            if not address:
                self._failed(start, TransferError(f"no data plane address known for {src}"))
                self._kick()  # another source, or the backoff's timer
            elif start.size <= self.small:
                batches.setdefault(address, []).append(start)
            elif self.relay is not None and start.size >= self.relay_min:
                self._spawn(start, functools.partial(self._relayed, oid, src.node_id, address))
            else:
                self._spawn(start, functools.partial(self._from_node, oid, address))
        for address, starts in batches.items():
            for i in range(0, len(starts), _BATCH):
                self._spawn_batch(address, starts[i : i + _BATCH])
        wake = self.policy.next_wakeup(now)
        if wake is not None and (self._timer is None or self._timer.when() > wake):
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(wake, self._on_timer)
        self._arm_stall_timer()

    def _on_timer(self) -> None:
        self._timer = None
        self._kick()

    # -- stalls
    def _progress(self, oid: bytes) -> None:
        """An attempt of ``oid`` received bytes."""
        self.policy.progress(oid, asyncio.get_running_loop().time())
        self._arm_stall_timer()  # a stopped clock may have started again

    def _arm_stall_timer(self) -> None:
        """A timer for the earliest time a pull may have stalled (one timer in all)."""
        wake = self.policy.next_stall(self.fetch_timeout)
        timer = self._stall_timer
        if wake is None or self._closed or (timer is not None and timer.when() <= wake):
            return
        if timer is not None:
            timer.cancel()
        self._stall_timer = asyncio.get_running_loop().call_at(wake, self._on_stall_timer)

    def _on_stall_timer(self) -> None:
        self._stall_timer = None
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        for stall in self.policy.stalled(now, self.fetch_timeout):
            gets = self._gets.get(stall.object_id)
            if gets is None:
                continue  # only waits wait for it: they end on their own timeouts
            failure, gets.failure = gets.failure, loop.create_future()
            failure.set_exception(ObjectFetchTimedOutError(self._stall_message(stall, gets, now)))
            # Each get raises its own copy; nobody else is to read this one.
            failure.exception()
            self.fetch_timeouts += 1
            log.info(
                "gets failed: fetch timed out",
                object_id=stall.object_id.hex(),
                gets=gets.count,
                tried=[str(s) for s in stall.tried],
                seconds=round(stall.idle_s, 3),
            )
        self._arm_stall_timer()

    def _stall_message(self, stall: Stall[Source], gets: _Gets, now: float) -> str:
        head = (
            f"node {self.node_id.hex()} made no progress pulling object "
            f"{stall.object_id.hex()} for {stall.idle_s:.1f}s "
            f"(transfer.fetch_timeout_s = {self.fetch_timeout:g}s)"
        )
        parts = [head]
        if gets.owner is not None:
            parts.append(f"it was put on node {gets.owner.hex()} (its owner)")
        if stall.tried:
            sources = ", ".join(str(s) for s in stall.tried)
            tried = f"tried {sources} ({_n(stall.attempts, 'attempt')}"
            if stall.rounds:
                tried += f"; every source failed, {_n(stall.rounds, 'time')}"
            parts.append(tried + ")")
        else:
            listed = ", ".join(str(s) for s in stall.sources)
            parts.append(f"no attempt could start yet (sources: {listed})")
        if stall.active is not None:
            parts.append(f"an attempt from {stall.active} is still in flight")
        if gets.last_error:
            parts.append(f"last error: {gets.last_error}")
        parts.append(f"the first get waiting for it started {now - gets.since:.1f}s ago")
        return "; ".join(parts)

    def _cancel(self, oid: bytes) -> None:
        """The policy gave up a pull in flight: stop its work."""
        task = self._attempts.pop(oid, None)
        if task is not None:
            task.cancel()
        batch = self._batched.pop(oid, None)
        if batch is not None:
            batch.live.discard(oid)
            if not batch.live and batch.task is not None:
                batch.task.cancel()

    def _spawn(self, start: Start[Source], fetch: Callable[[], Awaitable[int]]) -> None:
        self._attempts[start.object_id] = self._tasks.spawn(
            self._attempt(start, fetch), name="pull"
        )

    async def _attempt(self, start: Start[Source], fetch: Callable[[], Awaitable[int]]) -> None:
        """One attempt, its end told to the policy (a cancelled one tells nothing)."""
        oid = start.object_id
        t0 = time.perf_counter()
        try:
            if self.store.contains(oid):
                self.policy.succeeded(oid)
                return
            got = await fetch()
        except TransferError as exc:
            self._failed(start, exc)
        except asyncio.CancelledError:
            # Nobody waits any more (the policy forgot the pull already), or
            # shutdown: nothing to report.
            raise
        except Exception as exc:
            log.exception("pull failed", object_id=oid.hex(), source=str(start.node))
            self._failed(start, exc)
        else:
            self._succeeded(start, got, t0)
        finally:
            if self._attempts.get(oid) is asyncio.current_task():
                del self._attempts[oid]
            self._kick()

    def _failed(self, start: Start[Source], exc: BaseException) -> None:
        self.failures += 1
        src = start.node
        streak = self._streaks.get(src)
        if streak is None:
            if len(self._streaks) >= _STREAKS:
                del self._streaks[next(iter(self._streaks))]
            streak = self._streaks[src] = FailureStreak(
                log, "pull from a source failed; trying the next", "pulls from a source work again"
            )
        streak.failed(exc, source=str(src), object_id=start.object_id.hex())
        gets = self._gets.get(start.object_id)
        if gets is not None:
            gets.last_error = f"{src}: {exc}"
        self.policy.failed(start.object_id, src)

    def _succeeded(self, start: Start[Source], got: int, t0: float) -> None:
        self.pulled += 1
        self.bytes_pulled += got
        streak = self._streaks.pop(start.node, None)
        if streak is not None:
            streak.ok(source=str(start.node))
        self.policy.succeeded(start.object_id)
        log.debug(
            "pulled",
            object_id=start.object_id.hex(),
            source=str(start.node),
            size=got,
            seconds=round(time.perf_counter() - t0, 4),
        )

    # -- one object from one node
    async def _from_node(self, oid: bytes, address: str) -> int:
        """Fetch the whole object from ``address`` and seal it; TransferError on failure."""
        store = self.store
        view: memoryview | None = None
        created = False
        try:
            view, n, size, _ = await self._open_copy(oid, address)
            created = True
            await self._rest(address, oid, view, n, size)
            view.release()
            view = None
            store.seal_secondary(oid)
            created = False
            return size
        except ObjectStoreError as exc:
            if isinstance(exc, TransferError):
                raise
            raise TransferError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            if view is not None:
                with contextlib.suppress(BufferError):
                    view.release()
            if created:
                store.discard_partial(oid)

    async def _open_copy(self, oid: bytes, address: str) -> tuple[memoryview, int, int, bytes]:
        """Fetch the first chunk from ``address`` into a new secondary copy here:
        (a view of the copy, the first chunk's length, the size, the metadata).

        The caller discards the copy if it fails later; a failure here leaves none."""
        loop = asyncio.get_running_loop()
        store = self.store
        entry: Entry | None = None
        view: memoryview | None = None
        created = False
        try:
            async with self.slots.hold(address):
                deadline = loop.time() + self.timeout
                first = await self.peers.fetch_first(address, oid, self.chunk, deadline)
                try:
                    self._progress(oid)
                    size, meta, n = first.size, first.meta, first.length
                    entry = store.create_secondary_now(oid, size, meta)
                    if entry is not None:
                        created = True
                        view = store.view(entry)
                        await first.read_into(view[:n], deadline)
                    else:
                        # No room at once: take the chunk off the wire so the
                        # source is free while this node waits for memory.
                        buffered = bytearray(n)
                        await first.read_into(memoryview(buffered), deadline)
                    self._progress(oid)
                finally:
                    first.close()
            if entry is None:
                # Bounded by the pull's life, not by the source's deadline; not a
                # stall either (the stall clock stops until the copy has room).
                self.policy.pause(oid)
                entry = await store.create_secondary(oid, size, meta)
                self._progress(oid)
                created = True
                view = store.view(entry)
                view[:n] = buffered
            assert view is not None
            out = view
            view = None
            created = False
            return out, n, size, meta
        finally:
            if view is not None:
                with contextlib.suppress(BufferError):
                    view.release()
            if created:
                store.discard_partial(oid)

    # -- one large object through the relay tree
    async def _relayed(self, oid: bytes, fallback: bytes, fallback_address: str) -> int:
        """Fetch a large object from the sender the directory attaches this node to
        (a whole copy, or a node still receiving it), serving the chunks on to
        receivers attached below this node as they arrive.  A sender that fails
        is given up: the directory attaches this node to another, and the pull
        resumes at the chunks it still misses.  Without an answer from the
        directory (or with every sender busy) the pull goes to ``fallback``,
        the whole copy the pull policy chose."""
        assert self.relay is not None
        store = self.store
        copy = PartialCopy(oid, self.chunk)
        self.partials.add(copy)
        tried: list[bytes] = []
        attached = False
        view: memoryview | None = None
        last: TransferError | None = None
        self.relayed += 1
        try:
            while True:
                sender = await self._attach(oid, tried)
                attached = attached or sender is not None
                if sender is None or sender[0] in tried:
                    if fallback in tried:
                        assert last is not None
                        raise last
                    sender = (fallback, fallback_address)
                node, address = sender
                if not address:
                    address = self.address_of(node) or ""
                try:
                    if not address:
                        raise TransferError(f"no data plane address known for node {node.hex()}")
                    if view is None:
                        view, _, size, meta = await self._open_copy(oid, address)
                        # The copy's own view: it outlives this one while receivers read.
                        copy.opened(size, meta, view[:])
                        copy.mark(0)
                    if node != fallback:
                        self.relayed_from_partial += 1
                    await self._chunks(address, copy, view)
                    break
                except TransferError as exc:
                    last = exc
                    tried.append(node)
                    self.relay_switches += 1
                    log.info(
                        "relay sender failed; attaching to another",
                        object_id=oid.hex(),
                        sender=node.hex(),
                        received=copy.received,
                        error=str(exc),
                    )
                    if len(tried) > _MAX_SENDERS:
                        raise
            view.release()
            view = None
            try:
                store.seal_secondary(oid)
            except BaseException:
                copy.end("aborted", functools.partial(store.discard_partial, oid))
                raise
            if copy.readers:
                # Receivers below still read from this memory: keep it from
                # delete, spill and eviction until they are done.
                lease = store.lease(oid)
                copy.end("sealed", lease.release)
            else:
                copy.end("sealed")
            attached = False  # the location report tells the directory
            return copy.size
        except ObjectStoreError as exc:
            if isinstance(exc, TransferError):
                raise
            raise TransferError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self.partials.remove(copy)
            if copy.state == "receiving":
                if view is not None:
                    with contextlib.suppress(BufferError):
                        view.release()
                    # Discarded once no receiver below reads from it any more.
                    copy.end("aborted", functools.partial(store.discard_partial, oid))
                else:
                    copy.end("aborted")
            elif view is not None:
                with contextlib.suppress(BufferError):
                    view.release()
            if attached and not self._closed:
                self._tasks.spawn(self._unrelay(oid), name="unrelay")

    async def _attach(self, oid: bytes, tried: list[bytes]) -> tuple[bytes, str] | None:
        """The directory's sender for ``oid`` (None: no answer in time, or none has room)."""
        assert self.relay is not None
        try:
            async with asyncio.timeout(_RELAY_ASK_S):
                return await self.relay.relay(oid, tried)
        except (TimeoutError, ObjectStoreError) as exc:
            log.debug("relay: no sender from the directory", object_id=oid.hex(), error=str(exc))
            return None

    async def _unrelay(self, oid: bytes) -> None:
        assert self.relay is not None
        try:
            async with asyncio.timeout(_RELAY_ASK_S):
                await self.relay.unrelay(oid)
        except (TimeoutError, ObjectStoreError) as exc:
            log.debug("relay: detach not told", object_id=oid.hex(), error=str(exc))

    async def _chunks(self, address: str, copy: PartialCopy, view: memoryview) -> None:
        """The chunks ``copy`` still misses, from ``address``, in order, a few at a
        time (few: a receiver below waits for them in order); the first failure
        cancels the rest."""
        offsets = deque(copy.missing())
        if not offsets:
            return
        loop = asyncio.get_running_loop()
        oid, size = copy.oid, copy.size

        async def worker() -> None:
            while offsets:
                off = offsets.popleft()
                n = min(self.chunk, size - off)
                async with self.slots.hold(address):
                    await self.peers.fetch_chunk(
                        address, oid, off, view[off : off + n], loop.time() + self.timeout
                    )
                copy.mark(off)
                self._progress(oid)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(len(offsets), self.slots.limit, _RELAY_WINDOW)):
                    group.create_task(worker())
        except BaseExceptionGroup as eg:
            raise eg.exceptions[0] from None

    async def _rest(
        self, address: str, oid: bytes, view: memoryview, start: int, size: int
    ) -> None:
        """The chunks after the first, a few at a time; the first failure cancels the rest."""
        offsets = deque(range(start, size, self.chunk))
        if not offsets:
            return
        loop = asyncio.get_running_loop()

        async def worker() -> None:
            while offsets:
                off = offsets.popleft()
                n = min(self.chunk, size - off)
                async with self.slots.hold(address):
                    await self.peers.fetch_chunk(
                        address, oid, off, view[off : off + n], loop.time() + self.timeout
                    )
                self._progress(oid)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(len(offsets), self.slots.limit)):
                    group.create_task(worker())
        except BaseExceptionGroup as eg:
            raise eg.exceptions[0] from None

    # -- one object from a spill copy
    async def _from_spill(self, oid: bytes, src: SpillSource) -> int:
        reader = self.spill_reader
        if reader is None:
            raise TransferError(f"no spill reader for {src.url}")
        try:
            async with asyncio.timeout(self.timeout):
                got = await reader.fetch(oid, src.url)
        except TimeoutError as exc:
            raise TransferError(f"{src.url}: not read in time") from exc
        except OSError as exc:
            raise TransferError(f"{src.url}: {type(exc).__name__}: {exc}") from exc
        except ObjectStoreError as exc:
            if isinstance(exc, TransferError):
                raise
            raise TransferError(f"{src.url}: {exc}") from exc
        self.pulled_from_spill += 1
        return got

    # -- many small objects per request
    def _spawn_batch(self, address: str, starts: list[Start[Source]]) -> None:
        batch = _Batch(address, starts, live={s.object_id for s in starts})
        for s in starts:
            self._batched[s.object_id] = batch
        batch.task = self._tasks.spawn(self._fetch_batch(batch), name="pull-batch")

    async def _fetch_batch(self, batch: _Batch) -> None:
        loop = asyncio.get_running_loop()
        address = batch.address
        t0 = time.perf_counter()
        try:
            try:
                async with self.slots.hold(address):
                    replies = await self.peers.fetch_many(
                        address, [s.object_id for s in batch.starts], loop.time() + self.timeout
                    )
                if len(replies) != len(batch.starts):
                    raise TransferError(
                        f"{address}: {len(replies)} replies to a batch of {len(batch.starts)}"
                    )
            except Exception as exc:
                if not isinstance(exc, TransferError):
                    log.exception("batched pull failed", source=address)
                for s in batch.starts:
                    if self._batched.get(s.object_id) is batch:
                        del self._batched[s.object_id]
                        self._failed(s, exc)
                return
            for s, reply in zip(batch.starts, replies):
                if self._batched.get(s.object_id) is not batch:
                    continue  # given up meanwhile
                del self._batched[s.object_id]
                if reply.error:
                    self._failed(s, TransferError(f"{address}: {reply.error}"))
                else:
                    self._place(s, reply, t0)
        finally:
            for s in batch.starts:
                if self._batched.get(s.object_id) is batch:
                    del self._batched[s.object_id]
            self._kick()

    def _place(self, start: Start[Source], reply: Small, t0: float) -> None:
        """Seal a small object of a batch here (copied: it is small)."""
        oid = start.object_id
        store = self.store
        if store.contains(oid):
            self.policy.succeeded(oid)
            return
        try:
            entry = store.create_secondary_now(oid, reply.size, reply.meta)
        except ObjectStoreError as exc:
            self._failed(start, TransferError(f"{type(exc).__name__}: {exc}"))
            return
        if entry is None:
            # No room at once: wait for it with the bytes in hand (the source is done).
            self._spawn(start, functools.partial(self._place_later, oid, reply))
            return
        self._fill(entry, reply.data)
        store.seal_secondary(oid)
        self._succeeded(start, reply.size, t0)

    async def _place_later(self, oid: bytes, reply: Small) -> int:
        store = self.store
        self.policy.pause(oid)  # the bytes are here: waiting for room is not a stall
        try:
            entry = await store.create_secondary(oid, reply.size, reply.meta)
        except ObjectStoreError as exc:
            raise TransferError(f"{type(exc).__name__}: {exc}") from exc
        try:
            self._fill(entry, reply.data)
        except BaseException:
            store.discard_partial(oid)
            raise
        store.seal_secondary(oid)
        return reply.size

    def _fill(self, entry: Entry, data: bytes) -> None:
        if data:
            view = self.store.view(entry)
            try:
                view[:] = data
            finally:
                view.release()
