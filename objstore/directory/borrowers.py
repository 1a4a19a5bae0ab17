"""Which nodes borrow which objects: the directory's borrower sets, pure.

A node whose processes hold refs to an object put on another node (its
*primary* node) *borrows* it.  Each node reports its borrows and the end of
them; :class:`Borrowers` keeps, per object, the set of borrower nodes, and
tells its caller which objects each change made *borrowed* (their set went
from empty to non-empty) or *unborrowed* (from non-empty to empty): those are
the transitions the directory tells the object's primary node about.

No asyncio, no clock, nothing about object records or node liveness: the
directory (:class:`~objstore.directory.state.DirectoryState`) decides what a
transition means.  An id is kept whatever the directory knows of it (a
borrower's report may come before the primary's report of the object).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Borrowers"]

_NONE: frozenset[bytes] = frozenset()


class Borrowers:
    """Object id -> borrower node ids, and the reverse index.

    Invariant (see :meth:`check`): ``node in by_object[oid]`` exactly when
    ``oid in by_node[node]``, and neither map holds an empty set.
    """

    __slots__ = ("by_object", "by_node")

    def __init__(self) -> None:
        self.by_object: dict[bytes, set[bytes]] = {}
        self.by_node: dict[bytes, set[bytes]] = {}

    def __len__(self) -> int:
        """How many objects are borrowed."""
        return len(self.by_object)

    def __contains__(self, oid: bytes) -> bool:
        return oid in self.by_object

    def borrowers(self, oid: bytes) -> frozenset[bytes]:
        """The nodes borrowing ``oid`` (empty if none)."""
        got = self.by_object.get(oid)
        return frozenset(got) if got else _NONE

    def borrowed_by(self, node: bytes) -> frozenset[bytes]:
        """The objects ``node`` borrows (empty if none)."""
        got = self.by_node.get(node)
        return frozenset(got) if got else _NONE

    def borrow(self, node: bytes, oids: Iterable[bytes]) -> list[bytes]:
        """``node`` borrows these objects; returns those that were borrowed by no node before."""
        became: list[bytes] = []
        mine = self.by_node.get(node)
        for oid in oids:
            if mine is None:
                mine = self.by_node[node] = set()
            if oid in mine:
                continue
            mine.add(oid)
            holders = self.by_object.get(oid)
            if holders is None:
                self.by_object[oid] = {node}
                became.append(oid)
            else:
                holders.add(node)
        if mine is not None and not mine:
            del self.by_node[node]
        return became

    def unborrow(self, node: bytes, oids: Iterable[bytes]) -> list[bytes]:
        """``node`` no longer borrows these objects; returns those that no node borrows now."""
        mine = self.by_node.get(node)
        if mine is None:
            return []
        became: list[bytes] = []
        for oid in oids:
            if oid not in mine:
                continue
            mine.discard(oid)
            if self._drop(oid, node):
                became.append(oid)
        if not mine:
            del self.by_node[node]
        return became

    def drop_node(self, node: bytes) -> list[bytes]:
        """``node`` is gone: every borrow of it ends.  Returns the objects no node borrows now."""
        mine = self.by_node.pop(node, None)
        if mine is None:
            return []
        return [oid for oid in mine if self._drop(oid, node)]

    def replace(self, node: bytes, oids: Iterable[bytes]) -> tuple[list[bytes], list[bytes]]:
        """``node``'s borrows are exactly ``oids`` now (its full report).

        Returns (became borrowed, became unborrowed), as :meth:`borrow` and
        :meth:`unborrow` of the difference would.
        """
        new = dict.fromkeys(oids)  # in order, once each
        old = self.by_node.get(node, _NONE)
        gained = [oid for oid in new if oid not in old]
        lost = [oid for oid in old if oid not in new]
        became_unborrowed = self.unborrow(node, lost)
        return self.borrow(node, gained), became_unborrowed

    def forget(self, oid: bytes) -> None:
        """The object was deleted: no node borrows it any more (no transition to tell)."""
        holders = self.by_object.pop(oid, None)
        if holders is None:
            return
        for node in holders:
            mine = self.by_node[node]
            mine.discard(oid)
            if not mine:
                del self.by_node[node]

    def _drop(self, oid: bytes, node: bytes) -> bool:
        """Remove ``node`` from ``oid``'s set (the reverse index is the caller's); True if emptied."""
        holders = self.by_object[oid]
        holders.discard(node)
        if holders:
            return False
        del self.by_object[oid]
        return True

    def check(self) -> None:
        """Assert the invariant tying the two maps together."""
        for oid, holders in self.by_object.items():
            assert holders, f"an empty borrower set for {oid.hex()}"
            for node in holders:
                assert oid in self.by_node.get(node, ()), "by_object without by_node"
        for node, mine in self.by_node.items():
            assert mine, f"an empty borrow set for node {node.hex()}"
            for oid in mine:
                assert node in self.by_object.get(oid, ()), "by_node without by_object"
