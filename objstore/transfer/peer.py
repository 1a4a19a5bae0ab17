"""The pulling side's wire client: three fetches over a pool of checked connections.

:class:`PeerTransport` is the seam the object manager pulls through (tests
plug in ``tests.fakes.FakePeers``); :class:`PeerClient` is the one real
implementation, over the data plane of :mod:`objstore.transfer.wire`:

* :meth:`~PeerTransport.fetch_first` asks for an object's first chunk and
  returns once the reply's header and metadata are in: the caller learns the
  size, makes room for the copy, then reads the chunk's bytes with
  :meth:`FirstChunk.read_into`.  Waiting for local memory happens between the
  two, so it never counts against the source.
* :meth:`~PeerTransport.fetch_chunk` reads one later chunk straight into a
  view of the copy.
* :meth:`~PeerTransport.fetch_many` reads many small objects in one request.

Each is bounded by one deadline the caller gives (a time on the running
loop's clock) that covers everything on the wire: taking or opening a
connection, the request and the whole reply.  Every failure (refused,
closed, stalled past the deadline, a bad frame, a bad CRC) is raised as
:class:`TransferError`; a cancelled fetch closes its connection.

:class:`PeerPool` keeps the connections between requests.  A pooled
connection is reused only if it is still open (a non-blocking peek: the
source may have closed it while it sat idle) and was idle for less than
``transfer.peer_idle_s``, which is below the source's own idle timeout
(``transfer.idle_timeout_s``); idle ones are closed in the background.  A
request on a reused connection that the source closed before any byte of the
reply came is sent again once on a new connection (requests are idempotent).

A new connection is authenticated before its first request
(:func:`~objstore.transfer.handshake.offer_handshake`, inside TLS when the
credentials have it); the first request travels with the answer, so this
costs one round trip per new connection and nothing per pooled one.  A
source that does not know the cluster token, refuses ours, or presents a
certificate the CA did not sign raises :class:`PeerAuthenticationError`
(a :class:`TransferError`, so the pull moves on to another source and backs
off, and an :class:`~objstore.errors.AuthenticationError`); it is logged
once per source per minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import structlog

from objstore.auth import Credentials
from objstore.config import Config
from objstore.errors import AuthenticationError, ObjectStoreError
from objstore.lograte import LogLimiter
from objstore.transfer import wire
from objstore.transfer.conn import Conn, PlainConn, tls_connect
from objstore.transfer.handshake import offer_handshake

__all__ = [
    "TransferError",
    "PeerAuthenticationError",
    "FirstChunk",
    "Small",
    "PeerTransport",
    "PeerPool",
    "PeerClient",
]

log = structlog.get_logger("objstore.transfer.peer")

# Metadata longer than this in a reply is a broken source.
_MAX_META = 65536
# An object in a FETCH_MANY reply larger than this is a broken source (the
# server sends only objects up to its chunk size in a batch).
_MAX_SMALL_REPLY = 64 << 20


class TransferError(ObjectStoreError):
    """One fetch from one source failed (the pull tries another source)."""


class PeerAuthenticationError(TransferError, AuthenticationError):
    """A source and this node could not authenticate each other (token or certificate)."""


class FirstChunk(Protocol):
    """The header of an object's first chunk; its bytes are still on the wire."""

    @property
    def size(self) -> int:
        """The whole object's size."""
        ...

    @property
    def meta(self) -> bytes:
        """The object's metadata."""
        ...

    @property
    def length(self) -> int:
        """Bytes of this chunk (``min(chunk, size)``): what :meth:`read_into` fills."""
        ...

    async def read_into(self, view: memoryview, deadline: float) -> None:
        """Receive the chunk into ``view`` (``length`` bytes) and check its CRC."""
        ...

    def close(self) -> None:
        """Give up the chunk (its connection closes unless the chunk was read)."""
        ...


@dataclass(frozen=True, slots=True)
class Small:
    """One object of a :meth:`PeerTransport.fetch_many` reply."""

    size: int
    meta: bytes
    data: bytes
    # Why this object did not come ("": it did, its CRC checked).
    error: str = ""


class PeerTransport(Protocol):
    """What the object manager asks of other nodes (see the module docstring)."""

    async def fetch_first(
        self, address: str, oid: bytes, chunk: int, deadline: float
    ) -> FirstChunk:
        """Ask for the first ``chunk`` bytes of ``oid``; return once size and metadata are in."""
        ...

    async def fetch_chunk(
        self, address: str, oid: bytes, offset: int, view: memoryview, deadline: float
    ) -> None:
        """Fill ``view`` with the object's bytes from ``offset``, CRC checked."""
        ...

    async def fetch_many(self, address: str, oids: list[bytes], deadline: float) -> list[Small]:
        """Whole small objects, one :class:`Small` per id in order."""
        ...

    def close(self) -> None:
        """Close every connection."""
        ...


class PeerPool:
    """Open connections to other nodes' data planes, kept between requests.

    Every socket the pool opened and has not closed is in :attr:`open`; the
    idle ones are also in ``_idle`` (with when they went idle), the others
    are in use by a request.
    """

    def __init__(
        self,
        node_id: bytes = b"",
        *,
        credentials: Credentials,
        idle_s: float = 60.0,
        max_idle_per_peer: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.credentials = credentials
        self._ssl = credentials.client_ssl()
        # Said first on every connection (wire.HELLO), so the source bounds and
        # cancels its sends to this node by node rather than by address.
        self._hello = (
            wire.encode_request(wire.HELLO, node_id.ljust(20, b"\0"), 0, 0) if node_id else b""
        )
        self.idle_s = idle_s
        self.max_idle_per_peer = max_idle_per_peer
        self.clock = clock
        # address -> idle connections, oldest first, with when each went idle.
        self._idle: dict[str, list[tuple[float, Conn]]] = {}
        self.open: set[Conn] = set()
        self._sweep: asyncio.TimerHandle | None = None
        # Connections found closed or expired instead of reused (tests, stats).
        self.dropped_stale = 0
        self.dropped_idle = 0
        # New connections a source refused (or could not prove itself on).
        self.auth_failures = 0
        self._auth_logged = LogLimiter()

    def idle_count(self, address: str | None = None) -> int:
        """Idle connections (to ``address``, or to anyone)."""
        if address is not None:
            return len(self._idle.get(address, ()))
        return sum(len(v) for v in self._idle.values())

    def idle_sockets(self) -> list[Conn]:
        """The idle connections (each one's raw socket is ``.sock``)."""
        return [c for conns in self._idle.values() for _, c in conns]

    async def connect(self, address: str, first: bytes = b"") -> Conn:
        """A new connection, authenticated, with HELLO and ``first`` (a request) sent.

        The caller's deadline bounds it.  :class:`PeerAuthenticationError`
        if the source and this node cannot authenticate each other.
        """
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        conn: Conn = PlainConn(sock)
        self.open.add(conn)
        try:
            await loop.sock_connect(sock, (host, int(port)))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                if self._ssl is not None:
                    tls = await tls_connect(sock, self._ssl)
                    self.open.discard(conn)
                    conn = tls
                    self.open.add(conn)
                token = self.credentials.token
                if token is not None:
                    await offer_handshake(conn, token, self._hello + first)
                elif self._hello or first:
                    await conn.sendall(self._hello + first)
            except ssl.SSLCertVerificationError as exc:
                raise self._auth_failed(
                    address, f"its certificate is not from the cluster's CA ({exc.verify_message})"
                ) from exc
            except ssl.SSLError as exc:
                if exc.reason and "ALERT" in exc.reason.upper():
                    raise self._auth_failed(
                        address, f"it refused this node's certificate ({exc.reason})"
                    ) from exc
                raise
            except AuthenticationError as exc:
                raise self._auth_failed(address, str(exc)) from exc
        except BaseException:
            self.discard(conn)
            raise
        return conn

    def _auth_failed(self, address: str, why: str) -> PeerAuthenticationError:
        """Count and log (once per source per minute) a failed authentication."""
        self.auth_failures += 1
        held = self._auth_logged.note(address)
        if held is not None:
            log.warning(
                "data plane: could not authenticate with a source",
                peer=address,
                reason=why,
                suppressed=held,
            )
        return PeerAuthenticationError(f"{address}: {why}")

    def take(self, address: str) -> Conn | None:
        """An idle connection to ``address`` that is still open, newest first; None if none."""
        conns = self._idle.get(address)
        now = self.clock()
        while conns:
            since, sock = conns.pop()
            if now - since >= self.idle_s:
                self.dropped_idle += 1
                self.discard(sock)
            elif not sock.alive():
                self.dropped_stale += 1
                self.discard(sock)
            else:
                if not conns:
                    del self._idle[address]
                return sock
        self._idle.pop(address, None)
        return None

    def give(self, address: str, sock: Conn) -> None:
        """A connection whose last reply was read whole: keep it for the next request."""
        if sock not in self.open:
            return
        conns = self._idle.setdefault(address, [])
        conns.append((self.clock(), sock))
        while len(conns) > self.max_idle_per_peer:
            _, old = conns.pop(0)
            self.discard(old)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self.idle_s, self._expire)

    def discard(self, sock: Conn) -> None:
        """Close a connection (in use or not): its stream is unusable or not wanted."""
        self.open.discard(sock)
        sock.close()

    def _expire(self) -> None:
        """Close connections idle for ``idle_s``; come back when the next one will be."""
        self._sweep = None
        now = self.clock()
        oldest: float | None = None
        for address in list(self._idle):
            keep = []
            for since, sock in self._idle[address]:
                if now - since >= self.idle_s:
                    self.dropped_idle += 1
                    self.discard(sock)
                else:
                    keep.append((since, sock))
                    oldest = since if oldest is None else min(oldest, since)
            if keep:
                self._idle[address] = keep
            else:
                del self._idle[address]
        if oldest is not None:
            delay = max(0.0, oldest + self.idle_s - now)
            self._sweep = asyncio.get_running_loop().call_later(delay, self._expire)

    def close(self) -> None:
        """Close every connection, idle or in use."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._idle.clear()
        for sock in list(self.open):
            self.discard(sock)


class _Closed(ConnectionError):
    """The source closed the connection before any byte of the reply."""


class _Buffered:
    """Reads a socket through a buffer: many small replies per ``recv``."""

    def __init__(self, conn: Conn, size: int = 1 << 20) -> None:
        self.conn = conn
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0

    @property
    def pending(self) -> int:
        """Bytes received and not read yet."""
        return self.end - self.start

    async def read(self, n: int) -> bytes:
        if self.end - self.start >= n:
            out = bytes(self.view[self.start : self.start + n])
            self.start += n
            return out
        have = bytes(self.view[self.start : self.end])
        self.start = self.end = 0
        if n - len(have) > len(self.buf):
            return have + await _recv_bytes(self.conn, n - len(have))
        while self.end < n - len(have):
            k = await self.conn.recv_into(self.view[self.end :])
            if not k:
                raise ConnectionError("source closed in the middle of a batch")
            self.end += k
        need = n - len(have)
        self.start = need
        return have + bytes(self.view[:need])


@contextlib.contextmanager
def _as_transfer_error(address: str) -> Iterator[None]:
    """Foreign errors of one fetch from ``address`` as :class:`TransferError`."""
    try:
        yield
    except TransferError:
        raise  # PeerAuthenticationError is an OSError too: keep it as it is
    except TimeoutError as exc:
        raise TransferError(f"{address}: no reply in time") from exc
    except (OSError, wire.WireError) as exc:
        raise TransferError(f"{address}: {type(exc).__name__}: {exc}") from exc


def _status(status: int) -> str:
    return wire.STATUS_NAMES.get(status, str(status))


class _First:
    """:class:`FirstChunk` of a :class:`PeerClient`: holds the connection until read."""

    def __init__(
        self,
        client: PeerClient,
        address: str,
        sock: Conn,
        size: int,
        meta: bytes,
        length: int,
        crc: int,
    ) -> None:
        self._client = client
        self._address = address
        self._sock: Conn | None = sock
        self.size = size
        self.meta = meta
        self.length = length
        self._crc = crc

    async def read_into(self, view: memoryview, deadline: float) -> None:
        sock = self._sock
        if sock is None:
            raise TransferError("the first chunk was read or given up already")
        if len(view) != self.length:
            raise ValueError(f"a view of {len(view)} bytes for a chunk of {self.length}")
        self._sock = None
        pool = self._client.pool
        try:
            with _as_transfer_error(self._address):
                async with asyncio.timeout_at(deadline):
                    await sock.recv_exactly(view)
            if wire.crc32(view) != self._crc:
                raise TransferError(
                    f"{self._address}: first chunk of {self.length} bytes failed its checksum"
                )
        except BaseException:
            pool.discard(sock)
            raise
        pool.give(self._address, sock)

    def close(self) -> None:
        if self._sock is not None:
            self._client.pool.discard(self._sock)
            self._sock = None


class PeerClient:
    """The data plane client of the pulling side (:class:`PeerTransport`)."""

    def __init__(
        self,
        node_id: bytes = b"",
        *,
        credentials: Credentials,
        idle_s: float = 60.0,
        max_idle_per_peer: int = 8,
    ) -> None:
        self.pool = PeerPool(
            node_id, credentials=credentials, idle_s=idle_s, max_idle_per_peer=max_idle_per_peer
        )
        # Requests sent again on a new connection: the pooled one had just closed.
        self.retried = 0

    @classmethod
    def from_config(cls, node_id: bytes, config: Config, credentials: Credentials) -> PeerClient:
        tc = config.transfer
        return cls(
            node_id,
            credentials=credentials,
            idle_s=tc.peer_idle_s,
            max_idle_per_peer=tc.connections_per_peer,
        )

    def close(self) -> None:
        self.pool.close()

    async def _request(self, address: str, request: bytes) -> tuple[Conn, bytes]:
        """Send ``request``; return the connection and the first reply header.

        A pooled connection is tried first; one the source closed before any
        byte of the reply came is replaced by a new one, once.
        """
        pool = self.pool
        sock = pool.take(address)
        if sock is not None:
            try:
                await sock.sendall(request)
                return sock, await _first_header(sock)
            except (_Closed, BrokenPipeError, ConnectionResetError):
                pool.discard(sock)
                self.retried += 1
                log.debug("pooled connection closed by the source; sent again", peer=address)
            except BaseException:
                pool.discard(sock)
                raise
        sock = await pool.connect(address, request)
        try:
            return sock, await _first_header(sock)
        except BaseException:
            pool.discard(sock)
            raise

    async def fetch_first(self, address: str, oid: bytes, chunk: int, deadline: float) -> _First:
        with _as_transfer_error(address):
            async with asyncio.timeout_at(deadline):
                sock, head = await self._request(
                    address, wire.encode_request(wire.FETCH, oid, 0, chunk)
                )
                try:
                    status, size, n, meta_len, crc = wire.decode_reply(head)
                    if status != wire.OK:
                        raise TransferError(f"{address}: source says {_status(status)}")
                    if n > min(chunk, size) or n < min(chunk, size) or meta_len > _MAX_META:
                        raise TransferError(
                            f"{address}: bad first chunk: {n} of {size} bytes, "
                            f"{meta_len} bytes of metadata"
                        )
                    meta = await _recv_bytes(sock, meta_len) if meta_len else b""
                except BaseException:
                    self._after_error(address, sock, head)
                    raise
        return _First(self, address, sock, size, meta, n, crc)

    async def fetch_chunk(
        self, address: str, oid: bytes, offset: int, view: memoryview, deadline: float
    ) -> None:
        n = len(view)
        with _as_transfer_error(address):
            async with asyncio.timeout_at(deadline):
                sock, head = await self._request(
                    address, wire.encode_request(wire.FETCH, oid, offset, n)
                )
                try:
                    status, _, got, meta_len, crc = wire.decode_reply(head)
                    if status != wire.OK or got != n or meta_len > _MAX_META:
                        raise TransferError(
                            f"{address}: chunk at {offset}: source says {_status(status)}, "
                            f"{got} of {n} bytes"
                        )
                    if meta_len:  # only at offset 0
                        await _recv_bytes(sock, meta_len)
                    await sock.recv_exactly(view)
                    if wire.crc32(view) != crc:
                        raise TransferError(
                            f"{address}: chunk at {offset} of {n} bytes failed its checksum"
                        )
                except BaseException:
                    self._after_error(address, sock, head)
                    raise
        self.pool.give(address, sock)

    async def fetch_many(self, address: str, oids: list[bytes], deadline: float) -> list[Small]:
        if not oids:
            return []
        request = wire.encode_request(wire.FETCH_MANY, bytes(20), 0, len(oids)) + b"".join(oids)
        out: list[Small] = []
        with _as_transfer_error(address):
            async with asyncio.timeout_at(deadline):
                sock, head = await self._request(address, request)
                try:
                    reader = _Buffered(sock)
                    for i in range(len(oids)):
                        if i:
                            head = await reader.read(wire.REPLY.size)
                        status, size, n, meta_len, crc = wire.decode_reply(head)
                        if status != wire.OK:
                            if n or meta_len:
                                raise TransferError(f"{address}: bad reply in a batch")
                            out.append(Small(size, b"", b"", f"source says {_status(status)}"))
                            continue
                        if n != size or meta_len > _MAX_META or n > _MAX_SMALL_REPLY:
                            raise TransferError(
                                f"{address}: bad reply in a batch: {n} of {size} bytes"
                            )
                        meta = await reader.read(meta_len) if meta_len else b""
                        data = await reader.read(n) if n else b""
                        if wire.crc32(data) != crc:
                            out.append(Small(size, meta, b"", "failed its checksum"))
                        else:
                            out.append(Small(size, meta, data))
                    if reader.pending:
                        raise TransferError(f"{address}: the source sent more than the batch")
                except BaseException:
                    self.pool.discard(sock)
                    raise
        self.pool.give(address, sock)
        return out

    def _after_error(self, address: str, sock: Conn, head: bytes) -> None:
        """A fetch failed after its header came: keep the connection only if the
        reply was a bare NOT_FOUND (nothing else of it is on the wire)."""
        try:
            status, _, n, meta_len, _ = wire.decode_reply(head)
        except wire.WireError:
            status, n, meta_len = -1, 0, 0
        if status == wire.NOT_FOUND and not n and not meta_len:
            self.pool.give(address, sock)
        else:
            self.pool.discard(sock)


async def _first_header(conn: Conn) -> bytes:
    """A reply header; :class:`_Closed` if the source closed before its first byte."""
    buf = bytearray(wire.REPLY.size)
    view = memoryview(buf)
    k = await conn.recv_into(view)
    if not k:
        raise _Closed("the source closed the connection before replying")
    if k < len(buf):
        await conn.recv_exactly(view[k:])
    return bytes(buf)


async def _recv_bytes(conn: Conn, n: int) -> bytes:
    """``n`` bytes, or ConnectionError if the source closed first."""
    buf = bytearray(n)
    await conn.recv_exactly(memoryview(buf))
    return bytes(buf)
