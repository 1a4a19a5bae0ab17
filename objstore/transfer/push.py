"""The push manager's policy, pure: which chunk sends run now, for whom.

The serving side of the data plane answers chunk requests.  :class:`PushManager`
decides when each one may go; the :class:`~objstore.transfer.server.TransferServer`
does the sending.  It holds no sockets and no clock.  The rules (Ray's push
manager, for a pull-driven wire):

* **Bounds**: at most ``max_per_destination`` chunks in flight to one
  destination node and at most ``max_overall`` in all.  A request over either
  bound waits in its destination's FIFO queue.
* **Fairness**: a freed slot goes to the destinations with waiting requests in
  turn (round robin), so one node pulling a hundred objects does not starve
  another pulling one.
* **One push per (destination, object)**: the chunks of one object for one
  destination form one push (:attr:`pushes` counts its requests).  A request for
  a chunk that the same destination already has queued or in flight supersedes
  the older one: the destination gave up on it (its attempt timed out and it
  asked again), so the older send is returned to be aborted rather than left to
  hold a slot.
* **Cancelled when the destination dies**: :meth:`drop_destination` returns every
  request of that node, queued or in flight, for the driver to abort, and
  requests from it are refused for as long as it is listed dead.

Each request is named by a ``key`` the driver chooses (any hashable, unique
while the request lives).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass

__all__ = ["PushManager", "Request"]

# A key the driver cannot have chosen (``None`` is a fine key).
_NONE = object()


@dataclass(slots=True, frozen=True)
class Request:
    """One chunk send: ``object_id`` from ``offset`` to destination ``dest``."""

    key: Hashable
    dest: Hashable
    object_id: bytes
    offset: int


class PushManager:
    """Admission of chunk sends, bounded per destination and overall."""

    __slots__ = (
        "max_overall",
        "max_per_destination",
        "requests",
        "running",
        "queues",
        "in_flight",
        "pushes",
        "_by_chunk",
        "_turns",
        "dead",
        "_dead_max",
        "granted",
        "superseded",
    )

    def __init__(self, max_overall: int, max_per_destination: int, dead_memory: int = 1024) -> None:
        if max_overall < 1 or max_per_destination < 1:
            raise ValueError("push bounds must be at least 1")
        if dead_memory < 0:
            raise ValueError("dead_memory must not be negative")
        self.max_overall = max_overall
        self.max_per_destination = max_per_destination
        # key -> request; every live request (queued or running) is here.
        self.requests: dict[Hashable, Request] = {}
        # Keys of running requests (each is in `requests`, and counted in
        # `in_flight[dest]`).
        self.running: set[Hashable] = set()
        # dest -> keys waiting, oldest first (each is in `requests`, not in
        # `running`).  A destination has a queue only while it is non-empty.
        self.queues: dict[Hashable, deque[Hashable]] = {}
        # dest -> running requests; absent when 0.
        self.in_flight: dict[Hashable, int] = {}
        # (dest, object id) -> live requests of that push; absent when 0.
        self.pushes: dict[tuple[Hashable, bytes], int] = {}
        # (dest, object id, offset) -> the key of the live request for that chunk.
        self._by_chunk: dict[tuple[Hashable, bytes, int], Hashable] = {}
        # Destinations with a queue, in the order they get the next free slot.
        self._turns: deque[Hashable] = deque()
        # Destinations declared dead, most recent last (bounded).
        self.dead: OrderedDict[Hashable, None] = OrderedDict()
        self._dead_max = dead_memory
        self.granted = 0
        self.superseded = 0

    # ---------------------------------------------------------------- events
    def request(
        self, key: Hashable, dest: Hashable, object_id: bytes, offset: int
    ) -> tuple[list[Hashable], list[Hashable]]:
        """A chunk is asked for: ``(keys that run now, keys to abort)``.

        The keys that run may include ``key`` itself and others a superseded
        request's slot went to.  The keys to abort are an older request for the
        same chunk from the same destination (superseded).  A request from a
        destination listed dead is refused: it neither runs nor waits
        (``([], [])`` and nothing is kept).
        """
        if key in self.requests:
            raise KeyError(f"request key {key!r} is live already")
        if dest in self.dead:
            return [], []
        abort: list[Hashable] = []
        chunk = (dest, object_id, offset)
        old = self._by_chunk.get(chunk, _NONE)
        if old is not _NONE and old not in self.running:
            # Asked again while the older request waits: the new one takes its
            # place in the queue (the destination keeps its turn; no slot freed).
            self.superseded += 1
            waiting = self.queues[dest]
            waiting[waiting.index(old)] = key
            del self.requests[old]
            self.requests[key] = Request(key, dest, object_id, offset)
            self._by_chunk[chunk] = key
            return [], [old]
        if old is not _NONE:
            self.superseded += 1
            abort.append(old)
            self._forget(old)
        req = Request(key, dest, object_id, offset)
        self.requests[key] = req
        self._by_chunk[chunk] = key
        push = (dest, object_id)
        self.pushes[push] = self.pushes.get(push, 0) + 1
        queue = self.queues.get(dest)
        if queue is None:
            queue = self.queues[dest] = deque()
            self._turns.append(dest)
        queue.append(key)
        return self._grant(), abort

    def done(self, key: Hashable) -> list[Hashable]:
        """A running send finished (or failed): the keys that may run now.

        Unknown keys (already aborted, superseded or dropped) are ignored.
        """
        if key not in self.running:
            if key in self.requests:
                raise ValueError(f"request {key!r} is queued, not running: cancel it")
            return []
        self._forget(key)
        return self._grant()

    def cancel(self, key: Hashable) -> list[Hashable]:
        """A request goes away (its connection closed): the keys that may run now."""
        if key not in self.requests:
            return []
        self._forget(key)
        return self._grant()

    def drop_destination(self, dest: Hashable) -> tuple[list[Hashable], list[Hashable]]:
        """The destination died: ``(keys that run now, keys to abort)``.

        Every request of it is to be aborted, and it is refused from now on
        (until :meth:`revive`); the slots it held go to other destinations.
        """
        if self._dead_max:
            self.dead[dest] = None
            self.dead.move_to_end(dest)
            while len(self.dead) > self._dead_max:
                self.dead.popitem(last=False)
        keys = [k for k, r in self.requests.items() if r.dest == dest]
        for k in keys:
            self._forget(k)
        return self._grant(), keys

    def revive(self, dest: Hashable) -> None:
        """The destination registered again: serve it again."""
        self.dead.pop(dest, None)

    def grant_pending(self) -> list[Hashable]:
        """Keys that may run now (after drops freed slots)."""
        return self._grant()

    # ---------------------------------------------------------------- helpers
    def _may_run(self, dest: Hashable) -> bool:
        return (
            len(self.running) < self.max_overall
            and self.in_flight.get(dest, 0) < self.max_per_destination
        )

    def _run(self, req: Request) -> None:
        self.running.add(req.key)
        self.in_flight[req.dest] = self.in_flight.get(req.dest, 0) + 1
        self.granted += 1

    def _forget(self, key: Hashable) -> None:
        """Remove a live request from every map (running or queued)."""
        req = self.requests.pop(key)
        chunk = (req.dest, req.object_id, req.offset)
        if self._by_chunk.get(chunk) == key:
            del self._by_chunk[chunk]
        push = (req.dest, req.object_id)
        n = self.pushes[push] - 1
        if n:
            self.pushes[push] = n
        else:
            del self.pushes[push]
        if key in self.running:
            self.running.discard(key)
            n = self.in_flight[req.dest] - 1
            if n:
                self.in_flight[req.dest] = n
            else:
                del self.in_flight[req.dest]
            return
        queue = self.queues[req.dest]
        queue.remove(key)
        if not queue:
            del self.queues[req.dest]
            self._turns.remove(req.dest)

    def _grant(self) -> list[Hashable]:
        """Start waiting requests while the bounds allow, destinations in turn."""
        started: list[Hashable] = []
        # Each pass over the turns either starts one request or skips a
        # destination at its own bound; stop after a full pass without a start.
        idle = 0
        while self._turns and len(self.running) < self.max_overall and idle < len(self._turns):
            dest = self._turns[0]
            self._turns.rotate(-1)
            if self.in_flight.get(dest, 0) >= self.max_per_destination:
                idle += 1
                continue
            idle = 0
            queue = self.queues[dest]
            key = queue.popleft()
            if not queue:
                del self.queues[dest]
                self._turns.remove(dest)
            self._run(self.requests[key])
            started.append(key)
        return started

    # ---------------------------------------------------------------- checks
    def check(self) -> None:
        """Assert the invariants tying the maps together (tests call it after each step)."""
        queued = {k for q in self.queues.values() for k in q}
        assert not (queued & self.running), "a request both queued and running"
        assert queued | self.running == set(self.requests), "requests != queued + running"
        assert sum(len(q) for q in self.queues.values()) == len(queued), "a key queued twice"
        assert all(self.queues.values()), "an empty queue is kept"
        assert set(self._turns) == set(self.queues) and len(self._turns) == len(self.queues)
        counts: dict[Hashable, int] = {}
        for k in self.running:
            d = self.requests[k].dest
            counts[d] = counts.get(d, 0) + 1
        assert counts == self.in_flight, (counts, self.in_flight)
        assert len(self.running) <= self.max_overall
        assert all(n <= self.max_per_destination for n in self.in_flight.values())
        pushes: dict[tuple[Hashable, bytes], int] = {}
        for r in self.requests.values():
            pushes[(r.dest, r.object_id)] = pushes.get((r.dest, r.object_id), 0) + 1
        assert pushes == self.pushes, (pushes, self.pushes)
        assert {
            (r.dest, r.object_id, r.offset): k for k, r in self.requests.items()
        } == self._by_chunk
        # Work conserving: nothing waits while it could run.
        for dest in self.queues:
            assert not self._may_run(dest), f"{dest!r} waits below both bounds"
        assert not (set(self.queues) & set(self.dead)), "a dead destination still queued"

    def is_idle(self) -> bool:
        """Nothing queued or running."""
        return not self.requests
