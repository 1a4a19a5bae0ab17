"""Partial copies: a large object this node is receiving, served on as it arrives.

A broadcast of one object to many nodes costs about one transfer when every
receiver forwards the chunks it holds to the next receiver while it still
receives the rest (Hoplite, SIGCOMM '21).  The directory decides who pulls
from whom (:mod:`objstore.directory.relays`, reached through
:class:`RelayDirectory`); this module holds the node's side of it:

* :class:`PartialCopy` is the copy being received: its size and metadata
  once the first chunk's header came, which chunks are in (each was checked
  against its CRC before it counts), and the receivers reading from it.
* The data plane server (:class:`~objstore.transfer.server.TransferServer`)
  answers a request for a chunk of a partial copy once that chunk is in
  (:meth:`PartialCopy.wait_for`), or NOT_FOUND if the copy is given up first.
* The pulling side (:class:`~objstore.transfer.manager.ObjectManager`)
  registers the copy in :class:`Partials` as soon as the directory attached
  this node (receivers attached below it may ask before its first chunk
  came), marks each chunk as it arrives, and ends the copy: sealed (its
  memory is then the store's sealed object, leased until the last reader is
  done) or given up (discarded once the last reader is done).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

__all__ = ["PartialCopy", "Partials", "RelayDirectory"]


class RelayDirectory(Protocol):
    """The directory's relay calls (``DirectoryClient.relay`` / ``unrelay``)."""

    async def relay(self, oid: bytes, exclude: Sequence[bytes] = ...) -> tuple[bytes, str] | None:
        """(node id, data plane address) to pull ``oid`` from; None: pull from any copy."""
        ...

    async def unrelay(self, oid: bytes) -> None:
        """This node stopped receiving ``oid``."""
        ...


class PartialCopy:
    """One object being received here (see the module docstring)."""

    def __init__(self, oid: bytes, chunk: int) -> None:
        self.oid = oid
        self.chunk = chunk
        # Known once the first chunk's header came (-1 before).
        self.size = -1
        self.meta = b""
        self.view: memoryview | None = None
        self._have = bytearray()
        self.received = 0
        # "receiving", then "sealed" or "aborted".
        self.state = "receiving"
        self.readers = 0
        # Called once when the copy has ended and its last reader is done.
        self._on_idle: Callable[[], None] | None = None
        self._changed: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<PartialCopy {self.oid.hex()} {self.state} {self.received}/{len(self._have)}>"

    # -- the receiving side
    def opened(self, size: int, meta: bytes, view: memoryview) -> None:
        """The first chunk's header came: the copy's memory is ``view``."""
        self.size = size
        self.meta = meta
        self.view = view
        self._have = bytearray(max(1, -(-size // self.chunk)))
        self._wake()

    def mark(self, offset: int) -> None:
        """The chunk at ``offset`` is in and checked."""
        i = offset // self.chunk
        if not self._have[i]:
            self._have[i] = 1
            self.received += 1
            self._wake()

    def has(self, offset: int) -> bool:
        return bool(self._have[offset // self.chunk])

    def missing(self) -> list[int]:
        """Offsets of the chunks not in yet, in order."""
        return [i * self.chunk for i, got in enumerate(self._have) if not got]

    @property
    def complete(self) -> bool:
        return self.size >= 0 and self.received == len(self._have)

    def end(self, state: str, on_idle: Callable[[], None] | None = None) -> None:
        """The copy was sealed or given up; ``on_idle`` runs once no reader is left
        (at once if none is)."""
        assert state in ("sealed", "aborted"), state
        self.state = state
        self._wake()
        if self.readers:
            self._on_idle = on_idle
        else:
            self._release_view()
            if on_idle is not None:
                on_idle()

    # -- the serving side
    def covered(self, offset: int, length: int) -> bool:
        """Whether every byte of ``[offset, offset + length)`` is in."""
        if self.size < 0:
            return False
        if self.state == "sealed":
            return True
        end = min(offset + max(length, 1), self.size)
        return all(self._have[offset // self.chunk : -(-end // self.chunk)])

    async def wait_for(self, offset: int, length: int, deadline: float) -> bool:
        """Wait until the range is in: True; False if the copy was given up or
        the deadline passed (the caller holds :meth:`reading`)."""
        loop = asyncio.get_running_loop()
        while True:
            if self.state == "aborted":
                return False
            if self.covered(offset, length):
                return True
            if self._changed is None:
                self._changed = loop.create_future()
            try:
                async with asyncio.timeout_at(deadline):
                    await asyncio.shield(self._changed)
            except TimeoutError:
                return False

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """A receiver reads from this copy: its memory stays until it is done."""
        self.readers += 1
        try:
            yield
        finally:
            self.readers -= 1
            if not self.readers and self.state != "receiving":
                self._release_view()
                idle, self._on_idle = self._on_idle, None
                if idle is not None:
                    idle()

    def _wake(self) -> None:
        fut, self._changed = self._changed, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _release_view(self) -> None:
        view, self.view = self.view, None
        if view is not None:
            with contextlib.suppress(BufferError):
                view.release()


class Partials:
    """The partial copies this node serves, by object id, and who waits for one."""

    def __init__(self) -> None:
        self._copies: dict[bytes, PartialCopy] = {}
        self._added: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._copies)

    def get(self, oid: bytes) -> PartialCopy | None:
        return self._copies.get(oid)

    def add(self, copy: PartialCopy) -> None:
        self._copies[copy.oid] = copy
        fut, self._added = self._added, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    def remove(self, copy: PartialCopy) -> None:
        if self._copies.get(copy.oid) is copy:
            del self._copies[copy.oid]

    async def wait(self, oid: bytes, timeout: float) -> PartialCopy | None:
        """The partial copy of ``oid`` once one is registered within ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (copy := self._copies.get(oid)) is None:
            if self._added is None:
                self._added = loop.create_future()
            try:
                async with asyncio.timeout_at(deadline):
                    await asyncio.shield(self._added)
            except TimeoutError:
                return None
        return copy
