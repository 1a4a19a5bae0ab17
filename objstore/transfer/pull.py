"""The pull manager's policy, pure: which pulls run, from where, and when.

:class:`PullManager` holds no sockets and no clock: the node's
:class:`~objstore.transfer.manager.ObjectManager` tells it what gets and waits
want, where the directory says objects are, and how each attempt ended, and
asks it which pulls to start now.  The rules (Ray's pull manager, simplified):

* **One pull per object**, however many waiters; a pull's priority is the
  highest of its waiters': get > wait > prefetch.  When its last waiter goes,
  the pull goes (an attempt in flight is to be cancelled).
* **Admission**: pulls start by priority, then in the order they were asked
  for, while the bytes of pulls in flight stay within ``max_bytes_in_flight``
  and the object fits in the free memory the node reports; the first pull in
  line always may start, so one object larger than either still moves.  A pull
  that does not fit waits; it does not let pulls behind it pass (no starvation).
* **Sources**: each attempt takes a source not tried in this round, at random;
  a failed or timed-out attempt marks its source tried.  When every source was
  tried, the pull backs off (exponential, with jitter) and starts a new round.
* The directory's word ends a pull: a copy here, or the object lost or deleted.
* **Stalls**: each pull keeps the time of its last progress, a clock that runs
  only while a source is known (an object that does not exist yet, or whose
  only copy is being restored, has none: waiting for it is not a stall).
  Progress is: the pull became located with sources, an attempt received
  bytes (:meth:`PullManager.progress`), an attempt succeeded (the pull ends).
  The clock stops while the pull waits for this node rather than for a
  source: for room in memory (:meth:`PullManager.pause`, until the next
  progress) or for admission behind pulls in flight (until its next attempt
  starts).  :meth:`PullManager.stalled` returns the pulls whose clock is
  ``timeout`` old, with what was tried, and restarts their clocks, so each
  stall is reported once per ``timeout``; the pull itself goes on (the
  caller decides what a stall means for its waiters).

Sources are opaque hashable values (the object manager's ``NodeSource`` and
``SpillSource``; plain bytes in the tests).
"""

from __future__ import annotations

import enum
import heapq
import random
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

from objstore.backoff import backoff_delay

__all__ = ["PullManager", "Priority", "Start", "Stall"]

# A source: where one attempt fetches the object from.
S = TypeVar("S", bound=Hashable)


class Priority(enum.IntEnum):
    GET = 0
    WAIT = 1
    PREFETCH = 2


class Start(NamedTuple, Generic[S]):
    """An attempt to start: fetch ``object_id`` (``size`` bytes) from ``node``."""

    object_id: bytes
    node: S
    size: int


class Stall(NamedTuple, Generic[S]):
    """A pull that made no progress for ``idle_s`` seconds, and what it tried."""

    object_id: bytes
    idle_s: float
    # Every source an attempt was started from, in the order first tried.
    tried: tuple[S, ...]
    # Attempts started, and rounds ended (every source failed, then a backoff).
    attempts: int
    rounds: int
    # The source of the attempt in flight, if one is.
    active: S | None
    # The sources the directory lists now.
    sources: tuple[S, ...]


@dataclass(slots=True)
class _Pull(Generic[S]):
    seq: int
    waiters: list[int] = field(default_factory=lambda: [0, 0, 0])
    size: int = -1
    sources: tuple[S, ...] = ()
    tried: set[S] = field(default_factory=set)
    active: S | None = None
    rounds: int = 0
    not_before: float = 0.0
    # The stall clock: when the pull last made progress; None while it is not
    # running (no source known, or waiting for this node).  Never None with
    # an entry missing from the manager's `_stalls` heap (`in_stalls`).
    progress_at: float | None = None
    in_stalls: bool = False
    attempts: int = 0
    attempted: dict[S, None] = field(default_factory=dict)

    @property
    def priority(self) -> int:
        for p, n in enumerate(self.waiters):
            if n:
                return p
        return len(self.waiters)

    @property
    def wanted(self) -> bool:
        return any(self.waiters)


class PullManager(Generic[S]):
    """See the module docstring.

    Pulls ready to start wait in one heap per priority, ordered by when they
    were asked for (entries that went stale are skipped as they surface), and
    pulls backing off in a dict, so choosing the next pulls costs in
    proportion to the pulls started, not to all the pulls known.
    """

    def __init__(
        self,
        node_id: S,
        *,
        max_bytes_in_flight: int,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        self.node_id = node_id
        self.max_bytes_in_flight = max_bytes_in_flight
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.rng = rng or random.Random()
        self.pulls: dict[bytes, _Pull[S]] = {}
        self.in_flight_bytes = 0
        self._seq = 0
        # Ready to start (located, not in flight, not backing off): a heap of
        # (seq, id) per priority; `_queued` says which entries are current.
        self._ready: list[list[tuple[int, bytes]]] = [[] for _ in Priority]
        self._queued: dict[bytes, int] = {}
        # Backing off: object id -> not before.
        self._backoff: dict[bytes, float] = {}
        # Stall clocks: a heap of (progress time, seq, id), at most one entry per
        # pull (`_Pull.in_stalls`); an entry may be older than its pull's clock
        # (progress only moves the clock; the entry moves when it surfaces).
        self._stalls: list[tuple[float, int, bytes]] = []
        # Whether the last next_pulls() stopped at a pull that admission held back.
        self._blocked = False

    # -- queues
    def _unqueue(self, oid: bytes) -> None:
        self._queued.pop(oid, None)  # its heap entry goes stale
        self._backoff.pop(oid, None)

    def _queue(self, oid: bytes, pull: _Pull[S]) -> None:
        """Put a pull where it belongs now (ready, backing off, or nowhere)."""
        if pull.active is not None or not pull.sources or pull.size < 0:
            self._unqueue(oid)
            return
        if pull.not_before > 0:
            self._queued.pop(oid, None)
            self._backoff[oid] = pull.not_before
            return
        self._backoff.pop(oid, None)
        if self._queued.get(oid) != pull.priority:
            self._queued[oid] = pull.priority
            heap = self._ready[pull.priority]
            heapq.heappush(heap, (pull.seq, oid))
            if len(heap) > 2 * len(self._queued) + 64:
                # Stale entries pile up behind a blocked head: keep the current ones.
                keep = [
                    (seq, o)
                    for seq, o in heap
                    if self._queued.get(o) == pull.priority and self.pulls[o].seq == seq
                ]
                heap[:] = sorted(set(keep))

    def _head(self, priority: int) -> bytes | None:
        """The oldest current entry of a priority's heap (stale ones dropped)."""
        heap = self._ready[priority]
        while heap:
            seq, oid = heap[0]
            pull = self.pulls.get(oid)
            if pull is not None and pull.seq == seq and self._queued.get(oid) == priority:
                return oid
            heapq.heappop(heap)
        return None

    # -- demand
    def want(self, oid: bytes, priority: Priority = Priority.GET) -> None:
        """One more waiter of this priority."""
        pull = self.pulls.get(oid)
        if pull is None:
            self._seq += 1
            pull = self.pulls[oid] = _Pull(self._seq)
        before = pull.priority
        pull.waiters[priority] += 1
        if pull.priority != before and oid in self._queued:
            self._queue(oid, pull)

    def unwant(self, oid: bytes, priority: Priority = Priority.GET) -> bool:
        """One waiter fewer; True when the pull was in flight and must be cancelled."""
        pull = self.pulls.get(oid)
        if pull is None or pull.waiters[priority] <= 0:
            return False
        before = pull.priority
        pull.waiters[priority] -= 1
        if pull.wanted:
            if pull.priority != before and oid in self._queued:
                self._queue(oid, pull)
            return False
        active = pull.active is not None
        self.forget(oid)
        return active

    # -- what the directory says
    def located(self, oid: bytes, size: int, nodes: tuple[S, ...] | list[S], now: float) -> None:
        """The object (wanted or not) is on ``nodes``; ignored if nobody wants it.

        The stall clock starts when the pull is located with a source (not again
        for a new list of sources) and stops when no source is left."""
        pull = self.pulls.get(oid)
        if pull is None:
            return
        pull.size = size if pull.active is None else pull.size
        pull.sources = tuple(n for n in nodes if n != self.node_id)
        pull.tried &= set(pull.sources)
        if not pull.sources:
            pull.progress_at = None
        elif pull.progress_at is None and pull.active is None:
            self._clock(oid, pull, now)
        self._queue(oid, pull)

    def forget(self, oid: bytes) -> None:
        """The pull is over: a copy is here, the object is gone, or nobody waits."""
        pull = self.pulls.pop(oid, None)
        if pull is not None:
            self._unqueue(oid)
            if pull.active is not None:
                self.in_flight_bytes -= pull.size
            if len(self._stalls) > 2 * len(self.pulls) + 64:
                # Entries of ended pulls pile up: keep the current ones.
                self._stalls = [e for e in self._stalls if self._current(e)]
                heapq.heapify(self._stalls)

    # -- attempts
    def next_pulls(self, now: float, free_bytes: int) -> list[Start[S]]:
        """Attempts to start now (marked in flight)."""
        due = [oid for oid, t in self._backoff.items() if t <= now]
        for oid in due:
            pull = self.pulls[oid]
            pull.not_before = 0.0
            self._queue(oid, pull)
        out: list[Start[S]] = []
        for priority in range(len(self._ready)):
            while True:
                head = self._head(priority)
                if head is None:
                    break
                oid = head
                pull = self.pulls[oid]
                untried = [n for n in pull.sources if n not in pull.tried]
                if not untried:
                    # Every source failed this round: back off, then try them all again.
                    if pull.progress_at is None:
                        self._clock(oid, pull, now)  # it waited for admission: runs again
                    pull.tried.clear()
                    pull.rounds += 1
                    pull.not_before = now + backoff_delay(
                        pull.rounds, self.backoff_min, self.backoff_max, jitter=0.5, rng=self.rng
                    )
                    self._queue(oid, pull)
                    continue
                if self.in_flight_bytes and (
                    self.in_flight_bytes + pull.size > self.max_bytes_in_flight
                    or pull.size > free_bytes
                ):
                    # The pulls behind it wait too: no starvation of big objects.
                    self._blocked = True
                    return out
                heapq.heappop(self._ready[priority])
                del self._queued[oid]
                if pull.progress_at is None:
                    self._clock(oid, pull, now)  # it waited for admission: runs again
                node = self.rng.choice(untried)
                pull.active = node
                pull.attempts += 1
                pull.attempted[node] = None
                self.in_flight_bytes += pull.size
                free_bytes -= pull.size
                out.append(Start(oid, node, pull.size))
        self._blocked = False
        return out

    def succeeded(self, oid: bytes) -> None:
        self.forget(oid)

    def failed(self, oid: bytes, node: S) -> None:
        """An attempt from ``node`` failed or timed out: another source next."""
        pull = self.pulls.get(oid)
        if pull is None or pull.active != node:
            return
        pull.active = None
        self.in_flight_bytes -= pull.size
        pull.tried.add(node)
        self._queue(oid, pull)

    def next_wakeup(self, now: float) -> float | None:
        """When a pull backing off may go again (None: none is backing off)."""
        return min(self._backoff.values()) if self._backoff else None

    # -- stalls
    def progress(self, oid: bytes, now: float) -> None:
        """An attempt received bytes (a chunk came): the pull's clock restarts."""
        pull = self.pulls.get(oid)
        if pull is not None and pull.sources:
            self._clock(oid, pull, now)

    def pause(self, oid: bytes) -> None:
        """The pull waits for this node (room in memory), not for a source: its
        clock stops until the next progress (or the next attempt)."""
        pull = self.pulls.get(oid)
        if pull is not None:
            pull.progress_at = None

    def stalled(self, now: float, timeout: float) -> list[Stall[S]]:
        """The pulls that made no progress for ``timeout`` s at ``now``; their
        clocks restart (the next report of one is ``timeout`` later)."""
        out: list[Stall[S]] = []
        heap = self._stalls
        while heap and heap[0][0] + timeout <= now:
            at, seq, oid = heapq.heappop(heap)
            pull = self.pulls.get(oid)
            if pull is None or pull.seq != seq:
                continue  # the pull ended
            if pull.progress_at is None:
                pull.in_stalls = False  # stopped; pushed again when it runs
                continue
            if pull.progress_at > at:
                heapq.heappush(heap, (pull.progress_at, seq, oid))  # it moved since
                continue
            if self._blocked and oid in self._queued:
                # Held back by admission (pulls in flight take the bytes): not a stall.
                pull.progress_at = None
                pull.in_stalls = False
                continue
            out.append(
                Stall(
                    oid,
                    now - at,
                    tuple(pull.attempted),
                    pull.attempts,
                    pull.rounds,
                    pull.active,
                    pull.sources,
                )
            )
            pull.progress_at = now
            heapq.heappush(heap, (now, seq, oid))
        return out

    def next_stall(self, timeout: float) -> float | None:
        """The earliest time a pull may be stalled (it may be earlier than one is)."""
        return self._stalls[0][0] + timeout if self._stalls else None

    def _clock(self, oid: bytes, pull: _Pull[S], now: float) -> None:
        pull.progress_at = now
        if not pull.in_stalls:
            pull.in_stalls = True
            heapq.heappush(self._stalls, (now, pull.seq, oid))

    def _current(self, entry: tuple[float, int, bytes]) -> bool:
        pull = self.pulls.get(entry[2])
        return pull is not None and pull.seq == entry[1]

    def ready(self) -> list[list[bytes]]:
        """The pulls ready to start, per priority, in the order they would start."""
        out: list[list[bytes]] = []
        for priority, heap in enumerate(self._ready):
            current = sorted(
                {
                    (seq, oid)
                    for seq, oid in heap
                    if self._queued.get(oid) == priority and self.pulls[oid].seq == seq
                }
            )
            out.append([oid for _, oid in current])
        return out

    def check(self) -> None:
        """Invariants (tests): bytes in flight match the active pulls; queues are right."""
        active = sum(p.size for p in self.pulls.values() if p.active is not None)
        assert active == self.in_flight_bytes, (active, self.in_flight_bytes)
        assert not set(self._queued) & set(self._backoff), "a pull queued twice"
        for oid, priority in self._queued.items():
            assert priority == self.pulls[oid].priority
            assert any(o == oid for _, o in self._ready[priority])
        for oid in [*self._queued, *self._backoff]:
            pull = self.pulls[oid]
            assert pull.active is None and pull.sources and pull.size >= 0
        for p in self.pulls.values():
            assert p.wanted, "a pull nobody waits for is kept"
            assert all(n >= 0 for n in p.waiters)
        entries: dict[bytes, float] = {}
        for at, seq, oid in self._stalls:
            if self._current((at, seq, oid)):
                assert oid not in entries, "a pull twice in the stall heap"
                entries[oid] = at
        for oid, p in self.pulls.items():
            assert p.in_stalls == (oid in entries), (oid, p.in_stalls)
            if p.progress_at is not None:
                assert p.sources, "a stall clock runs with no source known"
                assert p.in_stalls and entries[oid] <= p.progress_at
