"""Reference counting as a whole, simulated: a hypothesis state machine.

Nodes run the real :class:`objstore.node.refs.RefTable` (a fake clock), each
process counts its refs with the real :class:`objstore.ref.RefTracker` (its
batches of first-ref / last-ref / pickled transitions are what reaches the
node), and the directory is modelled here: per object the set of nodes that
borrow it, telling the object's primary node when that set becomes non-empty
("borrowed") or empty ("unborrowed"), and telling every other node when a
primary deleted it ("free").

Every channel is FIFO and delays each message by at most ``HOP`` seconds: a
process's unsent batch, process -> its node, node -> directory, directory ->
node.  So a ref unpickled at ``t`` is registered at its object's primary by
``t + 4 * HOP``, and a ref pickled at ``t0`` may be unpickled while
``t + 4 * HOP < t0 + GRACE``: later, it is the user's fault (the pickled ref
is then just stale, and nothing here unpickles it).

Invariants, after every step: each node's ``RefTable.check``; an object is
freed (its primary handed out ``free``) only if nothing can reach it -- no live
ref in a live process, no pickled ref that may still be unpickled, no named
object, no live container (transitively) -- and never while a container that
is not freed refers to it; nothing is freed twice.  After quiescing (every
batch sent, every message delivered, every grace over): every object nothing
can reach is freed (no leak), each node's client holds mirror the processes'
live refs exactly, and the directory's borrowers are exactly the non-primary
nodes with an entry.

A process that crashes loses its unsent batch; a ref it pickled in that batch
is taken out of flight with it (see the note in the report / docs: a pickled
ref's grace starts only when the batch reaches the node).
"""

from __future__ import annotations

import functools
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from objstore.node.refs import RefActions, RefTable
from objstore.ref import _ADD, _DROP, _PICKLE, RefTracker

GRACE = 10.0  # the node's borrow grace
HOP = 1.0  # the longest a message (or a process's unsent batch) waits
WINDOW = GRACE - 4 * HOP  # how long after pickling a ref may be unpickled
FREE_NOW = 1  # frees per apply; the rest later (the service's budget, small)
MAX_PROCS = 6
# Whether a put's new ref is counted before the next event (True) or in the
# process's next batch (False).  Both must hold: RefTracker.count() reports an id
# made and dropped within one batch as dropped (a put's connection holds it
# already), which is what once leaked `await client.put(x)` with the result
# unused; the real client counts a put's ref at once (ObjectRef._of_put).
PUT_COUNTS_AT_ONCE = False
# A pickled ref's grace starts when the process's batch reaches its node.  On the
# event loop's thread the client sends it from __reduce__ itself (RefTracker.urgent),
# before the pickled bytes can leave; a ref pickled on another thread waits for the
# next loop turn, and a process that crashes in between loses the grace (the
# receiver's ref may outlive its object).  The machine assumes the batch goes first (a handed-over ref is flushed
# before the receiver has it; a crash takes unsent pickled refs out of flight);
# True lets hand_over find that race.
CRASH_LOSES_GRACE = False

DIR = -1  # the directory, as a channel end


@dataclass
class Obj:
    oid: bytes
    node: int
    named: bool
    contents: list[bytes]
    freed: bool = False  # its primary handed out `free`
    deleted: bool = False  # its primary's store deleted it


@dataclass
class Pickled:
    """A pickled ref in flight (a message some process may unpickle later)."""

    key: int
    oid: bytes
    at: float
    by: int


@dataclass
class Proc:
    cid: int
    node: int
    tracker: RefTracker = field(default_factory=RefTracker)
    live: Counter[bytes] = field(default_factory=Counter)
    pending_since: float | None = None  # oldest event not yet sent to the node
    unsent_pickles: list[Pickled] = field(default_factory=list)
    # Client._held: the ids this process told its node it holds (a put's too).
    told: set[bytes] = field(default_factory=set)
    alive: bool = True


class Node:
    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.store: set[bytes] = set()  # primaries here, not deleted
        self.refs = RefTable(GRACE, self.store.__contains__)
        self.todo = RefActions()
        self.free_q: deque[bytes] = deque()


def _step(fn: Callable[..., None]) -> Callable[..., None]:
    """Mark the machine unchecked until the invariants pass after this step."""

    @functools.wraps(fn)
    def wrapper(self: RefsMachine, **kw: Any) -> None:
        self.clean = False
        self.steps += 1
        fn(self, **kw)

    return wrapper


def _pick(seq: list[Any], k: int) -> Any:
    return seq[k % len(seq)]


PICK = st.integers(0, 255)


class RefsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.nodes: list[Node] = []
        self.procs: dict[int, Proc] = {}
        self.objects: dict[bytes, Obj] = {}
        self.bag: dict[int, Pickled] = {}
        # (src, dst) -> FIFO of (sent at, message); src/dst: ("p", cid), node idx or DIR.
        self.chans: dict[tuple[Any, Any], deque[tuple[float, tuple[Any, ...]]]] = {}
        self.borrowers: dict[bytes, set[int]] = {}
        self.dir_deleted: set[bytes] = set()
        self.log: list[str] = []
        self.next_id = 0
        self.next_cid = 1
        self.next_key = 0
        self.clean = True
        self.steps = 0
        self.quiesced = False

    # ------------------------------------------------------------ helpers
    def say(self, text: str) -> None:
        self.log.append(f"t={self.now:g} {text}")

    def trace(self) -> str:
        return "\n".join(self.log[-60:])

    def send(self, src: Any, dst: Any, msg: tuple[Any, ...]) -> None:
        self.chans.setdefault((src, dst), deque()).append((self.now, msg))

    def name(self, oid: bytes) -> str:
        o = self.objects.get(oid)
        return f"o{int.from_bytes(oid, 'big')}@n{o.node}" if o else oid.hex()

    def alive(self) -> list[Proc]:
        return [p for p in self.procs.values() if p.alive]

    def holders(self) -> list[Proc]:
        return [p for p in self.procs.values() if p.alive and p.live]

    def note(self, p: Proc, oid: bytes, what: int) -> None:
        p.tracker.note(oid, what)
        if p.pending_since is None:
            p.pending_since = self.now

    def usable(self, item: Pickled) -> bool:
        return self.now < item.at + WINDOW

    # ------------------------------------------------------------ the node
    def apply(self, n: Node) -> None:
        """objstore.node.objects.ObjectService._apply_refs."""
        todo = n.todo
        budget = FREE_NOW
        while todo or (n.free_q and budget > 0):
            borrow, todo.borrow = todo.borrow, []
            unborrow, todo.unborrow = todo.unborrow, []
            for oid in borrow:
                self.send(n.idx, DIR, ("borrow", oid))
            for oid in unborrow:
                self.send(n.idx, DIR, ("unborrow", oid))
            for oid in todo.free:
                o = self.objects[oid]
                assert o.node == n.idx, f"{self.name(oid)} freed by n{n.idx}\n{self.trace()}"
                assert not o.freed, f"{self.name(oid)} freed twice\n{self.trace()}"
                o.freed = True
                self.say(f"n{n.idx} frees {self.name(oid)}")
                n.free_q.append(oid)
            todo.free = []
            if not n.free_q or budget <= 0:
                continue
            chunk = [n.free_q.popleft() for _ in range(min(budget, len(n.free_q)))]
            budget -= len(chunk)
            for oid in chunk:
                n.store.discard(oid)
                self.objects[oid].deleted = True
                n.refs.forget(oid, self.now, todo)  # object_deleted
                self.send(n.idx, DIR, ("deleted", oid))

    def node_gets(self, n: Node, src: Any, msg: tuple[Any, ...]) -> None:
        refs, now, out = n.refs, self.now, n.todo
        kind = msg[0]
        if kind == "refs":  # ObjectService.refs_changed
            _, cid, held, dropped, pickled = msg
            if pickled:
                refs.pickled(pickled, now, out)
                refs.expire(now, out)
            if held:
                refs.add(cid, held, now, out)
            if dropped:
                refs.drop(cid, dropped, now, out)
        elif kind == "gone":
            # In slices of one, as the service lets go of a big client's refs
            # over several turns: the invariants hold in between.
            while not refs.client_gone(msg[1], now, out, 1):
                self.apply(n)
                refs.check(now)
        elif kind == "borrowed":
            refs.borrowed([msg[1]])
        elif kind == "unborrowed":
            refs.unborrowed([msg[1]], now, out)
        elif kind == "free":  # on_free: deleted on its primary
            refs.forget(msg[1], now, out)
        else:
            raise AssertionError(msg)
        self.apply(n)

    def directory_gets(self, src: int, msg: tuple[Any, ...]) -> None:
        kind, oid = msg
        primary = self.objects[oid].node
        if kind == "deleted":
            self.dir_deleted.add(oid)
            self.borrowers.pop(oid, None)
            for n in self.nodes:
                if n.idx != primary:
                    self.send(DIR, n.idx, ("free", oid))
            return
        if oid in self.dir_deleted:
            return
        assert src != primary, f"primary n{src} sent {kind} {self.name(oid)}"
        who = self.borrowers.setdefault(oid, set())
        before = bool(who)
        if kind == "borrow":
            who.add(src)
        else:
            who.discard(src)
        if before != bool(who):
            self.send(DIR, primary, ("borrowed" if who else "unborrowed", oid))
        if not who:
            del self.borrowers[oid]

    def deliver(self, key: tuple[Any, Any]) -> None:
        q = self.chans[key]
        _, msg = q.popleft()
        if not q:
            del self.chans[key]
        src, dst = key
        self.say(f"deliver {src}->{dst} {self.show(msg)}")
        if dst == DIR:
            self.directory_gets(src, msg)
        else:
            self.node_gets(self.nodes[dst], src, msg)

    def show(self, msg: tuple[Any, ...]) -> str:
        parts = []
        for m in msg:
            if isinstance(m, bytes):
                parts.append(self.name(m))
            elif isinstance(m, list):
                parts.append("[" + ",".join(self.name(x) for x in m) + "]")
            else:
                parts.append(str(m))
        return " ".join(parts)

    def flush(self, p: Proc) -> None:
        """RefTracker.flush and Client._refs_changed: the unsent batch goes to the node."""
        held, dropped, pickled = p.tracker.count()
        p.pending_since = None
        p.unsent_pickles.clear()
        add = [o for o in held if o not in p.told]
        p.told.update(add)
        gone = [o for o in dropped if o in p.told]
        p.told.difference_update(gone)
        if add or gone or pickled:
            self.send(("p", p.cid), p.node, ("refs", p.cid, add, gone, pickled))

    def due(self) -> tuple[float, Callable[[], None]] | None:
        """The earliest deadline: a batch or a message that must be through by then."""
        best: tuple[float, Callable[[], None]] | None = None
        for key, q in self.chans.items():
            t = q[0][0] + HOP
            if best is None or t < best[0]:
                best = (t, functools.partial(self.deliver, key))
        for p in self.procs.values():
            if p.pending_since is not None:
                t = p.pending_since + HOP
                if best is None or t < best[0]:
                    best = (t, functools.partial(self.flush, p))
        return best

    def run_until(self, target: float) -> None:
        while True:
            d = self.due()
            if d is None or d[0] > target:
                break
            self.now = max(self.now, d[0])
            d[1]()
        self.now = max(self.now, target)

    def reachable(self) -> set[bytes]:
        roots: list[bytes] = []
        for p in self.procs.values():
            if p.alive:
                roots.extend(p.live)
        roots.extend(i.oid for i in self.bag.values() if self.usable(i))
        roots.extend(o.oid for o in self.objects.values() if o.named and not o.freed)
        seen: set[bytes] = set()
        while roots:
            oid = roots.pop()
            if oid in seen:
                continue
            seen.add(oid)
            roots.extend(self.objects[oid].contents)
        return seen

    # ------------------------------------------------------------ rules
    @initialize(
        n_nodes=st.integers(2, 3),
        placement=st.lists(st.integers(0, 2), min_size=2, max_size=4),
    )
    def setup(self, n_nodes: int, placement: list[int]) -> None:
        self.nodes = [Node(i) for i in range(n_nodes)]
        for where in placement:
            self.spawn_on(where % n_nodes)

    def spawn_on(self, node: int) -> None:
        p = Proc(self.next_cid, node)
        self.next_cid += 1
        self.procs[p.cid] = p
        self.say(f"p{p.cid} starts on n{node}")

    @precondition(lambda self: self.alive())
    @rule(k=PICK, named=st.booleans(), inner=st.lists(PICK, max_size=3))
    @_step
    def put(self, k: int, named: bool, inner: list[int]) -> None:
        """A process puts a new object (on its node), its value maybe holding refs."""
        p = _pick(self.alive(), k)
        mine = sorted(p.live)
        contained = [_pick(mine, i) for i in inner] if mine else []
        # The put is a request on the connection: what was sent before arrives first.
        while (key := (("p", p.cid), p.node)) in self.chans:
            self.deliver(key)
        self.next_id += 1
        oid = self.next_id.to_bytes(20, "big")
        n = self.nodes[p.node]
        self.objects[oid] = Obj(oid, p.node, named, contained)
        n.store.add(oid)
        self.say(
            f"p{p.cid} puts {self.name(oid)}{' named' if named else ''}"
            f" holding [{','.join(self.name(i) for i in contained)}]"
        )
        n.refs.put(p.cid, oid, named, contained, self.now, n.todo)
        self.apply(n)
        p.told.add(oid)  # the node counts the put's connection as holding it
        p.live[oid] += 1
        self.note(p, oid, _ADD)
        if PUT_COUNTS_AT_ONCE:
            self.flush(p)

    @precondition(lambda self: self.holders())
    @rule(k=PICK, j=PICK)
    @_step
    def copy(self, k: int, j: int) -> None:
        p = _pick(self.holders(), k)
        oid = _pick(sorted(p.live), j)
        self.say(f"p{p.cid} copies {self.name(oid)}")
        p.live[oid] += 1
        self.note(p, oid, _ADD)

    @precondition(lambda self: self.holders())
    @rule(k=PICK, j=PICK)
    @_step
    def drop(self, k: int, j: int) -> None:
        p = _pick(self.holders(), k)
        oid = _pick(sorted(p.live), j)
        self.say(f"p{p.cid} drops {self.name(oid)}")
        p.live[oid] -= 1
        if not p.live[oid]:
            del p.live[oid]
        self.note(p, oid, _DROP)

    @precondition(lambda self: self.holders())
    @rule(k=PICK, j=PICK)
    @_step
    def pickle(self, k: int, j: int) -> None:
        p = _pick(self.holders(), k)
        oid = _pick(sorted(p.live), j)
        self.next_key += 1
        item = Pickled(self.next_key, oid, self.now, p.cid)
        self.bag[item.key] = item
        p.unsent_pickles.append(item)
        self.say(f"p{p.cid} pickles {self.name(oid)} as m{item.key}")
        self.note(p, oid, _PICKLE)

    def usable_items(self) -> list[Pickled]:
        return [i for i in self.bag.values() if self.usable(i)]

    @precondition(lambda self: self.alive() and self.usable_items())
    @rule(k=PICK, j=PICK, keep=st.booleans())
    @_step
    def unpickle(self, k: int, j: int, keep: bool) -> None:
        """A process on any node unpickles a ref in flight (while it may)."""
        p = _pick(self.alive(), k)
        item = _pick(self.usable_items(), j)
        if not keep:
            del self.bag[item.key]
        self.say(f"p{p.cid} unpickles m{item.key} {self.name(item.oid)}")
        p.live[item.oid] += 1
        self.note(p, item.oid, _ADD)

    @precondition(lambda self: self.holders() and len(self.alive()) > 1)
    @rule(k=PICK, j=PICK, m=PICK, drop=st.booleans())
    @_step
    def hand_over(self, k: int, j: int, m: int, drop: bool) -> None:
        """A process pickles a ref (maybe dropping its own) and another process,
        on another node if there is one, unpickles it now."""
        p = _pick(self.holders(), k)
        others = [q for q in self.alive() if q is not p]
        far = [q for q in others if q.node != p.node]
        q = _pick(far or others, m)
        oid = _pick(sorted(p.live), j)
        self.say(f"p{p.cid} hands {self.name(oid)} to p{q.cid}{' and drops it' if drop else ''}")
        self.next_key += 1
        item = Pickled(self.next_key, oid, self.now, p.cid)
        p.unsent_pickles.append(item)
        self.note(p, oid, _PICKLE)
        if drop:
            p.live[oid] -= 1
            if not p.live[oid]:
                del p.live[oid]
            self.note(p, oid, _DROP)
        if not CRASH_LOSES_GRACE:
            self.flush(p)
        q.live[oid] += 1
        self.note(q, oid, _ADD)

    @precondition(lambda self: self.bag)
    @rule(j=PICK)
    @_step
    def lose(self, j: int) -> None:
        item = _pick(sorted(self.bag.values(), key=lambda i: i.key), j)
        del self.bag[item.key]
        self.say(f"m{item.key} lost")

    def getters(self) -> list[tuple[Proc, bytes]]:
        return [
            (p, oid) for p in self.holders() for oid in sorted(p.live) if self.objects[oid].contents
        ]

    @precondition(lambda self: self.getters())
    @rule(k=PICK)
    @_step
    def get(self, k: int) -> None:
        """A process holding a container gets its value: refs to what it contains."""
        p, oid = _pick(self.getters(), k)
        o = self.objects[oid]
        assert not o.freed, f"p{p.cid} gets freed {self.name(oid)}\n{self.trace()}"
        self.say(f"p{p.cid} gets {self.name(oid)}")
        for i in o.contents:
            p.live[i] += 1
            self.note(p, i, _ADD)

    @precondition(lambda self: any(p.pending_since is not None for p in self.alive()))
    @rule(k=PICK)
    @_step
    def send_batch(self, k: int) -> None:
        p = _pick([p for p in self.alive() if p.pending_since is not None], k)
        self.say(f"p{p.cid} sends its batch")
        self.flush(p)

    @precondition(lambda self: len(self.alive()) > 1)
    @rule(k=PICK, graceful=st.booleans(), respawn=st.booleans())
    @_step
    def die(self, k: int, graceful: bool, respawn: bool) -> None:
        """A process exits (its batch sent) or crashes (its batch lost); its
        connection closes after what it sent.  Maybe a new one starts there."""
        p = _pick(self.alive(), k)
        if respawn and len(self.procs) < MAX_PROCS:
            self.spawn_on(p.node)
        self.say(f"p{p.cid} {'exits' if graceful else 'crashes'}")
        if graceful:
            self.flush(p)
        else:
            for item in p.unsent_pickles:
                self.bag.pop(item.key, None)
            p.unsent_pickles.clear()
            p.tracker = RefTracker()
            p.pending_since = None
        p.alive = False
        p.live.clear()
        self.send(("p", p.cid), p.node, ("gone", p.cid))

    def pending_work(self) -> list[Any]:
        return sorted(self.chans, key=repr) + [n for n in self.nodes if n.free_q]

    @precondition(lambda self: self.pending_work())
    @rule(k=PICK)
    @_step
    def deliver_one(self, k: int) -> None:
        """The head of one channel arrives, or a node frees more of its queue."""
        what = _pick(self.pending_work(), k)
        if isinstance(what, Node):
            self.apply(what)  # ObjectService._free_later
        else:
            self.deliver(what)

    @rule(
        dt=st.sampled_from([0.25, 1.0, 2.5, 6.0, 11.0]),
        timers=st.lists(st.booleans(), min_size=3, max_size=3),
    )
    @_step
    def advance(self, dt: float, timers: list[bool]) -> None:
        """Time passes (what is due arrives on time); some nodes' grace timers fire."""
        self.run_until(self.now + dt)
        self.say(f"time is {self.now:g}")
        for n, fire in zip(self.nodes, timers):
            if fire:
                n.refs.expire(self.now, n.todo)
                self.apply(n)

    @precondition(lambda self: self.steps >= 20 and not self.quiesced)
    @rule()
    @_step
    def quiesce(self) -> None:
        """Once a run, midway: settle everything, check, and go on from there."""
        self.quiesced = True
        self.settle_and_check()

    # ------------------------------------------------------------ checks
    def settle_and_check(self) -> None:
        """Send every batch, deliver everything, let every grace end: then nothing
        nothing reaches is left, and the nodes' views are exact."""
        self.say("quiesce")
        for _ in range(100):
            for p in self.alive():
                if p.pending_since is not None:
                    self.flush(p)
            self.run_until(self.now + 2 * GRACE)
            for n in self.nodes:
                n.refs.expire(self.now, n.todo)
                while n.free_q or n.todo:
                    self.apply(n)
            if not self.chans:
                break
        else:
            raise AssertionError("does not quiesce")
        self.bag.clear()  # all stale now
        self.check_safety()
        reach = self.reachable()
        for o in self.objects.values():
            if not o.freed and not o.named and o.oid not in reach:
                raise AssertionError(f"leak: {self.name(o.oid)}\n{self.trace()}")
        truth = {(p.cid, oid) for p in self.alive() for oid in p.live}
        for n in self.nodes:
            seen = {(c, oid) for oid, h in n.refs.objects.items() for c in h.clients}
            want = {(c, oid) for c, oid in truth if self.procs[c].node == n.idx}
            assert seen == want, (n.idx, seen ^ want, self.trace())
            for oid, h in n.refs.objects.items():
                assert h.grace_until <= self.now
                assert h.primary == (self.objects[oid].node == n.idx), (n.idx, oid)
        for oid, o in self.objects.items():
            if o.deleted:
                continue
            holding = {n.idx for n in self.nodes if n.idx != o.node and oid in n.refs.objects}
            assert self.borrowers.get(oid, set()) == holding, (self.name(oid), self.trace())
            h = self.nodes[o.node].refs.objects.get(oid)
            assert h is not None, self.name(oid)
            assert h.borrowed == bool(holding), (self.name(oid), h, self.trace())

    def check_safety(self) -> None:
        reach = self.reachable()
        for o in self.objects.values():
            if o.freed:
                assert o.oid not in reach, f"{self.name(o.oid)} freed but reachable\n{self.trace()}"
            else:
                assert not o.deleted
                for i in o.contents:
                    assert not self.objects[i].freed, (
                        f"{self.name(i)} freed inside live {self.name(o.oid)}\n{self.trace()}"
                    )

    @invariant()
    def consistent(self) -> None:
        for n in self.nodes:
            n.refs.check(self.now)
        self.check_safety()
        self.clean = True

    def teardown(self) -> None:
        if self.clean and self.nodes:
            self.settle_and_check()


RefsMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestRefsPolicy = RefsMachine.TestCase
