"""Objects their owner can recreate, in the directory and its reports, pure: the
flag a node reports after the copy's add, the rows that carry it (so that gets
on other nodes wait for a recreation of a LOST object), and the table codec."""

from __future__ import annotations

from objstore.directory.book import ReportBook
from objstore.directory.codec import rows_to_table, table_to_rows
from objstore.directory.state import DirectoryState
from objstore.ids import NODE_ID_SIZE, OBJECT_ID_SIZE
from objstore.locations import LocationState, ObjectRow

SESSION = b"s" * 16


def N(i: int) -> bytes:
    return bytes([i]) * NODE_ID_SIZE


def O(i: int) -> bytes:
    return bytes([i]) * OBJECT_ID_SIZE


def cluster(n: int) -> DirectoryState:
    st = DirectoryState(node_timeout=10.0)
    for i in range(1, n + 1):
        st.register(N(i), SESSION, 0.0, 0.0)
    return st


def test_a_lost_object_its_owner_can_recreate_says_so_in_its_row() -> None:
    st = cluster(2)
    st.report(N(1), SESSION, 0.0, added=[(O(1), 100, True), (O(2), 100, True)])
    st.report(N(1), SESSION, 0.0, recreatable=[O(1)])
    assert st.row(O(1)).recreatable and not st.row(O(2)).recreatable
    st.declare_dead(N(1))
    lost = st.row(O(1))
    assert lost.state == LocationState.LOST and lost.recreatable
    assert st.row(O(2)).state == LocationState.LOST and not st.row(O(2)).recreatable
    # The recreated put, from the owner's new node: PRESENT again, still recreatable.
    st.register(N(3), SESSION, 0.0, 0.0)
    st.report(N(3), SESSION, 0.0, added=[(O(1), 100, True)], recreatable=[O(1)])
    back = st.row(O(1))
    assert back.state == LocationState.PRESENT and back.nodes == (N(3),) and back.recreatable


def test_only_a_node_that_put_or_holds_it_marks_it_and_a_delete_forgets() -> None:
    st = cluster(3)
    st.report(N(1), SESSION, 0.0, added=[(O(1), 100, True)])
    st.report(N(2), SESSION, 0.0, recreatable=[O(1), O(9)])  # neither: ignored
    assert not st.row(O(1)).recreatable
    st.report(N(1), SESSION, 0.0, recreatable=[O(1)])
    assert st.row(O(1)).recreatable
    st.delete([O(1)])
    assert O(1) not in st.recreatable
    assert not st.row(O(1)).recreatable


def test_the_mark_is_never_sent_before_the_copy_it_is_about() -> None:
    """In the same report as the add at the earliest (the directory applies the
    adds of a report first), never in one before it."""
    book = ReportBook()
    book.added(O(1), 100, True)
    book.added(O(2), 100, True)
    book.recreatable[O(2)] = None
    first = book.take(1)
    assert [a[0] for a in first.added] == [O(1)] and first.recreatable == []
    second = book.take(10)
    assert [a[0] for a in second.added] == [O(2)] and second.recreatable == [O(2)]
    assert not book
    book.requeue(second)  # a failed report puts both back
    again = book.take(10)
    assert [a[0] for a in again.added] == [O(2)] and again.recreatable == [O(2)]


def test_the_flag_travels_in_location_tables() -> None:
    rows = [
        ObjectRow(O(1), 2, 10, N(1), (N(1),), recreatable=True),
        ObjectRow(O(2), 2, 10, N(2), (N(2),)),
        ObjectRow(O(3), 3, 10, N(3), (), recreatable=True),
    ]
    table = rows_to_table(rows)
    assert list(table.recreatable_rows) == [0, 2]
    assert table_to_rows(table) == rows
