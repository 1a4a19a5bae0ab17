"""The relay tree (objstore/directory/relays.py): chains, fan-out, no cycles."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from objstore.directory.relays import RelayTree
from objstore.directory.state import DirectoryState
from objstore.locations import Usage

OID = b"o" * 20
NODES = [bytes([i]) * 16 for i in range(8)]


def test_a_broadcast_forms_a_chain() -> None:
    tree = RelayTree(fanout=2)
    src, *receivers = NODES[:8]
    senders = [tree.attach(OID, r, [src]) for r in receivers]
    # Each new receiver goes to the sender with the fewest receivers: the newest.
    assert senders == [src, *receivers[:-1]]
    assert all(tree.load(OID, n) <= 1 for n in NODES)
    tree.check({OID: {src}})


def test_fan_out_is_a_bound_and_a_full_tree_answers_none() -> None:
    tree = RelayTree(fanout=1)
    a, b, c = NODES[:3]
    assert tree.attach(OID, b, [a]) == a
    assert tree.attach(OID, c, [a]) == b
    # Everyone serves one receiver already: the caller pulls on its own.
    assert tree.attach(OID, NODES[3], [a], exclude=[c]) is None
    assert NODES[3] not in tree.receivers(OID)


def test_a_whole_copy_comes_before_a_partial_one_of_equal_load() -> None:
    tree = RelayTree(fanout=2)
    a, b, c, d = NODES[:4]
    assert tree.attach(OID, c, [a, b]) in (a, b)
    first = tree.sender_of(OID, c)
    other = b if first == a else a
    assert tree.attach(OID, d, [a, b]) == other


def test_a_receiver_whose_sender_failed_is_never_attached_below_itself() -> None:
    tree = RelayTree(fanout=2)
    a, b, c, d = NODES[:4]
    tree.attach(OID, b, [a])
    tree.attach(OID, c, [a])  # a: b, c
    tree.attach(OID, d, [a])  # below b or c
    parent = tree.sender_of(OID, d)
    assert parent in (b, c)
    # d's sender failed: d goes elsewhere, never to itself.
    again = tree.attach(OID, parent, [a], exclude=[a])
    assert again is not None and again not in tree.below(OID, parent)
    tree.check()


def test_completion_keeps_the_receivers_below() -> None:
    tree = RelayTree(fanout=2)
    a, b, c = NODES[:3]
    tree.attach(OID, b, [a])
    tree.attach(OID, c, [a])
    tree.completed(OID, b)
    assert tree.receivers(OID) == {c: tree.sender_of(OID, c)}
    tree.object_gone(OID)
    assert OID not in tree


class RelayMachine(RuleBasedStateMachine):
    """Random attaches, re-attaches, completions, detaches and deaths: the tree
    never holds a cycle, never a sender above the fan-out, and every chain ends
    at a node that held the object whole or left the tree (its receivers find
    out from their failing pulls)."""

    def __init__(self) -> None:
        super().__init__()
        self.tree = RelayTree(fanout=2)
        self.holders = {NODES[0]}
        # Nodes that were holders or receivers and left: a chain may end there
        # until its receivers attach again.
        self.gone: set[bytes] = set()

    @rule(node=st.sampled_from(NODES), excl=st.sets(st.sampled_from(NODES), max_size=3))
    def attach(self, node: bytes, excl: set[bytes]) -> None:
        if node in self.holders:
            return
        sender = self.tree.attach(OID, node, sorted(self.holders), excl)
        if sender is not None:
            assert sender != node and sender not in excl
            assert sender in self.holders or sender in self.tree.receivers(OID)
            assert node not in self.tree.below(OID, sender) - {node} or sender == node
        else:
            # Out of the tree: it pulls on its own, and the receivers already
            # attached to it stay (its copy still serves them).
            assert node not in self.tree.receivers(OID)
            self.gone.add(node)

    @precondition(lambda self: bool(self.tree.receivers(OID)))
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        node = data.draw(st.sampled_from(sorted(self.tree.receivers(OID))))
        self.tree.completed(OID, node)
        self.holders.add(node)

    @precondition(lambda self: bool(self.tree.receivers(OID)))
    @rule(data=st.data())
    def detach(self, data: st.DataObject) -> None:
        node = data.draw(st.sampled_from(sorted(self.tree.receivers(OID))))
        self.tree.detach(OID, node)
        self.gone.add(node)

    @rule(node=st.sampled_from(NODES[1:]))
    def die(self, node: bytes) -> None:
        self.tree.node_dead(node)
        self.holders.discard(node)
        self.gone.add(node)

    @invariant()
    def sound(self) -> None:
        self.tree.check({OID: self.holders | self.gone})


TestRelayMachine = RelayMachine.TestCase


def _s(node: bytes) -> bytes:
    """The node's session (16 bytes)."""
    return b"s" * 15 + node[:1]


def _state_with(nodes: list[bytes]) -> DirectoryState:
    state = DirectoryState(relay_fanout=2)
    for n in nodes:
        state.register(n, _s(n), 0.0, 0.0, address=f"10.0.0.{n[0]}:1", usage=Usage(0, 0))
    return state


def test_the_directory_attaches_receivers_and_forgets_them_on_completion_and_death() -> None:
    a, b, c, d = NODES[:4]
    state = _state_with([a, b, c, d])
    state.report(a, _s(a), 0.0, added=[(OID, 100 << 20, True)])
    assert state.relay(b, _s(b), OID, now=0.0) == a
    assert state.relay(c, _s(c), OID, now=0.0) == b  # a chain
    assert state.relay(d, _s(d), OID, now=0.0) == c
    # b dies: nobody is attached to it any more; c resumes from another sender.
    state.declare_dead(b)
    assert b not in state.relays.receivers(OID)
    again = state.relay(c, _s(c), OID, exclude=[b], now=0.0)
    assert again == a  # d is below c: never c's sender
    # c holds it whole now: it leaves the tree as a receiver.
    state.report(c, _s(c), 0.0, added=[(OID, 100 << 20, False)])
    assert c not in state.relays.receivers(OID)
    # A node that holds the object gets no sender; a delete forgets the tree.
    assert state.relay(c, _s(c), OID, now=0.0) is None
    state.delete([OID])
    assert OID not in state.relays


def test_the_directory_gives_no_sender_for_an_object_it_does_not_hold() -> None:
    a, b = NODES[:2]
    state = _state_with([a, b])
    assert state.relay(b, _s(b), OID, now=0.0) is None
    with pytest.raises(Exception, match="not registered"):
        state.relay(b"z" * 16, b"x" * 16, OID, now=0.0)
