"""The pull policy's stall clock (``PullManager.progress``, ``pause``, ``stalled``).

Pure: no sockets, no event loop; the clock is a float the tests advance by
hand.  Each test ends by asserting that no map or heap of the policy still
holds anything.  The hypothesis machine of tests/unit/test_pull.py drives the
same methods at random.
"""

from __future__ import annotations

import random

from objstore.transfer.pull import Priority, PullManager, Stall, Start

GET, WAIT = Priority.GET, Priority.WAIT
ME, N1, N2 = b"me", b"n1", b"n2"
A, B = b"A", b"B"
T = 0.5  # the fetch timeout of these tests
FREE = 1 << 40


class Clock:
    """A PullManager on a fake clock; every step checks the policy's invariants."""

    def __init__(self, cap: int = 100) -> None:
        self.pm: PullManager[bytes] = PullManager(
            ME, max_bytes_in_flight=cap, backoff_min=0.05, backoff_max=0.1, rng=random.Random(3)
        )
        self.now = 0.0

    def at(self, t: float) -> None:
        assert t >= self.now
        self.now = t

    def want(self, oid: bytes, priority: Priority = GET) -> None:
        self.pm.want(oid, priority)
        self.pm.check()

    def located(self, oid: bytes, size: int, *nodes: bytes) -> None:
        self.pm.located(oid, size, nodes, self.now)
        self.pm.check()

    def start(self) -> list[Start[bytes]]:
        starts = self.pm.next_pulls(self.now, FREE)
        self.pm.check()
        return starts

    def stalled(self, t: float) -> list[Stall[bytes]]:
        self.at(t)
        out = self.pm.stalled(self.now, T)
        self.pm.check()
        return out

    def ids(self, t: float) -> list[bytes]:
        return [s.object_id for s in self.stalled(t)]

    def assert_empty(self) -> None:
        pm = self.pm
        pm.check()
        assert pm.pulls == {} and pm.in_flight_bytes == 0
        # Entries of ended pulls go when they surface (or when they pile up).
        assert pm.stalled(self.now + 1e9, T) == []
        assert pm._stalls == [] and pm.next_stall(T) is None


def test_a_source_that_sends_nothing_stalls_once_per_timeout() -> None:
    c = Clock()
    c.want(A)
    c.at(1.0)
    c.located(A, 10, N1)
    [s] = c.start()
    assert s.node == N1
    assert c.pm.next_stall(T) == 1.0 + T
    assert c.ids(1.0 + T - 0.01) == []
    [stall] = c.stalled(1.0 + T)
    assert stall == Stall(A, T, (N1,), 1, 0, N1, (N1,))
    # Reported once: the clock restarted at the report.
    assert c.ids(1.0 + 1.5 * T) == []
    assert c.ids(1.0 + 2 * T) == [A]
    assert c.pm.pulls[A].active == N1  # the pull itself goes on
    c.pm.unwant(A)
    c.assert_empty()


def test_progress_restarts_the_clock() -> None:
    c = Clock()
    c.want(A)
    c.located(A, 10, N1)
    c.start()
    for i in range(1, 11):  # a chunk every 0.2 s for 2 s
        c.at(0.2 * i)
        c.pm.progress(A, c.now)
        assert c.ids(c.now) == []
    last = c.now
    assert c.ids(last + T - 0.01) == []
    [stall] = c.stalled(last + T)
    assert stall.idle_s == T
    c.pm.succeeded(A)
    c.assert_empty()


def test_no_clock_without_a_source() -> None:
    """An object that does not exist yet, or whose only copy is being restored."""
    c = Clock()
    c.want(A)
    assert c.ids(100.0) == []  # never located
    c.located(A, 10)  # the directory knows it, no node holds it (spilled, restoring)
    c.located(A, 10, ME)  # only here (being made here)
    assert c.ids(200.0) == []
    c.located(A, 10, N1)  # a copy appears: the clock starts now
    assert c.ids(200.0 + T - 0.01) == []
    assert c.ids(200.0 + T) == [A]
    c.pm.unwant(A)
    c.assert_empty()


def test_the_clock_stops_when_the_sources_go_and_starts_again_when_they_come() -> None:
    c = Clock()
    c.want(A)
    c.located(A, 10, N1)
    c.start()
    c.at(0.2)
    c.located(A, 10)  # N1 lost its copy during the attempt
    assert c.pm.pulls[A].progress_at is None
    c.pm.failed(A, N1)
    assert c.ids(50.0) == []
    c.located(A, 10, N2)
    [s] = c.start()
    assert s.node == N2
    assert c.ids(50.0 + T) == [A]
    c.pm.unwant(A)
    c.assert_empty()


def test_a_new_list_of_sources_is_not_progress() -> None:
    c = Clock()
    c.want(A)
    c.located(A, 10, N1)
    c.start()
    c.at(0.3)
    c.located(A, 10, N1, N2)  # one more copy somewhere
    assert c.ids(T) == [A]
    c.pm.unwant(A)
    c.assert_empty()


def test_failed_attempts_and_backoff_are_not_progress() -> None:
    c = Clock()
    c.want(A)
    c.located(A, 10, N1, N2)
    t = 0.0
    while c.pm.pulls[A].rounds < 2:
        for s in c.start():
            c.pm.failed(A, s.node)
        t += 0.01
        c.at(t)
    assert t < T
    stall = c.stalled(T)[0]
    assert set(stall.tried) == {N1, N2} and stall.attempts >= 4 and stall.rounds >= 2
    c.pm.unwant(A)
    c.assert_empty()


def test_waiting_for_memory_here_stops_the_clock() -> None:
    c = Clock()
    c.want(A)
    c.located(A, 10, N1)
    c.start()
    c.at(0.1)
    c.pm.progress(A, c.now)  # the first chunk came
    c.pm.pause(A)  # no room here: the pull waits for memory
    assert c.ids(100.0) == []
    c.pm.progress(A, c.now)  # room, and the next chunk
    assert c.ids(100.0 + T - 0.01) == []
    assert c.ids(100.0 + T) == [A]
    c.pm.unwant(A)
    c.assert_empty()


def test_waiting_for_admission_is_not_a_stall() -> None:
    """B waits behind A's bytes in flight; its clock runs from its own start."""
    c = Clock(cap=100)
    c.want(A)
    c.want(B)
    c.located(A, 80, N1)
    c.located(B, 80, N2)
    assert [s.object_id for s in c.start()] == [A]
    for i in range(1, 20):  # A moves for 1.9 s; B waits
        c.at(0.1 * i)
        c.pm.progress(A, c.now)
        assert c.start() == []
        assert c.ids(c.now) == []
    c.pm.succeeded(A)
    [s] = c.start()
    assert s.object_id == B
    started = c.now
    assert c.ids(started + T - 0.01) == []
    assert c.ids(started + T) == [B]
    c.pm.unwant(B)
    c.assert_empty()


def test_a_stalled_head_of_the_line_is_reported_and_the_pull_behind_is_not() -> None:
    c = Clock(cap=100)
    c.want(A)
    c.want(B, WAIT)
    c.located(A, 80, N1)
    c.located(B, 80, N2)
    c.start()
    assert c.start() == []  # B held back
    assert c.ids(T) == [A]
    assert c.ids(2 * T) == [A]
    c.pm.unwant(A)  # its gets gave up: the attempt is cancelled, B goes
    [s] = c.start()
    assert s.object_id == B
    assert c.ids(2 * T + T) == [B]
    c.pm.unwant(B, WAIT)
    c.assert_empty()


def test_entries_of_ended_pulls_do_not_pile_up() -> None:
    c = Clock(cap=1 << 30)
    for i in range(1000):
        oid = b"o%d" % i
        c.pm.want(oid)
        c.pm.located(oid, 1, (N1,), c.now)
        c.pm.next_pulls(c.now, FREE)
        c.pm.succeeded(oid)
        assert len(c.pm._stalls) <= 2 * len(c.pm.pulls) + 65
    c.pm.check()
    c.assert_empty()


def test_a_pull_wanted_again_has_a_fresh_clock() -> None:
    c = Clock()
    c.want(A)
    c.located(A, 10, N1)
    c.start()
    c.pm.unwant(A)  # gone; its heap entry is stale
    c.at(0.4)
    c.want(A)
    c.located(A, 10, N1)
    c.start()
    assert c.ids(0.4 + T - 0.01) == []
    assert c.ids(0.4 + T) == [A]
    c.pm.unwant(A)
    c.assert_empty()
