"""Explicit lifecycle states of one object in a node's object table.

Every change to an object's state goes through :func:`transition`, which looks
the ``(state, event)`` pair up in the single table :data:`TRANSITIONS` and
raises :class:`InvalidTransition` for any pair not in it (the style of h2's
connection state machine: one table, no ad-hoc ``if`` chains)::

                 SEAL               SPILL
    CREATING ----------> SEALED ------------> SPILLED
        |                  |    <------------    |
        | ABORT            |       RESTORE       |
        v                  | DELETE              | DELETE
    ABORTED*               v                     |
                        DELETED <----------------+
                           |
                           | RELEASE_LAST
                           v
                         FREED*  <------ EVICT (SEALED secondary copies)

    * terminal: accepts no event.

- ``CREATING``: being written by its creator; invisible to readers.  Accepts
  only ``SEAL`` and ``ABORT`` -- deleting an object that is still being written
  is done by aborting it.  A creator that vanishes aborts its unsealed objects.
- ``ABORTED``: the write was abandoned; the memory is reclaimed at once.
- ``SEALED``: immutable and readable (the only state in :data:`READABLE`).
- ``SPILLED``: the bytes live in external storage and the memory is freed;
  ``RESTORE`` brings them back to ``SEALED``.
- ``DELETED``: no new readers; the memory stays until the last pin goes.
- ``EVICT``: a sealed secondary copy that nobody holds leaves the table at
  once to make room (its primary lives on another node).
- ``FREED``: the last pin went (``RELEASE_LAST``); the memory is back in the
  allocator.
"""

from __future__ import annotations

import enum

from objstore.statemachine import StateMachine, TransitionError

__all__ = [
    "READABLE",
    "TERMINAL",
    "TRANSITIONS",
    "LIFECYCLE",
    "InvalidTransition",
    "ObjectEvent",
    "ObjectState",
    "transition",
]


class ObjectState(enum.IntEnum):
    """Where an object is in its life; see the module docstring for the diagram."""

    CREATING = 0
    SEALED = 1
    SPILLED = 2
    DELETED = 3
    ABORTED = 4
    FREED = 5


class ObjectEvent(enum.IntEnum):
    """Something that happens to an object and may change its state."""

    SEAL = 0
    ABORT = 1
    SPILL = 2
    RESTORE = 3
    DELETE = 4
    RELEASE_LAST = 5
    EVICT = 6


class InvalidTransition(TransitionError):
    """An event arrived that the object's current state does not accept."""

    what = "transition"


_S = ObjectState
_E = ObjectEvent

#: The one table of legal transitions: ``(state, event) -> new state``.
TRANSITIONS: dict[tuple[ObjectState, ObjectEvent], ObjectState] = {
    (_S.CREATING, _E.SEAL): _S.SEALED,
    (_S.CREATING, _E.ABORT): _S.ABORTED,
    (_S.SEALED, _E.SPILL): _S.SPILLED,
    (_S.SEALED, _E.DELETE): _S.DELETED,
    (_S.SEALED, _E.EVICT): _S.FREED,
    (_S.SPILLED, _E.RESTORE): _S.SEALED,
    (_S.SPILLED, _E.DELETE): _S.DELETED,
    (_S.DELETED, _E.RELEASE_LAST): _S.FREED,
}

#: States that accept no event at all.
TERMINAL: frozenset[ObjectState] = frozenset({_S.ABORTED, _S.FREED})

#: States in which a client may read the object's bytes.
READABLE: frozenset[ObjectState] = frozenset({_S.SEALED})

del _S, _E

#: The lifecycle as a machine (the table above, its terminal states, its error).
LIFECYCLE: StateMachine[ObjectState, ObjectEvent] = StateMachine(
    TRANSITIONS, InvalidTransition, TERMINAL
)

#: ``transition(state, event, object_id=None)``: the new state, or :class:`InvalidTransition`.
transition = LIFECYCLE.transition
