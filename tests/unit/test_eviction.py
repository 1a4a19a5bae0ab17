"""Tests for the LRU eviction policy (objstore.plasma.eviction)."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from objstore.plasma.eviction import EvictionPolicy


def _drain(policy: EvictionPolicy) -> None:
    """Evict everything and check nothing is left behind (no leaks)."""
    policy.choose_victims(policy.evictable_bytes + 1)
    assert len(policy) == 0
    assert policy.evictable_bytes == 0
    assert not policy._lru  # internal map is empty


def test_empty_policy() -> None:
    policy = EvictionPolicy()
    assert len(policy) == 0
    assert policy.evictable_bytes == 0
    assert policy.choose_victims(0) == []
    assert policy.choose_victims(100) == []
    assert not policy._lru


def test_lru_order_and_touch() -> None:
    policy = EvictionPolicy()
    for i, oid in enumerate([b"a", b"b", b"c", b"d"]):
        policy.add(oid, 10 + i)
    policy.touch(b"a")  # a is now most recently used
    assert policy.choose_victims(1) == [b"b"]
    assert policy.choose_victims(12) == [b"c"]
    assert policy.choose_victims(14) == [b"d", b"a"]
    assert not policy._lru


def test_sizes_sum_until_enough() -> None:
    policy = EvictionPolicy()
    policy.add(b"a", 5)
    policy.add(b"b", 5)
    policy.add(b"c", 5)
    assert policy.evictable_bytes == 15
    assert policy.choose_victims(6) == [b"a", b"b"]
    assert policy.evictable_bytes == 5
    assert b"c" in policy and b"a" not in policy
    _drain(policy)


def test_exact_fit_stops() -> None:
    policy = EvictionPolicy()
    policy.add(b"a", 4)
    policy.add(b"b", 4)
    assert policy.choose_victims(4) == [b"a"]
    _drain(policy)


def test_not_enough_returns_everything() -> None:
    policy = EvictionPolicy()
    policy.add(b"a", 1)
    policy.add(b"b", 2)
    assert policy.choose_victims(100) == [b"a", b"b"]
    assert len(policy) == 0 and policy.evictable_bytes == 0
    assert not policy._lru


def test_choose_zero_and_negative() -> None:
    policy = EvictionPolicy()
    policy.add(b"a", 1)
    assert policy.choose_victims(0) == []
    assert b"a" in policy
    with pytest.raises(ValueError):
        policy.choose_victims(-1)
    assert b"a" in policy
    _drain(policy)


def test_zero_sized_objects_are_taken_on_the_way() -> None:
    policy = EvictionPolicy()
    policy.add(b"z", 0)
    policy.add(b"a", 3)
    assert policy.choose_victims(1) == [b"z", b"a"]
    assert not policy._lru


def test_add_rejects_duplicates_and_negative_sizes() -> None:
    policy = EvictionPolicy()
    policy.add(b"a", 3)
    with pytest.raises(ValueError):
        policy.add(b"a", 3)
    with pytest.raises(ValueError):
        policy.add(b"b", -1)
    assert len(policy) == 1 and policy.evictable_bytes == 3
    _drain(policy)


def test_remove_and_touch_absent_ids() -> None:
    policy = EvictionPolicy()
    assert policy.remove(b"nope") is False
    policy.touch(b"nope")  # no-op
    assert len(policy) == 0
    policy.add(b"a", 7)
    assert policy.remove(b"a") is True
    assert policy.remove(b"a") is False
    policy.touch(b"a")
    assert b"a" not in policy
    assert policy.evictable_bytes == 0
    assert not policy._lru


ids = st.binary(min_size=1, max_size=3)
sizes = st.integers(min_value=0, max_value=1000)


class EvictionMachine(RuleBasedStateMachine):
    """EvictionPolicy against a reference model: a list of (id, size), LRU first."""

    def __init__(self) -> None:
        super().__init__()
        self.policy = EvictionPolicy()
        self.model: list[tuple[bytes, int]] = []

    def _index(self, object_id: bytes) -> int | None:
        for i, (oid, _size) in enumerate(self.model):
            if oid == object_id:
                return i
        return None

    @rule(object_id=ids, size=sizes)
    def add(self, object_id: bytes, size: int) -> None:
        if self._index(object_id) is not None:
            with pytest.raises(ValueError):
                self.policy.add(object_id, size)
        else:
            self.policy.add(object_id, size)
            self.model.append((object_id, size))

    @rule(object_id=ids, size=st.integers(max_value=-1))
    def add_negative(self, object_id: bytes, size: int) -> None:
        with pytest.raises(ValueError):
            self.policy.add(object_id, size)

    @rule(object_id=ids)
    def remove(self, object_id: bytes) -> None:
        i = self._index(object_id)
        assert self.policy.remove(object_id) is (i is not None)
        if i is not None:
            del self.model[i]

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def remove_present(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(min_value=0, max_value=len(self.model) - 1))
        object_id, _size = self.model.pop(i)
        assert self.policy.remove(object_id) is True

    @rule(object_id=ids)
    def touch(self, object_id: bytes) -> None:
        self.policy.touch(object_id)
        i = self._index(object_id)
        if i is not None:
            self.model.append(self.model.pop(i))

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def touch_present(self, data: st.DataObject) -> None:
        object_id, _size = data.draw(st.sampled_from(self.model))
        self.touch(object_id)

    @rule(needed=st.integers(min_value=0, max_value=3000))
    def choose_victims(self, needed: int) -> None:
        expected: list[bytes] = []
        freed = 0
        while freed < needed and self.model:
            oid, size = self.model.pop(0)
            expected.append(oid)
            freed += size
        victims = self.policy.choose_victims(needed)
        assert victims == expected
        for oid in victims:
            assert oid not in self.policy

    @rule(needed=st.integers(max_value=-1))
    def choose_negative(self, needed: int) -> None:
        with pytest.raises(ValueError):
            self.policy.choose_victims(needed)

    @invariant()
    def matches_model(self) -> None:
        assert self.policy.evictable_bytes == sum(size for _oid, size in self.model)
        assert len(self.policy) == len(self.model)
        assert list(self.policy._lru.items()) == self.model
        for oid, _size in self.model:
            assert oid in self.policy

    def teardown(self) -> None:
        # Remove half by id, evict the rest: nothing may be left behind.
        for oid, _size in self.model[::2]:
            assert self.policy.remove(oid)
        rest = [oid for oid, _size in self.model[1::2]]
        assert self.policy.choose_victims(self.policy.evictable_bytes + 1) == rest
        assert len(self.policy) == 0
        assert self.policy.evictable_bytes == 0
        assert not self.policy._lru


TestEvictionStateful = EvictionMachine.TestCase
