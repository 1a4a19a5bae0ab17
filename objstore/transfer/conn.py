"""One data plane connection, plain or under TLS, behind the same five calls.

asyncio's ``loop.sock_*`` calls refuse an :class:`ssl.SSLSocket`, and the
data plane moves its bulk bytes with exactly those calls (``sock_sendall``
from a view of shared memory, ``sock_recv_into`` a view of the copy).  So a
connection is a :class:`Conn`:

* :class:`PlainConn` calls ``loop.sock_recv_into`` / ``loop.sock_sendall``
  directly: the path without TLS costs what it cost before.
* :class:`TlsConn` runs TLS over the same raw non-blocking socket with
  :class:`ssl.MemoryBIO` and :meth:`ssl.SSLContext.wrap_bio`: ciphertext
  moves with the loop's socket calls, and ``SSLObject.read(n, buffer)``
  decrypts straight into the destination view.  Encrypting one 5 MiB chunk
  takes 2.5–10 ms on the machines this runs on, so large writes and reads
  are split into 1 MiB pieces whose crypto runs in a small thread pool
  (OpenSSL releases the GIL): the loop stays responsive, and the next piece
  is encrypted while the previous one is sent.  A piece a thread works on is
  always finished before the call returns, even when it is cancelled: the
  view it reads or writes may be shared memory that is freed right after.

A connection serves one request at a time; nothing here is safe for two
concurrent calls on one connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Protocol, TypeVar, cast

__all__ = ["Conn", "PlainConn", "TlsConn", "tls_accept", "tls_connect"]

T = TypeVar("T")

# Crypto of at most this many bytes runs on the loop; more goes to a thread.
_INLINE = 256 << 10
# What one thread call encrypts or decrypts.
_PIECE = 1 << 20
# A TLS record's largest ciphertext (16 KiB of data and its overhead), rounded up.
_RECORD = 17 << 10
# Ciphertext read from the socket per receive.
_RECV_BUF = 1 << 20
_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="objstore-tls")
    return _pool


class Conn(Protocol):
    """A byte stream to a peer; every call waits on the running loop."""

    sock: socket.socket

    async def recv_into(self, view: memoryview) -> int:
        """Some bytes into ``view``: how many (0: the peer closed)."""
        ...

    async def recv_exactly(self, view: memoryview) -> None:
        """Fill ``view``, or ConnectionError if the peer closed first."""
        ...

    async def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``."""
        ...

    def alive(self) -> bool:
        """Whether an idle connection is still open: nothing to read, and not closed."""
        ...

    def close(self) -> None:
        """Close the socket (idempotent)."""
        ...


def _peek_alive(sock: socket.socket) -> bool:
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError:
        return False
    # b"": the peer closed it; a byte: the stream is out of step.
    del data
    return False


class PlainConn:
    """A connection without TLS: the loop's socket calls, nothing in between."""

    __slots__ = ("sock", "_loop")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._loop = asyncio.get_running_loop()

    async def recv_into(self, view: memoryview) -> int:
        return await self._loop.sock_recv_into(self.sock, view)

    async def recv_exactly(self, view: memoryview) -> None:
        n = len(view)
        got = 0
        loop, sock = self._loop, self.sock
        while got < n:
            k = await loop.sock_recv_into(sock, view[got:])
            if not k:
                raise ConnectionError(f"peer closed after {got} of {n} bytes")
            got += k

    async def sendall(self, data: bytes | bytearray | memoryview) -> None:
        await self._loop.sock_sendall(self.sock, data)

    def alive(self) -> bool:
        return _peek_alive(self.sock)

    def close(self) -> None:
        self.sock.close()


async def _finish(fut: asyncio.Future[T]) -> T:
    """Wait for work in a thread; if cancelled, still wait for it to end, then re-raise.

    The thread may be reading or writing a view of shared memory that the
    caller frees as soon as it returns.
    """
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        # asyncio.wait neither cancels the work nor raises its error: the
        # cancellation is what the caller hears, once the thread let go.
        while not fut.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([fut])
        raise


class TlsConn:
    """TLS over a raw non-blocking socket (MemoryBIO); made by :func:`tls_accept`
    or :func:`tls_connect`, which run the TLS handshake."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, server_side: bool) -> None:
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = ctx.wrap_bio(self._in, self._out, server_side=server_side)
        self._buf = bytearray(_RECV_BUF)
        self._view = memoryview(self._buf)
        self._eof = False

    # -- ciphertext
    async def _flush(self) -> None:
        data = self._out.read()
        if data:
            await self._loop.sock_sendall(self.sock, data)

    async def _fill(self) -> bool:
        """More ciphertext from the socket; False once the peer closed."""
        if self._eof:
            return False
        k = await self._loop.sock_recv_into(self.sock, self._view)
        if not k:
            self._eof = True
            return False
        self._in.write(self._view[:k])
        return True

    async def _thread(self, fn: Callable[..., T], *args: object) -> T:
        return await _finish(self._loop.run_in_executor(_executor(), fn, *args))

    async def handshake(self) -> None:
        """The TLS handshake; ssl.SSLError if it fails (an untrusted certificate...)."""
        while True:
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    raise ConnectionError(
                        "the peer closed during the TLS handshake (does it run TLS?)"
                    ) from None
            except ssl.SSLError:
                # Let the peer hear why (an alert), then fail.
                try:
                    await self._flush()
                except OSError:
                    pass
                raise
        await self._flush()

    # -- plaintext
    def _decrypt(self, view: memoryview) -> int:
        """Decrypt what has arrived into ``view``: how many bytes (maybe 0)."""
        got = 0
        n = len(view)
        read = self._ssl.read
        while got < n:
            try:
                # With a buffer, read() returns how many bytes it wrote there.
                k = cast(int, read(n - got, view[got:]))  # type: ignore[arg-type]
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._eof = True
                break
            if not k:
                break
            got += k
        return got

    async def recv_into(self, view: memoryview) -> int:
        view = view[:_INLINE]  # decrypted on the loop: keep each call short
        while True:
            got = self._decrypt(view)
            if got:
                return got
            if not await self._fill():
                return 0

    async def recv_exactly(self, view: memoryview) -> None:
        n = len(view)
        if self._in.pending > _INLINE and n > _INLINE:
            got = await self._thread(self._decrypt, view)
        else:
            got = self._decrypt(view)
        while got < n:
            if not await self._fill():
                raise ConnectionError(f"peer closed after {got} of {n} bytes")
            # OpenSSL may hold up to one record's ciphertext itself, out of the BIO:
            # until the BIO has at least `need`, the view cannot fill.
            pending = self._in.pending
            need = n - got - _RECORD
            if pending >= min(_PIECE, need):
                rest = view[got:]
                if pending > _INLINE:
                    got += await self._thread(self._decrypt, rest)
                else:
                    got += self._decrypt(rest)

    def _encrypt(self, piece: memoryview) -> bytes:
        self._ssl.write(piece)
        return self._out.read()

    async def sendall(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        n = len(view)
        if n <= _INLINE:
            if n:
                self._ssl.write(view)
            await self._flush()
            return
        await self._flush()
        loop, pool = self._loop, _executor()
        # Piece i+1 is encrypted in a thread while piece i is sent.
        nxt = loop.run_in_executor(pool, self._encrypt, view[:_PIECE])
        try:
            for off in range(_PIECE, n + _PIECE, _PIECE):
                enc = await _finish(nxt)
                if off < n:
                    nxt = loop.run_in_executor(pool, self._encrypt, view[off : off + _PIECE])
                await loop.sock_sendall(self.sock, enc)
        finally:
            if not nxt.done():
                await _finish(nxt)

    def alive(self) -> bool:
        if self._in.pending or self._ssl.pending() or self._eof:
            return False  # bytes nobody asked for: out of step
        return _peek_alive(self.sock)

    def close(self) -> None:
        self.sock.close()


async def tls_accept(sock: socket.socket, ctx: ssl.SSLContext) -> TlsConn:
    """The server's side of a TLS handshake on an accepted socket."""
    conn = TlsConn(sock, ctx, server_side=True)
    await conn.handshake()
    return conn


async def tls_connect(sock: socket.socket, ctx: ssl.SSLContext) -> TlsConn:
    """The client's side of a TLS handshake on a connected socket."""
    conn = TlsConn(sock, ctx, server_side=False)
    await conn.handshake()
    return conn
