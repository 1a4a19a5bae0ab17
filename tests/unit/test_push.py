"""Tests for the push policy (objstore.transfer.push.PushManager).

Pure: no sockets, no event loop, no clock.  Every event goes through
:class:`Harness`, which runs ``pm.check()`` after it and asserts that no key is
both started and aborted by one call; every test ends by asserting that nothing
is left behind (:meth:`Harness.assert_empty`).  A hypothesis state machine then
drives the manager the way the transfer server does, against a small model of
what the driver believes is running.
"""

from __future__ import annotations

from collections.abc import Hashable

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from objstore.transfer.push import PushManager, Request

A, B, C = "node-a", "node-b", "node-c"
X, Y = b"X", b"Y"


class Harness:
    """A PushManager, checked after every event."""

    def __init__(self, max_overall: int, max_per_destination: int, dead_memory: int = 1024):
        self.pm = PushManager(max_overall, max_per_destination, dead_memory)
        self.pm.check()

    def request(
        self, key: Hashable, dest: Hashable, object_id: bytes = X, offset: int = 0
    ) -> tuple[list[Hashable], list[Hashable]]:
        started, aborted = self.pm.request(key, dest, object_id, offset)
        assert not set(started) & set(aborted), (started, aborted)
        assert set(started) <= self.pm.running
        assert not set(aborted) & set(self.pm.requests)
        self.pm.check()
        return started, aborted

    def done(self, key: Hashable) -> list[Hashable]:
        started = self.pm.done(key)
        assert key not in self.pm.requests
        assert set(started) <= self.pm.running
        self.pm.check()
        return started

    def cancel(self, key: Hashable) -> list[Hashable]:
        started = self.pm.cancel(key)
        assert key not in self.pm.requests
        assert set(started) <= self.pm.running
        self.pm.check()
        return started

    def drop(self, dest: Hashable) -> tuple[list[Hashable], list[Hashable]]:
        """``dest`` died: ``(keys that run now, keys to abort)``."""
        started, aborted = self.pm.drop_destination(dest)
        assert not set(started) & set(aborted), (started, aborted)
        assert len(set(aborted)) == len(aborted)
        assert not set(aborted) & set(self.pm.requests)
        assert set(started) <= self.pm.running
        self.pm.check()
        assert self.pm.grant_pending() == []  # the drop granted all it could
        return started, aborted

    def drain(self) -> list[Hashable]:
        """Finish every running send, repeatedly, until idle: the order things ran."""
        order: list[Hashable] = []
        while self.pm.running:
            for key in sorted(self.pm.running, key=repr):
                order.extend(self.done(key))
        return order

    def assert_empty(self) -> None:
        """No leak: every map and queue is empty."""
        pm = self.pm
        pm.check()
        assert pm.is_idle()
        assert pm.requests == {}
        assert pm.running == set()
        assert pm.queues == {}
        assert pm.in_flight == {}
        assert pm.pushes == {}
        assert pm._by_chunk == {}
        assert not pm._turns
        assert pm.grant_pending() == []


def snapshot(pm: PushManager) -> tuple[object, ...]:
    """Everything a refused or rejected call must leave as it was."""
    return (
        dict(pm.requests),
        set(pm.running),
        {d: list(q) for d, q in pm.queues.items()},
        dict(pm.in_flight),
        dict(pm.pushes),
        dict(pm._by_chunk),
        list(pm._turns),
        list(pm.dead),
        pm.granted,
        pm.superseded,
    )


# -- bounds


def test_a_request_runs_at_once_under_both_bounds() -> None:
    h = Harness(4, 2)
    assert h.request("k1", A, X, 0) == (["k1"], [])
    assert h.pm.running == {"k1"}
    assert h.pm.in_flight == {A: 1}
    assert h.pm.requests["k1"] == Request("k1", A, X, 0)
    assert h.pm.queues == {}
    assert h.pm.granted == 1
    assert h.done("k1") == []
    h.assert_empty()


def test_per_destination_bound_queues_that_destination_only() -> None:
    h = Harness(10, 2)
    assert h.request("a1", A, X, 0) == (["a1"], [])
    assert h.request("a2", A, X, 1) == (["a2"], [])
    assert h.request("a3", A, X, 2) == ([], [])  # A at its bound: waits
    assert h.pm.in_flight == {A: 2}
    assert list(h.pm.queues[A]) == ["a3"]
    assert h.request("b1", B, X, 0) == (["b1"], [])  # B is not held up by A
    assert h.pm.in_flight == {A: 2, B: 1}
    assert h.done("b1") == []  # B's slot is no use to A
    assert h.done("a1") == ["a3"]
    assert h.drain() == []
    h.assert_empty()


def test_overall_bound() -> None:
    h = Harness(2, 10)
    assert h.request("a1", A) == (["a1"], [])
    assert h.request("b1", B) == (["b1"], [])
    assert h.request("c1", C) == ([], [])
    assert h.request("a2", A, X, 1) == ([], [])
    assert len(h.pm.running) == 2
    assert h.done("b1") == ["c1"]  # C asked first
    assert h.done("a1") == ["a2"]
    assert h.drain() == []
    h.assert_empty()


def test_fifo_within_a_destination() -> None:
    h = Harness(10, 1)
    keys = [f"k{i}" for i in range(6)]
    for i, key in enumerate(keys):
        started, _ = h.request(key, A, X, i)
        assert started == ([key] if i == 0 else [])
    order = [keys[0]]
    for key in keys:
        order.extend(h.done(key))
    assert order == keys
    h.assert_empty()


def test_round_robin_one_busy_destination_does_not_starve_another() -> None:
    h = Harness(1, 10)
    assert h.request("a0", A, X, 0) == (["a0"], [])
    for i in range(1, 11):
        assert h.request(f"a{i}", A, X, i) == ([], [])
    assert h.request("b0", B, Y, 0) == ([], [])
    # B's one request runs within the next two grants, not after A's ten.
    [first] = h.done("a0")
    grants = [first]
    if first != "b0":
        grants.extend(h.done(first))
    assert "b0" in grants
    h.drain()
    h.assert_empty()


def test_round_robin_order_between_three_destinations() -> None:
    h = Harness(1, 5)
    assert h.request("a0", A, X, 0) == (["a0"], [])
    for i in (1, 2):
        h.request(f"a{i}", A, X, i)
    for dest, name in ((B, "b"), (C, "c")):
        for i in range(3):
            assert h.request(f"{name}{i}", dest, X, i) == ([], [])
    order = []
    key = "a0"
    while True:
        started = h.done(key)
        if not started:
            break
        [key] = started
        order.append(key)
    assert order == ["a1", "b0", "c0", "a2", "b1", "c1", "b2", "c2"]
    h.assert_empty()


def test_round_robin_skips_a_destination_at_its_own_bound() -> None:
    h = Harness(3, 2)
    h.request("a0", A, X, 0)
    h.request("a1", A, X, 1)
    h.request("a2", A, X, 2)  # A at its bound
    h.request("b0", B, X, 0)  # takes the last overall slot
    h.request("b1", B, X, 1)
    assert h.pm.running == {"a0", "a1", "b0"}
    # B's slot frees: A is first in turn but at its own bound, so B goes.
    assert h.done("b0") == ["b1"]
    assert h.done("a0") == ["a2"]
    h.drain()
    h.assert_empty()


# -- done and cancel


def test_done_returns_the_granted_keys() -> None:
    h = Harness(2, 1)
    h.request("a1", A)
    h.request("a2", A, X, 1)
    h.request("b1", B)
    h.request("b2", B, X, 1)
    assert h.pm.granted == 2
    assert h.done("a1") == ["a2"]
    assert h.done("b1") == ["b2"]
    assert h.pm.granted == 4
    assert h.done("a2") == []
    assert h.done("b2") == []
    h.assert_empty()


def test_done_of_an_unknown_key_is_ignored() -> None:
    h = Harness(1, 1)
    assert h.done("never") == []
    h.request("k1", A)
    h.request("k2", A, X, 1)
    before = snapshot(h.pm)
    assert h.done("never") == []
    assert snapshot(h.pm) == before
    assert h.done("k1") == ["k2"]
    assert h.done("k1") == []  # a second, late report
    assert h.pm.running == {"k2"}
    h.drain()
    h.assert_empty()


def test_done_of_a_queued_key_raises() -> None:
    h = Harness(1, 1)
    h.request("k1", A)
    h.request("k2", A, X, 1)
    before = snapshot(h.pm)
    with pytest.raises(ValueError, match="queued"):
        h.pm.done("k2")
    assert snapshot(h.pm) == before
    h.pm.check()
    h.drain()
    h.assert_empty()


def test_cancel_a_queued_request() -> None:
    h = Harness(1, 1)
    h.request("k1", A, X, 0)
    h.request("k2", A, X, 1)
    h.request("k3", A, X, 2)
    assert h.cancel("k2") == []  # frees no slot
    assert list(h.pm.queues[A]) == ["k3"]
    assert h.pm.pushes == {(A, X): 2}
    assert h.done("k1") == ["k3"]
    assert h.cancel("k2") == []  # twice: ignored
    assert h.cancel("never") == []
    h.drain()
    h.assert_empty()


def test_cancel_the_last_queued_request_of_a_destination_ends_its_turn() -> None:
    h = Harness(1, 1)
    h.request("a0", A)
    h.request("b0", B)
    h.request("c0", C)
    assert list(h.pm._turns) == [B, C]
    assert h.cancel("b0") == []
    assert list(h.pm._turns) == [C] and B not in h.pm.queues
    assert h.done("a0") == ["c0"]
    h.drain()
    h.assert_empty()


def test_cancel_a_running_request_frees_its_slot() -> None:
    h = Harness(1, 1)
    h.request("k1", A, X, 0)
    h.request("k2", B, X, 0)
    assert h.cancel("k1") == ["k2"]
    assert h.done("k1") == []  # the cancelled send reports late: ignored
    assert h.pm.running == {"k2"}
    assert h.cancel("k2") == []
    h.assert_empty()


# -- one request per chunk: a duplicate supersedes


def test_duplicate_of_a_queued_chunk_supersedes_it() -> None:
    h = Harness(1, 1)
    h.request("k1", A, X, 0)
    h.request("k2", A, X, 1)
    assert h.request("k3", A, X, 1) == ([], ["k2"])
    assert h.pm.superseded == 1
    assert "k2" not in h.pm.requests
    assert list(h.pm.queues[A]) == ["k3"]
    assert h.pm._by_chunk[(A, X, 1)] == "k3"
    assert h.pm.pushes == {(A, X): 2}
    assert h.done("k1") == ["k3"]
    h.drain()
    h.assert_empty()


def test_duplicate_of_a_running_chunk_supersedes_it_and_takes_its_slot() -> None:
    h = Harness(1, 1)
    h.request("k1", A, X, 0)
    assert h.request("k2", A, X, 0) == (["k2"], ["k1"])
    assert h.pm.superseded == 1
    assert h.pm.running == {"k2"}
    assert h.pm.pushes == {(A, X): 1}
    assert h.done("k1") == []  # the aborted send reports late: ignored
    assert h.pm.running == {"k2"}
    h.drain()
    h.assert_empty()


def test_slot_freed_by_a_superseded_send_goes_to_the_next_in_turn() -> None:
    h = Harness(1, 1)
    h.request("a1", A, X, 0)
    h.request("b1", B, Y, 0)  # waits for the one slot
    # A asks for its running chunk again: the old send is aborted and its slot
    # goes to B, who was waiting first; A's new request waits behind.
    assert h.request("a2", A, X, 0) == (["b1"], ["a1"])
    assert h.pm.superseded == 1
    assert list(h.pm.queues[A]) == ["a2"]
    assert h.done("b1") == ["a2"]
    h.drain()
    h.assert_empty()


def test_same_chunk_for_another_destination_or_offset_is_no_duplicate() -> None:
    h = Harness(10, 10)
    h.request("a", A, X, 0)
    assert h.request("b", B, X, 0) == (["b"], [])
    assert h.request("a1", A, X, 1) == (["a1"], [])
    assert h.request("ay", A, Y, 0) == (["ay"], [])
    assert h.pm.superseded == 0
    h.drain()
    h.assert_empty()


def test_superseding_a_waiting_request_keeps_its_turn() -> None:
    h = Harness(1, 1)
    h.request("a0", A, X, 0)  # runs
    h.request("a1", A, X, 1)
    h.request("a2", A, X, 2)
    h.request("c0", C, X, 0)
    assert h.done("a0") == ["a1"]
    h.request("b0", B, X, 0)
    assert list(h.pm._turns) == [C, A, B]  # C is next
    # C's attempt timed out and it asks again: the same request, still waiting.
    assert h.request("c0'", C, X, 0) == ([], ["c0"])
    assert list(h.pm._turns) == [C, A, B]
    assert h.done("a1") == ["c0'"]
    h.drain()
    h.assert_empty()


def test_asking_again_does_not_starve_a_destination() -> None:
    h = Harness(1, 1)
    # A and B always have more to send; C asks for one chunk and, as a pulling
    # node does, asks again when its attempt has waited two grants.
    next_offset = {A: 0, B: 0}

    def ask(dest: str) -> None:
        h.request(f"{dest}{next_offset[dest]}", dest, X, next_offset[dest])
        next_offset[dest] += 1

    ask(A)
    ask(A)
    ask(B)
    c_key, c_asks, waited = "c/0", 1, 0
    h.request(c_key, C, X, 0)
    [running] = h.pm.running
    for _ in range(60):
        [running] = h.done(running)
        if running == c_key:
            break
        ask(running[:6])  # A or B: its next chunk
        waited += 1
        if waited == 2:
            c_key, c_asks, waited = f"c/{c_asks}", c_asks + 1, 0
            assert h.request(c_key, C, X, 0)[1] == [f"c/{c_asks - 2}"]
    assert running == c_key, f"C asked {c_asks} times in 60 grants and never ran"
    h.drain()
    h.assert_empty()


# -- pushes


def test_pushes_count_requests_per_destination_and_object() -> None:
    h = Harness(2, 1)
    h.request("a0", A, X, 0)
    h.request("a1", A, X, 1)
    h.request("ay", A, Y, 0)
    h.request("b0", B, X, 0)
    assert h.pm.pushes == {(A, X): 2, (A, Y): 1, (B, X): 1}
    assert h.done("a0") == ["a1"]
    assert h.pm.pushes == {(A, X): 1, (A, Y): 1, (B, X): 1}
    assert h.cancel("b0") == []  # B had nothing else waiting
    assert h.pm.pushes == {(A, X): 1, (A, Y): 1}
    assert h.done("a1") == ["ay"]
    assert h.pm.pushes == {(A, Y): 1}  # the push of X to A is forgotten at 0
    assert h.done("ay") == []
    h.assert_empty()


# -- dead destinations


def test_drop_destination_returns_all_its_requests_and_frees_their_slots() -> None:
    h = Harness(3, 2)
    h.request("a1", A, X, 0)
    h.request("a2", A, X, 1)
    h.request("b1", B, Y, 0)
    h.request("a3", A, X, 2)  # queued: A at its bound
    h.request("b2", B, Y, 1)  # queued: overall bound
    h.request("b3", B, Y, 2)
    h.request("c1", C, Y, 0)
    assert h.pm.running == {"a1", "a2", "b1"}
    started, aborted = h.drop(A)
    assert aborted == ["a1", "a2", "a3"]
    # The two freed slots go to the others in turn: B (then at its bound), C.
    assert started == ["b2", "c1"]
    assert h.pm.running == {"b1", "b2", "c1"}
    assert A not in h.pm.queues and A not in h.pm.in_flight and A not in h.pm._turns
    assert not any(d == A for d, _ in h.pm.pushes)
    assert not any(d == A for d, _, _ in h.pm._by_chunk)
    # Late reports for the aborted sends are ignored.
    assert h.done("a1") == []
    assert h.cancel("a3") == []
    h.drain()
    h.assert_empty()


def test_requests_from_a_dead_destination_are_refused_until_revived() -> None:
    h = Harness(2, 2)
    h.request("b1", B)
    assert h.drop(A) == ([], [])
    before = snapshot(h.pm)
    assert h.request("a1", A, X, 0) == ([], [])
    assert snapshot(h.pm) == before  # nothing kept, nothing counted
    assert "a1" not in h.pm.requests
    assert h.done("a1") == [] and h.cancel("a1") == []
    h.pm.revive(A)
    h.pm.check()
    assert A not in h.pm.dead
    assert h.request("a1", A, X, 0) == (["a1"], [])
    h.pm.revive(C)  # never dead: harmless
    h.drain()
    h.assert_empty()


def test_drop_destination_grants_the_freed_slots_itself() -> None:
    h = Harness(1, 1)
    h.request("a1", A)
    h.request("b1", B)
    # b1 would otherwise wait with a free slot, and no running send would ever
    # call done() to start it.
    assert h.pm.drop_destination(A) == (["b1"], ["a1"])
    h.pm.check()
    assert h.pm.grant_pending() == []
    h.drain()
    h.assert_empty()


def test_dead_memory_is_bounded() -> None:
    h = Harness(1, 1, dead_memory=2)
    h.drop(A)
    h.drop(B)
    h.drop(C)
    assert list(h.pm.dead) == [B, C]  # A forgotten: the oldest
    assert h.request("a1", A) == (["a1"], [])
    assert h.request("b1", B) == ([], [])
    h.drop(B)  # dropped again: now the most recent
    assert list(h.pm.dead) == [C, B]
    h.drop("node-d")
    assert list(h.pm.dead) == [B, "node-d"]
    assert h.request("c1", C) == ([], [])  # C forgotten: served again, waits for A
    assert list(h.pm.queues[C]) == ["c1"]
    h.drain()
    h.assert_empty()


# -- misuse


def test_reusing_a_live_key_raises() -> None:
    h = Harness(2, 1)
    h.request("k1", A, X, 0)  # running
    h.request("k2", A, X, 1)  # queued
    before = snapshot(h.pm)
    for key in ("k1", "k2"):
        for dest, oid, off in ((A, X, 0), (A, X, 5), (B, Y, 0)):
            with pytest.raises(KeyError):
                h.pm.request(key, dest, oid, off)
            assert snapshot(h.pm) == before
    h.drop(B)
    with pytest.raises(KeyError):  # live comes before dead
        h.pm.request("k1", B, X, 0)
    h.pm.revive(B)
    assert h.done("k1") == ["k2"]
    assert h.request("k1", B, X, 0) == (["k1"], [])  # not live any more: a new request
    h.drain()
    h.assert_empty()


@pytest.mark.parametrize(("overall", "per_dest"), [(0, 1), (1, 0), (0, 0), (-1, 5), (5, -1)])
def test_bounds_below_one_raise(overall: int, per_dest: int) -> None:
    with pytest.raises(ValueError):
        PushManager(overall, per_dest)


def test_negative_dead_memory_raises() -> None:
    with pytest.raises(ValueError):
        PushManager(1, 1, dead_memory=-1)


def test_dead_memory_zero_remembers_no_destination() -> None:
    h = Harness(1, 1, dead_memory=0)
    h.request("a1", A)
    assert h.drop(A) == ([], ["a1"])
    assert not h.pm.dead
    assert h.request("a2", A) == (["a2"], [])  # not refused
    h.drain()
    h.assert_empty()


def test_none_is_a_key_like_any_other() -> None:
    h = Harness(1, 1)
    assert h.request(None, A, X, 0) == ([None], [])  # "any hashable" key
    assert h.request("k2", A, X, 0) == (["k2"], [None])  # supersedes it
    assert h.pm.superseded == 1
    assert h.done(None) == []  # late report: ignored
    assert h.request(None, A, X, 1) == ([], [])  # not live any more: reusable
    assert h.done("k2") == [None]
    assert h.drain() == []
    h.assert_empty()


# -- a property test over a few destinations, objects and offsets


DESTS = [A, B, C]
dests = st.sampled_from(DESTS)
objects = st.sampled_from([X, Y])
offsets = st.sampled_from([0, 1])
UNKNOWN = -1
# Whether a request superseding a waiting one takes its place in line (its
# destination's queue and turn).  False is what push.py does today (the bug
# shown by test_superseding_a_waiting_request_keeps_its_turn); set it to True
# with the fix.
SUPERSEDE_KEEPS_PLACE = True


class PushMachine(RuleBasedStateMachine):
    """PushManager driven like the transfer server drives it, against a model.

    The model is what the driver knows from the return values alone: which keys
    it was told to start (``running``), which wait (per destination, in the
    order asked for), the chunk of each live key, and the dead destinations.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pm = PushManager(1, 1)
        self.next_key = 0
        self.running: set[int] = set()
        self.waiting: dict[Hashable, list[int]] = {d: [] for d in DESTS}
        # live key -> (dest, object, offset); every key in running or waiting.
        self.chunk: dict[int, tuple[Hashable, bytes, int]] = {}
        self.ended: set[int] = set()
        self.dead: list[Hashable] = []  # most recent last
        self.dead_memory = 1024
        self.granted = 0
        self.superseded = 0
        # dest -> grants to other destinations since it last was served, while
        # it waited below its own bound (it is never skipped then: round robin
        # serves it before every destination ahead of it comes round again).
        self.passed_over: dict[Hashable, int] = {d: 0 for d in DESTS}

    @initialize(
        max_overall=st.integers(1, 4),
        max_per_destination=st.integers(1, 3),
        dead_memory=st.integers(0, 3),
    )
    def bounds(self, max_overall: int, max_per_destination: int, dead_memory: int) -> None:
        self.pm = PushManager(max_overall, max_per_destination, dead_memory)
        self.dead_memory = dead_memory

    # -- model helpers

    def _eligible(self, dest: Hashable) -> bool:
        """Waiting, and below its own bound (so only the overall bound holds it)."""
        in_flight = sum(1 for k in self.running if self.chunk[k][0] == dest)
        return bool(self.waiting[dest]) and in_flight < self.pm.max_per_destination

    def _started(self, keys: list[Hashable]) -> None:
        """Each started key was waiting, and the first of its destination (FIFO).

        Fairness: a destination waiting below its own bound is passed over by
        fewer grants than there are destinations.
        """
        assert len(set(keys)) == len(keys)
        for dest in DESTS:
            if not self._eligible(dest):
                self.passed_over[dest] = 0
        for key in keys:
            assert isinstance(key, int) and key in self.chunk and key not in self.running
            dest = self.chunk[key][0]
            for other in DESTS:
                if other != dest and self._eligible(other):
                    self.passed_over[other] += 1
                    assert self.passed_over[other] < len(DESTS), f"{other!r} starved"
            self.passed_over[dest] = 0
            queue = self.waiting[dest]
            assert queue[0] == key, (key, queue)
            queue.pop(0)
            self.running.add(key)
        self.granted += len(keys)

    def _ended(self, key: Hashable) -> None:
        assert isinstance(key, int)
        dest = self.chunk.pop(key)[0]
        if key in self.running:
            self.running.remove(key)
        else:
            self.waiting[dest].remove(key)
            if not self.waiting[dest]:
                self.passed_over[dest] = 0  # leaves the turns
        self.ended.add(key)

    def _unknown(self) -> list[int]:
        return [UNKNOWN, *sorted(self.ended)]

    # -- rules

    @rule(dest=dests, oid=objects, offset=offsets)
    def request(self, dest: Hashable, oid: bytes, offset: int) -> None:
        key = self.next_key
        self.next_key += 1
        chunk = (dest, oid, offset)
        old = [k for k, c in self.chunk.items() if c == chunk]
        started, aborted = self.pm.request(key, dest, oid, offset)
        assert not set(started) & set(aborted), "started and aborted in one call"
        if dest in self.dead:
            assert (started, aborted) == ([], [])
            assert key not in self.pm.requests
            self._started(started)
            return
        assert aborted == old
        self.superseded += len(old)
        self.chunk[key] = chunk
        queue = self.waiting[dest]
        if SUPERSEDE_KEEPS_PLACE and old and old[0] in queue:
            queue[queue.index(old[0])] = key
            del self.chunk[old[0]]
            self.ended.add(old[0])
        else:
            for k in aborted:
                self._ended(k)
            queue.append(key)
        self._started(started)

    @rule(data=st.data())
    def done(self, data: st.DataObject) -> None:
        choices = st.sampled_from(self._unknown())
        if self.running:
            choices = st.sampled_from(sorted(self.running)) | choices
        key = data.draw(choices)
        started = self.pm.done(key)
        if key in self.running:
            self._ended(key)
            # One slot freed: at most one send takes it.
            assert len(started) <= 1
            self._started(started)
        else:
            assert started == []
            self._started(started)

    @precondition(lambda self: any(self.waiting.values()))
    @rule(data=st.data())
    def done_of_a_waiting_key(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(k for q in self.waiting.values() for k in q)))
        before = snapshot(self.pm)
        with pytest.raises(ValueError):
            self.pm.done(key)
        assert snapshot(self.pm) == before

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        choices = st.sampled_from(self._unknown())
        if self.chunk:
            choices = st.sampled_from(sorted(self.chunk)) | choices
        key = data.draw(choices)
        was_running = key in self.running
        started = self.pm.cancel(key)
        if key in self.chunk:
            self._ended(key)
            assert len(started) <= (1 if was_running else 0)
            self._started(started)
        else:
            assert started == []
            self._started(started)

    @rule(dest=dests)
    def drop_destination(self, dest: Hashable) -> None:
        expected = {k for k, c in self.chunk.items() if c[0] == dest}
        started, aborted = self.pm.drop_destination(dest)
        assert not set(started) & set(aborted), "started and aborted in one call"
        assert len(set(aborted)) == len(aborted) and set(aborted) == expected
        for k in aborted:
            self._ended(k)
        if dest in self.dead:
            self.dead.remove(dest)
        if self.dead_memory:
            self.dead.append(dest)
            del self.dead[: -self.dead_memory]
        # Nothing of the dead destination is left anywhere.
        pm = self.pm
        assert dest not in pm.queues and dest not in pm.in_flight and dest not in pm._turns
        assert not any(d == dest for d, _ in pm.pushes)
        assert not any(d == dest for d, _, _ in pm._by_chunk)
        self._started(started)

    @rule(dest=dests)
    def revive(self, dest: Hashable) -> None:
        self.pm.revive(dest)
        if dest in self.dead:
            self.dead.remove(dest)

    @rule()
    def grant_pending(self) -> None:
        # Between events nothing waits below both bounds: nothing to grant.
        started = self.pm.grant_pending()
        assert started == []
        self._started(started)

    @invariant()
    def consistent(self) -> None:
        pm = self.pm
        pm.check()
        assert pm.running == self.running
        assert set(pm.requests) == set(self.chunk)
        for key, (dest, oid, offset) in self.chunk.items():
            assert pm.requests[key] == Request(key, dest, oid, offset)
        assert {d: list(q) for d, q in pm.queues.items()} == {
            d: q for d, q in self.waiting.items() if q
        }
        assert list(pm.dead) == self.dead
        assert pm.granted == self.granted
        assert pm.superseded == self.superseded

    def teardown(self) -> None:
        pm = self.pm
        while self.running:
            for key in sorted(self.running):
                self.done_key(key)
        assert not any(self.waiting.values()) and self.chunk == {}
        pm.check()
        assert pm.is_idle()
        assert pm.requests == {}
        assert pm.running == set()
        assert pm.queues == {}
        assert pm.in_flight == {}
        assert pm.pushes == {}
        assert pm._by_chunk == {}
        assert not pm._turns
        assert pm.grant_pending() == []
        for dest in DESTS:
            pm.revive(dest)
        assert not pm.dead

    def done_key(self, key: int) -> None:
        started = self.pm.done(key)
        self._ended(key)
        self._started(started)
        self.pm.check()
        assert self.pm.running == self.running


PushMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_push_state_machine = PushMachine.TestCase
