"""The node side's directory books (objstore.directory.book) and the table codec.

:class:`ReportBook` and :class:`WatchBook` are pure; the properties check them
against the simplest possible model of the directory on the other side.
:mod:`objstore.directory.codec` turns ObjectRow lists into ``LocationTable``
columns and back; malformed tables must raise InvalidRequestError.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from objstore.directory.book import (
    ADDED,
    DELETED,
    REMOVED,
    ReportBatch,
    ReportBook,
    WatchBook,
)
from objstore.directory.codec import join_ids, pb, rows_to_table, table_to_rows
from objstore.directory.state import DELETED as ST_DELETED
from objstore.directory.state import (
    LOST,
    PENDING,
    PRESENT,
    UNKNOWN,
    InvalidRequestError,
    ObjectRow,
)
from objstore.ids import NODE_ID_SIZE, OBJECT_ID_SIZE


def N(i: int) -> bytes:
    return bytes([i]) * NODE_ID_SIZE


def O(i: int) -> bytes:
    return bytes([i]) * OBJECT_ID_SIZE


def assert_empty(book: ReportBook) -> None:
    assert len(book) == 0
    assert not book.ops and not book.spills and not book.borrows


# ====================================================================== ReportBook
def test_empty_book() -> None:
    book = ReportBook()
    batch = book.take(10)
    assert len(batch) == 0
    assert batch == ReportBatch()
    assert_empty(book)


def test_take_columns() -> None:
    book = ReportBook()
    book.added(O(1), 10, True, "one")
    book.added(O(2), 20, False)
    book.removed(O(3))
    book.deleted(O(4))
    book.spilled(O(1), "s3://b/1")
    assert len(book) == 5
    batch = book.take(100)
    assert batch.added == [(O(1), 10, True, "one"), (O(2), 20, False, "")]
    assert batch.removed == [O(3)]
    assert batch.deleted == [O(4)]
    assert batch.spilled == [(O(1), "s3://b/1")]
    assert len(batch) == 5
    assert_empty(book)


@pytest.mark.parametrize(
    ("changes", "expect"),
    [
        (["added", "deleted"], (DELETED,)),
        (["added", "removed"], (REMOVED,)),
        (["removed", "added"], (ADDED,)),
        (["deleted", "added"], (ADDED,)),
        (["added", "added"], (ADDED,)),
        (["added", "removed", "deleted"], (DELETED,)),
    ],
)
def test_latest_change_wins(changes: list[str], expect: tuple[int]) -> None:
    book = ReportBook()
    for i, change in enumerate(changes):
        if change == "added":
            book.added(O(1), i, True, f"n{i}")
        else:
            getattr(book, change)(O(1))
    assert len(book) == 1
    assert book.ops[O(1)][:1] == expect
    batch = book.take(10)
    assert len(batch) == 1
    if expect == (ADDED,):
        last = len(changes) - 1
        assert batch.added == [(O(1), last, True, f"n{last}")]


def test_order_is_oldest_change_first() -> None:
    book = ReportBook()
    book.added(O(1), 1, True)
    book.added(O(2), 2, True)
    book.added(O(3), 3, True)
    book.removed(O(1))  # a newer change moves it behind the others
    assert [o for o, *_ in book.take(2).added] == [O(2), O(3)]
    assert book.take(2).removed == [O(1)]
    assert_empty(book)


def test_take_limit_counts_ops_then_spills() -> None:
    book = ReportBook()
    for i in range(1, 4):
        book.added(O(i), i, True)
    book.spilled(O(10), "s3://b/10")
    book.spilled(O(11), "s3://b/11")
    first = book.take(2)
    assert len(first) == 2 and first.spilled == [], "ops first; no room left for spills"
    second = book.take(2)
    assert [o for o, *_ in second.added] == [O(3)]
    assert second.spilled == [(O(10), "s3://b/10")], "spills ride in the room that is left"
    third = book.take(2)
    assert third.spilled == [(O(11), "s3://b/11")] and not third.added
    assert_empty(book)


def test_take_zero() -> None:
    book = ReportBook()
    book.added(O(1), 1, True)
    book.spilled(O(1), "s3://b/1")
    assert len(book.take(0)) == 0
    assert len(book) == 2


def test_spill_rides_beside_the_add() -> None:
    book = ReportBook()
    book.added(O(1), 5, True)
    book.spilled(O(1), "file:///a")
    book.spilled(O(1), "file:///b")  # the newest URL wins
    batch = book.take(10)
    assert batch.added == [(O(1), 5, True, "")]
    assert batch.spilled == [(O(1), "file:///b")]


def test_delete_drops_a_pending_spill() -> None:
    book = ReportBook()
    book.added(O(1), 5, True)
    book.spilled(O(1), "s3://b/1")
    book.spilled(O(2), "s3://b/2")
    book.deleted(O(1))
    batch = book.take(10)
    assert batch.deleted == [O(1)] and not batch.added
    assert batch.spilled == [(O(2), "s3://b/2")]


def test_requeue_newer_change_wins() -> None:
    book = ReportBook()
    book.added(O(1), 5, True, "x")
    batch = book.take(10)
    assert_empty(book)
    book.deleted(O(1))  # while the report was in flight
    book.requeue(batch)
    again = book.take(10)
    assert again.deleted == [O(1)] and not again.added
    assert_empty(book)


def test_requeue_restores_everything_in_order() -> None:
    book = ReportBook()
    book.added(O(1), 1, True, "a")
    book.removed(O(2))
    book.deleted(O(3))
    book.spilled(O(1), "s3://b/1")
    batch = book.take(10)
    book.added(O(4), 4, False)  # newer, unrelated
    book.requeue(batch)
    assert len(book) == 5
    assert list(book.ops) == [O(1), O(2), O(3), O(4)], "requeued changes go before newer ones"
    again = book.take(10)
    assert again.added == [(O(1), 1, True, "a"), (O(4), 4, False, "")]
    assert again.removed == [O(2)]
    assert again.deleted == [O(3)]
    assert again.spilled == [(O(1), "s3://b/1")]


def test_requeue_keeps_a_newer_spill_url() -> None:
    book = ReportBook()
    book.spilled(O(1), "s3://b/old")
    batch = book.take(10)
    book.spilled(O(1), "s3://b/new")
    book.requeue(batch)
    assert book.take(10).spilled == [(O(1), "s3://b/new")]


def test_requeue_does_not_resurrect_a_spill_deleted_meanwhile() -> None:
    book = ReportBook()
    book.added(O(1), 5, True)
    book.spilled(O(1), "s3://b/1")
    batch = book.take(10)
    book.deleted(O(1))
    book.requeue(batch)
    again = book.take(10)
    assert again.deleted == [O(1)]
    assert again.spilled == [], "the delete dropped the spill for good"


def test_clear() -> None:
    book = ReportBook()
    book.added(O(1), 1, True)
    book.deleted(O(2))
    book.spilled(O(3), "s3://b/3")
    book.clear()
    assert_empty(book)
    assert len(book.take(10)) == 0


def test_borrows_latest_state_wins_and_ride_after_the_rest() -> None:
    book = ReportBook()
    book.borrowed(O(1))
    book.borrowed(O(2))
    book.unborrowed(O(1))  # borrowed then unborrowed: unborrowed (the directory ends right)
    book.added(O(3), 1, True)
    book.spilled(O(3), "s3://b/3")
    assert len(book) == 4
    batch = book.take(3)
    assert batch.added == [(O(3), 1, True, "")] and batch.spilled == [(O(3), "s3://b/3")]
    assert batch.unborrowed == [O(1)] and batch.borrowed == []
    assert len(batch) == 3
    batch = book.take(3)
    assert batch.borrowed == [O(2)] and len(batch) == 1
    assert_empty(book)


def test_requeue_of_borrows_keeps_a_newer_change() -> None:
    book = ReportBook()
    book.borrowed(O(1))
    book.borrowed(O(2))
    batch = book.take(10)
    book.unborrowed(O(2))  # while the report was in flight
    book.requeue(batch)
    again = book.take(10)
    assert again.borrowed == [O(1)] and again.unborrowed == [O(2)]
    book.borrowed(O(4))
    book.clear()
    assert_empty(book)


_CHANGE = st.one_of(
    st.tuples(st.just("added"), st.integers(1, 4), st.integers(0, 9), st.booleans()),
    st.tuples(st.just("removed"), st.integers(1, 4)),
    st.tuples(st.just("deleted"), st.integers(1, 4)),
    st.tuples(st.just("spilled"), st.integers(1, 4), st.sampled_from(["s3://a", "s3://b"])),
    st.tuples(st.just("report"), st.integers(1, 5), st.booleans()),
)


@settings(max_examples=300)
@given(st.lists(_CHANGE, max_size=40))
def test_report_book_property(changes: list[tuple]) -> None:  # type: ignore[type-arg]
    """Reports that fail are requeued; once drained, the directory saw every latest change."""
    book = ReportBook()
    latest: dict[bytes, tuple[int, int, bool]] = {}  # what the node last did, per object
    url: dict[bytes, str] = {}  # latest spill not followed by a delete
    seen: dict[bytes, tuple[int, int, bool]] = {}  # what the directory last heard
    seen_url: dict[bytes, str] = {}

    def deliver(batch: ReportBatch) -> None:
        # the directory applies adds, removes, spills, then deletes
        for oid, size, primary, _name in batch.added:
            seen[oid] = (ADDED, size, primary)
        for oid in batch.removed:
            seen[oid] = (REMOVED, 0, False)
        for oid, u in batch.spilled:
            seen_url[oid] = u
        for oid in batch.deleted:
            seen[oid] = (DELETED, 0, False)
            seen_url.pop(oid, None)

    for change in changes:
        kind = change[0]
        if kind == "report":
            _, limit, ok = change
            before = len(book)
            batch = book.take(limit)
            assert len(batch) == min(limit, before)
            assert len(book) == before - len(batch)
            if ok:
                deliver(batch)
            else:
                book.requeue(batch)
                assert len(book) == before
            continue
        oid = O(change[1])
        if kind == "added":
            book.added(oid, change[2], change[3])
            latest[oid] = (ADDED, change[2], change[3])
        elif kind == "removed":
            book.removed(oid)
            latest[oid] = (REMOVED, 0, False)
        elif kind == "deleted":
            book.deleted(oid)
            latest[oid] = (DELETED, 0, False)
            url.pop(oid, None)
        elif latest.get(oid, (0,))[0] != DELETED:  # a node spills only what it has
            book.spilled(oid, change[2])
            url[oid] = change[2]
        assert len(book.ops) <= 4 and len(book.spills) <= 4, "one entry per object"
    while len(book):
        deliver(book.take(3))
    assert_empty(book)
    assert seen == latest
    for oid, u in url.items():
        assert seen_url[oid] == u


# ====================================================================== WatchBook
def test_watch_refcounts() -> None:
    book = WatchBook()
    assert book.watch(O(1)) is True
    assert book.watch(O(1)) is False
    assert book.watch(O(1)) is False
    assert len(book) == 1 and O(1) in book
    assert book.take_changes() == ([O(1)], [])
    assert book.unwatch(O(1)) is False
    assert book.unwatch(O(1)) is False
    assert book.take_changes() == ([], [])
    assert book.unwatch(O(1)) is True
    assert O(1) not in book and len(book) == 0
    assert book.take_changes() == ([], [O(1)])
    assert book.take_changes() == ([], [])


def test_unwatch_of_unwatched() -> None:
    book = WatchBook()
    assert book.unwatch(O(1)) is False
    assert book.take_changes() == ([], [])
    assert not book.counts


def test_watch_then_unwatch_before_sending_cancels() -> None:
    book = WatchBook()
    book.watch(O(1))
    book.unwatch(O(1))
    assert book.take_changes() == ([], [])
    assert not book.counts and not book.to_subscribe and not book.to_unsubscribe


def test_unwatch_then_watch_before_sending_cancels() -> None:
    book = WatchBook()
    book.watch(O(1))
    book.take_changes()  # subscribe sent
    assert book.unwatch(O(1)) is True
    assert book.watch(O(1)) is False, "still subscribed: nothing to send"
    assert book.take_changes() == ([], [])
    assert book.counts == {O(1): 1}


def test_take_changes_several() -> None:
    book = WatchBook()
    for i in (1, 2, 3):
        book.watch(O(i))
    assert book.take_changes() == ([O(1), O(2), O(3)], [])
    book.unwatch(O(2))
    book.watch(O(4))
    assert book.take_changes() == ([O(4)], [O(2)])


def test_resubscribe_all() -> None:
    book = WatchBook()
    book.watch(O(1))
    book.watch(O(1))
    book.watch(O(2))
    book.take_changes()
    book.unwatch(O(2))  # unsubscribe not sent yet
    book.watch(O(3))  # subscribe not sent yet
    assert sorted(book.resubscribe_all()) == [O(1), O(3)]
    assert book.take_changes() == ([], []), "the new stream got everything at once"
    assert book.counts == {O(1): 2, O(3): 1}


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(st.sampled_from(["watch", "unwatch", "send", "new_stream"]), st.integers(1, 3)),
        max_size=60,
    )
)
def test_watch_book_property(steps: list[tuple[str, int]]) -> None:
    """After every send, the stream's subscriptions are exactly the watched ids."""
    book = WatchBook()
    interest: dict[bytes, int] = {}
    server: set[bytes] = set()
    for kind, i in steps:
        oid = O(i)
        if kind == "watch":
            first = book.watch(oid)
            assert first == (interest.get(oid, 0) == 0 and oid not in server)
            interest[oid] = interest.get(oid, 0) + 1
        elif kind == "unwatch":
            last = book.unwatch(oid)
            assert last == (interest.get(oid, 0) == 1)
            if interest.get(oid, 0):
                interest[oid] -= 1
                if not interest[oid]:
                    del interest[oid]
        elif kind == "send":
            sub, unsub = book.take_changes()
            assert not set(sub) & set(unsub)
            assert not set(sub) & server, "never subscribed twice"
            assert set(unsub) <= server, "never unsubscribed what was not subscribed"
            server = (server | set(sub)) - set(unsub)
            assert server == set(interest)
        else:
            server = set(book.resubscribe_all())
            assert server == set(interest)
        assert book.counts == interest
        assert not set(book.to_subscribe) & set(book.to_unsubscribe)
    sub, unsub = book.take_changes()
    assert (server | set(sub)) - set(unsub) == set(interest)


# ====================================================================== codec
_node = st.integers(0, 5).map(N)
_url = st.sampled_from(["s3://bucket/key", "file:///tmp/spill/ü", "gs://x"])


@st.composite
def _rows(draw: st.DrawFn) -> ObjectRow:
    oid = draw(st.binary(min_size=OBJECT_ID_SIZE, max_size=OBJECT_ID_SIZE))
    state = draw(st.sampled_from([UNKNOWN, PENDING, PRESENT, LOST, ST_DELETED]))
    size = draw(st.integers(0, 2**64 - 1))
    nodes = tuple(draw(st.lists(_node, max_size=3, unique=True)))
    primary = draw(st.none() | _node)
    name = draw(st.text(max_size=8))
    url = draw(st.just("") | _url)
    spilled_node = draw(st.none() | _node) if url else None
    borrowers = tuple(draw(st.lists(_node, max_size=3, unique=True)))
    return ObjectRow(oid, state, size, primary, nodes, name, url, spilled_node, borrowers)


@settings(max_examples=300)
@given(st.lists(_rows(), max_size=20), st.integers(0, 2**64 - 1))
def test_codec_round_trip(rows: list[ObjectRow], total: int) -> None:
    table = rows_to_table(rows, total=total)
    assert table_to_rows(table) == rows
    # and through the wire format
    wire = pb.LocationTable.parse(bytes(table))
    assert table_to_rows(wire) == rows
    assert wire.total == total
    used = (
        {r.primary for r in rows}
        | {n for r in rows for n in r.nodes}
        | {r.spilled_node for r in rows}
        | {n for r in rows for n in r.borrowers}
    )
    used.discard(None)
    assert len(table.nodes) == NODE_ID_SIZE * len(used), "each node id is written once"


def test_codec_empty() -> None:
    table = rows_to_table([])
    assert table_to_rows(table) == []
    assert table_to_rows(pb.LocationTable()) == []


def test_codec_sparse_columns() -> None:
    rows = [
        ObjectRow(O(1), PRESENT, 1, N(1), (N(1), N(2))),
        ObjectRow(O(2), PRESENT, 2, None, (), "named", "s3://b/2", N(2)),
        ObjectRow(O(3), LOST, 3, N(3)),
        ObjectRow(O(4), PRESENT, 4, None, (), "", "s3://b/4", None),
    ]
    t = rows_to_table(rows)
    assert t.object_ids == join_ids([O(1), O(2), O(3), O(4)])
    assert t.nodes == N(1) + N(2) + N(3)
    assert list(t.primary) == [1, 0, 3, 0]
    assert list(t.location_counts) == [2, 0, 0, 0]
    assert list(t.location_nodes) == [0, 1]
    assert list(t.spilled_rows) == [1, 3]
    assert list(t.spilled_nodes) == [2, 0]
    assert list(t.named_rows) == [1] and list(t.names) == ["named"]
    assert not t.borrower_counts and not t.borrower_nodes  # no row borrowed: no column
    assert table_to_rows(t) == rows


def test_codec_borrowers_column() -> None:
    rows = [
        ObjectRow(O(1), PRESENT, 1, N(1), (N(1),)),
        ObjectRow(O(2), PRESENT, 2, N(1), (N(1),), borrowers=(N(2), N(3))),
        ObjectRow(O(3), PRESENT, 3, N(3), (N(3),), borrowers=(N(1),)),
        ObjectRow(O(4), UNKNOWN),
    ]
    t = rows_to_table(rows)
    assert t.nodes == N(1) + N(2) + N(3)
    assert list(t.borrower_counts) == [0, 2, 1, 0]
    assert list(t.borrower_nodes) == [1, 2, 0]
    assert table_to_rows(t) == rows


def _good_table() -> pb.LocationTable:
    return rows_to_table(
        [
            ObjectRow(O(1), PRESENT, 10, N(1), (N(1), N(2)), "a", "s3://b/1", N(2)),
            ObjectRow(O(2), PENDING, 20, N(2), (), "b"),
        ]
    )


def test_codec_rejects_a_bad_borrower_index() -> None:
    t = rows_to_table([ObjectRow(O(1), PRESENT, 1, N(1), (N(1),), borrowers=(N(2),))])
    t.borrower_nodes = [5]
    with pytest.raises(InvalidRequestError):
        table_to_rows(t)


def _set(field: str, value: object) -> pb.LocationTable:
    t = _good_table()
    setattr(t, field, value)
    return t


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("object_ids", O(1) + O(2) + b"x"),  # ragged object ids
        ("nodes", N(1) + N(2)[:-1]),  # ragged node ids
        ("states", [pb.ObjectState.PRESENT]),  # columns of different lengths
        ("sizes", [1, 2, 3]),
        ("primary", [1]),
        ("location_counts", [2]),
        ("location_counts", [2, 1]),  # counts do not add up
        ("location_nodes", [0]),
        ("primary", [1, 3]),  # node index out of range
        ("location_nodes", [0, 2]),
        ("spilled_nodes", [3]),
        ("spilled_urls", []),  # sparse columns of different lengths
        ("spilled_nodes", []),
        ("names", ["a"]),
        ("spilled_rows", [2]),  # a row that does not exist
        ("named_rows", [0, 5]),
        ("borrower_counts", [1]),  # a borrower column of the wrong length
        ("borrower_counts", [1, 0]),  # borrower counts do not add up
        ("borrower_nodes", [0]),
    ],
)
def test_codec_rejects_malformed_tables(field: str, value: object) -> None:
    table_to_rows(_good_table())  # the table is fine before the change
    with pytest.raises(InvalidRequestError):
        table_to_rows(_set(field, value))
