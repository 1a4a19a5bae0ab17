"""The pulling side: fetch objects other nodes hold into this node's arena.

When a get waits for an object that is not here, the node subscribes to its
locations (the directory client) and tells :class:`ObjectManager`, whose pure
policy (:class:`~objstore.transfer.pull.PullManager`) decides which pulls run
and from where: one per object, however many gets wait for it.  An attempt:

1. ask one source for the first chunk (``FETCH`` at offset 0): the reply says
   the object's size and metadata;
2. create a *secondary* copy of that size in the store (which may evict other
   secondaries, or wait for room), receive the first chunk straight into it
   (``sock_recv_into`` a view of the arena), then the other chunks, several at
   a time over a few pooled connections, within a cap of bytes in flight;
3. verify each chunk's CRC-32 and seal: the waiting gets wake.

A source that fails, stalls past ``transfer.pull_timeout_s`` or sends a bad
chunk ends the attempt and the policy picks another source; the partial copy
is discarded (never visible). With no source left the pull backs off
(exponential, with jitter) until the directory's next word (a new copy, or
LOST, which fails the gets). A pull ends when its last get stops waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from objstore.config import Config
from objstore.directory.state import PRESENT, ObjectRow
from objstore.errors import ObjectStoreError, ObjectStoreFullError
from objstore.plasma.store import PlasmaStore
from objstore.transfer import wire
from objstore.transfer.pull import Priority, PullManager, Start
from objstore.transfer.server import recv_exact

__all__ = ["ObjectManager", "PeerPool", "TransferError"]

log = structlog.get_logger("objstore.transfer.manager")

# Objects up to this size (and the chunk size) are fetched many per request.
_SMALL_BYTES = 256 * 1024
# Most objects in one batched request.
_BATCH = 1000


class TransferError(ObjectStoreError):
    """One attempt to fetch from one source failed (the pull tries another)."""


class _NoRoomNow(TransferError):
    """A small object fetched in a batch found no room at once: fetch it alone."""


class _Conn:
    __slots__ = ("sock", "address")

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address


class PeerPool:
    """A few open data plane connections per peer, reused between chunks."""

    def __init__(
        self, node_id: bytes = b"", per_peer: int = 8, connect_timeout: float = 5.0
    ) -> None:
        # Said first on every connection (wire.HELLO), so the source bounds and
        # cancels its sends to this node by node rather than by address.
        self._hello = (
            wire.encode_request(wire.HELLO, node_id.ljust(20, b"\0"), 0, 0) if node_id else b""
        )
        self.per_peer = per_peer
        self.connect_timeout = connect_timeout
        self._idle: dict[str, list[_Conn]] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}

    def slots(self, address: str) -> asyncio.Semaphore:
        sem = self._slots.get(address)
        if sem is None:
            sem = self._slots[address] = asyncio.Semaphore(self.per_peer)
        return sem

    async def get(self, address: str) -> _Conn:
        idle = self._idle.get(address)
        if idle:
            return idle.pop()
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await loop.sock_connect(sock, (host, int(port)))
                if self._hello:
                    await loop.sock_sendall(sock, self._hello)
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Conn(sock, address)

    def put(self, conn: _Conn) -> None:
        self._idle.setdefault(conn.address, []).append(conn)

    def close(self) -> None:
        for conns in self._idle.values():
            for c in conns:
                c.sock.close()
        self._idle.clear()


class _Buffered:
    """Reads a socket through a buffer: many small replies per ``recv``."""

    def __init__(self, sock: socket.socket, size: int = 1 << 20) -> None:
        self.sock = sock
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0

    async def read(self, loop: asyncio.AbstractEventLoop, n: int) -> bytes:
        if self.end - self.start >= n:
            out = bytes(self.view[self.start : self.start + n])
            self.start += n
            return out
        have = bytes(self.view[self.start : self.end])
        self.start = self.end = 0
        if n - len(have) > len(self.buf):
            return have + await recv_exact(loop, self.sock, n - len(have))
        while self.end < n - len(have):
            k = await loop.sock_recv_into(self.sock, self.view[self.end :])
            if not k:
                raise ConnectionError("source closed in the middle of a batch")
            self.end += k
        need = n - len(have)
        self.start = need
        return have + bytes(self.view[:need])


class _ByteBudget:
    """At most ``limit`` bytes of chunks in flight (one chunk always may go)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = asyncio.Condition()

    async def acquire(self, n: int) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n

    async def release(self, n: int) -> None:
        async with self._cond:
            self.used -= n
            self._cond.notify_all()


# The pseudo source "a spill copy in shared storage" among a pull's sources.
SPILL_SOURCE = b"\x00spill"

# Reads a spill copy (object id, URL) into a sealed secondary copy here; the
# node plugs the spill package's reader in (see ``objstore.spill.remote``).
SpillFetch = Callable[[bytes, str], Awaitable[int]]


class ObjectManager:
    """Pulls remote objects that gets on this node wait for."""

    def __init__(
        self,
        store: PlasmaStore,
        config: Config,
        node_id: bytes,
        address_of: Callable[[bytes], str | None],
    ) -> None:
        self.store = store
        self.config = config
        self.node_id = node_id
        self.address_of = address_of
        tc = config.transfer
        self.chunk = tc.chunk_size
        self.timeout = tc.pull_timeout_s
        self.budget = _ByteBudget(tc.max_bytes_in_flight)
        self.peers = PeerPool(node_id)
        self.policy = PullManager(node_id, max_bytes_in_flight=tc.max_bytes_in_flight)
        # object id -> its attempt in flight (one per object).
        self.tasks: dict[bytes, asyncio.Task[None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._kick_pending = False
        self._failed_once: set[bytes] = set()
        self.pulled = 0
        self.bytes_pulled = 0
        self.failures = 0
        self.small = min(self.chunk, _SMALL_BYTES)
        # source address -> small objects waiting to go in its next batched request.
        self._batches: dict[str, list[tuple[bytes, asyncio.Future[int]]]] = {}
        self._batch_tasks: set[asyncio.Task[None]] = set()
        # Set when the store gives memory back; pulls that found no room wait on it.
        self._space = asyncio.Event()
        self._space_waiters = 0
        store.on_space = self._on_space
        # A spilled copy as a source: the reader, and the URL of each pull's copy.
        self.spill_fetch: SpillFetch | None = None
        self.spill_readable: Callable[[str], bool] = lambda url: False
        self._spill_urls: dict[bytes, str] = {}
        self.pulled_from_spill = 0

    # -- driven by the node
    def want(self, oid: bytes, priority: int) -> None:
        """A get (0) or wait (1) here started waiting for an object not here."""
        self.policy.want(oid, Priority(priority))

    def unwant(self, oid: bytes, priority: int) -> None:
        """One of them stopped waiting (the object came, or it gave up)."""
        if self.policy.unwant(oid, Priority(priority)):
            self._spill_urls.pop(oid, None)
            task = self.tasks.get(oid)
            if task is not None and not self.store.contains(oid):
                task.cancel()
        self._kick()

    def on_locations(self, row: ObjectRow) -> None:
        """A subscribed object's state from the directory."""
        if row.state == PRESENT and not self.store.contains(row.object_id):
            nodes: tuple[bytes, ...] = tuple(row.nodes)
            if (
                row.spilled_url
                and self.spill_fetch is not None
                and self.spill_readable(row.spilled_url)
                and not [n for n in nodes if n != self.node_id]
            ):
                # No node holds it, but its spill copy is in shared storage.
                self._spill_urls[row.object_id] = row.spilled_url
                nodes = (SPILL_SOURCE,)
            self.policy.located(row.object_id, row.size, nodes)
            self._kick()

    def _on_space(self) -> None:
        """Memory was freed here: admission may let waiting pulls in."""
        if self._space_waiters:
            self._space.set()
        if self.policy.pulls:
            self._kick()

    async def create_copy(self, oid: bytes, size: int, meta: bytes) -> Any:
        """A secondary copy in state CREATING, waiting while the store is full.

        The caller bounds the wait (an attempt's deadline).
        """
        while True:
            try:
                return await self.store.create(oid, size, meta, None, primary=False)
            except ObjectStoreFullError:
                # Every secondary is evicted and the fallback is full: wait until
                # something frees memory (a delete, a release), then try again.
                self._space.clear()
                self._space_waiters += 1
                try:
                    await self._space.wait()
                finally:
                    self._space_waiters -= 1

    def _kick(self) -> None:
        """Start what the policy allows, once per loop turn however many events."""
        if not self._kick_pending:
            self._kick_pending = True
            asyncio.get_running_loop().call_soon(self._start_pulls)

    def _start_pulls(self) -> None:
        self._kick_pending = False
        loop = asyncio.get_running_loop()
        now = loop.time()
        store = self.store
        free = store.capacity - store.used + store.eviction.evictable_bytes
        for start in self.policy.next_pulls(now, free):
            self.tasks[start.object_id] = loop.create_task(self._attempt(start), name="pull")
        wake = self.policy.next_wakeup(now)
        if wake is not None and (self._timer is None or self._timer.when() > wake):
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(wake, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._kick()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        tasks = [*self.tasks.values(), *self._batch_tasks]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        self.peers.close()

    # -- one attempt
    async def _attempt(self, start: Start) -> None:
        oid, node, size = start
        t0 = time.perf_counter()
        spill_url = self._spill_urls.get(oid, "") if node == SPILL_SOURCE else ""
        address = spill_url or self.address_of(node)
        try:
            if self.store.contains(oid):
                self.policy.succeeded(oid)
                return
            if spill_url:
                assert self.spill_fetch is not None
                try:
                    async with asyncio.timeout(self.timeout):
                        got = await self.spill_fetch(oid, spill_url)
                except (OSError, TimeoutError) as exc:
                    raise TransferError(f"{type(exc).__name__}: {exc}") from exc
                except ObjectStoreError as exc:
                    if isinstance(exc, TransferError):
                        raise
                    raise TransferError(str(exc)) from exc
                self.pulled_from_spill += 1
            elif not address:
                raise TransferError(f"no data plane address known for node {node.hex()}")
            else:
                try:
                    if size <= self.small:
                        got = await self._fetch_small(oid, address)
                    else:
                        got = await self._fetch_from(oid, address)
                except _NoRoomNow:
                    got = await self._fetch_from(oid, address)
        except TransferError as exc:
            self.failures += 1
            # Once per object at warning level; the retries of a long outage at debug.
            first = oid not in self._failed_once
            self._failed_once.add(oid)
            (log.warning if first else log.debug)(
                "pull from a source failed; trying the next",
                object_id=oid.hex(),
                source=address,
                error=str(exc),
            )
            self.policy.failed(oid, node)
        except asyncio.CancelledError:
            # Cancelled because nobody waits any more (the policy forgot the pull
            # already) or at shutdown: nothing to report, lest a later attempt
            # from the same source be counted as failed.
            raise
        except Exception:
            log.exception("pull failed", object_id=oid.hex(), source=address)
            self.policy.failed(oid, node)
        else:
            self.pulled += 1
            self.bytes_pulled += got
            self.policy.succeeded(oid)
            self._failed_once.discard(oid)
            log.debug(
                "pulled",
                object_id=oid.hex(),
                source=address,
                size=got,
                seconds=round(time.perf_counter() - t0, 4),
            )
        finally:
            if self.tasks.get(oid) is asyncio.current_task():
                del self.tasks[oid]
            if oid not in self.policy.pulls:
                self._failed_once.discard(oid)
                self._spill_urls.pop(oid, None)
            self._kick()

    async def _fetch_from(self, oid: bytes, address: str) -> int:
        """Fetch the whole object from one source and seal it; TransferError on failure."""
        store = self.store
        loop = asyncio.get_running_loop()
        created = False
        try:
            async with self.peers.slots(address):
                conn = await self._connect(address)
                try:
                    async with asyncio.timeout(self.timeout):
                        await loop.sock_sendall(
                            conn.sock, wire.encode_request(wire.FETCH, oid, 0, self.chunk)
                        )
                        status, size, n, meta_len, crc = wire.decode_reply(
                            await recv_exact(loop, conn.sock, wire.REPLY.size)
                        )
                        if status != wire.OK:
                            raise TransferError(
                                f"source says {wire.STATUS_NAMES.get(status, status)}"
                            )
                        if n > min(self.chunk, size) or meta_len > 65536:
                            raise TransferError(f"bad first chunk: {n} of {size} bytes")
                        meta = await recv_exact(loop, conn.sock, meta_len) if meta_len else b""
                        # Room for the copy (may evict other secondaries, or wait).
                        entry = await self.create_copy(oid, size, meta)
                        created = True
                        await self._recv_chunk(loop, conn, entry, 0, n, crc)
                except BaseException:
                    conn.sock.close()
                    raise
                self.peers.put(conn)
            rest = [(off, min(self.chunk, size - off)) for off in range(n, size, self.chunk)]
            if rest:
                await asyncio.gather(*(self._chunk(oid, address, entry, o, k) for o, k in rest))
            store.seal(oid, None)
            created = False
            return size
        except (OSError, ConnectionError, TimeoutError, wire.WireError) as exc:
            raise TransferError(f"{type(exc).__name__}: {exc}") from exc
        except ObjectStoreError as exc:
            if isinstance(exc, TransferError):
                raise
            raise TransferError(str(exc)) from exc
        finally:
            if created:
                store.discard_partial(oid)

    # -- many small objects per request
    async def _fetch_small(self, oid: bytes, address: str) -> int:
        """Fetch a small object in the next batched request to ``address``."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        queue = self._batches.get(address)
        if queue is None:
            queue = self._batches[address] = []
            # Everything asked for in this turn of the loop goes together.
            loop.call_soon(self._send_batches, address)
        queue.append((oid, fut))
        return await fut

    def _send_batches(self, address: str) -> None:
        queue = self._batches.pop(address, [])
        loop = asyncio.get_running_loop()
        for i in range(0, len(queue), _BATCH):
            task = loop.create_task(self._batch(address, queue[i : i + _BATCH]))
            self._batch_tasks.add(task)
            task.add_done_callback(self._batch_tasks.discard)

    async def _batch(self, address: str, items: list[tuple[bytes, asyncio.Future[int]]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with self.peers.slots(address):
                conn = await self._connect(address)
                try:
                    async with asyncio.timeout(self.timeout):
                        request = wire.encode_request(wire.FETCH_MANY, bytes(20), 0, len(items))
                        await loop.sock_sendall(conn.sock, request + b"".join(o for o, _ in items))
                        reader = _Buffered(conn.sock)
                        for oid, fut in items:
                            self._take_small(oid, fut, *await self._read_small(loop, reader))
                        if reader.end > reader.start:
                            raise TransferError("the source sent more than the batch")
                except BaseException:
                    conn.sock.close()
                    raise
                self.peers.put(conn)
        except Exception as exc:  # noqa: BLE001 - every waiting pull hears of it
            err = (
                exc
                if isinstance(exc, TransferError)
                else TransferError(f"{type(exc).__name__}: {exc}")
            )
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(err)

    @staticmethod
    async def _read_small(
        loop: asyncio.AbstractEventLoop, reader: _Buffered
    ) -> tuple[int, int, bytes, bytes, int]:
        status, size, n, meta_len, crc = wire.decode_reply(await reader.read(loop, wire.REPLY.size))
        if status == wire.OK and (n != size or meta_len > 65536):
            raise TransferError(f"bad reply in a batch: {n} of {size} bytes")
        meta = await reader.read(loop, meta_len) if meta_len else b""
        data = await reader.read(loop, n) if n else b""
        return status, size, meta, data, crc

    def _take_small(
        self,
        oid: bytes,
        fut: asyncio.Future[int],
        status: int,
        size: int,
        meta: bytes,
        data: bytes,
        crc: int,
    ) -> None:
        """Seal one object of a batch (copied: it is small) and tell its pull."""
        if fut.done():
            return  # that pull was cancelled meanwhile
        if status != wire.OK:
            fut.set_exception(TransferError(f"source says {wire.STATUS_NAMES.get(status, status)}"))
            return
        if wire.crc32(data) != crc:
            fut.set_exception(TransferError(f"object of {size} bytes failed its checksum"))
            return
        store = self.store
        try:
            entry = store.create_now(oid, size, meta, None, primary=False)
        except ObjectStoreError as exc:
            fut.set_exception(TransferError(str(exc)))
            return
        if entry is None:
            fut.set_exception(_NoRoomNow("no room at once"))
            return
        if size:
            whole = store.view(entry)
            whole[:] = data
            whole.release()
        store.seal(oid, None)
        fut.set_result(size)

    async def _connect(self, address: str) -> _Conn:
        try:
            return await self.peers.get(address)
        except (OSError, TimeoutError) as exc:
            raise TransferError(f"cannot connect to {address}: {exc}") from exc

    async def _chunk(self, oid: bytes, address: str, entry: object, offset: int, n: int) -> None:
        loop = asyncio.get_running_loop()
        await self.budget.acquire(n)
        try:
            async with self.peers.slots(address):
                conn = await self._connect(address)
                try:
                    async with asyncio.timeout(self.timeout):
                        await loop.sock_sendall(
                            conn.sock, wire.encode_request(wire.FETCH, oid, offset, n)
                        )
                        status, _, got, _, crc = wire.decode_reply(
                            await recv_exact(loop, conn.sock, wire.REPLY.size)
                        )
                        if status != wire.OK or got != n:
                            raise TransferError(
                                f"chunk at {offset}: source says "
                                f"{wire.STATUS_NAMES.get(status, status)}, {got} of {n} bytes"
                            )
                        await self._recv_chunk(loop, conn, entry, offset, n, crc)
                except BaseException:
                    conn.sock.close()
                    raise
                self.peers.put(conn)
        finally:
            await self.budget.release(n)

    async def _recv_chunk(
        self,
        loop: asyncio.AbstractEventLoop,
        conn: _Conn,
        entry: object,
        offset: int,
        n: int,
        crc: int,
    ) -> None:
        """Receive ``n`` bytes straight into the copy and check their CRC."""
        whole = self.store.view(entry)  # type: ignore[arg-type]
        view = whole[offset : offset + n]
        try:
            got = 0
            while got < n:
                k = await loop.sock_recv_into(conn.sock, view[got:])
                if not k:
                    raise ConnectionError(f"source closed after {got} of {n} bytes")
                got += k
            mine = wire.crc32(view)
            if mine != crc:
                raise TransferError(f"chunk at {offset} of {n} bytes failed its checksum")
        finally:
            with contextlib.suppress(BufferError):
                view.release()
                whole.release()
