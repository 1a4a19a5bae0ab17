"""What the node's object service needs of the components behind it, as Protocols.

:class:`~objstore.node.objects.ObjectService` is written against these, not
against the classes that implement them (``SpillManager``, ``ObjectManager``,
``TransferServer``, ``DirectoryClient``), so that the in-process tests can
put fakes in their place (``tests/fakes.py``) and so that no package below
the node needs to know another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from objstore.errors import ObjectStoreError
from objstore.locations import ObjectRow
from objstore.plasma.api import Entry

__all__ = ["Spill", "Puller", "PeerServer", "Directory"]


class Spill(Protocol):
    """The spill manager: primaries to external storage and back."""

    def sealed(self, oid: bytes, entry: Entry) -> None:
        """A primary copy was sealed in the arena."""
        ...

    def touched(self, oid: bytes, entry: Entry) -> None:
        """A primary copy was read (least recently used primaries spill first)."""
        ...

    def unheld(self, oid: bytes, entry: Entry) -> None:
        """A sealed primary's last pin or mapping went."""
        ...

    def deleted(self, oid: bytes, entry: Entry) -> None:
        """A delete reached a primary (maybe still held): no longer a spill candidate."""
        ...

    def dropped(self, oid: bytes, entry: Entry) -> None:
        """A primary left the table; its spill copy is not needed any more."""
        ...

    def restore(self, oid: bytes) -> None:
        """A get waits for a SPILLED object: bring it back (once, however many ask)."""
        ...

    async def make_room(self, nbytes: int) -> int:
        """Spill until a free block of ``nbytes`` exists; the bytes freed."""
        ...

    @property
    def last_error(self) -> ObjectStoreError | None:
        """The error of the last spill write, while writes keep failing."""
        ...

    @property
    def spilled_bytes(self) -> int: ...

    def stats(self) -> dict[str, int]: ...

    def url_of(self, oid: bytes) -> str:
        """The spill URL of an object's copy, or ""."""
        ...

    def copies_snapshot(self) -> list[tuple[bytes, str]]:
        """(id, URL) of every spill copy (the directory's full reports)."""
        ...


class Puller(Protocol):
    """The pulling side of the transfer: remote objects that gets here wait for."""

    pulled: int
    bytes_pulled: int
    # Relayed pulls, of them from a copy still being received, senders given up on.
    relayed: int
    relayed_from_partial: int
    relay_switches: int

    def want(self, oid: bytes, priority: int) -> None:
        """A get (0) or wait (1) here started waiting for an object not here."""
        ...

    def unwant(self, oid: bytes, priority: int) -> None:
        """One of them stopped waiting (the object came, or it gave up)."""
        ...

    def fetch_failure(self, oid: bytes) -> asyncio.Future[None]:
        """Fails with ``ObjectFetchTimedOutError`` when the pull of ``oid`` stalls
        (never succeeds); for a get between its ``want(oid, 0)`` and ``unwant``."""
        ...

    def on_locations(self, row: ObjectRow) -> None:
        """A subscribed object's locations, from the directory."""
        ...

    def space_freed(self) -> None:
        """Memory was freed here: pulls waiting for room may start."""
        ...


class PeerServer(Protocol):
    """The serving side of the data plane."""

    chunks_sent: int
    bytes_sent: int
    # Connections refused for want of the cluster token (or a trusted certificate).
    refused: int
    # Chunks sent from copies still being received here (relays).
    relayed_chunks: int

    def drop_destination(self, node_id: bytes) -> None:
        """The directory declared ``node_id`` dead: stop serving it."""
        ...


class Directory(Protocol):
    """The node's link to the directory (``objstore.directory.client.DirectoryClient``)."""

    host: str
    port: int

    def added(self, oid: bytes, size: int, primary: bool, name: str = "") -> None: ...
    def removed(self, oid: bytes) -> None: ...
    def deleted(self, oid: bytes) -> None: ...
    def spilled(self, oid: bytes, url: str) -> None: ...
    def borrowed(self, oid: bytes) -> None:
        """Processes here hold refs to an object put on another node (the first of them)."""
        ...

    def unborrowed(self, oid: bytes) -> None:
        """The last of them let go."""
        ...

    def replicas(self, oid: bytes, count: int) -> None: ...
    def recreatable(self, oid: bytes) -> None: ...
    def watch(self, oid: bytes) -> None: ...
    def unwatch(self, oid: bytes) -> None: ...
    async def reserve_name(self, name: str, oid: bytes, size: int) -> None: ...
    async def resolve_name(self, name: str) -> ObjectRow: ...
    async def delete(self, oids: list[bytes], names: list[str] = ...) -> int: ...
    async def lookup(self, oids: list[bytes]) -> list[ObjectRow]: ...
    async def relay(
        self, oid: bytes, exclude: Sequence[bytes] = ...
    ) -> tuple[bytes, str] | None: ...
    async def unrelay(self, oid: bytes) -> None: ...
