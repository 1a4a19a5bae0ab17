"""Relays: which node a receiver of a large object pulls it from (pure).

A broadcast of one object to many nodes costs one transfer when receivers
forward what they have received as it arrives, in chains (Hoplite, SIGCOMM
'21): the source sends the object once, to the first receiver, which sends
each chunk on to the second as soon as it holds it, and so on.  The
directory keeps the tree: :meth:`RelayTree.attach` gives a node that starts
pulling an object the sender it is to pull from, and records the node as a
*partial copy* that later receivers may be attached to.

Rules:

* A sender is a node holding the object whole (the directory's row lists
  it) or a node receiving it now (a partial copy).  It serves at most
  ``fanout`` receivers of one object at once.
* A new receiver goes to the sender with the fewest receivers; on a tie, a
  whole copy before a partial one, then the partial copy attached first
  (it is furthest along).  With every sender busy the source's link is the
  bottleneck either way, and ``attach`` answers None: the caller pulls from
  a whole copy of its own choosing, as without relays.
* Never a cycle: a node is never attached below itself (its receivers, their
  receivers ...), so a chain always ends at a whole copy.
* A receiver whose sender failed attaches again, naming the senders it gave
  up on (``exclude``); its own receivers stay attached to it.
* A receiver leaves the tree when it holds the object whole (it is then a
  sender like any holder, and its receivers stay), when it gives up
  (:meth:`detach`), when its node dies (:meth:`node_dead`; its receivers
  find out from their failing pulls and attach again), or when the object
  is deleted (:meth:`object_gone`).
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable

__all__ = ["RelayTree"]


class RelayTree:
    """The relay tree of every object being received by some node; see the module."""

    def __init__(self, fanout: int = 2) -> None:
        if fanout < 1:
            raise ValueError(f"relay fan-out must be at least 1, not {fanout}")
        self.fanout = fanout
        # object id -> receiving node -> (its sender, the order it attached in).
        self._receivers: dict[bytes, dict[bytes, tuple[bytes, int]]] = {}
        self._seq = itertools.count()
        self.attached = 0

    def __contains__(self, oid: bytes) -> bool:
        return oid in self._receivers

    def __len__(self) -> int:
        return sum(len(r) for r in self._receivers.values())

    def receivers(self, oid: bytes) -> dict[bytes, bytes]:
        """Each node receiving ``oid`` now -> the node it pulls from."""
        return {n: s for n, (s, _) in self._receivers.get(oid, {}).items()}

    def sender_of(self, oid: bytes, node: bytes) -> bytes | None:
        got = self._receivers.get(oid, {}).get(node)
        return got[0] if got is not None else None

    def load(self, oid: bytes, sender: bytes) -> int:
        """How many nodes receive ``oid`` from ``sender`` now."""
        return sum(1 for s, _ in self._receivers.get(oid, {}).values() if s == sender)

    def below(self, oid: bytes, node: bytes) -> set[bytes]:
        """``node`` and every node that receives ``oid`` through it."""
        recv = self._receivers.get(oid, {})
        children: dict[bytes, list[bytes]] = {}
        for n, (s, _) in recv.items():
            children.setdefault(s, []).append(n)
        out = {node}
        stack = [node]
        while stack:
            for c in children.get(stack.pop(), ()):
                if c not in out:
                    out.add(c)
                    stack.append(c)
        return out

    def attach(
        self,
        oid: bytes,
        node: bytes,
        holders: Iterable[bytes],
        exclude: Collection[bytes] = (),
    ) -> bytes | None:
        """The sender ``node`` is to pull ``oid`` from, recorded; None when none has room.

        ``holders`` are the live nodes holding it whole.  A node attached
        already (its sender failed) is moved; one that gets None is left out
        of the tree (it pulls on its own; receivers attached to it already stay,
        its copy still serves them, but no new one is attached to it)."""
        recv = self._receivers.setdefault(oid, {})
        recv.pop(node, None)
        banned = self.below(oid, node) | set(exclude)
        load: dict[bytes, int] = {}
        for s, _ in recv.values():
            load[s] = load.get(s, 0) + 1
        best: tuple[int, int, int, bytes] | None = None
        for h in holders:
            if h not in banned and load.get(h, 0) < self.fanout:
                key = (load.get(h, 0), 0, 0, h)
                best = key if best is None or key < best else best
        for n, (_, seq) in recv.items():
            if n not in banned and load.get(n, 0) < self.fanout:
                key = (load.get(n, 0), 1, seq, n)
                best = key if best is None or key < best else best
        if best is None:
            if not recv:
                del self._receivers[oid]
            return None
        sender = best[3]
        recv[node] = (sender, next(self._seq))
        self.attached += 1
        return sender

    def completed(self, oid: bytes, node: bytes) -> None:
        """``node`` holds ``oid`` whole now: no longer a partial copy (its receivers stay)."""
        self._leave(oid, node)

    def detach(self, oid: bytes, node: bytes) -> None:
        """``node`` stopped receiving ``oid`` (its copy is discarded)."""
        self._leave(oid, node)

    def _leave(self, oid: bytes, node: bytes) -> None:
        recv = self._receivers.get(oid)
        if recv is not None and recv.pop(node, None) is not None and not recv:
            del self._receivers[oid]

    def node_dead(self, node: bytes) -> None:
        """A dead node receives nothing; nobody new is attached to it."""
        for oid in [o for o, r in self._receivers.items() if node in r]:
            self._leave(oid, node)

    def object_gone(self, oid: bytes) -> None:
        self._receivers.pop(oid, None)

    def check(self, holders: dict[bytes, Collection[bytes]] | None = None) -> None:
        """Invariants (tests): no cycle; no sender above the fan-out; chains end at holders."""
        for oid, recv in self._receivers.items():
            assert recv, "an empty entry is kept"
            loads: dict[bytes, int] = {}
            for s, _ in recv.values():
                loads[s] = loads.get(s, 0) + 1
            assert max(loads.values()) <= self.fanout, f"fan-out above {self.fanout}"
            for node in recv:
                seen = {node}
                cur = recv[node][0]
                while cur in recv:
                    assert cur not in seen, f"relay cycle through {cur.hex()}"
                    seen.add(cur)
                    cur = recv[cur][0]
                if holders is not None:
                    # A chain ends at a node that holds (or held) the object whole.
                    assert cur in holders.get(oid, ()), "a chain ends at no holder"
