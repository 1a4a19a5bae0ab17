"""The directory's borrower sets (objstore.directory.borrowers.Borrowers), pure.

Examples of each operation, then a hypothesis state machine that runs random
operations against a naive model (a set of (node, object) pairs) and checks
every returned transition and the invariants after each step.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from objstore.directory.borrowers import Borrowers
from objstore.ids import NODE_ID_SIZE, OBJECT_ID_SIZE


def N(i: int) -> bytes:
    return bytes([i]) * NODE_ID_SIZE


def O(i: int) -> bytes:
    return bytes([i]) * OBJECT_ID_SIZE


def empty(b: Borrowers) -> bool:
    b.check()
    return not b.by_object and not b.by_node and len(b) == 0


def test_first_borrower_and_last_make_the_transitions() -> None:
    b = Borrowers()
    assert b.borrow(N(1), [O(1), O(2)]) == [O(1), O(2)]
    assert b.borrow(N(2), [O(1)]) == []  # borrowed already
    assert b.borrow(N(1), [O(1)]) == []  # the same borrow again
    assert b.borrowers(O(1)) == {N(1), N(2)} and b.borrowed_by(N(1)) == {O(1), O(2)}
    assert O(1) in b and len(b) == 2
    assert b.unborrow(N(1), [O(1)]) == []  # N(2) still borrows it
    assert b.unborrow(N(2), [O(1)]) == [O(1)]
    assert b.unborrow(N(2), [O(1)]) == []  # not borrowed any more
    assert b.unborrow(N(3), [O(2)]) == []  # never borrowed by N(3)
    assert b.unborrow(N(1), [O(2), O(2)]) == [O(2)]
    assert b.borrowers(O(1)) == frozenset()
    assert empty(b)


def test_a_borrow_of_duplicates_counts_once() -> None:
    b = Borrowers()
    assert b.borrow(N(1), [O(1), O(1)]) == [O(1)]
    assert b.unborrow(N(1), [O(1)]) == [O(1)]
    assert b.borrow(N(1), []) == []
    assert empty(b)


def test_drop_node_ends_its_borrows() -> None:
    b = Borrowers()
    b.borrow(N(1), [O(1), O(2)])
    b.borrow(N(2), [O(2)])
    assert sorted(b.drop_node(N(1))) == [O(1)]
    assert b.borrowers(O(2)) == {N(2)}
    assert b.drop_node(N(1)) == []
    assert b.drop_node(N(2)) == [O(2)]
    assert empty(b)


def test_replace_is_the_difference() -> None:
    b = Borrowers()
    b.borrow(N(1), [O(1), O(2)])
    b.borrow(N(2), [O(2), O(3)])
    assert b.replace(N(1), [O(2), O(4), O(4)]) == ([O(4)], [O(1)])
    assert b.borrowed_by(N(1)) == {O(2), O(4)}
    assert b.replace(N(2), []) == ([], [O(3)])
    gained, lost = b.replace(N(1), [])
    assert gained == [] and sorted(lost) == [O(2), O(4)]  # a set's order
    assert empty(b)


def test_forget_tells_nothing_and_leaves_nothing() -> None:
    b = Borrowers()
    b.borrow(N(1), [O(1), O(2)])
    b.borrow(N(2), [O(1)])
    b.forget(O(1))
    b.forget(O(9))
    assert b.borrowed_by(N(2)) == frozenset() and b.borrowed_by(N(1)) == {O(2)}
    assert b.unborrow(N(2), [O(1)]) == []
    b.forget(O(2))
    assert empty(b)


NODES = [1, 2, 3]
OBJECTS = [1, 2, 3, 4]
_nodes = st.sampled_from(NODES)
_oids = st.lists(st.sampled_from(OBJECTS), max_size=4)


class BorrowersMachine(RuleBasedStateMachine):
    """Random operations against a set of (node, object) pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.b = Borrowers()
        self.pairs: set[tuple[int, int]] = set()

    def borrowed(self) -> set[int]:
        return {o for _, o in self.pairs}

    @rule(n=_nodes, oids=_oids)
    def borrow(self, n: int, oids: list[int]) -> None:
        before = self.borrowed()
        got = self.b.borrow(N(n), [O(o) for o in oids])
        self.pairs |= {(n, o) for o in oids}
        expect = [O(o) for o in dict.fromkeys(oids) if o not in before]
        assert got == expect

    @rule(n=_nodes, oids=_oids)
    def unborrow(self, n: int, oids: list[int]) -> None:
        before = self.borrowed()
        got = self.b.unborrow(N(n), [O(o) for o in oids])
        self.pairs -= {(n, o) for o in oids}
        after = self.borrowed()
        assert got == [O(o) for o in dict.fromkeys(oids) if o in before and o not in after]

    @rule(n=_nodes)
    def drop_node(self, n: int) -> None:
        before = self.borrowed()
        got = self.b.drop_node(N(n))
        self.pairs = {(m, o) for m, o in self.pairs if m != n}
        assert len(got) == len(set(got))
        assert set(got) == {O(o) for o in before - self.borrowed()}

    @rule(n=_nodes, oids=_oids)
    def replace(self, n: int, oids: list[int]) -> None:
        before = self.borrowed()
        gained, lost = self.b.replace(N(n), [O(o) for o in oids])
        self.pairs = {(m, o) for m, o in self.pairs if m != n} | {(n, o) for o in oids}
        after = self.borrowed()
        assert gained == [O(o) for o in dict.fromkeys(oids) if o not in before]
        assert len(lost) == len(set(lost))
        assert set(lost) == {O(o) for o in before - after}

    @rule(o=st.sampled_from(OBJECTS))
    def forget(self, o: int) -> None:
        self.b.forget(O(o))
        self.pairs = {(m, p) for m, p in self.pairs if p != o}

    @invariant()
    def agrees_with_the_model(self) -> None:
        self.b.check()
        for o in OBJECTS:
            assert self.b.borrowers(O(o)) == {N(m) for m, p in self.pairs if p == o}
            assert (O(o) in self.b) == (o in self.borrowed())
        for n in NODES:
            assert self.b.borrowed_by(N(n)) == {O(p) for m, p in self.pairs if m == n}
        assert len(self.b) == len(self.borrowed())

    def teardown(self) -> None:
        # Every node gone: nothing is left in either map.
        for n in NODES:
            self.b.drop_node(N(n))
        assert empty(self.b)


BorrowersMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=50, deadline=None
)
TestBorrowersMachine = BorrowersMachine.TestCase
