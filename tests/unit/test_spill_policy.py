"""Tests for the pure spill classes (objstore.spill.policy, .files, .restore_queue).

No I/O, no event loop, no clock: the tests play the spill driver by hand.
Every step is followed by ``check()``, and every test ends by asserting that
no internal map still holds anything (:func:`assert_empty` and friends) once
everything is removed, released or done.
"""

from __future__ import annotations

import itertools
import math
import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from objstore.config import KiB, MiB, SpillConfig
from objstore.errors import ObjectStoreError
from objstore.spill.files import SpillFiles
from objstore.spill.policy import (
    CANDIDATE_STATES,
    TRANSITIONS,
    Batch,
    InvalidSpillTransition,
    SpillEvent,
    SpillPolicy,
    SpillState,
    spill_transition,
)
from objstore.spill.restore_queue import RestoreGroup, RestoreItem, RestoreQueue

RESIDENT, COPIED = SpillState.RESIDENT, SpillState.COPIED
WRITING, FREEING = SpillState.WRITING, SpillState.FREEING

A, B, C, D, E = b"a", b"b", b"c", b"d", b"e"


def oid(i: int) -> bytes:
    """A distinct object id per integer."""
    return i.to_bytes(4, "big")


def make(
    capacity: int = 1000,
    threshold: float = 0.5,
    min_spilling_size: int = 0,
    max_fused_object_count: int = 1000,
) -> SpillPolicy:
    policy = SpillPolicy(capacity, threshold, min_spilling_size, max_fused_object_count)
    policy.check()
    return policy


def batch(policy: SpillPolicy, extra: int = 0, force: bool = False) -> Batch | None:
    """``next_batch`` plus the checks every batch must pass."""
    in_flight = {o for o in policy.order() if policy.state(o) in (WRITING, FREEING)}
    out = policy.next_batch(extra, force)
    policy.check()
    if out is not None:
        handed = out.write + out.free_only
        assert handed, "an empty batch is returned as None"
        assert len(set(handed)) == len(handed), "an object twice in one batch"
        assert not set(handed) & in_flight, "an object handed out twice"
        assert out.write_bytes == sum(_size(policy, o) for o in out.write)
        assert out.free_bytes == sum(_size(policy, o) for o in out.free_only)
        assert len(out.write) <= policy.max_fused_object_count
        assert all(policy.state(o) is WRITING for o in out.write)
        assert all(policy.state(o) is FREEING for o in out.free_only)
        assert all(policy.batch_of(o) == out.batch_id for o in handed)
    return out


def _size(policy: SpillPolicy, o: bytes) -> int:
    return policy._entries[o].size


def assert_empty(policy: SpillPolicy) -> None:
    """Nothing tracked, nothing in flight, and no internal map holds anything."""
    policy.check()
    assert len(policy) == 0 and policy.order() == []
    assert policy.primary_bytes == 0 and policy.spilling_bytes == 0
    assert policy.writes_in_flight == 0
    assert policy._entries == {}
    assert policy._writing == {}
    assert all(heap == [] for heap in policy._heap.values())
    assert set(policy._bytes.values()) == {0} and set(policy._count.values()) == {0}
    assert policy.next_batch(extra=1, force=True) is None


def drain(policy: SpillPolicy) -> None:
    """Remove every object, finish every write (they return nothing), then assert_empty."""
    every_step = len(policy) <= 1000  # check() is O(n): not after each of 100,000
    for o in policy.order():
        policy.remove(o)
        if every_step:
            policy.check()
    for batch_id in list(policy._writing):
        assert policy.written(batch_id, ok=True) == ()
        if every_step:
            policy.check()
    assert_empty(policy)


def assert_files_empty(files: SpillFiles) -> None:
    files.check()
    assert len(files) == 0 and files.files() == []
    assert files._file_of == {} and files._objects == {}


def assert_queue_empty(queue: RestoreQueue) -> None:
    queue.check()
    assert queue.pending == 0 and queue.in_flight == 0 and queue.in_flight_bytes == 0
    assert queue._pending == {} and queue._pending_file == {} and queue._in_flight == {}
    assert queue.take(1) == []


# ----------------------------------------------------------------------------- states

states = st.sampled_from(list(SpillState))
events = st.sampled_from(list(SpillEvent))


@given(states, events, st.none() | st.binary(min_size=1, max_size=20))
def test_transition_agrees_with_table(
    state: SpillState, event: SpillEvent, object_id: bytes | None
) -> None:
    if (state, event) in TRANSITIONS:
        assert spill_transition(state, event, object_id) is TRANSITIONS[(state, event)]
        return
    with pytest.raises(InvalidSpillTransition) as info:
        spill_transition(state, event, object_id)
    err = info.value
    assert isinstance(err, ObjectStoreError) and isinstance(err, ValueError)
    assert (err.state, err.event, err.object_id) == (state, event, object_id)
    assert state.name in str(err) and event.name in str(err)
    if object_id is not None:
        assert object_id.hex() in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert (again.state, again.event, str(again)) == (state, event, str(err))


def test_every_state_pair_walked_and_no_state_is_a_trap() -> None:
    for state in SpillState:
        for event in SpillEvent:
            if (state, event) in TRANSITIONS:
                spill_transition(state, event)
            else:
                with pytest.raises(InvalidSpillTransition):
                    spill_transition(state, event)
    # From every state a candidate state is reachable; batch states are left by one event.
    for state in SpillState:
        nxt = {dst for (src, _), dst in TRANSITIONS.items() if src is state}
        assert state in CANDIDATE_STATES or nxt & CANDIDATE_STATES, state
    # Candidates leave only into a batch; only an object with a copy is freed unwritten.
    assert {dst for (src, _), dst in TRANSITIONS.items() if src in CANDIDATE_STATES} == {
        WRITING,
        FREEING,
    }
    assert TRANSITIONS[(RESIDENT, SpillEvent.WRITE)] is WRITING
    assert TRANSITIONS[(COPIED, SpillEvent.FREE)] is FREEING


# ----------------------------------------------------------------------------- policy


def test_constructor_validates_and_from_config() -> None:
    with pytest.raises(ValueError):
        SpillPolicy(-1, 0.5, 0, 1)
    with pytest.raises(ValueError):
        SpillPolicy(10, 1.5, 0, 1)
    with pytest.raises(ValueError):
        SpillPolicy(10, -0.1, 0, 1)
    with pytest.raises(ValueError):
        SpillPolicy(10, 0.5, -1, 1)
    with pytest.raises(ValueError):
        SpillPolicy(10, 0.5, 0, 0)
    policy = SpillPolicy.from_config(1000 * MiB, SpillConfig())
    assert policy.threshold == 0.8
    assert policy.min_spilling_size == 100 * MiB
    assert policy.max_fused_object_count == 2000
    assert policy.limit == 800 * MiB
    assert_empty(policy)


@pytest.mark.parametrize(
    ("capacity", "threshold", "limit"),
    [(1000, 0.8, 800), (10, 0.55, 5), (3, 0.5, 1), (7, 0.0, 0), (7, 1.0, 7), (0, 0.8, 0)],
)
def test_limit_is_floor_of_threshold_times_capacity(
    capacity: int, threshold: float, limit: int
) -> None:
    policy = make(capacity, threshold)
    assert policy.limit == limit == math.floor(threshold * capacity)
    assert policy.need() == 0
    policy.add(A, limit)
    assert policy.need() == 0 and policy.need(3) == 3
    policy.add(B, 1)
    assert policy.need() == 1
    drain(policy)


def test_need_threshold_arithmetic() -> None:
    policy = make(1000, 0.8)
    assert policy.need() == 0 and policy.need(5) == 5
    with pytest.raises(ValueError):
        policy.need(-1)
    with pytest.raises(ValueError):
        policy.next_batch(-1)
    policy.add(A, 800)
    assert policy.primary_bytes == 800 and policy.need() == 0 and policy.need(1) == 1
    policy.add(B, 1)
    assert policy.need() == 1
    policy.add(C, 99)
    assert policy.primary_bytes == 900
    assert policy.need() == 100 and policy.need(50) == 150
    out = batch(policy)
    assert out is not None and out.write == (A,) and out.free_only == ()
    # A is leaving memory: it no longer counts towards the need.
    assert policy.spilling_bytes == 800 and policy.primary_bytes == 900
    assert policy.need() == 0 and policy.need(7) == 7
    assert batch(policy) is None
    assert policy.written(out.batch_id, ok=True) == (A,)
    policy.check()
    # Written, but its memory not freed yet: it counts again until removed.
    assert policy.spilling_bytes == 0 and policy.need() == 100
    policy.remove(A)
    policy.check()
    assert policy.primary_bytes == 100 and policy.need() == 0
    drain(policy)


def test_lru_order_and_touch() -> None:
    policy = make(100, 0.3)  # limit 30
    for o in (A, B, C, D):
        policy.add(o, 10)
        policy.check()
    assert policy.order() == [A, B, C, D]
    policy.touch(A)
    policy.check()
    assert policy.order() == [B, C, D, A]
    assert policy.need() == 10
    first = batch(policy)
    assert first is not None and first.write == (B,)
    assert batch(policy) is None  # B covers the need
    policy.add(E, 10)
    second = batch(policy)
    assert second is not None and second.write == (C,)
    policy.touch(D)
    policy.touch(C)  # C is in a batch: it stays there ...
    policy.check()
    assert policy.state(C) is WRITING and policy.batch_of(C) == second.batch_id
    assert policy.order() == [B, A, E, D, C]
    # ... and comes back at its new place when its write fails.
    assert policy.written(second.batch_id, ok=False) == (C,)
    policy.check()
    assert policy.state(C) is RESIDENT and not policy.has_copy(C)
    third = batch(policy, extra=25)  # need 10 + 25: A, E, D, C in LRU order (B is writing)
    assert third is not None and third.write == (A, E, D, C)
    policy.written(first.batch_id, ok=True)
    policy.written(third.batch_id, ok=True)
    drain(policy)


def test_touch_while_writing_keeps_the_batch() -> None:
    policy = make(100, 0.0)
    policy.add(A, 5)
    policy.add(B, 5)
    out = batch(policy)
    assert out is not None and out.write == (A, B)
    for _ in range(3):
        policy.touch(A)
        policy.check()
    assert policy.written(out.batch_id, ok=True) == (A, B)
    assert policy.has_copy(A) and policy.state(A) is COPIED
    assert policy.order() == [B, A]
    drain(policy)


def test_fusing_up_to_min_spilling_size() -> None:
    policy = make(1000, 0.5, min_spilling_size=100)  # limit 500
    for i in range(52):
        policy.add(oid(i), 10)
    assert policy.need() == 20
    out = batch(policy)
    # The need is 20 bytes, but a file holds at least min_spilling_size: 10 objects.
    assert out is not None and out.write == tuple(oid(i) for i in range(10))
    assert out.write_bytes == 100 and policy.spilling_bytes == 100 and policy.need() == 0
    policy.written(out.batch_id, ok=True)
    for o in out.write:
        policy.remove(o)
    policy.check()
    # The rest of the need goes in LRU order too: the oldest 10-byte objects first.
    for i, size in enumerate([40, 40, 40, 40], start=100):
        policy.add(oid(i), size)
    assert policy.need() == 580 - 500
    out = batch(policy)
    assert out is not None and out.write == tuple(oid(i) for i in range(10, 20))
    policy.written(out.batch_id, ok=True)
    drain(policy)


def test_fusing_stops_as_soon_as_the_target_is_reached() -> None:
    policy = make(1000, 0.0, min_spilling_size=100)
    for i, size in enumerate([40, 40, 40, 40]):
        policy.add(oid(i), size)
    out = batch(policy, extra=0)  # need 160 > 100: 4 objects
    assert out is not None and len(out.write) == 4
    policy.written(out.batch_id, ok=False)
    policy2 = make(1000, 0.5, min_spilling_size=100)
    for i, size in enumerate([40, 40, 40, 40]):
        policy2.add(oid(i), size)
    out = batch(policy2, extra=1)  # need 1: past min_spilling_size after 3 (120 bytes)
    assert out is not None and out.write == (oid(0), oid(1), oid(2)) and out.write_bytes == 120
    drain(policy)
    drain(policy2)


def test_need_larger_than_min_spilling_size_is_covered() -> None:
    policy = make(1000, 0.1, min_spilling_size=100)  # limit 100
    for i in range(50):
        policy.add(oid(i), 10)
    assert policy.need() == 400
    out = batch(policy)
    assert out is not None and len(out.write) == 40 and out.write_bytes == 400
    assert policy.need() == 0
    drain(policy)


def test_fusing_stops_at_max_fused_object_count() -> None:
    policy = make(1000, 0.0, min_spilling_size=10_000, max_fused_object_count=3)
    for i in range(10):
        policy.add(oid(i), 10)
    batches = []
    while (out := batch(policy, force=True)) is not None:
        batches.append(out.write)
    assert batches == [tuple(oid(i) for i in range(j, min(j + 3, 10))) for j in (0, 3, 6, 9)]
    drain(policy)


def test_one_large_object_alone_in_a_batch() -> None:
    policy = make(1000, 0.5, min_spilling_size=100)
    policy.add(A, 300)  # least recently used, larger than min_spilling_size
    for i in range(25):
        policy.add(oid(i), 10)
    assert policy.need() == 50
    out = batch(policy)
    assert out is not None and out.write == (A,) and out.write_bytes == 300
    assert policy.need() == 0
    drain(policy)


def test_large_object_larger_than_the_arena_still_goes() -> None:
    policy = make(100, 0.8, min_spilling_size=1000)
    policy.add(A, 5000)
    out = batch(policy)
    assert out is not None and out.write == (A,) and policy.spilling_bytes == 5000
    drain(policy)


def test_wait_for_the_write_in_flight_unless_forced() -> None:
    policy = make(1000, 0.5, min_spilling_size=100)
    policy.add(A, 480)
    policy.add(B, 30)
    first = batch(policy)  # need 10: A alone is past min_spilling_size
    assert first is not None and first.write == (A,)
    policy.add(C, 30)
    assert policy.need() == 0
    # A create waits for 20 bytes; B and C (60 bytes) would make a small file
    # while A's write is in flight: wait for it instead.
    assert batch(policy, extra=20) is None
    forced = batch(policy, extra=20, force=True)
    # Forced, it still fuses up to min_spilling_size: all there is.
    assert forced is not None and forced.write == (B, C) and forced.write_bytes == 60
    policy.written(forced.batch_id, ok=False)
    assert batch(policy, extra=20) is None
    # When A's write finishes and A is freed, nothing is in flight: small files go.
    policy.written(first.batch_id, ok=True)
    policy.remove(A)
    policy.check()
    out = batch(policy, extra=20)
    assert out is not None and out.write == (B, C)  # fused up to min_spilling_size: all
    drain(policy)


def test_wait_still_hands_out_objects_to_free() -> None:
    policy = make(1000, 0.5, min_spilling_size=100)
    policy.add(A, 501)
    first = batch(policy)
    assert first is not None and first.write == (A,)
    policy.add(R := b"restored", 10, has_copy=True)
    policy.add(B, 10)
    out = batch(policy, extra=40)
    # R needs no write: freed at once.  B would be a small file while A is written.
    assert out is not None and out.free_only == (R,) and out.write == ()
    assert policy.writes_in_flight == 1
    with pytest.raises(KeyError):
        policy.written(out.batch_id, ok=True)  # a batch without a write has no written()
    policy.remove(R)
    policy.written(first.batch_id, ok=True)
    drain(policy)


def test_100_000_small_objects_with_the_defaults_make_at_most_50_files() -> None:
    config = SpillConfig()
    policy = SpillPolicy.from_config(10 * MiB, config)  # 8 MiB may stay
    batches: list[Batch] = []
    for i in range(100_000):
        policy.add(oid(i), KiB)
        while (out := policy.next_batch()) is not None:
            # The driver: write, then free what was written.
            assert out.free_only == ()
            batches.append(out)
            assert policy.written(out.batch_id, ok=True) == out.write
            for o in out.write:
                policy.remove(o)
    policy.check()
    assert 0 < len(batches) <= 50
    assert all(len(b.write) == config.max_fused_object_count for b in batches)
    assert policy.primary_bytes <= policy.limit
    drain(policy)


def test_100_000_small_objects_all_at_once_force_makes_50_files() -> None:
    policy = SpillPolicy.from_config(0, SpillConfig())  # everything must go
    ids = [oid(i) for i in range(100_000)]
    for o in ids:
        policy.add(o, KiB)
    first = policy.next_batch()
    assert first is not None and first.write == tuple(ids[:2000])
    # 98,000 KiB left is less than min_spilling_size: wait for the first file ...
    assert policy.next_batch() is None
    # ... unless forced.
    batches = [first]
    while (out := policy.next_batch(force=True)) is not None:
        batches.append(out)
    policy.check()
    assert len(batches) == 50
    assert [o for b in batches for o in b.write] == ids
    assert policy.spilling_bytes == policy.primary_bytes == 100_000 * KiB
    for b in batches:
        assert policy.written(b.batch_id, ok=True) == b.write
    policy.check()
    drain(policy)


def test_has_copy_objects_are_freed_without_writing() -> None:
    policy = make(1000, 0.5)  # limit 500
    for r in (b"r1", b"r2", b"r3", b"r4"):
        policy.add(r, 50, has_copy=True)
        assert policy.has_copy(r) and policy.state(r) is COPIED
    policy.add(A, 300)
    policy.add(B, 60)  # 560: need 60
    out = batch(policy)
    # The least recently used go first -- copies here -- and only as many as the
    # need takes; nothing is written.
    assert out is not None and out.free_only == (b"r1", b"r2") and out.write == ()
    assert out.free_bytes == 100 and policy.spilling_bytes == 100
    assert policy.writes_in_flight == 0
    assert policy.need() == 0
    policy.remove(b"r1")  # the driver freed it
    policy.check()
    assert policy.spilling_bytes == 50 and policy.primary_bytes == 510 and policy.need() == 0
    policy.cancel(b"r2")  # pinned, say: not freed; now the most recently used
    policy.check()
    assert policy.state(b"r2") is COPIED and policy.order()[-1] == b"r2"
    assert policy.need() == 10
    # Need 160: r3, r4, then A (written) cover it in LRU order; r2, cancelled and
    # so the most recently used, stays although it has a copy.
    out = batch(policy, extra=150)
    assert out is not None and out.free_only == (b"r3", b"r4")
    assert out.write == (A,) and out.write_bytes == 300
    assert policy.state(b"r2") is COPIED
    drain(policy)


def test_free_only_stops_when_the_need_is_covered_exactly() -> None:
    policy = make(1000, 0.5)
    for r in (b"r1", b"r2", b"r3"):
        policy.add(r, 50, has_copy=True)
    policy.add(A, 450)  # 600: need 100
    out = batch(policy)
    assert out is not None and out.free_only == (b"r1", b"r2") and out.write == ()
    drain(policy)


def test_hot_restored_object_is_not_spilled_again_before_colder_ones() -> None:
    """The benchmark's case: a small object read every 10 ms, spilled once and
    restored, was freed by every batch (the only one with a copy) and restored
    on the next read, ~70 times in 2 s.  Strictly LRU, the colder ones go."""
    policy = make(1000, 0.5, min_spilling_size=30)  # limit 500
    for i in range(50):
        policy.add(oid(i), 10)  # used long ago
    hot = b"hot"
    policy.add(hot, 1, has_copy=True)  # restored on a read: a copy, most recently used
    assert policy.need() == 1
    cold = iter(range(1000))
    sealed = 50
    for _ in range(70):
        out = batch(policy)
        # A small need: the oldest objects are written (fused to min_spilling_size),
        # the hot one is not freed.
        assert out is not None and out.free_only == () and hot not in out.write
        assert out.write == tuple(oid(next(cold)) for _ in range(3))
        assert policy.state(hot) is COPIED
        assert policy.written(out.batch_id, ok=True) == out.write
        for o in out.write:
            policy.remove(o)  # the driver freed them
        policy.check()
        policy.touch(hot)  # read again
        for _ in range(3):  # new primaries sealed: over the limit again
            policy.add(oid(sealed), 10)
            sealed += 1
        policy.check()
    # Still hot, never handed out; when the need reaches it, it goes in LRU order.
    order = policy.order()
    assert policy.state(hot) is COPIED and order.index(hot) == 47
    out = batch(policy, extra=475)  # need 476: the 47 colder ones, hot, one newer
    assert out is not None and out.free_only == (hot,)
    assert out.write == tuple(order[:47] + order[48:49])
    drain(policy)


def test_old_copy_is_freed_before_newer_residents() -> None:
    policy = make(1000, 0.5, min_spilling_size=30)  # limit 500
    policy.add(R := b"restored", 10, has_copy=True)  # restored long ago, not read since
    for i in range(49):
        policy.add(oid(i), 10)
    policy.add(A, 1)  # 501: need 1
    out = batch(policy)
    # The least recently used has a copy: freed without a write, and no file is
    # started (nothing to fuse).
    assert out is not None and out.free_only == (R,) and out.write == ()
    assert out.free_bytes == 10 and policy.need() == 0
    policy.cancel(R)  # held: it is now the most recently used
    policy.check()
    assert policy.order()[-1] == R
    out = batch(policy)
    assert out is not None and out.free_only == () and out.write == (oid(0), oid(1), oid(2))
    policy.written(out.batch_id, ok=True)
    drain(policy)


def test_lru_order_across_kinds_and_fusing_skips_copies() -> None:
    policy = make(60, 1.0, min_spilling_size=40)  # limit 60: the need is the extra
    r1, c1, r2, c2, r3, r4 = (b"r1", b"c1", b"r2", b"c2", b"r3", b"r4")
    for o in (r1, c1, r2, c2, r3, r4):
        policy.add(o, 10, has_copy=o.startswith(b"c"))
    policy.check()
    # Need 30: r1, c1, r2 in LRU order; the file is fused up to 40 bytes with
    # the next RESIDENT ones, r3 then r4 (c2 is not freed: it is not needed).
    out = batch(policy, extra=30)
    assert out is not None and out.free_only == (c1,) and out.write == (r1, r2, r3, r4)
    assert out.write_bytes == 40 and out.free_bytes == 10
    assert policy.state(c2) is COPIED
    policy.written(out.batch_id, ok=False)
    policy.remove(c1)
    drain(policy)


def test_write_fused_after_a_copy_covers_the_need() -> None:
    policy = make(140, 1.0, min_spilling_size=30)  # limit 140: the need is the extra
    policy.add(A, 10)
    policy.add(C, 100, has_copy=True)
    policy.add(B, 10)
    policy.add(D, 10)
    policy.add(E, 10)
    # Need 50: A (to write), then C (a copy) covers it.  left = 50 - 100 < 0, but
    # a file is started, so it is fused up to min_spilling_size: A, B, D.
    out = batch(policy, extra=50)
    assert out is not None and out.free_only == (C,) and out.write == (A, B, D)
    assert out.write_bytes == 30 and policy.state(E) is RESIDENT
    policy.written(out.batch_id, ok=True)
    drain(policy)


def test_a_full_file_stops_the_batch_and_the_next_goes_on_in_lru_order() -> None:
    policy = make(50, 1.0, max_fused_object_count=2)  # limit 50: the need is the extra
    for o in (A, B, C):
        policy.add(o, 10)
    policy.add(D, 10, has_copy=True)
    policy.add(E, 10)
    # Need 50: A and B fill the file; C (to write) is next, so the batch ends
    # there -- D, newer than C, is not freed before it.
    first = batch(policy, extra=50)
    assert first is not None and first.write == (A, B) and first.free_only == ()
    second = batch(policy, extra=50)
    assert second is not None and second.write == (C, E) and second.free_only == (D,)
    policy.written(first.batch_id, ok=True)
    policy.written(second.batch_id, ok=True)
    drain(policy)


def test_waiting_for_a_write_frees_copies_even_newer_than_residents() -> None:
    policy = make(1000, 0.5, min_spilling_size=100)
    policy.add(A, 501)
    first = batch(policy)
    assert first is not None and first.write == (A,)
    policy.add(B, 10)  # older than R, but a 10-byte file while A is written: wait
    policy.add(R := b"restored", 10, has_copy=True)
    out = batch(policy, extra=40)
    assert out is not None and out.free_only == (R,) and out.write == ()
    forced = batch(policy, extra=40, force=True)
    assert forced is not None and forced.write == (B,) and forced.free_only == ()
    policy.written(forced.batch_id, ok=False)
    policy.written(first.batch_id, ok=True)
    drain(policy)


def test_written_ok_gives_a_copy_and_keeps_tracking() -> None:
    policy = make(100, 0.5)
    policy.add(A, 30)
    policy.add(B, 30)
    out = batch(policy)
    assert out is not None and out.write == (A,)
    assert policy.written(out.batch_id, ok=True) == (A,)
    policy.check()
    assert policy.has_copy(A) and A in policy and policy.spilling_bytes == 0
    with pytest.raises(KeyError):
        policy.written(out.batch_id, ok=True)  # only once
    # Pinned, its memory stays: the next batch frees it without a second write.
    again = batch(policy)
    assert again is not None and again.free_only == (A,) and again.write == ()
    drain(policy)


def test_failed_write_makes_objects_candidates_again() -> None:
    policy = make(100, 0.0)
    policy.add(A, 10)
    policy.add(B, 10, has_copy=True)
    policy.add(C, 10)
    out = batch(policy)
    assert out is not None and out.free_only == (B,) and out.write == (A, C)
    assert policy.written(out.batch_id, ok=False) == (A, C)
    policy.check()
    assert policy.state(A) is RESIDENT and not policy.has_copy(A)
    assert policy.spilling_bytes == 10  # B is still to be freed
    retry = batch(policy)
    assert retry is not None and retry.write == (A, C) and retry.batch_id > out.batch_id
    drain(policy)


def test_remove_during_a_batch() -> None:
    policy = make(100, 0.0)
    for o in (A, B, C):
        policy.add(o, 10)
    policy.add(D, 5, has_copy=True)
    out = batch(policy)
    assert out is not None and out.write == (A, B, C) and out.free_only == (D,)
    policy.remove(B)  # deleted while being written
    policy.remove(D)  # freed
    policy.check()
    assert policy.spilling_bytes == 20 and policy.primary_bytes == 20
    assert policy.written(out.batch_id, ok=True) == (A, C)
    policy.check()
    # A batch whose objects all went still needs its written(); it returns nothing.
    again = batch(policy)
    assert again is not None and again.free_only == (A, C)
    policy.add(E, 10)
    third = batch(policy)
    assert third is not None and third.write == (E,)
    policy.remove(E)
    assert policy.written(third.batch_id, ok=False) == ()
    policy.check()
    # An id removed during a write and added again is a new object, not in the batch.
    policy.add(B, 10)
    fourth = batch(policy)
    assert fourth is not None and fourth.write == (B,)
    policy.remove(B)
    policy.add(B, 10)
    assert policy.written(fourth.batch_id, ok=True) == ()
    assert policy.state(B) is RESIDENT
    drain(policy)


def test_driver_mistakes_raise() -> None:
    policy = make()
    policy.add(A, 1)
    with pytest.raises(ValueError):
        policy.add(A, 1)
    with pytest.raises(ValueError):
        policy.add(B, -1)
    for method in (policy.remove, policy.touch, policy.cancel, policy.state, policy.has_copy):
        with pytest.raises(KeyError):
            method(B)
    with pytest.raises(KeyError):
        policy.written(12345, ok=True)
    with pytest.raises(InvalidSpillTransition):
        policy.cancel(A)  # not handed out to free
    policy.check()
    assert policy.order() == [A] and policy.state(A) is RESIDENT
    drain(policy)


def test_heap_of_a_hot_object_stays_small() -> None:
    policy = make(100, 1.0)
    for i in range(10):
        policy.add(oid(i), 1)
    for _ in range(1000):
        policy.touch(oid(3))
    policy.check()
    assert len(policy._heap[RESIDENT]) <= 2 * 10 + 64
    assert policy.order()[-1] == oid(3)
    out = batch(policy, extra=10)
    assert out is not None and out.write == tuple(oid(i) for i in (0, 1, 2, 4, 5, 6, 7, 8, 9, 3))
    drain(policy)


# ----------------------------------------------------------------------------- files


def test_spill_files_count_and_delete_the_last() -> None:
    files = SpillFiles()
    assert files.add_file("f1", [A, B, C]) is True
    assert files.add_file("f2", (o for o in [D])) is True
    files.check()
    assert len(files) == 2 and files.files() == ["f1", "f2"]
    assert files.file_of(A) == "f1" and files.file_of(D) == "f2" and files.file_of(E) is None
    assert files.live("f1") == 3 and files.live("nope") == 0
    assert files.objects_in("f1") == (A, B, C) and files.objects_in("nope") == ()
    assert files.release(B) is None
    files.check()
    assert files.live("f1") == 2 and files.objects_in("f1") == (A, C) and B not in files
    assert files.release(E) is None  # no copy: nothing to do
    assert files.release(A) is None
    assert files.release(C) == "f1"  # the last: delete the file
    files.check()
    assert len(files) == 1 and files.live("f1") == 0 and files.file_of(C) is None
    assert files.release(C) is None
    assert files.release(D) == "f2"
    assert_files_empty(files)


def test_spill_files_refuse_double_mapping_and_change_nothing() -> None:
    files = SpillFiles()
    files.add_file("f1", [A, B])
    with pytest.raises(ValueError):
        files.add_file("f2", [C, B])  # B is in f1
    with pytest.raises(ValueError):
        files.add_file("f2", [C, C])
    with pytest.raises(ValueError):
        files.add_file("f1", [D])  # f1 is known
    files.check()
    assert files.files() == ["f1"] and C not in files and D not in files
    # A file whose objects were all deleted while it was written is not kept.
    assert files.add_file("f3", []) is False
    assert len(files) == 1 and files.live("f3") == 0
    files.release(A)
    files.release(B)
    assert_files_empty(files)


# ----------------------------------------------------------------------------- restores


def test_restore_queue_one_restore_however_many_waiters() -> None:
    queue = RestoreQueue()
    assert queue.request(A, "f", 0, 10) is True
    assert queue.request(A, "f", 0, 10) is False
    assert queue.pending == 1 and queue.is_pending(A)
    queue.check()
    groups = queue.take(100)
    assert groups == [RestoreGroup("f", (RestoreItem(A, 0, 10),))]
    assert queue.pending == 0 and queue.in_flight == 1 and queue.in_flight_bytes == 10
    assert queue.request(A, "f", 0, 10) is False  # in flight
    assert queue.take(100) == []
    queue.done(A)
    queue.check()
    with pytest.raises(KeyError):
        queue.done(A)
    assert queue.request(A, "f", 0, 10) is True  # a new restore (the last one failed, say)
    with pytest.raises(KeyError):
        queue.done(A)  # pending, not in flight
    assert queue.cancel(A) is True
    assert_queue_empty(queue)


def test_restore_queue_groups_by_file_in_offset_order() -> None:
    queue = RestoreQueue()
    queue.request(C, "f1", 200, 10)
    queue.request(A, "f1", 0, 10)
    queue.request(E, "f2", 0, 5)
    queue.request(B, "f1", 100, 10)
    queue.request(D, "f1", 300, 0)
    queue.check()
    groups = queue.take(1 << 20)
    queue.check()
    assert groups == [
        RestoreGroup(
            "f1",
            (RestoreItem(A, 0, 10), RestoreItem(B, 100, 10), RestoreItem(C, 200, 10),
             RestoreItem(D, 300, 0)),
        ),
        RestoreGroup("f2", (RestoreItem(E, 0, 5),)),
    ]  # fmt: skip
    assert (groups[0].start, groups[0].end, groups[0].nbytes) == (0, 300, 30)
    assert queue.in_flight == 5 and queue.in_flight_bytes == 35
    for o in (A, B, C, D, E):
        queue.done(o)
    assert_queue_empty(queue)


def test_restore_queue_splits_groups_at_max_bytes() -> None:
    queue = RestoreQueue()
    for i, size in enumerate([100, 100, 100, 1000, 100, 100]):
        queue.request(oid(i), "f", i * 1000, size)
    groups = queue.take(250)
    queue.check()
    assert [[item.object_id for item in g.items] for g in groups] == [
        [oid(0), oid(1)],
        [oid(2)],
        [oid(3)],  # larger than max_bytes: alone
        [oid(4), oid(5)],
    ]
    assert all(g.file_key == "f" for g in groups)
    assert all(g.nbytes <= 250 or len(g.items) == 1 for g in groups)
    # An exact fit stays in one group.
    for i in range(6):
        queue.done(oid(i))
    for i in range(4):
        queue.request(oid(i), "g", i * 100, 50)
    assert [len(g.items) for g in queue.take(100)] == [2, 2]
    for i in range(4):
        queue.done(oid(i))
    for i in range(6):
        queue.request(oid(i), "f", i * 1000, 100)
    queue.take(1 << 20)
    with pytest.raises(ValueError):
        queue.take(0)
    with pytest.raises(ValueError):
        queue.request(A, "f", -1, 1)
    for i in range(6):
        queue.done(oid(i))
    assert_queue_empty(queue)


def test_restore_queue_cancel() -> None:
    queue = RestoreQueue()
    queue.request(A, "f1", 0, 10)
    queue.request(B, "f2", 0, 10)
    queue.request(C, "f1", 10, 10)
    assert queue.cancel(A) is True  # deleted before its restore started
    assert queue.cancel(A) is False
    assert queue.cancel(D) is False
    queue.check()
    assert queue.take(100) == [
        RestoreGroup("f1", (RestoreItem(C, 10, 10),)),
        RestoreGroup("f2", (RestoreItem(B, 0, 10),)),
    ]
    assert queue.cancel(B) is False  # in flight: the driver ends the read, then done()
    assert queue.is_in_flight(B)
    queue.request(D, "f3", 0, 1)
    assert queue.cancel(D) is True
    queue.check()
    assert queue._pending == {}  # a file with nothing pending is not kept
    queue.done(B)
    queue.done(C)
    assert_queue_empty(queue)


def test_driver_walkthrough() -> None:
    """Spill, restore and delete as the driver does it, with the three classes."""
    policy = make(100, 0.5)  # limit 50
    files = SpillFiles()
    queue = RestoreQueue()
    offsets: dict[bytes, tuple[int, int]] = {}
    for o in (A, B, C):
        policy.add(o, 20)
    out = batch(policy)
    assert out is not None and out.write == (A,)
    written = policy.written(out.batch_id, ok=True)
    assert files.add_file("file-1", written)
    offsets[A] = (0, 20)
    for o in written:
        policy.remove(o)  # freed: it is spilled now
    policy.check()
    # Two gets of A: one restore.
    assert queue.request(A, files.file_of(A) or "", *offsets[A]) is True
    assert queue.request(A, files.file_of(A) or "", *offsets[A]) is False
    (group,) = queue.take(1 << 20)
    assert group.file_key == "file-1"
    policy.add(A, 20, has_copy=True)  # restored; its copy stays valid
    queue.done(A)
    assert policy.need() == 10
    # Over the limit again.  A is the most recently used: B would go first ...
    assert policy.order() == [B, C, A]
    # ... but B and C are read; A is not read again and becomes the least
    # recently used: with a valid copy, it is freed without a write.
    policy.touch(B)
    policy.touch(C)
    out = batch(policy)
    assert out is not None and out.free_only == (A,) and out.write == ()
    policy.remove(A)
    assert files.file_of(A) == "file-1"
    policy.add(D, 30)  # 70: need 20, B has no copy
    out = batch(policy)
    assert out is not None and out.write == (B,) and out.free_only == ()
    policy.written(out.batch_id, ok=False)
    # A is deleted while spilled: its file goes.
    assert queue.cancel(A) is False
    assert files.release(A) == "file-1"
    drain(policy)
    assert_files_empty(files)
    assert_queue_empty(queue)


# ----------------------------------------------------------------------------- machines

POOL = [oid(i) for i in range(8)]
pool = st.sampled_from(POOL)
sizes = st.sampled_from([0, 1, 10, 50, 100, 250, 600])
extras = st.sampled_from([0, 0, 1, 10, 30, 100, 700])


class SpillMachine(RuleBasedStateMachine):
    """SpillPolicy driven as the driver drives it, against a plain list-walking model."""

    def __init__(self) -> None:
        super().__init__()
        self.policy = make()
        # The model: sizes and states of tracked objects, LRU first; write batches
        # in flight -> their live objects in batch order.
        self.size: dict[bytes, int] = {}
        self.state: dict[bytes, SpillState] = {}
        self.recent: list[bytes] = []
        self.writing: dict[int, list[bytes]] = {}
        self.last_batch_id = 0

    @initialize(
        threshold=st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.8, 1.0]),
        min_spilling_size=st.sampled_from([0, 1, 50, 200, 5000]),
        max_fused=st.sampled_from([1, 2, 3, 1000]),
    )
    def configure(self, threshold: float, min_spilling_size: int, max_fused: int) -> None:
        self.policy = make(1000, threshold, min_spilling_size, max_fused)

    # -- the model's own answer
    def expected(self, extra: int, force: bool) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
        p = self.policy
        primary = sum(self.size.values())
        spilling = sum(self.size[o] for o, s in self.state.items() if s in (WRITING, FREEING))
        need = max(0, primary - spilling - p.limit) + extra
        if need == 0:
            return (), ()
        resident = [o for o in self.recent if self.state[o] is RESIDENT]
        small = sum(self.size[o] for o in resident) < p.min_spilling_size
        may_write = force or not self.writing or not small
        free: list[bytes] = []
        write: list[bytes] = []

        def nbytes(objects: list[bytes]) -> int:
            return sum(self.size[o] for o in objects)

        # Strictly LRU: each candidate in turn, by kind, until the need is covered;
        # stop at a RESIDENT one that no longer fits the file.
        for o in self.recent:
            if nbytes(free) + nbytes(write) >= need:
                break
            if self.state[o] is COPIED:
                free.append(o)
            elif self.state[o] is RESIDENT and may_write:
                if len(write) == p.max_fused_object_count:
                    break
                write.append(o)
        # Fusing: a file is filled up with the next RESIDENT ones.
        left = need - nbytes(free)
        for o in resident:
            if not write or len(write) == p.max_fused_object_count:
                break
            if nbytes(write) >= max(left, p.min_spilling_size):
                break
            if o not in write:
                write.append(o)
        return tuple(write), tuple(free)

    # -- rules
    @rule(o=pool, size=sizes, has_copy=st.booleans())
    def add(self, o: bytes, size: int, has_copy: bool) -> None:
        if o in self.size:
            with pytest.raises(ValueError):
                self.policy.add(o, size, has_copy)
            return
        self.policy.add(o, size, has_copy)
        self.size[o] = size
        self.state[o] = COPIED if has_copy else RESIDENT
        self.recent.append(o)

    @rule(
        new=st.lists(st.tuples(sizes, st.booleans()), min_size=1, max_size=4),
        extra=extras,
        force=st.booleans(),
    )
    def seal_then_batch(self, new: list[tuple[int, bool]], extra: int, force: bool) -> None:
        """The driver's usual step: primaries sealed (or restored), then a batch asked for."""
        free = [o for o in POOL if o not in self.size]
        for o, (size, has_copy) in zip(free, new, strict=False):
            self.add(o, size, has_copy)
        self.next_batch(extra, force)

    @rule(o=pool, times=st.sampled_from([1, 1, 1, 100]))
    def touch(self, o: bytes, times: int) -> None:
        if o not in self.size:
            with pytest.raises(KeyError):
                self.policy.touch(o)
            return
        for _ in range(times):
            self.policy.touch(o)
        self.recent.remove(o)
        self.recent.append(o)

    @rule(o=pool)
    def remove(self, o: bytes) -> None:
        if o not in self.size:
            with pytest.raises(KeyError):
                self.policy.remove(o)
            return
        self.policy.remove(o)
        del self.size[o]
        del self.state[o]
        self.recent.remove(o)
        for members in self.writing.values():
            if o in members:
                members.remove(o)

    @rule(extra=extras, force=st.booleans())
    def next_batch(self, extra: int, force: bool) -> None:
        write, free = self.expected(extra, force)
        out = batch(self.policy, extra, force)
        if not write and not free:
            assert out is None
            return
        assert out is not None
        assert (out.write, out.free_only) == (write, free)
        assert out.batch_id > self.last_batch_id
        self.last_batch_id = out.batch_id
        for o in write:
            self.state[o] = WRITING
        for o in free:
            self.state[o] = FREEING
        if write:
            self.writing[out.batch_id] = list(write)

    @precondition(lambda self: bool(self.writing))
    @rule(data=st.data(), ok=st.booleans())
    def written(self, data: st.DataObject, ok: bool) -> None:
        batch_id = data.draw(st.sampled_from(sorted(self.writing)))
        members = self.writing.pop(batch_id)
        assert self.policy.written(batch_id, ok) == tuple(members)
        for o in members:
            self.state[o] = COPIED if ok else RESIDENT
        with pytest.raises(KeyError):
            self.policy.written(batch_id, ok)

    @precondition(lambda self: FREEING in self.state.values())
    @rule(data=st.data(), free=st.booleans())
    def free_or_cancel(self, data: st.DataObject, free: bool) -> None:
        o = data.draw(st.sampled_from(sorted(o for o, s in self.state.items() if s is FREEING)))
        if free:
            self.remove(o)
            return
        self.policy.cancel(o)
        self.state[o] = COPIED
        self.recent.remove(o)
        self.recent.append(o)

    @rule(o=pool)
    def cancel_not_freeing(self, o: bytes) -> None:
        if self.state.get(o) is FREEING:
            return
        with pytest.raises(KeyError if o not in self.state else InvalidSpillTransition):
            self.policy.cancel(o)

    @rule(batch_id=st.integers(min_value=-1, max_value=40))
    def written_unknown(self, batch_id: int) -> None:
        if batch_id not in self.writing:
            with pytest.raises(KeyError):
                self.policy.written(batch_id, ok=True)

    @invariant()
    def consistent(self) -> None:
        p = self.policy
        p.check()
        assert p.order() == self.recent
        assert {o: p.state(o) for o in p.order()} == self.state
        assert all(p.has_copy(o) == (s in (COPIED, FREEING)) for o, s in self.state.items())
        assert p.primary_bytes == sum(self.size.values())
        assert p.spilling_bytes == sum(
            self.size[o] for o, s in self.state.items() if s in (WRITING, FREEING)
        )
        assert p.writes_in_flight == len(self.writing)
        assert {b: list(m) for b, m in p._writing.items()} == self.writing
        assert p.need() == max(0, p.primary_bytes - p.spilling_bytes - p.limit)

    def teardown(self) -> None:
        drain(self.policy)


SpillMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_spill_policy_state_machine = SpillMachine.TestCase


class FilesMachine(RuleBasedStateMachine):
    """SpillFiles against a dict oid -> file."""

    def __init__(self) -> None:
        super().__init__()
        self.files = SpillFiles()
        self.where: dict[bytes, str] = {}
        self.serial = 0

    @rule(oids=st.lists(pool, max_size=5), reuse=st.booleans())
    def add_file(self, oids: list[bytes], reuse: bool) -> None:
        known = sorted(set(self.where.values()))
        if reuse and known:
            with pytest.raises(ValueError):
                self.files.add_file(known[0], [])
            return
        self.serial += 1
        key = f"file-{self.serial}"
        if len(set(oids)) < len(oids) or set(oids) & set(self.where):
            with pytest.raises(ValueError):
                self.files.add_file(key, oids)
            return
        assert self.files.add_file(key, oids) is bool(oids)
        for o in oids:
            self.where[o] = key

    @rule(o=pool)
    def release(self, o: bytes) -> None:
        key = self.where.pop(o, None)
        last = key is not None and key not in self.where.values()
        assert self.files.release(o) == (key if last else None)

    @invariant()
    def consistent(self) -> None:
        f = self.files
        f.check()
        assert {o: f.file_of(o) for o in POOL if f.file_of(o)} == self.where
        assert sorted(f.files()) == sorted(set(self.where.values()))
        for key in f.files():
            assert f.live(key) == sum(1 for k in self.where.values() if k == key) > 0
            assert set(f.objects_in(key)) == {o for o, k in self.where.items() if k == key}

    def teardown(self) -> None:
        for o in POOL:
            self.files.release(o)
            self.files.check()
        assert_files_empty(self.files)


FilesMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_spill_files_state_machine = FilesMachine.TestCase


class RestoreMachine(RuleBasedStateMachine):
    """RestoreQueue against a model of pending and in-flight restores."""

    def __init__(self) -> None:
        super().__init__()
        self.queue = RestoreQueue()
        # file -> pending oids (files in the order first asked for, while any is pending).
        self.pending: dict[str, dict[bytes, RestoreItem]] = {}
        self.in_flight: dict[bytes, RestoreItem] = {}

    def _pending_file(self, o: bytes) -> str | None:
        return next((f for f, items in self.pending.items() if o in items), None)

    @rule(
        o=pool,
        file_key=st.sampled_from(["f1", "f2", "f3"]),
        offset=st.integers(0, 500),
        size=st.sampled_from([0, 10, 50, 100, 300]),
    )
    def request(self, o: bytes, file_key: str, offset: int, size: int) -> None:
        new = self._pending_file(o) is None and o not in self.in_flight
        assert self.queue.request(o, file_key, offset, size) is new
        if new:
            self.pending.setdefault(file_key, {})[o] = RestoreItem(o, offset, size)

    @rule(max_bytes=st.sampled_from([1, 10, 50, 100, 150, 1 << 20]))
    def take(self, max_bytes: int) -> None:
        groups = self.queue.take(max_bytes)
        handed = [item for g in groups for item in g.items]
        assert sorted(handed) == sorted(
            i for items in self.pending.values() for i in items.values()
        )
        # Files in the order first asked for; each file's groups together, in offset order.
        files = [g.file_key for g in groups]
        assert list(dict.fromkeys(files)) == list(self.pending)
        for key, items in self.pending.items():
            mine = [item for g in groups if g.file_key == key for item in g.items]
            assert [i.offset for i in mine] == sorted(i.offset for i in items.values())
            assert set(mine) == set(items.values())
        for g in groups:
            assert g.items and (g.nbytes <= max_bytes or len(g.items) == 1)
            assert all(self.pending[g.file_key][i.object_id] == i for i in g.items)
        # Groups are as large as they may be: the next object of the file did not fit.
        for g, after in itertools.pairwise(groups):
            if after.file_key == g.file_key:
                assert g.nbytes + after.items[0].size > max_bytes
        for item in handed:
            self.in_flight[item.object_id] = item
        self.pending.clear()

    @precondition(lambda self: bool(self.in_flight))
    @rule(data=st.data())
    def done(self, data: st.DataObject) -> None:
        o = data.draw(st.sampled_from(sorted(self.in_flight)))
        self.queue.done(o)
        del self.in_flight[o]

    @rule(o=pool)
    def done_not_in_flight(self, o: bytes) -> None:
        if o not in self.in_flight:
            with pytest.raises(KeyError):
                self.queue.done(o)

    @rule(o=pool)
    def cancel(self, o: bytes) -> None:
        key = self._pending_file(o)
        assert self.queue.cancel(o) is (key is not None)
        if key is not None:
            del self.pending[key][o]
            if not self.pending[key]:
                del self.pending[key]

    @invariant()
    def consistent(self) -> None:
        q = self.queue
        q.check()
        assert q.pending == sum(len(items) for items in self.pending.values())
        assert q.in_flight == len(self.in_flight)
        assert q.in_flight_bytes == sum(i.size for i in self.in_flight.values())
        for o in POOL:
            assert q.is_pending(o) == (self._pending_file(o) is not None)
            assert q.is_in_flight(o) == (o in self.in_flight)

    def teardown(self) -> None:
        for o in POOL:
            self.queue.cancel(o)
            if self.queue.is_in_flight(o):
                self.queue.done(o)
            self.queue.check()
        assert_queue_empty(self.queue)


RestoreMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_restore_queue_state_machine = RestoreMachine.TestCase


def test_pool_ids_are_distinct() -> None:
    assert len(set(POOL)) == len(POOL)


# --- SpillConfig's tunables ------------------------------------------------------------


def test_spill_config_tunables_have_todays_defaults_and_validators() -> None:
    from objstore.config import Config
    from objstore.errors import ConfigError

    sc = SpillConfig()
    assert (sc.unmap_wait_s, sc.make_room_timeout_s, sc.shutdown_delete_timeout_s) == (
        2.0,
        14.0,
        10.0,
    )
    assert (sc.restore_retries, sc.restore_retry_first_s, sc.restore_retry_max_s) == (4, 0.05, 2.0)
    assert (sc.write_backoff_first_s, sc.write_backoff_max_s) == (0.1, 5.0)
    assert sc.restore_group_bytes == 256 * MiB
    assert (sc.s3_part_size, sc.s3_single_put_max_bytes) == (16 * MiB, 16 * MiB)
    assert (sc.s3_connect_timeout_s, sc.s3_read_timeout_s) == (10.0, 60.0)
    env = {"OBJSTORE_SPILL_S3_PART_SIZE": "8MiB", "OBJSTORE_SPILL_UNMAP_WAIT_S": "0.5"}
    loaded = Config.load(env=env).spill
    assert (loaded.s3_part_size, loaded.unmap_wait_s) == (8 * MiB, 0.5)
    for bad, match in [
        ({"s3_part_size": MiB}, r"spill\.s3_part_size: must be between 5 MiB"),
        ({"s3_single_put_max_bytes": 6 << 30}, r"spill\.s3_single_put_max_bytes"),
        ({"unmap_wait_s": 0}, r"spill\.unmap_wait_s: must be a positive"),
        ({"restore_retries": -1}, r"spill\.restore_retries"),
        ({"restore_retries": 1.5}, r"spill\.restore_retries"),
        ({"s3_max_attempts": 0}, r"spill\.s3_max_attempts"),
        ({"write_backoff_max_s": 0.01}, r"spill\.write_backoff_max_s: less than"),
        ({"restore_retry_first_s": 3.0}, r"spill\.restore_retry_max_s: less than"),
    ]:
        with pytest.raises(ConfigError, match=match):
            Config().replace(spill=bad)
