"""Replica counts in the directory, pure: objstore.directory.replicas.Replicas on
its own, and DirectoryState choosing, asking and replacing the nodes that keep
copies (a fake clock, no sockets)."""

from __future__ import annotations

from objstore.directory.replicas import Candidate, Replicas
from objstore.directory.state import DirectoryState
from objstore.ids import NODE_ID_SIZE, OBJECT_ID_SIZE
from objstore.locations import LocationState, Usage

SESSION = b"s" * 16
MiB = 1 << 20


def N(i: int) -> bytes:
    return bytes([i]) * NODE_ID_SIZE


def O(i: int) -> bytes:
    return bytes([i]) * OBJECT_ID_SIZE


def state_with(*free_mib: int, timeout: float = 30.0) -> DirectoryState:
    """A directory with nodes N(1).. whose free memory is ``free_mib`` MiB each."""
    st = DirectoryState(node_timeout=10.0, replica_timeout=timeout)
    for i, free in enumerate(free_mib, start=1):
        st.register(N(i), SESSION, 0.0, 0.0, usage=Usage(memory_total=free * MiB))
    return st


def put(st: DirectoryState, node: int, oid: bytes, replicas: int, now: float = 0.0) -> None:
    st.report(N(node), SESSION, now, added=[(oid, 100, True)], replicas=[(oid, replicas)])


def copy_at(st: DirectoryState, node: int, oid: bytes, now: float = 0.0) -> None:
    st.report(N(node), SESSION, now, added=[(oid, 100, False)])


def test_candidates_with_a_copy_first_then_most_free_memory() -> None:
    r = Replicas(timeout=5.0)
    r.want(O(1), 3, N(1))
    cands = [
        Candidate(N(2), 10, False),
        Candidate(N(3), 50, False),
        Candidate(N(4), 1, True),
        Candidate(N(1), 99, True),  # the primary: held already
    ]
    assert r.plan(O(1), cands, now=0.0) == [N(4), N(3)]
    assert r.asked(O(1)) == 2
    assert r.plan(O(1), cands, now=0.0) == []  # enough asked
    assert r.reported(O(1), N(3)) and not r.reported(O(1), N(2))  # N(2) was not asked
    assert r.held(O(1)) == {N(1), N(3)}
    r.check()


def test_an_ask_past_its_deadline_goes_to_another_node_first() -> None:
    r = Replicas(timeout=5.0)
    r.want(O(1), 2, N(1))
    cands = [Candidate(N(2), 50, False), Candidate(N(3), 10, False)]
    assert r.plan(O(1), cands, now=0.0) == [N(2)]
    assert r.expire(4.9) == []
    assert r.expire(5.0) == [O(1)]
    assert r.plan(O(1), cands, now=5.0) == [N(3)]  # N(2) was tried
    r.expire(10.0)
    assert r.plan(O(1), cands, now=10.0) == [N(2)]  # both tried: the most free again
    assert r.expired_total == 2
    r.check()


def test_too_few_nodes_leaves_the_object_short() -> None:
    r = Replicas()
    r.want(O(1), 3, N(1))
    assert r.plan(O(1), [Candidate(N(2), 1, False)], now=0.0) == [N(2)]
    assert O(1) in r.short
    assert r.plan(O(1), [Candidate(N(2), 1, False), Candidate(N(3), 1, False)], 0.0) == [N(3)]
    assert O(1) not in r.short
    r.forget(O(1))
    assert O(1) not in r and not r.short


def test_the_directory_asks_the_freest_node_and_counts_its_copy() -> None:
    st = state_with(64, 16, 32)
    put(st, 1, O(1), 2)
    assert st.take_replications(N(3), 100) == [O(1)]  # 32 MiB free beats 16
    assert st.take_replications(N(2), 100) == []
    row = st.row(O(1))
    assert (row.replicas, row.replica_nodes, row.replicas_asked) == (2, (N(1),), 1)
    copy_at(st, 3, O(1))
    row = st.row(O(1))
    assert set(row.replica_nodes) == {N(1), N(3)} and row.replicas_asked == 0
    st.replicas.check()


def test_a_holder_that_dies_is_replaced_and_the_object_stays_present() -> None:
    st = state_with(64, 16, 32)
    put(st, 1, O(1), 2)
    st.take_replications(N(3), 100)
    copy_at(st, 3, O(1))
    st.declare_dead(N(1))  # the putting node
    row = st.row(O(1))
    assert row.state == LocationState.PRESENT and row.replica_nodes == (N(3),)
    assert st.take_replications(N(2), 100) == [O(1)]
    copy_at(st, 2, O(1))
    assert set(st.row(O(1)).replica_nodes) == {N(2), N(3)}
    st.replicas.check()


def test_a_node_asked_that_dies_is_replaced() -> None:
    st = state_with(64, 16, 32)
    put(st, 1, O(1), 2)
    assert st.take_replications(N(3), 100) == [O(1)]
    st.declare_dead(N(3))
    assert st.take_replications(N(2), 100) == [O(1)]


def test_a_slow_node_is_replaced_after_the_replica_timeout() -> None:
    st = state_with(64, 16, 32, timeout=5.0)
    put(st, 1, O(1), 2, now=1.0)
    assert st.take_replications(N(3), 100) == [O(1)]
    assert st.check_replicas(5.0) == 0
    assert st.check_replicas(6.0) == 1
    assert st.take_replications(N(2), 100) == [O(1)]


def test_a_short_object_gets_its_copy_when_a_node_joins() -> None:
    st = state_with(64)
    put(st, 1, O(1), 2)
    row = st.row(O(1))
    assert (row.replicas, len(row.replica_nodes), row.replicas_asked) == (2, 1, 0)
    st.register(N(2), SESSION, 1.0, 1.0, usage=Usage(memory_total=MiB))
    assert st.take_replications(N(2), 100) == [O(1)]


def test_delete_forgets_the_replicas_and_frees_the_copies() -> None:
    st = state_with(64, 32)
    put(st, 1, O(1), 2)
    st.take_replications(N(2), 100)
    copy_at(st, 2, O(1))
    st.report(N(1), SESSION, 1.0, deleted=[O(1)])
    assert O(1) not in st.replicas
    assert st.take_frees(N(2), 100) == [O(1)]
    assert st.row(O(1)).replicas == 0


def test_only_the_primary_sets_the_count() -> None:
    st = state_with(64, 32, 16)
    put(st, 1, O(1), 1)  # one copy: nothing to do
    assert O(1) not in st.replicas
    copy_at(st, 2, O(1))
    st.report(N(2), SESSION, 0.0, replicas=[(O(1), 3)])  # not its primary: ignored
    assert O(1) not in st.replicas
    st.report(N(1), SESSION, 0.0, replicas=[(O(9), 2)])  # unknown object: ignored
    assert O(9) not in st.replicas


def test_replica_columns_travel_in_location_tables() -> None:
    from objstore.directory.codec import rows_to_table, table_to_rows
    from objstore.locations import ObjectRow

    rows = [
        ObjectRow(O(1), 2, 10, N(1), (N(1), N(2)), replicas=3, replica_nodes=(N(1), N(2))),
        ObjectRow(O(2), 2, 10, N(2), (N(2),)),
        ObjectRow(O(3), 2, 10, N(3), (N(3),), replicas=2, replica_nodes=(N(3),), replicas_asked=1),
    ]
    table = rows_to_table(rows)
    assert list(table.replicated_rows) == [0, 2]
    assert table_to_rows(table) == rows
