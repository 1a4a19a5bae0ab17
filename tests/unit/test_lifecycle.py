"""Tests for the object lifecycle state machine (objstore.plasma.lifecycle)."""

from __future__ import annotations

import pickle
from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from objstore.errors import ObjectStoreError
from objstore.plasma.lifecycle import (
    READABLE,
    TERMINAL,
    TRANSITIONS,
    InvalidTransition,
    ObjectEvent,
    ObjectState,
    transition,
)

states = st.sampled_from(list(ObjectState))
events = st.sampled_from(list(ObjectEvent))
object_ids = st.none() | st.binary(min_size=1, max_size=28)


def _reachable(start: ObjectState) -> set[ObjectState]:
    """Every state reachable from ``start`` over TRANSITIONS (BFS), ``start`` included."""
    seen = {start}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        for (src, _event), dst in TRANSITIONS.items():
            if src is state and dst not in seen:
                seen.add(dst)
                queue.append(dst)
    return seen


@given(states, events, object_ids)
def test_transition_agrees_with_table(
    state: ObjectState, event: ObjectEvent, object_id: bytes | None
) -> None:
    if (state, event) in TRANSITIONS:
        assert transition(state, event, object_id) is TRANSITIONS[(state, event)]
    else:
        with pytest.raises(InvalidTransition) as info:
            transition(state, event, object_id)
        message = str(info.value)
        assert state.name in message
        assert event.name in message
        if object_id is not None:
            assert object_id.hex() in message
        assert info.value.state is state
        assert info.value.event is event
        assert info.value.object_id == object_id


@given(st.sampled_from(sorted(TERMINAL)), events)
def test_terminal_states_accept_nothing(state: ObjectState, event: ObjectEvent) -> None:
    with pytest.raises(InvalidTransition):
        transition(state, event)


def test_exact_table() -> None:
    """The semantics of the brief, spelled out once."""
    S, E = ObjectState, ObjectEvent
    assert TRANSITIONS == {
        (S.CREATING, E.SEAL): S.SEALED,
        (S.CREATING, E.ABORT): S.ABORTED,
        (S.SEALED, E.SPILL): S.SPILLED,
        (S.SEALED, E.DELETE): S.DELETED,
        (S.SEALED, E.EVICT): S.FREED,
        (S.SPILLED, E.RESTORE): S.SEALED,
        (S.SPILLED, E.DELETE): S.DELETED,
        (S.DELETED, E.RELEASE_LAST): S.FREED,
    }
    assert TERMINAL == {S.ABORTED, S.FREED}
    assert READABLE == {S.SEALED}
    assert {event for (state, event) in TRANSITIONS if state is S.CREATING} == {E.SEAL, E.ABORT}


def test_every_state_reachable_from_creating() -> None:
    assert _reachable(ObjectState.CREATING) == set(ObjectState)


@pytest.mark.parametrize("state", sorted(set(ObjectState) - TERMINAL))
def test_terminal_reachable_from_every_non_terminal_state(state: ObjectState) -> None:
    assert _reachable(state) & TERMINAL


def test_terminal_states_have_no_outgoing_edges() -> None:
    assert not [pair for pair in TRANSITIONS if pair[0] in TERMINAL]


def test_invalid_transition_is_objectstore_error_and_picklable() -> None:
    with pytest.raises(ObjectStoreError) as info:
        transition(ObjectState.CREATING, ObjectEvent.DELETE, b"\x01\x02")
    assert "CREATING" in str(info.value) and "DELETE" in str(info.value)
    assert "0102" in str(info.value)
    clone = pickle.loads(pickle.dumps(info.value))
    assert isinstance(clone, InvalidTransition)
    assert str(clone) == str(info.value)


@given(st.lists(events, max_size=50))
def test_random_walk_from_creating(walk: list[ObjectEvent]) -> None:
    state = ObjectState.CREATING
    for event in walk:
        expected = TRANSITIONS.get((state, event))
        if expected is None:
            with pytest.raises(InvalidTransition):
                transition(state, event)
            # A rejected event leaves the state unchanged; the walk goes on.
        else:
            new = transition(state, event)
            assert new is expected
            assert state not in TERMINAL
            state = new
    assert state in _reachable(ObjectState.CREATING)
