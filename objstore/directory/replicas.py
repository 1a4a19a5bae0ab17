"""Replica counts, pure: which nodes keep a copy of an object put with ``replicas=N``.

The directory keeps, per replicated object, the count wanted, the nodes that
hold a copy kept for it (its primary node, and nodes that were asked and
reported the copy), and the nodes asked that have not answered yet, each with
a deadline.  :meth:`Replicas.plan` chooses more nodes while the held and asked
copies are fewer than wanted: nodes that hold an evictable copy already come
first (nothing to move), then the ones with the most free memory.  A node
whose attempt ran past its deadline is tried again only when no other is left.

The caller (:class:`~objstore.directory.state.DirectoryState`) tells it of
copies reported and removed, node deaths and deletes, and sends the asks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Replicas", "Candidate"]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A live node that could keep a copy."""

    node_id: bytes
    free_bytes: int
    has_copy: bool


@dataclass(slots=True)
class _Want:
    count: int
    held: set[bytes] = field(default_factory=set)
    # node id -> deadline of its attempt.
    asked: dict[bytes, float] = field(default_factory=dict)
    # Nodes whose attempt ran out: chosen again only when no other is left.
    tried: set[bytes] = field(default_factory=set)


class Replicas:
    """See the module docstring."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self.wants: dict[bytes, _Want] = {}
        # Objects that have fewer held and asked copies than wanted because no
        # live node was left to ask (retried when a node registers).
        self.short: set[bytes] = set()
        self.asked_total = 0
        self.expired_total = 0

    def __contains__(self, oid: bytes) -> bool:
        return oid in self.wants

    def __len__(self) -> int:
        return len(self.wants)

    def want(self, oid: bytes, count: int, primary: bytes) -> None:
        """``oid`` (primary on ``primary``) must be kept on ``count`` nodes."""
        w = self.wants.get(oid)
        if w is None:
            w = self.wants[oid] = _Want(count)
        w.count = max(w.count, count)
        w.held.add(primary)
        w.asked.pop(primary, None)

    def wanted(self, oid: bytes) -> int:
        w = self.wants.get(oid)
        return w.count if w is not None else 0

    def held(self, oid: bytes) -> frozenset[bytes]:
        w = self.wants.get(oid)
        return frozenset(w.held) if w is not None else frozenset()

    def asked(self, oid: bytes) -> int:
        w = self.wants.get(oid)
        return len(w.asked) if w is not None else 0

    def reported(self, oid: bytes, node: bytes) -> bool:
        """A node reported a copy; True if it was asked for one (it holds it now)."""
        w = self.wants.get(oid)
        if w is None or w.asked.pop(node, None) is None:
            return False
        w.held.add(node)
        w.tried.discard(node)
        return True

    def removed(self, oid: bytes, node: bytes) -> bool:
        """The node has no copy any more (evicted, restarted, dead); True if it held or was asked."""
        w = self.wants.get(oid)
        if w is None:
            return False
        had = node in w.held or node in w.asked
        w.held.discard(node)
        w.asked.pop(node, None)
        return had

    def drop_node(self, node: bytes) -> list[bytes]:
        """A node died: the objects it held or was asked for (to plan again)."""
        out = []
        for oid, w in self.wants.items():
            if node in w.held or node in w.asked:
                w.held.discard(node)
                w.asked.pop(node, None)
                out.append(oid)
            w.tried.discard(node)
        return out

    def forget(self, oid: bytes) -> None:
        self.wants.pop(oid, None)
        self.short.discard(oid)

    def plan(self, oid: bytes, candidates: Iterable[Candidate], now: float) -> list[bytes]:
        """Nodes to ask now for a copy of ``oid`` (recorded as asked, with a deadline)."""
        w = self.wants.get(oid)
        if w is None:
            return []
        need = w.count - len(w.held) - len(w.asked)
        if need <= 0:
            self.short.discard(oid)
            return []
        fresh: list[Candidate] = []
        retry: list[Candidate] = []
        for c in candidates:
            if c.node_id in w.held or c.node_id in w.asked:
                continue
            (retry if c.node_id in w.tried else fresh).append(c)
        order = sorted(fresh, key=_preference) + sorted(retry, key=_preference)
        chosen = [c.node_id for c in order[:need]]
        for nid in chosen:
            w.asked[nid] = now + self.timeout
            w.tried.discard(nid)
        self.asked_total += len(chosen)
        if len(chosen) < need:
            self.short.add(oid)
        else:
            self.short.discard(oid)
        return chosen

    def expire(self, now: float) -> list[bytes]:
        """Objects with an attempt past its deadline (those nodes become ``tried``)."""
        out = []
        for oid, w in self.wants.items():
            late = [nid for nid, deadline in w.asked.items() if deadline <= now]
            if late:
                for nid in late:
                    del w.asked[nid]
                    w.tried.add(nid)
                self.expired_total += len(late)
                out.append(oid)
        return out

    def check(self) -> None:
        """Invariants (the tests call it)."""
        for oid, w in self.wants.items():
            assert w.count >= 1, oid.hex()
            assert not (w.held & w.asked.keys()), oid.hex()
        assert self.short <= self.wants.keys()


def _preference(c: Candidate) -> tuple[bool, int, bytes]:
    # A node with a copy first (nothing to move), then the most free memory.
    return (not c.has_copy, -c.free_bytes, c.node_id)
