"""The node side's bookkeeping for the directory, pure (tested without sockets).

:class:`ReportBook` collects location changes between reports: the latest
change of an object wins (an object added then deleted before a report is
sent only as deleted), spill URLs and borrows ride beside them (a borrow's
latest state wins too: borrowed then unborrowed goes out as unborrowed).  :class:`WatchBook` counts
local interest in remote objects and tells which subscription changes the
stream must send.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ReportBook", "ReportBatch", "WatchBook", "ADDED", "REMOVED", "DELETED"]

ADDED = 1
REMOVED = 2
DELETED = 3


@dataclass(slots=True)
class ReportBatch:
    """One report's content, in the columns of ``LocationReport``."""

    added: list[tuple[bytes, int, bool, str]] = field(default_factory=list)
    removed: list[bytes] = field(default_factory=list)
    deleted: list[bytes] = field(default_factory=list)
    spilled: list[tuple[bytes, str]] = field(default_factory=list)
    borrowed: list[bytes] = field(default_factory=list)
    unborrowed: list[bytes] = field(default_factory=list)
    replicas: list[tuple[bytes, int]] = field(default_factory=list)
    recreatable: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return (
            len(self.replicas)
            + len(self.recreatable)
            + len(self.added)
            + len(self.removed)
            + len(self.deleted)
            + len(self.spilled)
            + len(self.borrowed)
            + len(self.unborrowed)
        )


class ReportBook:
    """Location changes waiting to be reported, coalesced per object."""

    __slots__ = ("ops", "spills", "borrows", "replicas", "recreatable")

    def __init__(self) -> None:
        # object id -> (kind, size, primary, name); the latest change wins.
        self.ops: dict[bytes, tuple[int, int, bool, str]] = {}
        self.spills: dict[bytes, str] = {}
        # object id -> borrowed (True) or unborrowed (False); the latest wins.
        self.borrows: dict[bytes, bool] = {}
        # object id -> replicas wanted (objects put here with replicas=N).
        self.replicas: dict[bytes, int] = {}
        # Objects put here whose owner can recreate them (an ordered set).
        self.recreatable: dict[bytes, None] = {}

    def __len__(self) -> int:
        return (
            len(self.ops)
            + len(self.spills)
            + len(self.borrows)
            + len(self.replicas)
            + len(self.recreatable)
        )

    def added(self, oid: bytes, size: int, primary: bool, name: str = "") -> None:
        self.ops.pop(oid, None)
        self.ops[oid] = (ADDED, size, primary, name)

    def removed(self, oid: bytes) -> None:
        self.ops.pop(oid, None)
        self.ops[oid] = (REMOVED, 0, False, "")

    def deleted(self, oid: bytes) -> None:
        self.ops.pop(oid, None)
        self.ops[oid] = (DELETED, 0, False, "")
        self.spills.pop(oid, None)

    def spilled(self, oid: bytes, url: str) -> None:
        self.spills[oid] = url

    def borrowed(self, oid: bytes) -> None:
        self.borrows[oid] = True

    def unborrowed(self, oid: bytes) -> None:
        self.borrows[oid] = False

    def take(self, limit: int) -> ReportBatch:
        """Up to ``limit`` changes, oldest first, removed from the book."""
        batch = ReportBatch()
        ops = self.ops
        taken: list[bytes] = []
        for oid, op in ops.items():
            if len(taken) >= limit:
                break
            taken.append(oid)
            kind = op[0]
            if kind == ADDED:
                batch.added.append((oid, op[1], op[2], op[3]))
            elif kind == REMOVED:
                batch.removed.append(oid)
            else:
                batch.deleted.append(oid)
        for oid in taken:
            del ops[oid]
        room = limit - len(taken)
        if room > 0 and self.spills:
            spilled: list[tuple[bytes, str]] = []
            for oid, url in self.spills.items():
                if len(spilled) >= room:
                    break
                spilled.append((oid, url))
            for oid, _ in spilled:
                del self.spills[oid]
            batch.spilled = spilled
            room -= len(spilled)
        if room > 0 and self.borrows:
            taken = []
            for oid, on in self.borrows.items():
                if len(taken) >= room:
                    break
                taken.append(oid)
                (batch.borrowed if on else batch.unborrowed).append(oid)
            for oid in taken:
                del self.borrows[oid]
            room -= len(taken)
        if room > 0 and self.replicas:
            # After the copy's own report: an id whose add is still waiting stays.
            reps: list[tuple[bytes, int]] = []
            for oid, count in self.replicas.items():
                if len(reps) >= room:
                    break
                if oid not in ops:
                    reps.append((oid, count))
            for oid, _ in reps:
                del self.replicas[oid]
            batch.replicas = reps
            room -= len(reps)
        if room > 0 and self.recreatable:
            # After the copy's own report too.
            marks = [oid for oid in self.recreatable if oid not in ops][:room]
            for oid in marks:
                del self.recreatable[oid]
            batch.recreatable = marks
        return batch

    def requeue(self, batch: ReportBatch) -> None:
        """A report failed: put back its changes, unless newer ones came meanwhile."""
        old = dict(self.ops)
        self.ops.clear()
        for oid, size, primary, name in batch.added:
            self.ops[oid] = (ADDED, size, primary, name)
        for oid in batch.removed:
            self.ops[oid] = (REMOVED, 0, False, "")
        for oid in batch.deleted:
            self.ops[oid] = (DELETED, 0, False, "")
        for oid, op in old.items():
            self.ops.pop(oid, None)
            self.ops[oid] = op
        for oid, url in batch.spilled:
            # A delete that came meanwhile dropped the spill for good (see
            # ``deleted``): it stays dropped.
            newer = old.get(oid)
            if newer is None or newer[0] != DELETED:
                self.spills.setdefault(oid, url)
        for oid in batch.borrowed:
            self.borrows.setdefault(oid, True)  # a newer change of it stays
        for oid in batch.unborrowed:
            self.borrows.setdefault(oid, False)
        for oid, count in batch.replicas:
            self.replicas.setdefault(oid, count)
        for oid in batch.recreatable:
            self.recreatable.setdefault(oid, None)

    def clear(self) -> None:
        """Forget everything (a full report replaces it)."""
        self.ops.clear()
        self.spills.clear()
        self.borrows.clear()
        self.replicas.clear()
        self.recreatable.clear()


class WatchBook:
    """Which remote objects this node wants to hear about, and what to tell the stream."""

    __slots__ = ("counts", "to_subscribe", "to_unsubscribe")

    def __init__(self) -> None:
        self.counts: dict[bytes, int] = {}
        self.to_subscribe: dict[bytes, None] = {}
        self.to_unsubscribe: dict[bytes, None] = {}

    def __len__(self) -> int:
        return len(self.counts)

    def __contains__(self, oid: bytes) -> bool:
        return oid in self.counts

    def watch(self, oid: bytes) -> bool:
        """One more interest; True when this is the first (a subscription is due)."""
        n = self.counts.get(oid, 0)
        self.counts[oid] = n + 1
        if n:
            return False
        if self.to_unsubscribe.pop(oid, 0) is None:
            return False  # the unsubscribe was never sent: still subscribed
        self.to_subscribe[oid] = None
        return True

    def unwatch(self, oid: bytes) -> bool:
        """One interest fewer; True when it was the last."""
        n = self.counts.get(oid, 0)
        if n <= 0:
            return False
        if n > 1:
            self.counts[oid] = n - 1
            return False
        del self.counts[oid]
        if self.to_subscribe.pop(oid, 0) is None:
            return True  # the subscribe was never sent
        self.to_unsubscribe[oid] = None
        return True

    def take_changes(self) -> tuple[list[bytes], list[bytes]]:
        """Subscriptions to add and to drop since the last call."""
        sub, unsub = list(self.to_subscribe), list(self.to_unsubscribe)
        self.to_subscribe.clear()
        self.to_unsubscribe.clear()
        return sub, unsub

    def resubscribe_all(self) -> list[bytes]:
        """A new stream: every watched id is subscribed again."""
        self.to_subscribe.clear()
        self.to_unsubscribe.clear()
        return list(self.counts)
