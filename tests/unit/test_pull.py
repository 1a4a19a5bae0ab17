"""Tests for the pull policy (objstore.transfer.pull.PullManager).

Pure: no sockets, no event loop.  The clock is a plain float the tests advance
by hand, the randomness a seeded ``random.Random``.  Every step is followed by
``pm.check()`` and by the stricter invariants of :func:`invariants`, and every
test ends by asserting that nothing is left behind (:meth:`Harness.assert_empty`).
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from objstore.transfer.pull import Priority, PullManager, Start

GET, WAIT, PREFETCH = Priority.GET, Priority.WAIT, Priority.PREFETCH

ME = b"me"
N1, N2, N3 = b"n1", b"n2", b"n3"
A, B, C, D, P, W, X = b"A", b"B", b"C", b"D", b"P", b"W", b"X"

BIG_FREE = 1 << 40


def invariants(pm: PullManager) -> None:
    """``pm.check()`` plus what ties the queues to the pulls' own fields."""
    pm.check()
    for p, queue in enumerate(pm.ready()):
        for oid in queue:
            pull = pm.pulls[oid]
            # A ready pull waits in the queue of its (current) priority ...
            assert pull.priority == p, (oid, pull.priority, p)
            # ... and is not backing off.
            assert pull.not_before <= 0, (oid, pull.not_before)
    for oid, t in pm._backoff.items():
        assert pm.pulls[oid].not_before == t > 0
        # Backing off ends a round: when it is due, every source may be tried again.
        assert pm.pulls[oid].tried == set(), (oid, pm.pulls[oid].tried)
    for oid, pull in pm.pulls.items():
        assert pm.node_id not in pull.sources, "this node is never a source"
        assert pull.active != pm.node_id
        # No pull is lost: every located pull not in flight is queued somewhere.
        queued = oid in pm._backoff or any(oid in q for q in pm.ready())
        idle_located = pull.active is None and bool(pull.sources) and pull.size >= 0
        assert queued == idle_located, (oid, pull)
    assert pm.in_flight_bytes >= 0


class Harness:
    """A PullManager on a fake clock, checked after every step."""

    def __init__(
        self,
        cap: int = 100,
        *,
        seed: int = 0,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
    ) -> None:
        self.pm = PullManager(
            ME,
            max_bytes_in_flight=cap,
            backoff_min=backoff_min,
            backoff_max=backoff_max,
            rng=random.Random(seed),
        )
        self.now = 0.0
        self.free = BIG_FREE
        self.check()

    def check(self) -> None:
        invariants(self.pm)

    def want(self, oid: bytes, priority: Priority = GET, n: int = 1) -> None:
        for _ in range(n):
            self.pm.want(oid, priority)
            self.check()

    def unwant(self, oid: bytes, priority: Priority = GET) -> bool:
        result = self.pm.unwant(oid, priority)
        self.check()
        return result

    def located(self, oid: bytes, size: int, *nodes: bytes) -> None:
        self.pm.located(oid, size, nodes, self.now)
        self.check()

    def wanted_at(self, oid: bytes, size: int, *nodes: bytes, priority: Priority = GET) -> None:
        """One waiter of ``priority``, and the object located on ``nodes`` (N1 by default)."""
        self.want(oid, priority)
        self.located(oid, size, *(nodes or (N1,)))

    def step(self, dt: float = 0.0, free: int | None = None) -> list[Start]:
        """Advance the clock by ``dt`` and ask which pulls start."""
        self.now += dt
        free = self.free if free is None else free
        before = self.pm.in_flight_bytes
        starts = self.pm.next_pulls(self.now, free)
        self.check()
        # Admission: each start but one that finds nothing in flight fits the cap
        # and the free memory left.
        in_flight = before
        for s in starts:
            assert s.node != ME
            pull = self.pm.pulls[s.object_id]
            assert pull.active == s.node and s.node in pull.sources and s.size == pull.size
            if in_flight:
                assert in_flight + s.size <= self.pm.max_bytes_in_flight
                assert s.size <= free
            in_flight += s.size
            free -= s.size
        assert in_flight == self.pm.in_flight_bytes
        assert len({s.object_id for s in starts}) == len(starts)
        return starts

    def started(self, dt: float = 0.0, free: int | None = None) -> list[bytes]:
        return [s.object_id for s in self.step(dt, free)]

    def succeeded(self, oid: bytes) -> None:
        self.pm.succeeded(oid)
        self.check()

    def failed(self, oid: bytes, node: bytes) -> None:
        self.pm.failed(oid, node)
        self.check()

    def forget(self, oid: bytes) -> None:
        self.pm.forget(oid)
        self.check()

    def queued_ready(self) -> list[list[bytes]]:
        return self.pm.ready()

    def assert_empty(self) -> None:
        """No leak: every map and queue is empty, no byte counted in flight."""
        pm = self.pm
        pm.check()
        assert pm.pulls == {}
        assert pm.in_flight_bytes == 0
        assert all(q == [] for q in pm.ready()) and pm._queued == {}
        assert pm._backoff == {}
        assert pm.next_wakeup(self.now) is None
        # The heaps drop stale entries lazily: the next call leaves them empty.
        assert pm.next_pulls(self.now, self.free) == []
        assert pm._ready == [[] for _ in Priority]


# -- one pull per object


def test_one_pull_per_object_however_many_waiters() -> None:
    h = Harness()
    h.want(A, GET, n=3)
    h.want(A, WAIT, n=2)
    h.want(A, PREFETCH)
    assert list(h.pm.pulls) == [A]
    assert h.pm.pulls[A].waiters == [3, 2, 1]
    h.located(A, 10, N1)
    assert h.step() == [Start(A, N1, 10)]
    assert h.step() == []  # one attempt at a time
    h.want(A, GET)  # one more waiter while in flight: still one attempt
    assert h.step() == []
    assert h.pm.in_flight_bytes == 10
    for prio, n in ((GET, 4), (WAIT, 2)):
        for _ in range(n):
            assert h.unwant(A, prio) is False
    assert A in h.pm.pulls
    assert h.unwant(A, PREFETCH) is True  # the last waiter: cancel the attempt
    h.assert_empty()


def test_all_waiters_of_a_queued_pull_leave() -> None:
    h = Harness()
    h.want(A, GET, n=2)
    h.want(A, WAIT)
    h.located(A, 10, N1)
    assert h.unwant(A, GET) is False
    assert h.unwant(A, WAIT) is False
    assert h.unwant(A, GET) is False  # not in flight: nothing to cancel
    h.assert_empty()


def test_succeeded_ends_the_pull_for_every_waiter() -> None:
    h = Harness()
    h.want(A, GET, n=2)
    h.want(A, WAIT)
    h.located(A, 10, N1)
    assert h.started() == [A]
    h.succeeded(A)
    h.assert_empty()
    # The gets that waited now find the copy here and leave: harmless.
    assert h.unwant(A, GET) is False
    assert h.unwant(A, WAIT) is False
    h.assert_empty()


# -- priorities


@pytest.mark.parametrize(("older", "newer"), [(WAIT, GET), (PREFETCH, GET), (PREFETCH, WAIT)])
def test_higher_priority_starts_before_older_lower_priority(
    older: Priority, newer: Priority
) -> None:
    h = Harness(cap=10)
    h.wanted_at(X, 10)  # something in flight, so only one more fits at a time
    assert h.started() == [X]
    h.wanted_at(A, 10, priority=older)
    h.wanted_at(B, 10, priority=newer)
    assert h.started() == []
    h.succeeded(X)
    assert h.started() == [B]
    h.succeeded(B)
    assert h.started() == [A]
    h.succeeded(A)
    h.assert_empty()


def test_priority_order_get_wait_prefetch() -> None:
    h = Harness(cap=10)
    h.wanted_at(A, 10, priority=PREFETCH)
    h.wanted_at(B, 10, priority=WAIT)
    h.wanted_at(C, 10, priority=GET)
    order = []
    for _ in range(3):
        [s] = h.step()
        order.append(s.object_id)
        h.succeeded(s.object_id)
    assert order == [C, B, A]
    h.assert_empty()


def test_wait_pull_upgraded_by_a_later_get_moves_up() -> None:
    h = Harness(cap=10)
    h.wanted_at(X, 10)
    assert h.started() == [X]
    h.wanted_at(A, 10, priority=WAIT)
    h.wanted_at(B, 10, priority=WAIT)
    h.wanted_at(P, 10, priority=PREFETCH)
    h.want(B, GET)
    assert h.queued_ready() == [[B], [A], [P]]
    h.succeeded(X)
    assert h.started() == [B]
    h.succeeded(B)
    assert h.started() == [A]
    h.want(P, WAIT)  # prefetch upgraded to wait
    assert h.queued_ready() == [[], [P], []]
    assert h.unwant(A, WAIT) is True
    assert h.started() == [P]
    h.succeeded(P)
    h.assert_empty()


def test_last_get_leaving_moves_the_pull_back_down() -> None:
    h = Harness(cap=10)
    h.wanted_at(X, 10)
    assert h.started() == [X]
    h.wanted_at(A, 10, priority=WAIT)
    h.want(A, GET, n=2)
    h.wanted_at(C, 10, priority=GET)
    assert h.queued_ready() == [[A, C], [], []]
    assert h.unwant(A, GET) is False  # one get still waits: stays up
    assert h.queued_ready() == [[A, C], [], []]
    assert h.unwant(A, GET) is False  # the last get leaves: back to WAIT
    assert h.queued_ready() == [[C], [A], []]
    h.succeeded(X)
    assert h.started() == [C]
    h.succeeded(C)
    assert h.started() == [A]
    assert h.unwant(A, WAIT) is True
    h.assert_empty()


def test_upgrade_while_in_flight_takes_effect_when_requeued() -> None:
    h = Harness(cap=10)
    h.wanted_at(A, 10, N1, N2, priority=WAIT)
    [s] = h.step()
    assert s.object_id == A
    h.wanted_at(B, 10, priority=WAIT)  # older than A's get, but only a wait
    h.want(A, GET)
    h.failed(A, s.node)
    assert h.queued_ready() == [[A], [B], []]
    assert h.started() == [A]
    h.succeeded(A)
    assert h.started() == [B]
    h.succeeded(B)
    h.assert_empty()


def test_upgrade_while_backing_off_takes_effect_when_due() -> None:
    h = Harness(cap=10)
    h.wanted_at(A, 10, N1, priority=WAIT)
    assert h.started() == [A]
    h.failed(A, N1)
    assert h.step() == []  # every source failed: A backs off
    assert A in h.pm._backoff
    h.want(A, GET)
    assert A in h.pm._backoff  # still backing off, now as a get
    h.wanted_at(B, 10, priority=WAIT)
    h.wanted_at(X, 10, priority=WAIT)
    assert h.started() == [B]  # (nothing in flight before: B is first in line)
    h.now = h.pm._backoff[A]
    h.succeeded(B)
    assert h.started() == [A]  # due again, as a get: before the older wait X
    h.succeeded(A)
    assert h.started() == [X]
    h.succeeded(X)
    h.assert_empty()


def test_fifo_within_a_priority() -> None:
    h = Harness(cap=10)
    for oid in (A, B, C, D):
        h.wanted_at(oid, 10, priority=WAIT)
    order = []
    for _ in range(4):
        [s] = h.step()
        order.append(s.object_id)
        h.succeeded(s.object_id)
    assert order == [A, B, C, D]
    h.assert_empty()


def test_fifo_many_start_at_once_in_order() -> None:
    h = Harness(cap=1000)
    oids = [bytes([65 + i]) for i in range(10)]
    for oid in oids:
        h.wanted_at(oid, 10)
    assert h.started() == oids
    for oid in oids:
        h.succeeded(oid)
    h.assert_empty()


def test_moved_back_down_keeps_its_place_among_waits() -> None:
    h = Harness(cap=10)
    h.wanted_at(X, 10)
    assert h.started() == [X]
    h.wanted_at(A, 10, priority=WAIT)  # asked for first
    h.wanted_at(B, 10, priority=WAIT)
    h.want(A, GET)
    assert h.unwant(A, GET) is False
    h.succeeded(X)
    # "Pulls start by priority, then in the order they were asked for": A, then B.
    assert h.started() == [A]


# -- admission: bytes in flight, free memory, no starvation


def test_bytes_in_flight_cap() -> None:
    h = Harness(cap=100)
    for oid in (A, B, C):
        h.wanted_at(oid, 40)
    assert h.started() == [A, B]  # 80 fit, 120 would not
    assert h.pm.in_flight_bytes == 80
    assert h.started(dt=10) == []  # C waits, however long
    h.succeeded(A)
    assert h.started() == [C]
    assert h.pm.in_flight_bytes == 80
    h.succeeded(B)
    h.succeeded(C)
    h.assert_empty()


def test_a_failure_frees_its_bytes_in_flight() -> None:
    h = Harness(cap=100)
    h.wanted_at(A, 60, N1, N2)
    h.wanted_at(B, 60)
    assert h.started() == [A]
    h.failed(A, h.pm.pulls[A].active or b"")
    assert h.pm.in_flight_bytes == 0
    # A keeps its place in line (it was asked for first) and tries its other source.
    assert h.started() == [A]
    h.succeeded(A)
    assert h.started() == [B]
    h.succeeded(B)
    h.assert_empty()


def test_exactly_at_the_cap_fits() -> None:
    h = Harness(cap=100)
    h.wanted_at(A, 50)
    h.wanted_at(B, 50)
    h.wanted_at(C, 1)
    assert h.started() == [A, B]
    assert h.pm.in_flight_bytes == 100
    h.succeeded(A)
    h.succeeded(B)
    assert h.started() == [C]
    h.succeeded(C)
    h.assert_empty()


def test_first_pull_starts_even_when_larger_than_the_cap() -> None:
    h = Harness(cap=10)
    h.wanted_at(A, 1000)
    h.wanted_at(B, 1)
    assert h.started() == [A]
    assert h.pm.in_flight_bytes == 1000
    assert h.started() == []  # nothing passes while it is in flight
    h.succeeded(A)
    assert h.started() == [B]
    h.succeeded(B)
    h.assert_empty()


def test_first_pull_starts_even_when_larger_than_free_memory() -> None:
    h = Harness(cap=1000)
    h.wanted_at(A, 100)
    h.wanted_at(B, 1)
    assert h.started(free=5) == [A]  # B: 1 byte would fit the free 5, but A took them
    assert h.started(free=5) == [B]
    h.succeeded(A)
    h.succeeded(B)
    h.assert_empty()


def test_first_pull_starts_with_no_free_memory_at_all() -> None:
    h = Harness(cap=1000)
    h.wanted_at(A, 100)
    assert h.started(free=0) == [A]
    h.succeeded(A)
    h.assert_empty()


def test_free_memory_admission() -> None:
    h = Harness(cap=1000)
    h.wanted_at(A, 60)
    h.wanted_at(B, 60)
    h.wanted_at(C, 30)
    assert h.started(free=100) == [A]  # B needs 60 of the 40 left
    assert h.started(free=40) == []
    assert h.started(free=59) == []
    assert h.started(free=60) == [B]  # fits exactly
    assert h.started(free=1000) == [C]
    for oid in (A, B, C):
        h.succeeded(oid)
    h.assert_empty()


def test_no_starvation_big_head_blocks_smaller_pulls_behind() -> None:
    h = Harness(cap=100)
    h.wanted_at(X, 60)
    assert h.started() == [X]
    h.wanted_at(A, 50)  # does not fit next to X
    h.wanted_at(B, 10)  # would fit, but is behind A
    h.wanted_at(C, 10, priority=WAIT)
    h.wanted_at(P, 10, priority=PREFETCH)
    for _ in range(3):
        assert h.started(dt=1.0) == []
    h.succeeded(X)
    assert h.started() == [A, B, C, P]
    for oid in (A, B, C, P):
        h.succeeded(oid)
    h.assert_empty()


def test_no_starvation_when_free_memory_blocks_the_head() -> None:
    h = Harness(cap=1000)
    h.wanted_at(X, 10)
    assert h.started() == [X]
    h.wanted_at(A, 500)
    h.wanted_at(B, 5)
    assert h.started(free=100) == []  # A does not fit the free memory; B waits behind it
    h.succeeded(X)
    assert h.started(free=100) == [A]  # first in line: starts anyway
    assert h.started(free=4) == []  # B is next now, and needs 5
    assert h.started(free=5) == [B]
    h.succeeded(A)
    h.succeeded(B)
    h.assert_empty()


def test_a_pull_that_must_back_off_does_not_block_the_ones_behind() -> None:
    h = Harness(cap=100)
    h.wanted_at(A, 10, N1)
    assert h.started() == [A]
    h.failed(A, N1)
    h.wanted_at(B, 10)
    assert h.queued_ready() == [[A, B], [], []]
    assert h.started() == [B]  # A (head, no source left) backs off; B goes
    assert A in h.pm._backoff
    h.succeeded(B)
    assert h.unwant(A) is False
    h.assert_empty()


def test_location_update_keeps_the_place_in_line() -> None:
    h = Harness(cap=100)
    h.wanted_at(X, 60)
    assert h.started() == [X]
    h.wanted_at(A, 50, N1)  # blocked at the head
    h.wanted_at(B, 10, N1)  # would fit, waits behind A
    assert h.started() == []
    h.located(A, 50, N1, N2)  # the directory: one copy more
    # Nothing passes A: it is still first in line.
    assert h.started() == []


def test_stale_entries_do_not_pile_up_behind_a_blocked_head() -> None:
    h = Harness(cap=100)
    h.wanted_at(X, 60)
    assert h.started() == [X]
    h.wanted_at(A, 60)  # blocked at the head for as long as X is in flight
    h.wanted_at(W, 10, priority=WAIT)
    for i in range(200):
        # Gets come and go (a wait pull upgraded and back; short-lived pulls), and
        # the node asks for pulls after each event, as ObjectManager does.
        h.want(W, GET)
        assert h.unwant(W, GET) is False
        oid = b"t%d" % i
        h.wanted_at(oid, 10)
        assert h.unwant(oid) is False
        assert h.started() == []
    # The pulls queued are A and W: the heaps are compacted once they hold more
    # than twice the live entries plus 64, so they stay bounded, not hundreds.
    live = len(h.pm._queued)
    assert all(len(heap) <= 2 * live + 65 for heap in h.pm._ready), [
        len(heap) for heap in h.pm._ready
    ]


# -- unlocated, and this node as the only source


def test_unlocated_pulls_never_start() -> None:
    h = Harness()
    h.want(A)
    h.want(B, WAIT)
    for _ in range(5):
        assert h.step(dt=100.0) == []
    assert h.pm.next_wakeup(h.now) is None
    h.located(A, 10, N1)
    assert h.started() == [A]
    assert h.unwant(A) is True
    assert h.unwant(B, WAIT) is False
    h.assert_empty()


def test_located_ignored_when_nobody_wants_it() -> None:
    h = Harness()
    h.located(A, 10, N1, N2)
    assert h.pm.pulls == {}
    assert h.step() == []
    h.assert_empty()


@pytest.mark.parametrize("nodes", [(ME,), (ME, ME), ()])
def test_located_only_here_never_starts(nodes: tuple[bytes, ...]) -> None:
    h = Harness()
    h.want(A)
    h.located(A, 10, *nodes)
    assert h.pm.pulls[A].sources == ()
    for _ in range(3):
        assert h.step(dt=10.0) == []
    assert h.pm.next_wakeup(h.now) is None
    h.located(A, 10, ME, N2)
    assert h.step() == [Start(A, N2, 10)]  # never this node
    assert h.unwant(A) is True
    h.assert_empty()


def test_zero_size_objects_are_pulled() -> None:
    h = Harness(cap=10)
    h.wanted_at(A, 0)
    h.wanted_at(B, 0)
    assert h.started() == [A, B]
    assert h.pm.in_flight_bytes == 0
    h.succeeded(A)
    h.succeeded(B)
    h.assert_empty()


# -- sources and backoff


def test_source_is_chosen_at_random_among_the_sources() -> None:
    chosen = set()
    for seed in range(40):
        h = Harness(seed=seed)
        h.wanted_at(A, 10, N1, ME, N2, N3)
        [s] = h.step()
        assert s.node in (N1, N2, N3)
        chosen.add(s.node)
        assert h.unwant(A) is True
        h.assert_empty()
    assert chosen == {N1, N2, N3}


def test_failed_sources_are_not_retried_in_the_same_round() -> None:
    for seed in range(20):
        h = Harness(seed=seed)
        h.wanted_at(A, 10, N1, N2, N3)
        nodes = []
        for _ in range(3):
            [s] = h.step()
            nodes.append(s.node)
            h.failed(A, s.node)
        assert sorted(nodes) == [N1, N2, N3]
        assert h.step() == []  # every source failed: backs off
        assert A in h.pm._backoff
        assert h.pm.pulls[A].tried == set()
        assert h.unwant(A) is False
        h.assert_empty()


def test_backoff_doubles_with_jitter_up_to_the_max() -> None:
    h = Harness(seed=3, backoff_min=0.1, backoff_max=0.5)
    h.wanted_at(A, 10, N1)
    h.now = 7.0
    fractions = []
    for round_ in range(1, 8):
        assert h.step() == [Start(A, N1, 10)]
        h.now += 0.25
        h.failed(A, N1)
        assert h.step() == []
        delay = min(0.5, 0.1 * 2 ** (round_ - 1))
        not_before = h.pm._backoff[A]
        assert h.now + 0.5 * delay - 1e-9 <= not_before <= h.now + 1.5 * delay + 1e-9
        fractions.append((not_before - h.now) / delay)
        assert h.pm.next_wakeup(h.now) == not_before
        # Not before it is due, however often asked ...
        h.now = math.nextafter(not_before, 0.0)
        assert h.step() == []
        assert h.pm.next_wakeup(h.now) == not_before
        # ... and again as soon as it is.
        h.now = not_before
    assert max(fractions) - min(fractions) > 0.2, fractions  # jittered, not a fixed delay
    assert h.step() == [Start(A, N1, 10)]
    assert h.pm.next_wakeup(h.now) is None
    assert h.unwant(A) is True
    h.assert_empty()


def test_after_the_backoff_every_source_is_tried_again() -> None:
    h = Harness(seed=1)
    h.wanted_at(A, 10, N1, N2)
    for _ in range(2):
        [s] = h.step()
        h.failed(A, s.node)
    assert h.step() == []
    h.now = h.pm._backoff[A]
    round2 = []
    for _ in range(2):
        [s] = h.step()
        round2.append(s.node)
        h.failed(A, s.node)
    assert sorted(round2) == [N1, N2]
    assert h.step() == []
    assert A in h.pm._backoff
    assert h.unwant(A) is False
    h.assert_empty()


def test_next_wakeup_is_the_earliest_backoff() -> None:
    h = Harness(seed=5)
    assert h.pm.next_wakeup(0.0) is None
    h.wanted_at(A, 10, N1)
    h.wanted_at(B, 10, N2)
    assert h.started() == [A, B]
    h.failed(A, N1)
    h.failed(B, N2)
    assert h.step() == []
    assert h.pm.next_wakeup(h.now) == min(h.pm._backoff[A], h.pm._backoff[B])
    assert h.unwant(A) is False
    assert h.pm.next_wakeup(h.now) == h.pm._backoff[B]
    h.now = h.pm._backoff[B]
    assert h.started() == [B]
    assert h.pm.next_wakeup(h.now) is None
    h.succeeded(B)
    h.assert_empty()


def test_backoff_survives_a_long_outage() -> None:
    h = Harness(backoff_min=0.05, backoff_max=2.0)
    h.wanted_at(A, 10, N1)
    for round_ in range(1, 1101):
        assert h.step() == [Start(A, N1, 10)], round_
        h.failed(A, N1)
        assert h.step() == [], round_
        delay = h.pm._backoff[A] - h.now
        assert 0.5 * 2.0 - 1e-9 <= delay <= 1.5 * 2.0 + 1e-9 or round_ < 7
        h.now = h.pm._backoff[A]
    assert h.unwant(A) is False  # backing off, not in flight
    h.assert_empty()


# -- locations changing during a pull


def test_new_location_during_an_attempt_is_used_after_it_fails() -> None:
    h = Harness()
    h.wanted_at(A, 10, N1)
    assert h.step() == [Start(A, N1, 10)]
    h.located(A, 10, N1, N2)
    assert h.step() == []  # still one attempt in flight
    assert h.pm.pulls[A].active == N1
    h.failed(A, N1)
    assert h.step() == [Start(A, N2, 10)]  # the untried new source, not N1 again
    h.succeeded(A)
    h.assert_empty()


def test_location_update_removing_the_active_source() -> None:
    h = Harness()
    h.wanted_at(A, 10, N1)
    assert h.started() == [A]
    h.located(A, 10, N2, N3)  # N1 lost its copy while we fetch from it
    assert h.pm.pulls[A].active == N1
    assert h.pm.in_flight_bytes == 10
    h.failed(A, N1)
    [s] = h.step()
    assert s.node in (N2, N3)
    assert h.unwant(A) is True
    h.assert_empty()


def test_location_update_removing_every_source_during_an_attempt() -> None:
    h = Harness()
    h.wanted_at(A, 10, N1)
    assert h.started() == [A]
    h.located(A, 10)
    h.failed(A, N1)
    assert h.step(dt=100.0) == []  # nowhere to pull from
    assert h.pm.next_wakeup(h.now) is None
    h.located(A, 10, N1, N2)  # copies again
    assert h.step() == [Start(A, N2, 10)]  # N1 already failed in this round
    h.failed(A, N2)
    assert h.step() == []  # every source failed: backs off
    h.now = h.pm._backoff[A]
    [s] = h.step()
    assert s.node in (N1, N2)
    h.succeeded(A)
    h.assert_empty()


def test_size_from_a_location_update_during_an_attempt_keeps_bytes_in_flight() -> None:
    h = Harness()
    h.wanted_at(A, 10, N1, N2)
    assert h.started() == [A]
    h.located(A, 30, N1, N2)
    assert h.pm.in_flight_bytes == 10  # check() after every step: still consistent
    assert h.unwant(A) is True
    h.assert_empty()


def test_location_update_while_backing_off_keeps_the_pull() -> None:
    h = Harness()
    h.wanted_at(A, 10, N1)
    assert h.started() == [A]
    h.failed(A, N1)
    assert h.step() == []
    h.located(A, 10, N1, N2)
    assert A in h.pm._backoff or A in h.pm.ready()[GET]
    h.now += 10.0
    [s] = h.step()
    assert s.node in (N1, N2)
    h.succeeded(A)
    h.assert_empty()


def test_location_update_to_nowhere_while_backing_off_and_back() -> None:
    h = Harness()
    h.wanted_at(A, 10, N1)
    assert h.started() == [A]
    h.failed(A, N1)
    assert h.step() == []
    h.located(A, 10)
    assert h.pm._backoff == {}
    assert h.pm.next_wakeup(h.now) is None
    h.now += 10.0
    assert h.step() == []
    h.located(A, 10, N2)
    assert h.step() == [Start(A, N2, 10)]
    h.succeeded(A)
    h.assert_empty()


# -- leaving, stale events, forget


def test_unwant_in_flight_returns_true_and_frees_its_bytes() -> None:
    h = Harness(cap=100)
    h.wanted_at(A, 40)
    h.wanted_at(B, 80)
    assert h.started() == [A]
    assert h.started() == []
    assert h.unwant(A) is True
    assert h.pm.in_flight_bytes == 0
    # The cancelled attempt reports late: harmless.
    h.failed(A, N1)
    h.succeeded(A)
    assert h.pm.in_flight_bytes == 0
    assert h.started() == [B]
    assert h.unwant(B) is True
    h.assert_empty()


def test_unwant_of_a_queued_backing_off_or_unlocated_pull_returns_false() -> None:
    h = Harness()
    h.wanted_at(A, 10)
    h.wanted_at(B, 1000)
    h.wanted_at(C, 10, N2)
    h.want(D)  # never located
    assert h.started() == [A]  # cap 100: B waits, and C behind it
    assert h.unwant(C) is False  # queued
    h.wanted_at(C, 10, N2)
    h.succeeded(A)
    assert h.started() == [B]  # first in line: starts, however big
    h.failed(B, N1)
    assert h.started() == [C]  # B (no source left) backs off
    assert B in h.pm._backoff
    assert h.unwant(B) is False
    assert h.unwant(D) is False
    assert h.unwant(C) is True
    h.assert_empty()


def test_unwant_more_waiters_than_exist_is_harmless() -> None:
    h = Harness()
    assert h.unwant(A) is False  # unknown object
    h.wanted_at(A, 10)
    assert h.unwant(A, WAIT) is False  # no wait waiter
    assert h.unwant(A, PREFETCH) is False
    assert h.pm.pulls[A].waiters == [1, 0, 0]
    assert h.started() == [A]
    assert h.unwant(A) is True
    for prio in (GET, GET, WAIT, PREFETCH):
        assert h.unwant(A, prio) is False
    h.assert_empty()
    # A new waiter later starts afresh (needs a location again).
    h.want(A)
    assert h.step() == []
    h.located(A, 10, N2)
    assert h.step() == [Start(A, N2, 10)]
    assert h.unwant(A) is True
    assert h.unwant(A) is False
    h.assert_empty()


def test_succeeded_or_failed_for_an_unknown_pull_is_harmless() -> None:
    h = Harness()
    h.succeeded(A)
    h.failed(A, N1)
    h.forget(A)
    h.assert_empty()


def test_failed_for_a_pull_not_in_flight_or_another_node_is_ignored() -> None:
    h = Harness()
    h.wanted_at(A, 10, N1, N2)
    h.failed(A, N1)  # queued, not in flight
    assert h.pm.pulls[A].tried == set()
    [s] = h.step()
    other = N2 if s.node == N1 else N1
    h.failed(A, other)  # not the node it pulls from
    h.failed(A, ME)
    assert h.pm.pulls[A].active == s.node
    assert h.pm.in_flight_bytes == 10
    assert h.step() == []
    h.failed(A, s.node)
    assert h.pm.in_flight_bytes == 0
    h.failed(A, s.node)  # twice: the second is stale
    assert h.pm.pulls[A].tried == {s.node}
    assert h.step() == [Start(A, other, 10)]
    h.succeeded(A)
    h.succeeded(A)  # twice: harmless
    h.assert_empty()


def test_forget() -> None:
    h = Harness(cap=100)
    h.wanted_at(A, 60)  # in flight
    h.wanted_at(B, 60)  # queued (blocked)
    h.wanted_at(C, 10, N3)  # backing off below
    h.want(D, WAIT)  # unlocated
    assert h.started() == [A]
    h.forget(B)
    assert h.started() == [C]
    h.failed(C, N3)
    assert h.step() == []
    assert C in h.pm._backoff
    h.forget(A)
    assert h.pm.in_flight_bytes == 0
    h.forget(C)
    assert h.pm.next_wakeup(h.now) is None
    h.forget(D)
    h.forget(D)  # twice
    h.assert_empty()
    # Waiters of forgotten pulls leave harmlessly; late reports too.
    assert h.unwant(A) is False
    assert h.unwant(D, WAIT) is False
    h.failed(A, N1)
    h.succeeded(A)
    h.assert_empty()


def test_forgotten_pull_wanted_again_starts_afresh() -> None:
    h = Harness()
    h.wanted_at(A, 10, N1, N2)
    [s] = h.step()
    h.failed(A, s.node)
    h.forget(A)
    h.want(A)
    assert h.pm.pulls[A].sources == () and h.pm.pulls[A].tried == set()
    assert h.step() == []
    h.located(A, 10, N1, N2)
    [s2] = h.step()
    assert s2.node in (N1, N2)
    h.succeeded(A)
    h.assert_empty()


# -- a property test over a few objects and nodes


OBJECTS = [b"o0", b"o1", b"o2", b"o3"]
NODES = [ME, N1, N2, N3]
CAP = 100

objects = st.sampled_from(OBJECTS)
priorities = st.sampled_from(list(Priority))
# Round sizes hit the cap exactly (50 + 50) or just past it (60 + 50); some exceed it.
sizes = st.sampled_from([0, 10, 20, 40, 50, 60, 150]) | st.integers(min_value=0, max_value=120)
frees = st.sampled_from([0, 10, 50, 100, 1 << 30]) | st.integers(min_value=0, max_value=300)
remote_nodes = st.lists(st.sampled_from(NODES), min_size=1, max_size=4).filter(
    lambda nodes: any(n != ME for n in nodes)
)


class PullMachine(RuleBasedStateMachine):
    """PullManager driven like ObjectManager drives it, against a small model."""

    def __init__(self) -> None:
        super().__init__()
        self.pm = PullManager(
            ME,
            max_bytes_in_flight=CAP,
            backoff_min=0.05,
            backoff_max=1.0,
            rng=random.Random(0),
        )
        self.now = 0.0
        # (object, priority) -> waiters; attempts the machine was told to start.
        self.waiters: dict[tuple[bytes, Priority], int] = {}
        self.active: dict[bytes, Start] = {}
        # object -> sources that failed in this round (absent: none).
        self.tried: dict[bytes, set[bytes]] = {}

    def _drop(self, oid: bytes) -> None:
        """The pull is over (copy here, object gone): its waiters leave too."""
        for prio in Priority:
            self.waiters.pop((oid, prio), None)
        self.active.pop(oid, None)
        self.tried.pop(oid, None)

    @rule(oid=objects, prio=priorities)
    def want(self, oid: bytes, prio: Priority) -> None:
        self.pm.want(oid, prio)
        key = (oid, prio)
        self.waiters[key] = self.waiters.get(key, 0) + 1

    @rule(oid=objects, prio=priorities)
    def unwant(self, oid: bytes, prio: Priority) -> None:
        key = (oid, prio)
        mine = self.waiters.get(key, 0)
        cancel = self.pm.unwant(oid, prio)
        if not mine:
            assert cancel is False
            return
        if mine == 1:
            del self.waiters[key]
        else:
            self.waiters[key] = mine - 1
        last = not any(self.waiters.get((oid, p)) for p in Priority)
        assert cancel is (last and oid in self.active)
        if last:
            assert oid not in self.pm.pulls
            self._drop(oid)

    @rule(oid=objects, size=sizes, nodes=st.lists(st.sampled_from(NODES), max_size=4))
    def located(self, oid: bytes, size: int, nodes: list[bytes]) -> None:
        known = oid in self.pm.pulls
        self.pm.located(oid, size, nodes, self.now)
        if not known:
            assert oid not in self.pm.pulls
        else:
            assert set(self.pm.pulls[oid].sources) == set(nodes) - {ME}
            # A source gone from the directory's list is no longer "tried".
            self.tried[oid] = self.tried.get(oid, set()) & set(nodes)

    @rule(oid=objects, prio=priorities, size=sizes, nodes=remote_nodes)
    def want_located(self, oid: bytes, prio: Priority, size: int, nodes: list[bytes]) -> None:
        """A get for an object the directory already knows: want, then its locations."""
        self.want(oid, prio)
        self.located(oid, size, nodes)

    @precondition(lambda self: bool(self.waiters))
    @rule(data=st.data(), size=sizes, nodes=remote_nodes)
    def located_wanted(self, data: st.DataObject, size: int, nodes: list[bytes]) -> None:
        """The common case: a wanted object found somewhere else."""
        oid = data.draw(st.sampled_from(sorted({o for o, _ in self.waiters})))
        self.located(oid, size, nodes)

    @rule(
        dt=st.sampled_from([0.0, 0.0, 0.01, 0.1, 0.5, 2.0]),
        free=frees,
    )
    def next_pulls(self, dt: float, free: int) -> None:
        pm = self.pm
        self.now += dt
        in_flight = pm.in_flight_bytes
        left = free
        starts = pm.next_pulls(self.now, free)
        for s in starts:
            pull = pm.pulls[s.object_id]
            assert s.node != ME
            assert s.node in pull.sources
            assert s.node not in self.tried.get(s.object_id, set()), "retried in the same round"
            assert s.object_id not in self.active
            assert s.size == pull.size >= 0
            if in_flight:
                assert in_flight + s.size <= CAP
                assert s.size <= left
            in_flight += s.size
            left -= s.size
            self.active[s.object_id] = s
        assert in_flight == pm.in_flight_bytes
        # No starvation: if anything is still ready, the first in line could not fit,
        # and nothing of a lower priority started.
        ready = pm.ready()
        nonempty = [p for p, q in enumerate(ready) if q]
        if nonempty:
            p = nonempty[0]
            head = pm.pulls[ready[p][0]]
            assert set(head.sources) - head.tried
            assert in_flight and (in_flight + head.size > CAP or head.size > left)
            assert all(pm.pulls[s.object_id].priority <= p for s in starts)

        # By priority, then in the order asked for: nothing still ready was passed.
        def rank(oid: bytes) -> tuple[int, int]:
            return pm.pulls[oid].priority, pm.pulls[oid].seq

        started = [rank(s.object_id) for s in starts]
        assert started == sorted(started)
        waiting = [rank(oid) for queue in pm.ready() for oid in queue]
        assert not started or not waiting or max(started) < min(waiting)
        # What backs off is due later, never now; its next round starts afresh.
        assert all(t > self.now for t in pm._backoff.values())
        for oid in pm._backoff:
            self.tried.pop(oid, None)
        wake = pm.next_wakeup(self.now)
        assert wake == (min(pm._backoff.values()) if pm._backoff else None)

    @precondition(lambda self: bool(self.active))
    @rule(data=st.data())
    def succeeded(self, data: st.DataObject) -> None:
        oid = data.draw(st.sampled_from(sorted(self.active)))
        self.pm.succeeded(oid)
        assert oid not in self.pm.pulls
        self._drop(oid)

    @precondition(lambda self: bool(self.active))
    @rule(data=st.data())
    def failed(self, data: st.DataObject) -> None:
        oid = data.draw(st.sampled_from(sorted(self.active)))
        start = self.active.pop(oid)
        before = self.pm.in_flight_bytes
        self.pm.failed(oid, start.node)
        assert self.pm.pulls[oid].active is None
        assert self.pm.in_flight_bytes == before - start.size
        self.tried.setdefault(oid, set()).add(start.node)

    @rule(oid=objects, node=st.sampled_from(NODES))
    def stale_failed(self, oid: bytes, node: bytes) -> None:
        start = self.active.get(oid)
        if start is not None and start.node == node:
            return  # not stale
        pull = self.pm.pulls.get(oid)
        tried = set(pull.tried) if pull else None
        before = self.pm.in_flight_bytes
        self.pm.failed(oid, node)
        assert self.pm.in_flight_bytes == before
        if pull is not None:
            assert pull.tried == tried

    @rule(oid=objects)
    def forget(self, oid: bytes) -> None:
        self.pm.forget(oid)
        assert oid not in self.pm.pulls
        self._drop(oid)

    # -- the stall clock (tests/unit/test_pull_stall.py has the examples)
    @precondition(lambda self: bool(self.active))
    @rule(data=st.data(), dt=st.sampled_from([0.0, 0.1, 1.0]))
    def progress(self, data: st.DataObject, dt: float) -> None:
        oid = data.draw(st.sampled_from(sorted(self.active)))
        self.now += dt
        self.pm.progress(oid, self.now)
        pull = self.pm.pulls[oid]
        assert pull.progress_at == (self.now if pull.sources else None)

    @precondition(lambda self: bool(self.active))
    @rule(data=st.data())
    def pause(self, data: st.DataObject) -> None:
        oid = data.draw(st.sampled_from(sorted(self.active)))
        self.pm.pause(oid)
        assert self.pm.pulls[oid].progress_at is None

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 5.0]), timeout=st.sampled_from([0.5, 1.0, 3.0]))
    def stalled(self, dt: float, timeout: float) -> None:
        pm = self.pm
        self.now += dt
        stalls = pm.stalled(self.now, timeout)
        assert len({s.object_id for s in stalls}) == len(stalls)
        for s in stalls:
            pull = pm.pulls[s.object_id]
            assert s.idle_s >= timeout - 1e-9 and pull.sources
            assert pull.progress_at == self.now  # restarted
            assert s.active == pull.active and s.rounds == pull.rounds
            assert set(s.tried) <= set(NODES) - {ME} and len(s.tried) <= s.attempts
        # Nothing left behind: no running clock is ``timeout`` old any more.
        for pull in pm.pulls.values():
            assert pull.progress_at is None or pull.progress_at + timeout > self.now
        wake = pm.next_stall(timeout)
        assert (wake is None) == (not pm._stalls)
        assert wake is None or wake > self.now

    @invariant()
    def consistent(self) -> None:
        pm = self.pm
        invariants(pm)
        # Exactly the pulls the model started are in flight, from the node it was told.
        assert {o: p.active for o, p in pm.pulls.items() if p.active is not None} == {
            o: s.node for o, s in self.active.items()
        }
        # Waiters and the sources tried in this round match the model.
        for oid, pull in pm.pulls.items():
            assert pull.waiters == [self.waiters.get((oid, p), 0) for p in Priority]
            assert pull.tried == self.tried.get(oid, set()), (oid, pull.tried)
        assert set(pm.pulls) == {oid for oid, _ in self.waiters}
        # Over the cap only for a single pull (that started with nothing in flight).
        if pm.in_flight_bytes > CAP:
            assert sum(1 for p in pm.pulls.values() if p.active is not None and p.size) == 1

    def teardown(self) -> None:
        pm = self.pm
        for (oid, prio), n in list(self.waiters.items()):
            for _ in range(n):
                pm.unwant(oid, prio)
                invariants(pm)
        pm.check()
        assert pm.pulls == {}
        assert pm.in_flight_bytes == 0
        assert all(q == [] for q in pm.ready()) and pm._queued == {}
        assert pm._backoff == {}
        assert pm.next_wakeup(self.now) is None
        assert pm.next_pulls(self.now, 1 << 30) == []
        assert pm._ready == [[] for _ in Priority]
        # Stall clock entries of ended pulls go when they surface.
        assert pm.stalled(self.now + 1e9, 1.0) == [] and pm._stalls == []


PullMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_pull_state_machine = PullMachine.TestCase


def test_sources_may_be_any_hashable_value() -> None:
    """The object manager's sources are frozen dataclasses; the policy never looks inside."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Node:
        node_id: bytes

    @dataclass(frozen=True)
    class Spill:
        url: str

    pm: PullManager[Node | Spill] = PullManager(
        Node(ME), max_bytes_in_flight=100, rng=random.Random(1)
    )
    pm.want(A)
    pm.located(A, 10, (Node(ME), Node(N1), Spill("s3://b/k")), 0.0)
    assert set(pm.pulls[A].sources) == {Node(N1), Spill("s3://b/k")}
    (start,) = pm.next_pulls(0.0, BIG_FREE)
    pm.failed(A, start.node)
    (again,) = pm.next_pulls(0.0, BIG_FREE)
    assert again.node != start.node
    pm.succeeded(A)
    pm.check()
    assert not pm.pulls and pm.in_flight_bytes == 0
