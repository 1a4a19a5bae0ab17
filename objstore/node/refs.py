"""Reference counting on one node, pure: who holds which object here, and when it goes.

:class:`RefTable` has no clock, no sockets and no asyncio: the object service
(:mod:`objstore.node.objects`) calls it with what happened and applies the
:class:`RefActions` it returns.  The tests drive it with a fake clock and a
hypothesis state machine (``tests/unit/test_refs_policy.py``).

What holds an object at this node
---------------------------------
* **A client**: a connected process holds at least one live ``ObjectRef`` to
  it.  Processes count their refs themselves and send only the transitions
  (first ref made, last ref gone), batched; the connection that puts an object
  holds it from the put on.  A closed connection holds nothing.
* **A borrow grace**: a ref was pickled by a process here (into an HTTP body,
  a pipe, a value put elsewhere), so the object is kept for ``grace_s`` for a
  receiver to register as a holder on its own node.
* **A container**: an object put here whose value contains the ref holds it
  while the container is in the table.
* **Remote borrowers** (objects put here only): the directory tells this node
  when another node's holders take the object and when the last of them lets
  go.

What happens
------------
* An object put here (*primary*), unnamed, with no hold of any kind, is freed:
  the service deletes it, here and on every node, spill copies included.  A
  named object lives until it is deleted, whatever holds it.
* For an object put on another node, the first hold here and the end of the
  last one are told to the directory (``borrow`` / ``unborrow``), which tells
  the object's node.  Every way a ref reaches another node passes through a
  hold that lasts until the receiver's node has registered (a grace, a
  container, a process that still has it), so a primary is never freed while a
  borrow of it is on its way.

Invariants (:meth:`RefTable.check`): ``by_client`` and the holders of every
entry mirror each other; an entry exists only while something holds it or it
is primary; a primary entry that is freeable has been handed out as ``free``;
``reported`` is exactly the set of non-primary ids held here.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["RefTable", "RefActions", "Holds"]


@dataclass
class RefActions:
    """What a call asks the service to do: free these primaries; tell the
    directory these non-primary objects are borrowed here now / not any more."""

    free: list[bytes] = field(default_factory=list)
    borrow: list[bytes] = field(default_factory=list)
    unborrow: list[bytes] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.free or self.borrow or self.unborrow)


class Holds:
    """What holds one object at this node."""

    __slots__ = ("clients", "grace_until", "containers", "borrowed", "primary", "named", "owner")

    def __init__(self, primary: bool) -> None:
        # Client ids of connected processes holding a ref.
        self.clients: set[int] = set()
        # The latest borrow grace's end (0.0: none).
        self.grace_until = 0.0
        # Containers here whose values hold a ref to it (container id -> count).
        self.containers: dict[bytes, int] = {}
        # Remote nodes borrow it (the directory said so); primaries only.
        self.borrowed = False
        self.primary = primary
        self.named = False
        # The client that put it (primaries), while it is connected; else 0.
        self.owner = 0

    def local(self, now: float) -> bool:
        """Held by something on this node."""
        return bool(self.clients or self.containers) or self.grace_until > now

    def __repr__(self) -> str:
        return (
            f"<holds clients={sorted(self.clients)} grace={self.grace_until} "
            f"containers={len(self.containers)} borrowed={self.borrowed} "
            f"{'primary' if self.primary else 'borrowed here'}{' named' if self.named else ''}>"
        )


class RefTable:
    """See the module docstring.  ``is_primary(oid)`` says whether an object in
    the store here was put here (asked when a hold on an unknown id arrives)."""

    def __init__(self, grace_s: float, is_primary: Callable[[bytes], bool]) -> None:
        if grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {grace_s}")
        self.grace_s = grace_s
        self._is_primary = is_primary
        self.objects: dict[bytes, Holds] = {}
        self.by_client: dict[int, set[bytes]] = {}
        # Container id -> the ids its value refers to (with repeats).
        self.contents: dict[bytes, list[bytes]] = {}
        # (deadline, id) of graces, lazily cleaned.
        self._graces: list[tuple[float, bytes]] = []
        # Non-primary ids this node told the directory it holds.
        self.reported: set[bytes] = set()
        self.freed = 0

    # ------------------------------------------------------------ events
    def put(
        self,
        client: int,
        oid: bytes,
        named: bool,
        contained: Sequence[bytes],
        now: float,
        out: RefActions,
    ) -> None:
        """``client`` put ``oid`` here (it holds it); the value refers to ``contained``."""
        h = self.objects.get(oid)
        if h is None:
            h = self.objects[oid] = Holds(True)
        else:
            h.primary = True
            self.reported.discard(oid)  # held here as a borrow before: now it is ours
        h.named = named
        h.owner = client
        h.clients.add(client)
        mine = self.by_client.get(client)
        if mine is None:
            mine = self.by_client[client] = set()
        mine.add(oid)
        if not contained:
            return
        inner = list(contained)
        if inner:
            self.contents[oid] = inner
            for i in inner:
                self._hold_container(i, oid, now, out)

    def add(self, client: int, oids: Iterable[bytes], now: float, out: RefActions) -> None:
        """``client``'s process made its first ref to each of ``oids``."""
        mine = self.by_client.get(client)
        if mine is None:
            mine = self.by_client[client] = set()
        for oid in oids:
            h = self._entry(oid)
            was = h.local(now)
            h.clients.add(client)
            mine.add(oid)
            if not was:
                self._became_held(oid, h, out)

    def drop(self, client: int, oids: Iterable[bytes], now: float, out: RefActions) -> None:
        """``client``'s process let go of its last ref to each of ``oids``."""
        mine = self.by_client.get(client)
        for oid in oids:
            h = self.objects.get(oid)
            if h is None or client not in h.clients:
                continue
            h.clients.discard(client)
            if mine is not None:
                mine.discard(oid)
            self._settle(oid, h, now, out)

    def client_gone(
        self, client: int, now: float, out: RefActions, limit: int | None = None
    ) -> bool:
        """A connection closed: its process's refs count no more.

        With ``limit``, at most that many of its objects are let go now; the
        rest stay held by it (the invariants hold in between) until the next
        call.  True when none is left."""
        mine = self.by_client.get(client)
        n = 0
        while mine:
            if limit is not None and n >= limit:
                return False
            oid = mine.pop()
            n += 1
            h = self.objects.get(oid)
            if h is None:
                continue
            h.clients.discard(client)
            if h.owner == client:
                h.owner = 0
            self._settle(oid, h, now, out)
        self.by_client.pop(client, None)
        return True

    def pickled(self, oids: Iterable[bytes], now: float, out: RefActions) -> None:
        """Refs to ``oids`` were pickled here: hold each for ``grace_s`` from ``now``."""
        until = now + self.grace_s
        for oid in oids:
            h = self._entry(oid)
            was = h.local(now)
            if until > h.grace_until:
                h.grace_until = until
                heapq.heappush(self._graces, (until, oid))
            if not was and h.local(now):
                self._became_held(oid, h, out)
            elif not h.local(now):  # a zero grace: nothing holds it
                self._settle(oid, h, now, out)

    def expire(self, now: float, out: RefActions) -> float | None:
        """End the graces over by ``now``; returns the next grace's end, if any."""
        graces = self._graces
        while graces and graces[0][0] <= now:
            until, oid = heapq.heappop(graces)
            h = self.objects.get(oid)
            if h is None or h.grace_until != until:
                continue  # forgotten, or extended by a later pickle
            h.grace_until = 0.0
            self._settle(oid, h, now, out)
        return graces[0][0] if graces else None

    def borrowed(self, oids: Iterable[bytes]) -> None:
        """The directory: other nodes hold refs to these objects (put here)."""
        for oid in oids:
            h = self.objects.get(oid)
            if h is None:
                if not self._is_primary(oid):
                    continue  # freed here already, or not ours
                h = self.objects[oid] = Holds(True)
            if h.primary:
                h.borrowed = True

    def unborrowed(self, oids: Iterable[bytes], now: float, out: RefActions) -> None:
        """The directory: no other node holds a ref to these objects any more."""
        for oid in oids:
            h = self.objects.get(oid)
            if h is None or not h.primary or not h.borrowed:
                continue
            h.borrowed = False
            self._settle(oid, h, now, out)

    def forget(self, oid: bytes, now: float, out: RefActions) -> None:
        """The object is gone (deleted, freed, aborted, deleted elsewhere): its
        entry goes, and the holds its value had on others with it."""
        h = self.objects.pop(oid, None)
        if h is not None:
            for c in h.clients:
                mine = self.by_client.get(c)
                if mine is not None:
                    mine.discard(oid)
            if oid in self.reported:
                self.reported.discard(oid)
                out.unborrow.append(oid)
        inner = self.contents.pop(oid, None)
        if inner:
            for i in inner:
                ih = self.objects.get(i)
                if ih is None:
                    continue
                n = ih.containers.get(oid, 0) - 1
                if n > 0:
                    ih.containers[oid] = n
                else:
                    ih.containers.pop(oid, None)
                self._settle(i, ih, now, out)

    # ------------------------------------------------------------ queries
    def holds(self, oid: bytes) -> Holds | None:
        return self.objects.get(oid)

    def held(self, oid: bytes, now: float) -> bool:
        """Whether anything keeps the object (its own node's holds, or borrowers)."""
        h = self.objects.get(oid)
        return h is not None and (h.local(now) or h.borrowed or h.named)

    def borrowed_snapshot(self) -> list[bytes]:
        """Non-primary ids held here (the directory's full report)."""
        return list(self.reported)

    def held_by(self, client: int) -> set[bytes]:
        return self.by_client.get(client, set())

    # ------------------------------------------------------------ inside
    def _entry(self, oid: bytes) -> Holds:
        h = self.objects.get(oid)
        if h is None:
            h = self.objects[oid] = Holds(self._is_primary(oid))
        return h

    def _hold_container(self, oid: bytes, container: bytes, now: float, out: RefActions) -> None:
        h = self._entry(oid)
        was = h.local(now)
        h.containers[container] = h.containers.get(container, 0) + 1
        if not was:
            self._became_held(oid, h, out)

    def _became_held(self, oid: bytes, h: Holds, out: RefActions) -> None:
        if not h.primary and oid not in self.reported:
            self.reported.add(oid)
            out.borrow.append(oid)

    def _settle(self, oid: bytes, h: Holds, now: float, out: RefActions) -> None:
        """After a hold went: free a primary nothing keeps, or tell the directory
        a borrow here ended; drop entries that keep nothing."""
        if h.local(now):
            return
        if h.primary:
            if h.borrowed or h.named:
                return
            del self.objects[oid]
            self.freed += 1
            out.free.append(oid)
            return
        del self.objects[oid]
        if oid in self.reported:
            self.reported.discard(oid)
            out.unborrow.append(oid)

    def check(self, now: float) -> None:
        """Assert the invariants of the module docstring (tests)."""
        for c, ids in self.by_client.items():
            for oid in ids:
                assert c in self.objects[oid].clients, (c, oid)
        for oid, h in self.objects.items():
            for c in h.clients:
                assert oid in self.by_client.get(c, ()), (oid, c)
            if h.primary:
                assert oid not in self.reported, oid
                assert h.local(now) or h.borrowed or h.named or h.grace_until > 0, (oid, h)
            else:
                assert (oid in self.reported) == (h.local(now) or h.grace_until > 0), (oid, h)
        for oid in self.reported:
            assert oid in self.objects and not self.objects[oid].primary, oid
        for container, inner in self.contents.items():
            for i in set(inner):
                ih = self.objects.get(i)
                assert ih is None or ih.containers.get(container) == inner.count(i), (container, i)
