"""The directory's pure bookkeeping (objstore.directory.state.DirectoryState).

No sockets, no event loop: a fake clock (plain floats) is passed as ``now``.
:func:`check` recomputes every counter and cross-index from scratch; the
:class:`Env` helper calls it after every step, and the state machine at the
end of the file checks the same invariants after every random step.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from objstore.directory.state import (
    DELETED,
    LOST,
    PENDING,
    PRESENT,
    SESSION_SIZE,
    UNKNOWN,
    DirectoryState,
    InvalidRequestError,
    NodeRecord,
    NotRegisteredError,
    ObjectRow,
    Subscriber,
    TooManySubscriptionsError,
    Usage,
    split_ids,
)
from objstore.errors import ObjectExistsError, ObjectNotFoundError, ObjectStoreError
from objstore.ids import NODE_ID_SIZE, OBJECT_ID_SIZE

TIMEOUT = 10.0
T0 = 1_000.0
WALL0 = 1.7e9


def N(i: int) -> bytes:
    """Node id number ``i``."""
    return bytes([i]) * NODE_ID_SIZE


def S(i: int, gen: int = 0) -> bytes:
    """Session of process generation ``gen`` of node ``i``."""
    return bytes([i, gen]) * (SESSION_SIZE // 2)


def O(i: int) -> bytes:
    """Object id number ``i``."""
    return bytes([i]) * OBJECT_ID_SIZE


# ---------------------------------------------------------------------- invariants
def recount(state: DirectoryState) -> dict[str, int]:
    """The counters, recomputed from the object records."""
    recs = state.objects.values()
    return {
        "n_locations": sum(len(r.nodes) for r in recs),
        "n_lost": sum(1 for r in recs if r.state == LOST),
        "spilled_objects": sum(1 for r in recs if r.spilled_url),
        "spilled_bytes": sum(r.size for r in recs if r.spilled_url),
    }


def counters(state: DirectoryState) -> dict[str, int]:
    return {
        "n_locations": state.n_locations,
        "n_lost": state.n_lost,
        "spilled_objects": state.spilled_objects,
        "spilled_bytes": state.spilled_bytes,
    }


def check(state: DirectoryState) -> None:
    """Every invariant tying the state's maps together (see the module docstring)."""
    assert counters(state) == recount(state)
    assert state.n_locations == sum(len(n.objects) for n in state.nodes.values())
    for oid, rec in state.objects.items():
        assert len(oid) == OBJECT_ID_SIZE
        assert oid not in state.deleted
        assert rec.state in (PENDING, PRESENT, LOST)
        # locations <-> node.objects, and only on live nodes
        for nid in rec.nodes:
            node = state.nodes.get(nid)
            assert node is not None and node.alive, "a location on a dead or unknown node"
            assert oid in node.objects
        if rec.state == LOST:
            assert not rec.nodes and not rec.spilled_url, "a LOST object with a copy"
        if rec.state == PENDING:
            assert not rec.nodes
            assert rec.primary is not None
            creator = state.nodes.get(rec.primary)
            assert creator is not None and creator.alive and oid in creator.pending
        if rec.state == PRESENT:
            assert rec.nodes or rec.spilled_url, "a PRESENT object with no copy at all"
        if rec.spilled_url:
            if rec.spilled_url.startswith("file:"):
                spiller = state.nodes.get(rec.spilled_node or b"")
                assert spiller is not None and spiller.alive, "a local spill on a dead node"
        else:
            assert rec.spilled_node is None
        if rec.name:
            assert state.names.get(rec.name) == oid
    for name, oid in state.names.items():
        assert name
        assert state.objects[oid].name == name
    for nid, node in state.nodes.items():
        assert node.node_id == nid
        for oid in node.objects:
            assert nid in state.objects[oid].nodes
        if not node.alive:
            assert not node.objects and not node.frees and not node.pending
            assert node.unconfirmed is None
            assert nid not in state.streams
    # subscriptions: the reverse index holds no empty set and no closed stream
    for oid, subs in state.subscriptions.items():
        assert subs, "an empty set left in the reverse index"
        for sub in subs:
            assert not sub.closed, "a dropped stream still subscribed"
            assert oid in sub.subscribed
    for nid, sub in state.streams.items():
        assert sub.node_id == nid and not sub.closed
        for oid in sub.subscribed:
            assert sub in state.subscriptions[oid]
        assert set(sub.pending) <= sub.subscribed
    assert state.n_subscriptions == sum(len(s.subscribed) for s in state.streams.values())
    assert len(state.deleted) <= state.deleted_memory
    # borrowers: both indexes agree, and only live nodes borrow or wait for notes
    state.borrowers.check()
    for nid in state.borrowers.by_node:
        node = state.nodes.get(nid)
        assert node is not None and node.alive, "a borrow of a dead or unknown node"
    for node in state.nodes.values():
        if not node.alive:
            assert not node.borrow_notes and node.borrow_sync is None


def check_dropped(state: DirectoryState, sub: Subscriber) -> None:
    """A dropped stream left nothing behind."""
    assert sub.closed
    assert not sub.subscribed and not sub.pending
    assert state.streams.get(sub.node_id) is not sub
    assert all(sub not in subs for subs in state.subscriptions.values())


class Waker:
    """A ``wake`` callback that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


class Env:
    """A DirectoryState on a fake clock; every step is followed by :func:`check`."""

    def __init__(self, **kw: float) -> None:
        kw.setdefault("node_timeout", TIMEOUT)
        self.state = DirectoryState(**kw)  # type: ignore[arg-type]
        self.now = T0

    def register(self, n: int, gen: int = 0, **kw: object) -> NodeRecord:
        node = self.state.register(N(n), S(n, gen), self.now, WALL0 + self.now, **kw)  # type: ignore[arg-type]
        check(self.state)
        return node

    def report(self, n: int, gen: int = 0, **kw: object) -> None:
        self.state.report(N(n), S(n, gen), self.now, **kw)  # type: ignore[arg-type]
        check(self.state)

    def add(self, n: int, *objs: int, size: int = 100, primary: bool = False, gen: int = 0) -> None:
        self.report(n, gen, added=[(O(o), size, primary) for o in objs])

    def reserve(self, n: int, name: str, o: int, size: int = 100, gen: int = 0) -> None:
        self.state.reserve_name(N(n), S(n, gen), name, O(o), size, self.now)
        check(self.state)

    def delete(self, *objs: int, by: int | None = None) -> int:
        got = self.state.delete([O(o) for o in objs], requester=None if by is None else N(by))
        check(self.state)
        return got

    def advance(self, dt: float) -> list[bytes]:
        self.now += dt
        dead = self.state.check_deaths(self.now)
        check(self.state)
        return dead

    def heartbeat(self, n: int, gen: int = 0) -> None:
        self.state.heartbeat(N(n), S(n, gen), Usage(), self.now)
        check(self.state)

    def row(self, o: int) -> ObjectRow:
        return self.state.row(O(o))

    def where(self, o: int) -> set[bytes]:
        return set(self.state.row(O(o)).nodes)

    def frees(self, n: int) -> list[bytes]:
        got = self.state.take_frees(N(n), 1_000_000)
        check(self.state)
        return got

    def borrow(self, n: int, *objs: int, gen: int = 0) -> None:
        self.report(n, gen, borrowed=[O(o) for o in objs])

    def unborrow(self, n: int, *objs: int, gen: int = 0) -> None:
        self.report(n, gen, unborrowed=[O(o) for o in objs])

    def notes(self, n: int, limit: int = 1_000_000) -> tuple[list[bytes], list[bytes]]:
        got = self.state.take_borrow_notes(N(n), limit)
        check(self.state)
        return got


@pytest.fixture
def env() -> Env:
    return Env()


# ---------------------------------------------------------------------- helpers
def test_split_ids() -> None:
    assert split_ids(b"") == []
    assert split_ids(O(1) + O(2)) == [O(1), O(2)]
    assert split_ids(N(1), NODE_ID_SIZE) == [N(1)]
    with pytest.raises(InvalidRequestError):
        split_ids(O(1) + b"x")


def test_errors_share_the_root() -> None:
    for exc in (NotRegisteredError, InvalidRequestError, TooManySubscriptionsError):
        assert issubclass(exc, ObjectStoreError)
    assert issubclass(InvalidRequestError, ValueError)


# ---------------------------------------------------------------------- register
@pytest.mark.parametrize("size", [0, NODE_ID_SIZE - 1, NODE_ID_SIZE + 1, OBJECT_ID_SIZE])
def test_register_rejects_bad_node_id(env: Env, size: int) -> None:
    with pytest.raises(InvalidRequestError):
        env.state.register(b"n" * size, S(1), env.now, WALL0)
    assert not env.state.nodes


@pytest.mark.parametrize("size", [0, SESSION_SIZE - 1, SESSION_SIZE + 1])
def test_register_rejects_bad_session(env: Env, size: int) -> None:
    with pytest.raises(InvalidRequestError):
        env.state.register(N(1), b"s" * size, env.now, WALL0)
    assert not env.state.nodes


def test_register_records_the_node(env: Env) -> None:
    usage = Usage(memory_used=5, memory_total=10, clients=2)
    node = env.register(
        1, address="10.0.0.1:7000", socket="/tmp/s", hostname="h", pid=42, usage=usage
    )
    assert env.state.nodes[N(1)] is node
    assert node.alive and node.session == S(1)
    assert (node.address, node.socket, node.hostname, node.pid) == (
        "10.0.0.1:7000",
        "/tmp/s",
        "h",
        42,
    )
    assert node.usage == usage
    assert node.registered_at == WALL0 + T0
    assert node.last_seen == T0
    assert not node.objects and not node.frees and not node.pending


def test_register_other_session_while_alive_is_refused(env: Env) -> None:
    env.register(1)
    env.add(1, 1, primary=True)
    env.now += TIMEOUT  # exactly at the limit: still alive
    with pytest.raises(ObjectExistsError):
        env.register(1, gen=1)
    node = env.state.nodes[N(1)]
    assert node.session == S(1) and node.alive
    assert env.where(1) == {N(1)}
    # the refused attempt is no sign of life of the first process
    assert node.last_seen == T0


def test_register_other_session_after_silence_replaces_the_node(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, primary=True)
    env.add(1, 2)
    env.add(2, 2)
    sub = Subscriber(N(1))
    env.state.attach(sub)
    env.state.subscribe(sub, [O(9)])
    env.now += TIMEOUT + 0.001
    env.heartbeat(2)  # node 2 stays alive; no check_deaths ran
    node = env.register(1, gen=1)
    assert node.session == S(1, 1) and node.alive
    assert not node.objects
    assert node.registered_at == WALL0 + env.now
    assert env.row(1).state == LOST  # its only copy was on the old process
    assert env.where(2) == {N(2)}
    assert env.state.n_lost == 1
    check_dropped(env.state, sub)
    # the old session is refused from now on
    with pytest.raises(NotRegisteredError):
        env.heartbeat(1, gen=0)


def test_register_same_session_keeps_locations(env: Env) -> None:
    env.register(1, address="a:1")
    env.add(1, 1, 2, primary=True)
    env.now += TIMEOUT + 5  # silent past the timeout, but not declared dead yet
    node = env.register(1, address="a:2")
    assert node.address == "a:2"
    assert node.last_seen == env.now
    assert node.objects == {O(1), O(2)}
    assert env.row(1).state == PRESENT and env.where(1) == {N(1)}
    assert env.advance(TIMEOUT) == []  # the registration counted as a sign of life


def test_register_after_death_is_a_new_node(env: Env) -> None:
    env.register(1)
    env.add(1, 1, primary=True, size=7)
    assert env.advance(TIMEOUT + 1) == [N(1)]
    assert env.row(1).state == LOST and env.state.n_lost == 1
    node = env.register(1)  # same session: the process lived on behind a partition
    assert node.alive and not node.objects
    assert env.row(1).state == LOST, "old copies come back only when reported"
    env.add(1, 1, primary=True, size=7)
    row = env.row(1)
    assert row.state == PRESENT and row.nodes == (N(1),) and row.size == 7
    assert env.state.n_lost == 0


# ---------------------------------------------------------------------- heartbeats, deaths
def test_heartbeat_of_unknown_node(env: Env) -> None:
    with pytest.raises(NotRegisteredError):
        env.heartbeat(1)


def test_heartbeat_of_dead_node(env: Env) -> None:
    env.register(1)
    env.advance(TIMEOUT + 1)
    with pytest.raises(NotRegisteredError):
        env.heartbeat(1)
    assert not env.state.nodes[N(1)].alive


def test_heartbeat_of_other_session(env: Env) -> None:
    env.register(1)
    with pytest.raises(NotRegisteredError):
        env.heartbeat(1, gen=1)


def test_heartbeat_updates_usage_and_postpones_death(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.now += 8
    env.state.heartbeat(N(1), S(1), Usage(memory_used=3, objects=1), env.now)
    assert env.state.nodes[N(1)].usage == Usage(memory_used=3, objects=1)
    assert env.advance(3) == [N(2)]
    assert env.state.nodes[N(1)].alive
    assert env.advance(TIMEOUT - 3) == []
    assert env.advance(0.001) == [N(1)]


def test_check_deaths_boundary(env: Env) -> None:
    env.register(1)
    assert env.advance(TIMEOUT) == [], "silent for exactly node_timeout: still alive"
    assert env.state.nodes[N(1)].alive
    assert env.advance(1e-6) == [N(1)]
    assert not env.state.nodes[N(1)].alive
    assert env.advance(100) == [], "a dead node is declared dead once"


def test_reports_are_signs_of_life(env: Env) -> None:
    env.register(1)
    env.now += TIMEOUT
    env.report(1)
    assert env.advance(TIMEOUT) == []
    env.state.reserve_name(N(1), S(1), "x", O(1), 1, env.now)
    assert env.advance(TIMEOUT) == []
    assert env.advance(0.5) == [N(1)]


def test_dead_node_cannot_report_or_reserve(env: Env) -> None:
    env.register(1)
    env.advance(TIMEOUT + 1)
    with pytest.raises(NotRegisteredError):
        env.add(1, 1)
    with pytest.raises(NotRegisteredError):
        env.reserve(1, "n", 1)
    assert not env.state.objects and not env.state.names


def test_death_removes_locations_and_loses_sole_copies(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, primary=True)
    env.add(1, 2, primary=True)
    env.add(2, 2)
    env.add(2, 3, primary=True)
    env.now += TIMEOUT + 1
    env.heartbeat(2)
    assert env.state.check_deaths(env.now) == [N(1)]
    check(env.state)
    assert env.row(1).state == LOST and env.row(1).nodes == ()
    assert env.row(2).state == PRESENT and env.row(2).nodes == (N(2),)
    assert env.row(3).state == PRESENT
    assert env.state.n_lost == 1
    assert env.state.n_locations == 2
    assert not env.state.nodes[N(1)].objects


def test_declare_dead_counts_lost_objects(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, 2, 3, primary=True)
    env.add(2, 3)
    env.reserve(1, "pending", 4)
    assert env.state.declare_dead(N(1)) == 3  # 1, 2 and the pending 4
    check(env.state)
    assert env.state.n_lost == 3


def test_death_spilled_to_shared_storage_survives(env: Env) -> None:
    env.register(1)
    env.add(1, 1, primary=True, size=50)
    env.report(1, spilled=[(O(1), "s3://bucket/k1")])
    env.advance(TIMEOUT + 1)
    row = env.row(1)
    assert row.state == PRESENT and row.nodes == ()
    assert (row.spilled_url, row.spilled_node) == ("s3://bucket/k1", N(1))
    assert (env.state.spilled_objects, env.state.spilled_bytes) == (1, 50)
    assert env.state.n_lost == 0


def test_death_local_spill_on_dead_node_is_lost(env: Env) -> None:
    env.register(1)
    env.add(1, 1, primary=True, size=50)
    env.report(1, spilled=[(O(1), "file:///spill/1")])
    env.advance(TIMEOUT + 1)
    row = env.row(1)
    assert row.state == LOST
    assert row.spilled_url == "" and row.spilled_node is None
    assert (env.state.spilled_objects, env.state.spilled_bytes) == (0, 0)


def test_death_local_spill_with_copy_elsewhere_stays_present(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, primary=True, size=50)
    env.add(2, 1)
    env.report(1, spilled=[(O(1), "file:///spill/1")])
    env.now += TIMEOUT + 1
    env.heartbeat(2)
    env.advance(0)
    row = env.row(1)
    assert row.state == PRESENT and row.nodes == (N(2),)
    assert row.spilled_url == "", "the local spill file died with its node"
    assert env.state.spilled_objects == 0


def test_death_of_another_node_keeps_a_local_spill(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, primary=True, size=50)
    env.add(2, 1)
    env.report(1, spilled=[(O(1), "file:///spill/1")])
    env.report(1, removed=[O(1)])  # node 1 frees its memory copy after spilling
    env.now += TIMEOUT + 1
    env.heartbeat(1)
    assert env.advance(0) == [N(2)]
    row = env.row(1)
    assert row.state == PRESENT and row.nodes == ()
    assert (row.spilled_url, row.spilled_node) == ("file:///spill/1", N(1))


def test_death_local_spill_after_eviction_is_lost(env: Env) -> None:
    """Spilled to a local file, memory copy gone: the file dies with the node."""
    env.register(1)
    env.add(1, 1, primary=True, size=50)
    env.report(1, spilled=[(O(1), "file:///spill/1")])
    env.report(1, removed=[O(1)])
    assert env.row(1).state == PRESENT and env.row(1).nodes == ()
    assert env.advance(TIMEOUT + 1) == [N(1)]
    row = env.row(1)
    assert row.state == LOST
    assert row.spilled_url == ""
    assert env.state.n_lost == 1
    assert (env.state.spilled_objects, env.state.spilled_bytes) == (0, 0)


def test_death_loses_pending_objects(env: Env) -> None:
    env.register(1)
    env.reserve(1, "model", 1, size=10)
    sub = Subscriber(N(2))
    env.state.subscribe(sub, [O(1)])
    env.state.take_pending(sub, 10)
    env.advance(TIMEOUT + 1)
    assert env.row(1).state == LOST
    assert env.state.n_lost == 1
    assert [r.state for r in env.state.take_pending(sub, 10)] == [LOST]
    # the creator comes back and finishes the object
    env.register(1, gen=1)
    env.report(1, gen=1, added=[(O(1), 10, True)])
    assert env.row(1).state == PRESENT and env.state.n_lost == 0


def test_death_drops_the_stream_and_frees(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, primary=True)
    env.add(2, 1)
    sub = Subscriber(N(2))
    env.state.attach(sub)
    env.state.subscribe(sub, [O(1)])
    env.delete(1, by=1)
    assert env.state.nodes[N(2)].frees
    env.now += TIMEOUT + 1
    env.heartbeat(1)
    assert env.advance(0) == [N(2)]
    check_dropped(env.state, sub)
    assert env.state.take_frees(N(2), 10) == []


def test_death_notifies_subscribers(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, primary=True)
    wake = Waker()
    sub = Subscriber(N(2), wake)
    env.state.attach(sub)
    env.state.subscribe(sub, [O(1)])
    assert [r.state for r in env.state.take_pending(sub, 10)] == [PRESENT]
    env.now += TIMEOUT + 1
    env.heartbeat(2)
    calls = wake.calls
    env.advance(0)
    assert wake.calls == calls + 1
    assert env.state.take_pending(sub, 10) == [ObjectRow(O(1), LOST, 100, N(1))]


# ---------------------------------------------------------------------- reports
def test_report_added_primary_and_secondary(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, size=123, primary=True)
    env.add(2, 1, size=123)
    env.add(2, 2, size=5)
    row = env.row(1)
    assert row.state == PRESENT and row.size == 123 and row.primary == N(1)
    assert set(row.nodes) == {N(1), N(2)}
    assert env.row(2) == ObjectRow(O(2), PRESENT, 5, None, (N(2),))
    assert env.state.nodes[N(2)].objects == {O(1), O(2)}
    assert env.state.n_locations == 3


def test_report_added_twice_is_one_location(env: Env) -> None:
    env.register(1)
    env.add(1, 1, primary=True)
    env.add(1, 1, primary=True)
    assert env.state.n_locations == 1
    assert env.row(1).nodes == (N(1),)


def test_report_names_by_index(env: Env) -> None:
    env.register(1)
    env.report(
        1,
        added=[(O(1), 1, True), (O(2), 2, True), (O(3), 3, True)],
        names={1: "second", 2: "dritte ☃"},
    )
    assert env.row(1).name == ""
    assert env.row(2).name == "second"
    assert env.row(3).name == "dritte ☃"
    assert env.state.resolve_name("dritte ☃") == O(3)
    assert env.state.names == {"second": O(2), "dritte ☃": O(3)}


def test_report_name_taken_by_another_object_is_ignored(env: Env) -> None:
    env.register(1)
    env.report(1, added=[(O(1), 1, True)], names={0: "n"})
    env.report(1, added=[(O(2), 1, True)], names={0: "n"})
    assert env.state.resolve_name("n") == O(1)
    assert env.row(2).name == ""


def test_report_removed(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, primary=True)
    env.add(2, 1)
    env.report(2, removed=[O(1)])
    assert env.row(1).state == PRESENT and env.row(1).nodes == (N(1),)
    assert O(1) not in env.state.nodes[N(2)].objects
    env.report(2, removed=[O(1), O(99)])  # not held / unknown: nothing happens
    assert env.state.n_locations == 1
    assert env.row(99).state == UNKNOWN


def test_report_removed_primary_without_spill_is_lost(env: Env) -> None:
    env.register(1)
    env.add(1, 1, primary=True)
    env.report(1, removed=[O(1)])
    assert env.row(1).state == LOST and env.state.n_lost == 1


def test_report_removed_primary_after_spill_stays_present(env: Env) -> None:
    env.register(1)
    env.add(1, 1, primary=True)
    env.report(1, spilled=[(O(1), "s3://b/1")])
    env.report(1, removed=[O(1)])
    row = env.row(1)
    assert row.state == PRESENT and row.nodes == () and row.spilled_url == "s3://b/1"


def test_report_removed_last_secondary_copy_is_lost(env: Env) -> None:
    """The primary's node died, the one copy left is evicted: no copy remains."""
    env.register(1)
    env.register(2)
    env.add(1, 1, primary=True)
    env.add(2, 1)
    env.now += TIMEOUT + 1
    env.heartbeat(2)
    env.advance(0)
    assert env.row(1).state == PRESENT
    env.report(2, removed=[O(1)])
    assert env.row(1).state == LOST
    assert env.state.n_lost == 1


def test_report_deleted(env: Env) -> None:
    env.register(1)
    env.add(1, 1, primary=True)
    env.report(1, deleted=[O(1)])
    assert env.row(1) == ObjectRow(O(1), DELETED)
    assert env.state.n_locations == 0
    assert env.frees(1) == [], "the reporting node freed it already"


def test_report_spilled(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, primary=True, size=40)
    env.add(1, 2, primary=True, size=2)
    env.report(1, spilled=[(O(1), "s3://b/1"), (O(99), "s3://b/99"), (O(2), "")])
    row = env.row(1)
    assert (row.spilled_url, row.spilled_node) == ("s3://b/1", N(1))
    assert env.row(2).spilled_url == "", "an empty URL is no spill"
    assert O(99) not in env.state.objects, "a spill of an unknown object is ignored"
    assert (env.state.spilled_objects, env.state.spilled_bytes) == (1, 40)
    # spilled again elsewhere: the URL moves, the counters do not double
    env.add(2, 1)
    env.report(2, spilled=[(O(1), "file:///n2/1")])
    row = env.row(1)
    assert (row.spilled_url, row.spilled_node) == ("file:///n2/1", N(2))
    assert (env.state.spilled_objects, env.state.spilled_bytes) == (1, 40)


def test_spilled_bytes_follow_a_size_change(env: Env) -> None:
    """A spill reported while the object was PENDING, then sealed with another size."""
    env.register(1)
    env.reserve(1, "a", 1, size=10)
    env.report(1, spilled=[(O(1), "s3://b/1")])
    assert env.state.spilled_bytes == 10
    env.add(1, 1, size=64, primary=True)
    assert env.row(1).size == 64
    assert (env.state.spilled_objects, env.state.spilled_bytes) == (1, 64)


def test_report_applies_in_order_added_removed_spilled_deleted(env: Env) -> None:
    env.register(1)
    env.add(1, 3, primary=True)
    env.report(
        1,
        added=[(O(1), 10, True), (O(2), 20, True)],
        removed=[O(3)],
        spilled=[(O(1), "s3://b/1"), (O(2), "s3://b/2")],
        deleted=[O(2)],
    )
    assert env.row(1).spilled_url == "s3://b/1"
    assert env.row(2).state == DELETED
    assert env.row(3).state == LOST
    assert (env.state.spilled_objects, env.state.spilled_bytes) == (1, 10)


def test_report_of_unknown_node(env: Env) -> None:
    with pytest.raises(NotRegisteredError):
        env.add(1, 1)
    env.register(1)
    with pytest.raises(NotRegisteredError):
        env.add(1, 1, gen=1)
    assert not env.state.objects


# ---------------------------------------------------------------------- full sync
def test_full_sync_forgets_unconfirmed_locations(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(2, 1, 2, 3, primary=True)
    env.add(1, 1, 2, 3)
    env.add(1, 4, primary=True)
    env.report(1, added=[(O(1), 100, False)], sync_begin=True)
    assert env.where(2) == {N(1), N(2)}, "nothing is forgotten before sync_end"
    env.report(1, added=[(O(3), 100, False), (O(5), 9, True)])
    env.report(1, added=[(O(4), 100, True)], sync_end=True)
    assert env.state.nodes[N(1)].objects == {O(1), O(3), O(4), O(5)}
    assert env.where(2) == {N(2)}
    assert env.where(1) == {N(1), N(2)}
    assert env.row(5).state == PRESENT
    assert env.state.nodes[N(1)].unconfirmed is None


def test_full_sync_in_one_report(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(2, 1, primary=True)
    env.add(1, 1, 2)
    env.report(1, added=[(O(2), 100, False)], sync_begin=True, sync_end=True)
    assert env.state.nodes[N(1)].objects == {O(2)}
    assert env.where(1) == {N(2)}


def test_full_sync_stale_primary_is_deleted(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.report(1, added=[(O(1), 100, True)], names={0: "x"})
    env.add(2, 1)
    env.add(1, 2, primary=True)
    env.report(1, added=[(O(2), 100, True)], sync_begin=True, sync_end=True)
    assert env.row(1).state == DELETED
    assert "x" not in env.state.names
    assert env.frees(2) == [O(1)], "the other holder frees its copy"
    assert env.frees(1) == []
    assert env.row(2).state == PRESENT


def test_full_sync_stale_spilled_primary_is_kept(env: Env) -> None:
    env.register(1)
    env.add(1, 1, primary=True)
    env.report(1, spilled=[(O(1), "s3://b/1")])
    env.report(1, sync_begin=True, sync_end=True)
    row = env.row(1)
    assert row.state == PRESENT and row.nodes == () and row.spilled_url == "s3://b/1"


def test_sync_end_without_begin_forgets_nothing(env: Env) -> None:
    env.register(1)
    env.add(1, 1, 2)
    env.report(1, added=[(O(3), 1, False)], sync_end=True)
    assert env.state.nodes[N(1)].objects == {O(1), O(2), O(3)}


def test_full_sync_ignores_objects_deleted_meanwhile(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, 2, primary=True)
    env.report(1, sync_begin=True)
    env.delete(1, by=2)
    env.report(1, added=[(O(2), 100, True)], sync_end=True)
    assert env.row(1).state == DELETED
    assert env.frees(1) == [O(1)]
    assert env.state.nodes[N(1)].objects == {O(2)}


# ---------------------------------------------------------------------- names
def test_reserve_and_resolve(env: Env) -> None:
    env.register(1)
    env.reserve(1, "weights", 1, size=77)
    assert env.row(1) == ObjectRow(O(1), PENDING, 77, N(1), (), "weights")
    assert env.state.resolve_name("weights") == O(1)
    assert env.state.nodes[N(1)].pending == {O(1)}
    env.add(1, 1, size=80, primary=True)
    row = env.row(1)
    assert row.state == PRESENT and row.size == 80 and row.name == "weights"
    assert not env.state.nodes[N(1)].pending


def test_reserve_same_name_same_object_twice(env: Env) -> None:
    env.register(1)
    env.reserve(1, "a", 1)
    env.reserve(1, "a", 1)
    assert env.state.names == {"a": O(1)}
    assert len(env.state.objects) == 1


def test_reserve_taken_name(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.reserve(1, "a", 1)
    with pytest.raises(ObjectExistsError):
        env.reserve(2, "a", 2)
    assert O(2) not in env.state.objects
    assert env.state.resolve_name("a") == O(1)


def test_reserve_name_for_existing_object(env: Env) -> None:
    env.register(1)
    env.add(1, 1, primary=True)
    env.reserve(1, "a", 2)
    with pytest.raises(ObjectExistsError):
        env.reserve(1, "b", 1)
    with pytest.raises(ObjectExistsError):
        env.reserve(1, "c", 2)  # object 2 is named "a" already
    assert env.state.names == {"a": O(2)}


def test_reserve_rejects_bad_requests(env: Env) -> None:
    env.register(1)
    with pytest.raises(InvalidRequestError):
        env.reserve(1, "", 1)
    with pytest.raises(InvalidRequestError):
        env.state.reserve_name(N(1), S(1), "a", b"short", 1, env.now)
    with pytest.raises(NotRegisteredError):
        env.reserve(2, "a", 1)
    assert not env.state.names and not env.state.objects


def test_resolve_unknown_name(env: Env) -> None:
    with pytest.raises(ObjectNotFoundError):
        env.state.resolve_name("nope")
    with pytest.raises(KeyError):  # ObjectNotFoundError is a KeyError too
        env.state.resolve_name("")


def test_name_is_freed_on_delete(env: Env) -> None:
    env.register(1)
    env.reserve(1, "a", 1)
    env.add(1, 1, primary=True)
    assert env.delete(1, by=1) == 1
    with pytest.raises(ObjectNotFoundError):
        env.state.resolve_name("a")
    env.reserve(1, "a", 2)
    assert env.state.resolve_name("a") == O(2)


def test_reserve_after_delete_reuses_the_id(env: Env) -> None:
    env.register(1)
    env.add(1, 1, primary=True)
    env.delete(1, by=1)
    env.reserve(1, "a", 1)
    assert env.row(1).state == PENDING
    assert O(1) not in env.state.deleted


# ---------------------------------------------------------------------- delete
def test_delete_frees_other_holders_only(env: Env) -> None:
    for n in (1, 2, 3):
        env.register(n)
    env.add(1, 1, primary=True)
    env.add(2, 1)
    env.add(3, 1)
    env.add(1, 2, primary=True)
    assert env.delete(1, 2, 99, by=2) == 2
    assert env.frees(1) == [O(1), O(2)]
    assert env.frees(2) == []
    assert env.frees(3) == [O(1)]
    assert env.state.n_locations == 0
    assert all(not env.state.nodes[N(n)].objects for n in (1, 2, 3))
    # An id never heard of is remembered as deleted too: its put may have been
    # deleted before it was reported, and a get waiting elsewhere must hear it.
    assert [r.state for r in env.state.lookup([O(1), O(2), O(99)])] == [DELETED] * 3


def test_delete_of_an_unknown_id_tells_its_subscribers(env: Env) -> None:
    env.register(1)
    woken = []
    sub = Subscriber(N(1), lambda: woken.append(1))
    env.state.attach(sub)
    env.state.subscribe(sub, [O(7)])
    assert [r.state for r in env.state.take_pending(sub, 10)] == [UNKNOWN]
    assert env.state.delete([O(7)], requester=N(1)) == 0
    assert [r.state for r in env.state.take_pending(sub, 10)] == [DELETED]
    assert woken


def test_delete_without_requester_frees_everywhere(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, primary=True)
    env.add(2, 1)
    assert env.delete(1) == 1
    assert env.frees(1) == [O(1)] and env.frees(2) == [O(1)]


def test_delete_twice_counts_once(env: Env) -> None:
    env.register(1)
    env.add(1, 1, primary=True)
    assert env.delete(1, 1, by=1) == 1
    assert env.delete(1, by=1) == 0


def test_delete_memory_is_bounded() -> None:
    env = Env(deleted_memory=3)
    env.register(1)
    env.add(1, 1, 2, 3, 4, 5, primary=True)
    assert env.delete(1, 2, 3, 4, 5, by=1) == 5
    assert len(env.state.deleted) == 3
    assert [env.row(o).state for o in (1, 2, 3, 4, 5)] == [UNKNOWN, UNKNOWN] + [DELETED] * 3


def test_late_added_report_of_deleted_object_is_answered_with_a_free(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, primary=True)
    env.delete(1, by=1)
    env.add(2, 1)  # a copy made before the delete, reported after
    assert env.row(1).state == DELETED
    assert O(1) not in env.state.objects
    assert env.state.n_locations == 0
    assert env.frees(2) == [O(1)]


def test_delete_pending_object_frees_its_creator(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.reserve(1, "a", 1)
    assert env.delete(1, by=2) == 1
    assert not env.state.nodes[N(1)].pending
    assert env.frees(1) == [O(1)]
    assert "a" not in env.state.names


def test_delete_pending_object_by_its_creator(env: Env) -> None:
    env.register(1)
    env.reserve(1, "a", 1)
    assert env.delete(1, by=1) == 1
    assert not env.state.nodes[N(1)].pending
    assert env.frees(1) == []


def test_delete_lost_and_spilled_objects_fix_the_counters(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, primary=True)
    env.add(2, 2, primary=True, size=30)
    env.report(2, spilled=[(O(2), "s3://b/2")])
    env.now += TIMEOUT + 1
    env.heartbeat(2)
    env.advance(0)
    assert env.state.n_lost == 1 and env.state.spilled_objects == 1
    assert env.delete(1, 2, by=2) == 2
    assert counters(env.state) == {
        "n_locations": 0,
        "n_lost": 0,
        "spilled_objects": 0,
        "spilled_bytes": 0,
    }


def test_frees_are_not_queued_to_dead_nodes(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, primary=True)
    env.add(2, 1)
    env.now += TIMEOUT + 1
    env.heartbeat(1)
    env.advance(0)
    env.delete(1, by=1)
    assert not env.state.nodes[N(2)].frees


def test_take_frees_limit_and_order(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(2, 1, 2, 3, 4, 5, primary=True)
    env.add(1, 1, 2, 3, 4, 5)
    env.delete(3, 1, 5, 2, 4, by=2)
    assert env.state.take_frees(N(1), 2) == [O(3), O(1)]
    assert env.state.take_frees(N(1), 2) == [O(5), O(2)]
    assert env.state.take_frees(N(1), 2) == [O(4)]
    assert env.state.take_frees(N(1), 2) == []
    assert env.state.take_frees(N(9), 2) == []
    check(env.state)


def test_free_wakes_the_stream_once(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(2, 1, 2, primary=True)
    env.add(1, 1, 2)
    wake = Waker()
    env.state.attach(Subscriber(N(1), wake))
    assert wake.calls == 0
    env.delete(1, by=2)
    env.delete(2, by=2)
    assert wake.calls == 1, "woken when the frees went from none to some"
    env.frees(1)


def test_attach_wakes_when_frees_wait(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(2, 1, primary=True)
    env.add(1, 1)
    env.delete(1, by=2)
    wake = Waker()
    assert env.state.attach(Subscriber(N(1), wake)) is None
    assert wake.calls == 1
    assert env.state.take_frees(N(1), 10) == [O(1)]


# ---------------------------------------------------------------------- subscriptions
def test_subscribe_queues_a_snapshot(env: Env) -> None:
    env.register(1)
    env.add(1, 1, primary=True, size=3)
    env.reserve(1, "p", 2, size=4)
    wake = Waker()
    sub = Subscriber(N(2), wake)
    env.state.attach(sub)
    env.state.subscribe(sub, [O(1), O(2), O(3)])
    check(env.state)
    assert wake.calls >= 1
    assert env.state.take_pending(sub, 100) == [
        ObjectRow(O(1), PRESENT, 3, N(1), (N(1),)),
        ObjectRow(O(2), PENDING, 4, N(1), (), "p"),
        ObjectRow(O(3), UNKNOWN),
    ]
    assert env.state.take_pending(sub, 100) == []
    # subscribing again to the same object re-sends its state
    env.state.subscribe(sub, [O(1)])
    assert [r.object_id for r in env.state.take_pending(sub, 100)] == [O(1)]
    assert env.state.n_subscriptions == 3


def test_changes_coalesce(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, primary=True)
    wake = Waker()
    sub = Subscriber(N(3), wake)
    env.state.subscribe(sub, [O(1)])
    env.state.take_pending(sub, 10)
    wake.calls = 0
    for _ in range(500):
        env.state.report(N(2), S(2), env.now, added=[(O(1), 100, False)])
        env.state.report(N(2), S(2), env.now, removed=[O(1)])
    check(env.state)
    assert list(sub.pending) == [O(1)]
    assert wake.calls == 1, "woken once: when pending went from empty to non-empty"
    assert env.state.take_pending(sub, 10) == [env.row(1)]
    env.add(2, 1)
    assert wake.calls == 2


def test_changes_of_unsubscribed_objects_are_not_queued(env: Env) -> None:
    env.register(1)
    wake = Waker()
    sub = Subscriber(N(2), wake)
    env.state.subscribe(sub, [O(1)])
    env.state.take_pending(sub, 10)
    env.add(1, 2, primary=True)
    assert not sub.pending and wake.calls == 1


def test_delete_notifies_subscribers(env: Env) -> None:
    env.register(1)
    env.add(1, 1, primary=True)
    sub = Subscriber(N(2))
    env.state.subscribe(sub, [O(1)])
    env.state.take_pending(sub, 10)
    env.delete(1, by=1)
    assert env.state.take_pending(sub, 10) == [ObjectRow(O(1), DELETED)]


def test_unsubscribe_cleans_the_reverse_index(env: Env) -> None:
    a, b = Subscriber(N(1)), Subscriber(N(2))
    env.state.attach(a)
    env.state.attach(b)
    env.state.subscribe(a, [O(1), O(2)])
    env.state.subscribe(b, [O(2)])
    env.state.unsubscribe(a, [O(1), O(2), O(3)])
    check(env.state)
    assert env.state.subscriptions == {O(2): {b}}
    assert not a.subscribed and not a.pending
    env.state.unsubscribe(b, [O(2)])
    assert env.state.subscriptions == {}
    assert env.state.n_subscriptions == 0


def test_drop_subscriber(env: Env) -> None:
    wake = Waker()
    sub = Subscriber(N(1), wake)
    other = Subscriber(N(2))
    env.state.attach(sub)
    env.state.attach(other)
    env.state.subscribe(sub, [O(1), O(2)])
    env.state.subscribe(other, [O(2)])
    calls = wake.calls
    env.state.drop_subscriber(sub)
    check(env.state)
    check_dropped(env.state, sub)
    assert wake.calls == calls + 1, "woken so that its sender sees it closed"
    assert env.state.subscriptions == {O(2): {other}}
    assert env.state.streams == {N(2): other}


def test_subscribe_on_a_dropped_stream_leaves_nothing(env: Env) -> None:
    """A message read after the stream was dropped must not leak subscriptions."""
    sub = Subscriber(N(1))
    env.state.attach(sub)
    env.state.drop_subscriber(sub)
    env.state.subscribe(sub, [O(1)])
    check(env.state)
    check_dropped(env.state, sub)
    assert env.state.subscriptions == {}


def test_max_subscriptions() -> None:
    env = Env(max_subscriptions=3)
    sub = Subscriber(N(1))
    env.state.attach(sub)
    env.state.subscribe(sub, [O(1), O(2), O(3)])
    env.state.subscribe(sub, [O(1)])  # already subscribed: not one more
    with pytest.raises(TooManySubscriptionsError):
        env.state.subscribe(sub, [O(4)])
    assert sub.subscribed == {O(1), O(2), O(3)}
    assert O(4) not in env.state.subscriptions
    env.state.unsubscribe(sub, [O(1)])
    env.state.subscribe(sub, [O(4)])
    assert sub.subscribed == {O(2), O(3), O(4)}
    check(env.state)


def test_attach_replaces_the_old_stream(env: Env) -> None:
    old = Subscriber(N(1))
    assert env.state.attach(old) is None
    env.state.subscribe(old, [O(1), O(2)])
    new = Subscriber(N(1))
    assert env.state.attach(new) is old
    check(env.state)
    check_dropped(env.state, old)
    assert env.state.streams == {N(1): new}
    assert env.state.subscriptions == {}
    env.state.subscribe(new, [O(2)])
    assert env.state.subscriptions == {O(2): {new}}
    # dropping the old stream late does not touch the new one
    env.state.drop_subscriber(old)
    assert env.state.streams == {N(1): new}
    check(env.state)


def test_take_pending_limit(env: Env) -> None:
    sub = Subscriber(N(1))
    env.state.subscribe(sub, [O(i) for i in range(1, 6)])
    got = [r.object_id for r in env.state.take_pending(sub, 2)]
    assert got == [O(1), O(2)]
    assert [r.object_id for r in env.state.take_pending(sub, 10)] == [O(3), O(4), O(5)]
    assert env.state.take_pending(sub, 10) == []


# ---------------------------------------------------------------------- borrowers
def test_first_borrower_and_last_are_told_to_the_primary(env: Env) -> None:
    for n in (1, 2, 3):
        env.register(n)
    env.add(1, 1, primary=True)
    env.borrow(2, 1)
    assert env.notes(1) == ([O(1)], [])
    env.borrow(3, 1)
    assert env.notes(1) == ([], [])  # borrowed already
    assert set(env.row(1).borrowers) == {N(2), N(3)}
    env.unborrow(2, 1)
    assert env.notes(1) == ([], [])  # N(3) still borrows it
    env.unborrow(3, 1)
    assert env.notes(1) == ([], [O(1)])
    assert env.row(1).borrowers == () and env.row(1).state == PRESENT
    assert env.notes(2) == env.notes(3) == ([], [])


def test_borrow_notes_coalesce_to_the_current_state(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, 2, primary=True)
    env.borrow(2, 1, 2)
    env.unborrow(2, 1)
    assert env.notes(1) == ([O(2)], [O(1)])  # O(1): unborrowed before it was sent
    env.unborrow(2, 2)
    env.borrow(2, 2)
    env.unborrow(2, 2)
    env.borrow(2, 2)
    assert env.notes(1) == ([O(2)], [])


def test_borrow_notes_are_taken_in_batches(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, 2, 3, primary=True)
    env.borrow(2, 1, 2, 3)
    assert env.notes(1, limit=2) == ([O(1), O(2)], [])
    assert env.notes(1, limit=2) == ([O(3)], [])
    assert not env.state.nodes[N(1)].borrow_notes


def test_a_borrow_before_the_primary_reports_is_told_when_it_does(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.borrow(2, 1)
    assert env.notes(1) == ([], [])
    env.add(1, 1, primary=True)
    assert env.notes(1) == ([O(1)], [])
    env.add(2, 1, primary=False)  # a secondary copy on the borrower: no note
    assert env.notes(2) == ([], [])


def test_borrows_and_adds_of_one_report_apply_adds_first(env: Env) -> None:
    env.register(1)
    env.report(1, added=[(O(1), 10, True)], borrowed=[O(2)])
    env.register(2)
    env.report(2, added=[(O(2), 10, True)], borrowed=[O(1)])
    assert env.notes(1) == ([O(1)], []) and env.notes(2) == ([O(2)], [])


def test_a_dead_borrowers_borrows_end(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, primary=True)
    env.borrow(2, 1)
    env.notes(1)
    env.now += TIMEOUT / 2
    env.heartbeat(1)
    env.advance(TIMEOUT / 2 + 1)  # N(2) silent for longer than the timeout
    assert not env.state.nodes[N(2)].alive
    assert env.notes(1) == ([], [O(1)])
    assert env.row(1).state == PRESENT and not env.state.borrowers


def test_last_borrower_gone_after_the_primary_deletes_the_object(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.register(3)
    env.add(1, 1, 2, primary=True)
    env.add(2, 1, 2)  # secondary copies on the borrower
    env.borrow(2, 1, 2)
    env.report(1, spilled=[(O(1), "s3://b/1")])
    env.state.declare_dead(N(1))
    check(env.state)
    assert env.row(1).state == PRESENT  # borrowed: kept while N(2) holds refs
    env.unborrow(2, 1)
    assert env.row(1).state == DELETED
    assert env.state.spilled_objects == 0 and env.state.n_orphans_deleted == 1
    assert env.frees(2) == [O(1)]  # the copy left on the borrower is freed
    # The borrower's own death ends the other borrow the same way.
    env.state.declare_dead(N(2))
    check(env.state)
    assert env.row(2).state == DELETED and env.state.n_orphans_deleted == 2


def test_a_named_orphan_and_one_with_no_primary_are_kept(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.report(1, added=[(O(1), 10, True)], names={0: "kept"})
    env.add(2, 1, 2)
    env.borrow(2, 1, 2)
    env.state.declare_dead(N(1))
    check(env.state)
    env.unborrow(2, 1, 2)
    assert env.row(1).state == PRESENT and env.row(1).name == "kept"
    # O(2) has no primary on record (its primary has not reported it): kept.
    assert env.row(2).state == PRESENT and env.row(2).primary is None


def test_a_spilled_primary_without_its_memory_copy_is_still_told(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, primary=True)
    env.report(1, spilled=[(O(1), "s3://b/1")])
    env.report(1, removed=[O(1)])
    env.borrow(2, 1)
    env.unborrow(2, 1)
    assert env.notes(1) == ([], [O(1)])
    assert env.row(1).state == PRESENT


def test_a_new_process_of_the_primary_is_not_told_of_the_old_ones_objects(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, primary=True)
    env.add(2, 1)
    env.borrow(2, 1)
    env.notes(1)
    env.state.declare_dead(N(1))
    env.register(1, gen=1)  # the same id, a new process: it does not hold O(1)
    env.unborrow(2, 1)
    assert env.notes(1) == ([], [])
    assert env.row(1).state == DELETED and env.frees(2) == [O(1)]


def test_a_delete_forgets_the_borrowers_and_their_notes(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, primary=True)
    env.borrow(2, 1)
    env.delete(1, by=1)
    assert env.notes(1) == ([], [])  # deleted meanwhile: nothing to tell
    assert not env.state.borrowers and env.row(1).borrowers == ()
    env.unborrow(2, 1)  # the borrower's late end of it: nothing happens
    assert env.notes(1) == ([], [])


def test_a_full_report_replaces_the_borrow_set(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, 2, 3, primary=True)
    env.borrow(2, 1, 3)
    env.notes(1)
    env.register(2)  # the same process again (a lost connection): a full report
    env.report(2, borrowed=[O(1)], sync_begin=True)
    assert env.state.borrowers.borrowed_by(N(2)) == {O(1), O(3)}  # until the sync ends
    env.report(2, borrowed=[O(2)], sync_end=True)
    assert env.state.borrowers.borrowed_by(N(2)) == {O(1), O(2)}
    assert env.notes(1) == ([O(2)], [O(3)])


def test_a_primarys_full_report_is_told_of_its_borrowed_objects(env: Env) -> None:
    # After a directory restart, a borrower reports in full before the primary.
    env.register(2)
    env.report(2, borrowed=[O(1)], sync_begin=True, sync_end=True)
    env.register(1)
    env.report(1, added=[(O(1), 10, True), (O(2), 10, True)], sync_begin=True, sync_end=True)
    assert env.notes(1) == ([O(1)], [])


def test_borrow_notes_wake_the_primarys_stream(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, 2, primary=True)
    waker = Waker()
    env.state.attach(Subscriber(N(1), waker))
    env.borrow(2, 1)
    env.borrow(2, 2)
    assert waker.calls == 1  # once, when the first note came
    waker2 = Waker()
    env.state.attach(Subscriber(N(1), waker2))  # a new stream: notes wait
    assert waker2.calls == 1


def test_borrowers_are_not_persisted(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, primary=True)
    env.borrow(2, 1)
    fresh = reload(env.state, env.now)
    assert fresh.row(O(1)).borrowers == () and not fresh.borrowers


# ---------------------------------------------------------------------- persistence
def persist(state: DirectoryState) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    nodes = {}
    for nid in state.nodes:
        blob = state.encode_node(nid)
        assert blob is not None
        nodes[nid] = blob
    objects = {}
    for oid in state.objects:
        blob = state.encode_object(oid)
        assert blob is not None
        objects[oid] = blob
    return nodes, objects


def reload(state: DirectoryState, now: float) -> DirectoryState:
    nodes, objects = persist(state)
    fresh = DirectoryState(node_timeout=state.node_timeout)
    fresh.load(nodes, objects, now)
    check(fresh)
    return fresh


def norm(row: ObjectRow) -> tuple[object, ...]:
    """A row with its locations as a set (their order is not part of the state)."""
    return (
        row.object_id,
        row.state,
        row.size,
        row.primary,
        frozenset(row.nodes),
        row.name,
        row.spilled_url,
        row.spilled_node,
    )


def test_encode_of_gone_records(env: Env) -> None:
    assert env.state.encode_node(N(1)) is None
    assert env.state.encode_object(O(1)) is None


def test_persistence_round_trip(env: Env) -> None:
    env.register(
        1, address="h1:1", socket="/s1", hostname="hôte", pid=123, usage=Usage(1, 2, 3, 4, 5, 6, 7)
    )
    env.register(2)  # empty strings everywhere
    env.register(3, pid=2**31 - 1)
    env.report(1, added=[(O(1), 2**64 - 1, True), (O(2), 0, True)], names={0: "名前 ✓"})
    env.add(2, 1)
    env.add(3, 3, primary=True)
    env.report(3, spilled=[(O(3), "file:///spill/3")])
    env.add(2, 4, primary=True)
    env.report(2, spilled=[(O(4), "s3://b/ü")])
    env.reserve(2, "pending", 5, size=9)
    env.now += TIMEOUT + 1
    env.state.heartbeat(N(1), S(1), Usage(1, 2, 3, 4, 5, 6, 7), env.now)
    env.heartbeat(2)
    env.advance(0)  # node 3 dies: object 3 lost
    assert env.row(3).state == LOST
    fresh = reload(env.state, 5.0)
    assert set(fresh.nodes) == {N(1), N(2), N(3)}
    for nid, node in env.state.nodes.items():
        got = fresh.nodes[nid]
        assert (
            got.session,
            got.alive,
            got.usage,
            got.address,
            got.socket,
            got.hostname,
            got.pid,
            got.registered_at,
            got.objects,
        ) == (
            node.session,
            node.alive,
            node.usage,
            node.address,
            node.socket,
            node.hostname,
            node.pid,
            node.registered_at,
            node.objects,
        )
        assert got.last_seen == 5.0
    assert fresh.nodes[N(1)].hostname == "hôte"
    assert fresh.nodes[N(1)].usage == Usage(1, 2, 3, 4, 5, 6, 7)
    oids = [O(i) for i in range(1, 6)]
    assert [norm(r) for r in fresh.lookup(oids)] == [norm(r) for r in env.state.lookup(oids)]
    assert fresh.names == env.state.names == {"名前 ✓": O(1), "pending": O(5)}
    assert counters(fresh) == counters(env.state)
    assert fresh.nodes[N(2)].pending == {O(5)}


def test_load_gives_live_nodes_a_full_timeout(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.now += TIMEOUT - 1  # node 1 was almost dead when the directory stopped
    env.heartbeat(2)
    fresh = reload(env.state, 50.0)
    assert fresh.check_deaths(50.0 + TIMEOUT) == []
    assert sorted(fresh.check_deaths(50.0 + TIMEOUT + 0.1)) == [N(1), N(2)]
    check(fresh)


def test_load_objects_on_dead_nodes_are_lost(env: Env) -> None:
    env.register(1)
    env.register(2)
    env.add(1, 1, primary=True)
    env.add(1, 2, primary=True, size=8)
    env.report(1, spilled=[(O(2), "s3://b/2")])
    env.add(1, 3, primary=True)
    env.add(2, 3)
    _, objects = persist(env.state)  # written before the death...
    env.now += TIMEOUT + 1
    env.heartbeat(2)
    env.advance(0)
    nodes, _ = persist(env.state)  # ...the node record after it
    fresh = DirectoryState(node_timeout=TIMEOUT)
    fresh.load(nodes, objects, 0.0)
    check(fresh)
    assert not fresh.nodes[N(1)].alive
    assert fresh.row(O(1)).state == LOST
    assert fresh.row(O(2)).state == PRESENT and fresh.row(O(2)).spilled_url == "s3://b/2"
    assert fresh.row(O(3)).state == PRESENT and fresh.row(O(3)).nodes == (N(2),)
    assert fresh.n_lost == 1 and fresh.n_locations == 1


def test_load_objects_on_unknown_nodes_are_lost(env: Env) -> None:
    env.register(1)
    env.add(1, 1, primary=True)
    _, objects = persist(env.state)
    fresh = DirectoryState(node_timeout=TIMEOUT)
    fresh.load({}, objects, 0.0)
    check(fresh)
    assert fresh.row(O(1)).state == LOST


def test_load_pending_object_is_lost_when_its_creator_dies(env: Env) -> None:
    env.register(1)
    env.reserve(1, "p", 1)
    fresh = reload(env.state, 0.0)
    assert fresh.row(O(1)).state == PENDING
    assert fresh.check_deaths(TIMEOUT + 1) == [N(1)]
    check(fresh)
    assert fresh.row(O(1)).state == LOST


def test_load_pending_object_of_a_dead_creator_is_lost(env: Env) -> None:
    env.register(1)
    env.reserve(1, "p", 1)
    _, objects = persist(env.state)
    env.advance(TIMEOUT + 1)
    nodes, _ = persist(env.state)
    fresh = DirectoryState(node_timeout=TIMEOUT)
    fresh.load(nodes, objects, 0.0)
    check(fresh)
    assert fresh.row(O(1)).state == LOST and fresh.n_lost == 1


def test_dirty_hooks(env: Env) -> None:
    dirty_nodes: list[bytes] = []
    dirty_objects: list[bytes] = []
    env.state.on_dirty_node = dirty_nodes.append
    env.state.on_dirty_object = dirty_objects.append
    env.register(1)
    assert dirty_nodes == [N(1)]
    env.add(1, 1, primary=True)
    env.reserve(1, "n", 2)
    env.delete(1, by=1)
    assert dirty_objects == [O(1), O(2), O(1)]
    env.advance(TIMEOUT + 1)
    assert dirty_nodes[-1] == N(1) and O(2) == dirty_objects[-1]


# ---------------------------------------------------------------------- state machine
NODES = [1, 2, 3]
OBJECTS = [1, 2, 3, 4, 5, 6]
NAMES = ["a", "b", "ç"]


class DirectoryMachine(RuleBasedStateMachine):
    """Random cluster histories; :func:`check` after every step, plus model checks."""

    subs = Bundle("subs")

    def __init__(self) -> None:
        super().__init__()
        self.state = DirectoryState(node_timeout=TIMEOUT, deleted_memory=4, max_subscriptions=4)
        self.now = T0
        # node -> generation of its current process (its session)
        self.gen = dict.fromkeys(NODES, 0)
        self.dropped: list[Subscriber] = []

    # -- helpers
    def alive(self, n: int) -> bool:
        node = self.state.nodes.get(N(n))
        return node is not None and node.alive and node.session == S(n, self.gen[n])

    def _report(self, n: int, **kw: object) -> bool:
        try:
            self.state.report(N(n), S(n, self.gen[n]), self.now, **kw)  # type: ignore[arg-type]
        except NotRegisteredError:
            assert not self.alive(n)
            return False
        assert self.alive(n)
        return True

    # -- membership
    @rule(n=st.sampled_from(NODES), new_process=st.booleans())
    def register(self, n: int, new_process: bool) -> None:
        gen = self.gen[n] + 1 if new_process else self.gen[n]
        old = self.state.nodes.get(N(n))
        refuse = (
            old is not None
            and old.alive
            and old.session != S(n, gen)
            and self.now - old.last_seen <= TIMEOUT
        )
        keeps = old is not None and old.alive and old.session == S(n, gen)
        before = set(old.objects) if keeps and old is not None else set()
        try:
            node = self.state.register(N(n), S(n, gen), self.now, WALL0 + self.now)
        except ObjectExistsError:
            assert refuse
            return
        assert not refuse
        self.gen[n] = gen
        assert node.alive and node.session == S(n, gen)
        assert node.objects == before

    @rule(n=st.sampled_from(NODES))
    def heartbeat(self, n: int) -> None:
        try:
            self.state.heartbeat(N(n), S(n, self.gen[n]), Usage(objects=n), self.now)
        except NotRegisteredError:
            assert not self.alive(n)
        else:
            assert self.alive(n)

    @rule(dt=st.sampled_from([0.0, 1.0, TIMEOUT, TIMEOUT + 1]))
    def advance(self, dt: float) -> None:
        self.now += dt
        expect = {
            N(n)
            for n in NODES
            if (node := self.state.nodes.get(N(n))) is not None
            and node.alive
            and self.now - node.last_seen > TIMEOUT
        }
        dead = self.state.check_deaths(self.now)
        assert set(dead) == expect
        for nid in dead:
            assert not self.state.nodes[nid].objects

    # -- reports
    @rule(
        n=st.sampled_from(NODES),
        o=st.sampled_from(OBJECTS),
        size=st.sampled_from([0, 1, 1000]),
        primary=st.booleans(),
        name=st.sampled_from(["", *NAMES]),
    )
    def add(self, n: int, o: int, size: int, primary: bool, name: str) -> None:
        rec = self.state.objects.get(O(o))
        if rec is not None and rec.state == PENDING and rec.primary == N(n):
            primary = True  # a node reports its own puts as primary
        was_deleted = rec is None and O(o) in self.state.deleted
        if self._report(n, added=[(O(o), size, primary)], names={0: name}):
            if was_deleted:
                assert O(o) not in self.state.objects
                assert O(o) in self.state.nodes[N(n)].frees
            else:
                assert self.state.objects[O(o)].state == PRESENT
                assert N(n) in self.state.objects[O(o)].nodes

    @rule(n=st.sampled_from(NODES), o=st.sampled_from(OBJECTS))
    def remove(self, n: int, o: int) -> None:
        if self._report(n, removed=[O(o)]):
            assert O(o) not in self.state.nodes[N(n)].objects

    @rule(n=st.sampled_from(NODES), o=st.sampled_from(OBJECTS))
    def report_delete(self, n: int, o: int) -> None:
        if self._report(n, deleted=[O(o)]):
            assert O(o) not in self.state.objects

    @rule(
        n=st.sampled_from(NODES),
        o=st.sampled_from(OBJECTS),
        url=st.sampled_from(["s3://b/", "file:///spill/"]),
    )
    def spill(self, n: int, o: int, url: str) -> None:
        node = self.state.nodes.get(N(n))
        if node is None or O(o) not in node.objects:
            return  # a node spills only what it holds
        assert self._report(n, spilled=[(O(o), url + str(o))])
        assert self.state.objects[O(o)].spilled_node == N(n)

    @rule(n=st.sampled_from(NODES), keep=st.sets(st.sampled_from(OBJECTS)), split=st.booleans())
    def full_sync(self, n: int, keep: set[int], split: bool) -> None:
        node = self.state.nodes.get(N(n))
        if node is None or not node.alive:
            return
        held = sorted(o for o in keep if O(o) in node.objects)
        added = [
            (O(o), self.state.objects[O(o)].size, self.state.objects[O(o)].primary == N(n))
            for o in held
        ]
        if split:
            assert self._report(n, added=added[:1], sync_begin=True)
            assert self._report(n, added=added[1:], sync_end=True)
        else:
            assert self._report(n, added=added, sync_begin=True, sync_end=True)
        assert self.state.nodes[N(n)].objects == {O(o) for o in held}

    # -- names and deletes
    @rule(n=st.sampled_from(NODES), name=st.sampled_from(NAMES), o=st.sampled_from(OBJECTS))
    def reserve(self, n: int, name: str, o: int) -> None:
        owner = self.state.names.get(name)
        exists = O(o) in self.state.objects
        try:
            self.state.reserve_name(N(n), S(n, self.gen[n]), name, O(o), 10, self.now)
        except NotRegisteredError:
            assert not self.alive(n)
        except ObjectExistsError:
            assert (owner is not None and owner != O(o)) or (owner is None and exists)
        else:
            assert owner in (None, O(o))
            assert self.state.resolve_name(name) == O(o)

    @rule(by=st.sampled_from([None, *NODES]), o=st.sampled_from(OBJECTS))
    def delete(self, by: int | None, o: int) -> None:
        rec = self.state.objects.get(O(o))
        holders = set(rec.nodes) if rec is not None else set()
        requester = None if by is None else N(by)
        got = self.state.delete([O(o)], requester=requester)
        assert got == (rec is not None)
        if rec is not None:
            assert self.state.row(O(o)).state == DELETED
            for nid in holders - {requester}:
                assert O(o) in self.state.nodes[nid].frees
            if rec.name:
                assert rec.name not in self.state.names

    # -- borrowers
    @rule(n=st.sampled_from(NODES), oids=st.sets(st.sampled_from(OBJECTS), max_size=3))
    def borrow(self, n: int, oids: set[int]) -> None:
        if self._report(n, borrowed=[O(o) for o in oids]):
            node = self.state.nodes[N(n)]
            if node.borrow_sync is None:
                assert {O(o) for o in oids} <= self.state.borrowers.borrowed_by(N(n))

    @rule(n=st.sampled_from(NODES), oids=st.sets(st.sampled_from(OBJECTS), max_size=3))
    def unborrow(self, n: int, oids: set[int]) -> None:
        if self._report(n, unborrowed=[O(o) for o in oids]):
            node = self.state.nodes[N(n)]
            if node.borrow_sync is None:
                assert not {O(o) for o in oids} & self.state.borrowers.borrowed_by(N(n))

    @rule(n=st.sampled_from(NODES), limit=st.integers(1, 3))
    def take_borrow_notes(self, n: int, limit: int) -> None:
        borrowed, unborrowed = self.state.take_borrow_notes(N(n), limit)
        assert len(borrowed) + len(unborrowed) <= limit
        assert not set(borrowed) & set(unborrowed)
        for oid in borrowed + unborrowed:
            assert self.state.objects[oid].primary == N(n)
            assert (oid in self.state.borrowers) == (oid in borrowed)

    @rule(n=st.sampled_from(NODES), limit=st.integers(1, 3))
    def take_frees(self, n: int, limit: int) -> None:
        node = self.state.nodes.get(N(n))
        before = list(node.frees) if node is not None else []
        assert self.state.take_frees(N(n), limit) == before[:limit]

    # -- subscriptions
    @rule(target=subs, n=st.sampled_from(NODES))
    def attach(self, n: int) -> Subscriber:
        sub = Subscriber(N(n))
        if not self.alive(n):
            return sub  # the server refuses the stream; never attached
        old = self.state.attach(sub)
        if old is not None:
            self.dropped.append(old)
        return sub

    @rule(sub=subs, oids=st.sets(st.sampled_from(OBJECTS), max_size=3))
    def subscribe(self, sub: Subscriber, oids: set[int]) -> None:
        try:
            self.state.subscribe(sub, [O(o) for o in oids])
        except TooManySubscriptionsError:
            assert len(sub.subscribed) >= self.state.max_subscriptions
        else:
            if not sub.closed:
                assert {O(o) for o in oids} <= set(sub.pending)

    @rule(sub=subs, oids=st.sets(st.sampled_from(OBJECTS), max_size=3))
    def unsubscribe(self, sub: Subscriber, oids: set[int]) -> None:
        self.state.unsubscribe(sub, [O(o) for o in oids])
        assert not sub.subscribed & {O(o) for o in oids}

    @rule(sub=consumes(subs))
    def drop(self, sub: Subscriber) -> None:
        self.state.drop_subscriber(sub)
        self.dropped.append(sub)

    @rule(sub=subs, limit=st.integers(1, 4))
    def take_pending(self, sub: Subscriber, limit: int) -> None:
        expect = list(sub.pending)[:limit]
        rows = self.state.take_pending(sub, limit)
        assert [r.object_id for r in rows] == expect
        assert rows == self.state.lookup(expect)
        assert not set(expect) & set(sub.pending)

    # -- persistence
    @rule()
    def persist_and_reload(self) -> None:
        fresh = reload(self.state, self.now)
        oids = list(self.state.objects)
        assert [norm(r) for r in fresh.lookup(oids)] == [norm(r) for r in self.state.lookup(oids)]
        assert fresh.names == self.state.names
        assert counters(fresh) == counters(self.state)
        assert {n: (r.alive, r.session) for n, r in fresh.nodes.items()} == {
            n: (r.alive, r.session) for n, r in self.state.nodes.items()
        }

    # -- invariants
    @invariant()
    def consistent(self) -> None:
        check(self.state)

    @invariant()
    def dropped_streams_hold_nothing(self) -> None:
        for sub in self.dropped:
            check_dropped(self.state, sub)

    @invariant()
    def lost_objects_have_no_live_copy(self) -> None:
        for rec in self.state.objects.values():
            if rec.state == LOST:
                assert not rec.nodes and not rec.spilled_url


DirectoryMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=60, deadline=None
)
TestDirectoryMachine = DirectoryMachine.TestCase
