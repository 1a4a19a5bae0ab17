"""The serving side of the data plane: chunks straight from shared memory.

Each connection reads one request at a time; a chunk is pinned while it is
sent (so no delete can reuse its memory underneath), its CRC-32 is computed
(ISA-L, inline), then it goes out with ``sock_sendall`` from a view of the
arena.  Chunks in flight are bounded per peer and overall.  A
peer that sends garbage (a bad magic, an unknown kind, a range outside the
object) gets an error reply or a closed connection; the node carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket

import structlog

from objstore.config import Config
from objstore.errors import ObjectStoreError
from objstore.plasma.store import ClientState, PlasmaStore
from objstore.transfer import wire

__all__ = ["TransferServer"]

log = structlog.get_logger("objstore.transfer.server")

_IDLE_TIMEOUT_S = 300.0


async def recv_exact(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    """``n`` bytes, or ConnectionError if the peer closed first."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = await loop.sock_recv_into(sock, view[got:])
        if not k:
            raise ConnectionError(f"peer closed after {got} of {n} bytes")
        got += k
    return bytes(buf)


class TransferServer:
    """Serves chunks of this node's sealed objects to other nodes."""

    def __init__(self, store: PlasmaStore, config: Config) -> None:
        self.store = store
        self.config = config
        tc = config.transfer
        self.max_chunk = tc.chunk_size
        # One pseudo-client holds the pins of chunks being sent.
        self._pins = ClientState(0, lambda ids: None)
        self._overall = asyncio.Semaphore(max(1, tc.max_bytes_in_flight // tc.chunk_size))
        self._per_peer: dict[str, asyncio.Semaphore] = {}
        self._per_peer_chunks = max(1, tc.max_bytes_in_flight // tc.chunk_size // 2)
        self._listener: socket.socket | None = None
        self._accept: asyncio.Task[None] | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.host = ""
        self.port = 0
        self.chunks_sent = 0
        self.bytes_sent = 0
        self.bad_requests = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self, host: str, port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise ObjectStoreError(
                f"node.port: cannot listen on {host}:{port}: {exc.strerror}"
            ) from exc
        sock.listen(256)
        sock.setblocking(False)
        self._listener = sock
        self.host, self.port = sock.getsockname()[:2]
        self._accept = asyncio.get_running_loop().create_task(self._accept_loop(), name="transfer-accept")

    async def close(self) -> None:
        if self._accept is not None:
            self._accept.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept
        if self._listener is not None:
            self._listener.close()
        for t in list(self._conns):
            t.cancel()
        for t in list(self._conns):
            with contextlib.suppress(BaseException):
                await t
        self.store.disconnect(self._pins)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            try:
                sock, peer = await loop.sock_accept(self._listener)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("accept failed; backing off", error=exc.strerror)
                    await asyncio.sleep(0.1)
                    continue
                raise
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(self._serve(sock, f"{peer[0]}:{peer[1]}", peer[0]))
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)

    async def _serve(self, sock: socket.socket, peer: str, host: str) -> None:
        loop = asyncio.get_running_loop()
        per_peer = self._per_peer.setdefault(host, asyncio.Semaphore(self._per_peer_chunks))
        try:
            while True:
                try:
                    async with asyncio.timeout(_IDLE_TIMEOUT_S):
                        head = await recv_exact(loop, sock, wire.REQUEST.size)
                except ConnectionError:
                    return  # the peer closed between requests: fine
                try:
                    kind, oid, offset, length = wire.decode_request(head)
                except wire.WireError as exc:
                    self.bad_requests += 1
                    log.warning("data plane: bad request; connection closed", peer=peer, error=str(exc))
                    return
                if kind == wire.FETCH_MANY:
                    ids = await recv_exact(loop, sock, length * 20)
                    async with per_peer, self._overall:
                        await self._send_many(loop, sock, ids)
                    continue
                async with per_peer, self._overall:
                    if not await self._send_chunk(loop, sock, peer, oid, offset, length):
                        return
        except (OSError, ConnectionError, TimeoutError) as exc:
            log.debug("data plane connection ended", peer=peer, error=str(exc) or type(exc).__name__)
        finally:
            sock.close()

    async def _send_many(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, ids: bytes
    ) -> None:
        """Answer a FETCH_MANY: each object whole, copied into ~1 MiB writes."""
        store = self.store
        out = bytearray()
        for i in range(0, len(ids), 20):
            oid = ids[i : i + 20]
            try:
                entry = store.get_now(oid)
            except ObjectStoreError:
                entry = None
            if entry is None:
                out += wire.encode_reply(wire.NOT_FOUND)
            elif entry.size > self.max_chunk:
                out += wire.encode_reply(wire.BAD_REQUEST, entry.size)
            else:
                seg = store.segments[entry.segment].mm
                data = seg[entry.offset : entry.offset + entry.size]
                meta = entry.meta
                out += wire.encode_reply(wire.OK, entry.size, entry.size, len(meta), wire.crc32(data))
                out += meta
                out += data
                self.chunks_sent += 1
                self.bytes_sent += entry.size
            if len(out) >= 1 << 20:
                # The objects are copied already: a delete meanwhile cannot touch them.
                await loop.sock_sendall(sock, out)
                out = bytearray()
        if out:
            await loop.sock_sendall(sock, out)

    async def _send_chunk(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        peer: str,
        oid: bytes,
        offset: int,
        length: int,
    ) -> bool:
        """Answer one FETCH; False when the connection must close."""
        store = self.store
        try:
            entry = store.get_now(oid)
        except ObjectStoreError:
            entry = None
        if entry is None:
            await loop.sock_sendall(sock, wire.encode_reply(wire.NOT_FOUND))
            return True
        size = entry.size
        if offset > size or length > self.max_chunk or (length == 0 and size > 0 and offset < size):
            self.bad_requests += 1
            log.warning(
                "data plane: chunk outside the object; connection closed",
                peer=peer, object_id=oid.hex(), offset=offset, length=length, size=size,
            )
            await loop.sock_sendall(sock, wire.encode_reply(wire.BAD_REQUEST, size))
            return False
        n = min(length, size - offset)
        meta = entry.meta if offset == 0 else b""
        store.pin(oid, entry, self._pins)
        whole = store.view(entry)
        view = whole[offset : offset + n]
        try:
            crc = wire.crc32(view)
            await loop.sock_sendall(sock, wire.encode_reply(wire.OK, size, n, len(meta), crc) + meta)
            if n:
                await loop.sock_sendall(sock, view)
        finally:
            # A CRC thread still running (cancelled at shutdown) keeps its export.
            with contextlib.suppress(BufferError):
                view.release()
                whole.release()
            store.release(oid, self._pins)
        self.chunks_sent += 1
        self.bytes_sent += n
        return True
