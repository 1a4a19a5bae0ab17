"""The directory client's seams: what it reads of its node, what it tells it, how it connects.

:class:`~objstore.directory.client.DirectoryClient` takes a :class:`NodeView`
and a :class:`DirectoryListener` when it is made; the node's object service
implements both.  The client calls them from its own tasks, on the node's
event loop, and never awaits them: each must return at once.

:class:`Link` is the way to the directory: gRPC for every node, or
in-process for the head node's own client
(:class:`~objstore.directory.local.LocalLink`).
"""

from __future__ import annotations

from typing import Any, Protocol

from objstore.locations import ObjectRow, Usage

__all__ = ["NodeView", "DirectoryListener", "Link", "SnapshotEntry"]

#: One sealed object in a full report: (object id, size, primary copy, name or "").
SnapshotEntry = tuple[bytes, int, bool, str]


class NodeView(Protocol):
    """What the directory client reads of its node.

    :meth:`snapshot`, :meth:`spilled_snapshot` and :meth:`borrowed_snapshot`
    are read in one step with no await between them (the full report after
    each registration), so they agree with each other and with the changes
    reported after them.
    """

    def snapshot(self) -> list[SnapshotEntry]:
        """Every sealed object this node holds in memory."""
        ...

    def spilled_snapshot(self) -> list[tuple[bytes, str]]:
        """(object id, URL) of every object with a spill copy made by this node."""
        ...

    def borrowed_snapshot(self) -> list[bytes]:
        """Every object put on another node that this node's processes hold refs to."""
        ...

    def replicas_snapshot(self) -> list[tuple[bytes, int]]:
        """(id, replicas wanted) of every object put here with replicas=N, N > 1."""
        ...

    def recreatable_snapshot(self) -> list[bytes]:
        """Every object here whose owner can recreate it (put with recreate=fn)."""
        ...

    def usage(self) -> Usage:
        """How full the node is, for registration and heartbeats."""
        ...


class DirectoryListener(Protocol):
    """What the directory tells the node, from the subscription stream."""

    def on_update(self, rows: list[ObjectRow]) -> None:
        """Subscribed objects changed (or were just subscribed): their current rows."""
        ...

    def on_free(self, ids: list[bytes]) -> None:
        """Objects deleted elsewhere: free the copies here."""
        ...

    def on_dead(self, node_ids: list[bytes]) -> None:
        """Nodes declared dead: stop serving their transfers."""
        ...

    def on_borrowed(self, ids: list[bytes]) -> None:
        """Objects put here that another node now holds refs to (their first borrower)."""
        ...

    def on_unborrowed(self, ids: list[bytes]) -> None:
        """Objects put here that no other node holds refs to any more (called after
        :meth:`on_borrowed` of the same notification; an id is in one of the two)."""
        ...

    def on_replicate(self, ids: list[bytes]) -> None:
        """The directory chose this node to keep a copy of these objects (pull
        them, keep them unevictable while they live, report the copies)."""
        ...


class Link(Protocol):
    """A way to the directory: a stub with its unary calls and a subscription stream.

    ``stub`` has the methods of the generated ``DirectoryStub`` (``register``,
    ``report``, ``lookup``, ...), each ``async (message, *, timeout) -> reply``,
    raising :class:`grpclib.GRPCError` for an error status.  ``open_stream()``
    returns an async context manager with ``send_message`` / ``recv_message``
    (``None`` at the end), like grpclib's client stream.
    """

    stub: Any

    def open_stream(self) -> Any: ...

    def close(self) -> None: ...
