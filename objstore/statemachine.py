"""The scaffolding every explicit state machine of objstore shares.

A machine is one table ``(state, event) -> new state``; :meth:`StateMachine.transition`
looks a pair up and raises the machine's error for any pair not in it (h2's
style: one table, no ad-hoc ``if`` chains).  The object lifecycle
(:mod:`objstore.plasma.lifecycle`) and the spill policy's per-object states
(:mod:`objstore.spill.policy`) are built on it; their tests walk every
``(state, event)`` pair against the table.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Generic, TypeVar

from objstore.errors import ObjectStoreError

__all__ = ["TransitionError", "StateMachine"]

S = TypeVar("S", bound=enum.Enum)
E = TypeVar("E", bound=enum.Enum)


def _name(value: object) -> str:
    """The enum member's name, or ``repr`` for a stray non-member value."""
    name = getattr(value, "name", None)
    return name if isinstance(name, str) else repr(value)


class TransitionError(ObjectStoreError):
    """An event arrived that the current state does not accept.

    Subclasses keep the ``(state, event, object_id)`` signature, so they stay
    picklable (``__reduce__``) and say which machine refused in ``what``.
    """

    what = "transition"

    def __init__(self, state: enum.Enum, event: enum.Enum, object_id: bytes | None = None) -> None:
        self.state = state
        self.event = event
        self.object_id = object_id
        where = f" for object {object_id.hex()}" if object_id is not None else ""
        super().__init__(
            f"invalid {self.what}{where}: event {_name(event)} in state {_name(state)}"
        )

    def __reduce__(self) -> tuple[type[TransitionError], tuple[object, ...]]:
        return (type(self), (self.state, self.event, self.object_id))


class StateMachine(Generic[S, E]):
    """A transition table, the states that accept nothing, and the error to raise."""

    __slots__ = ("table", "terminal", "error")

    def __init__(
        self,
        table: Mapping[tuple[S, E], S],
        error: type[TransitionError],
        terminal: frozenset[S] = frozenset(),
    ) -> None:
        for state, _event in table:
            if state in terminal:
                raise ValueError(f"terminal state {_name(state)} has an outgoing transition")
        self.table = dict(table)
        self.terminal = terminal
        self.error = error

    def transition(self, state: S, event: E, object_id: bytes | None = None) -> S:
        """The state ``event`` moves ``state`` to; the machine's error if none.

        ``object_id`` is only used in the error message.
        """
        try:
            return self.table[(state, event)]
        except KeyError:
            raise self.error(state, event, object_id) from None

    def accepts(self, state: S, event: E) -> bool:
        """Whether ``event`` is legal in ``state``."""
        return (state, event) in self.table
