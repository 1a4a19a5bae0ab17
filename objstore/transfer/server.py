"""The serving side of the data plane: chunks straight from shared memory.

Each connection reads one request at a time; a chunk is leased while it is
sent (so no delete can reuse its memory underneath), its CRC-32 is computed
(ISA-L, inline; remembered per chunk, so a broadcast computes it once), then
it goes out with ``sock_sendall`` from a view of the arena.  Which sends run
is the :class:`~objstore.transfer.push.PushManager`'s call: bounded per
destination node (named by the connection's HELLO) and overall, one push per
(destination, object), everything of a node aborted when the directory
declares it dead.  A peer that sends garbage (a bad magic, an unknown kind, a
range outside the object) gets an error reply or a closed connection; the
node carries on.  A connection that sends no request for
``transfer.idle_timeout_s`` is closed (pullers drop theirs sooner).

Before any request, a connection proves the cluster token
(:mod:`objstore.transfer.handshake`), inside TLS when the node has a
certificate (:mod:`objstore.transfer.conn`), all within
``security.handshake_timeout_s``.  A refused peer (no handshake, a wrong
token, an untrusted certificate, too slow) gets not one byte of any object:
the server waits ``security.refuse_delay_s``, closes, counts it in
:attr:`TransferServer.refused` and logs it once per peer IP per minute; it
keeps no other state for it.  At most :data:`MAX_HANDSHAKES` connections
may be proving themselves at once (those waiting out their refusal delay
included); beyond that new ones are closed at once, so a flood of idle
connections cannot use up the node's descriptors or tasks.  A node running
``--insecure`` speaks the protocol without a handshake and closes a
connection that opens one, saying so.

The server reaches the store only through :class:`objstore.plasma.api.Store`.
A spilled object a peer asks for is made readable by the ``restore``
callable given at construction (the node's object service: the server does
not know spilling): ``await restore(object_id, timeout)`` is True once the
object is sealed here.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import socket
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable

import structlog

from objstore.auth import Credentials
from objstore.config import Config
from objstore.errors import ObjectStoreError
from objstore.ids import NODE_ID_SIZE
from objstore.lograte import LogLimiter
from objstore.plasma.api import Entry, ObjectState, Store
from objstore.tasks import TaskSet
from objstore.transfer import wire
from objstore.transfer.conn import Conn, PlainConn, tls_accept
from objstore.transfer.handshake import (
    Refused,
    accept_handshake,
    looks_like_handshake,
)
from objstore.transfer.push import PushManager
from objstore.transfer.relay import PartialCopy, Partials

__all__ = ["TransferServer", "Restore", "MAX_HANDSHAKES"]

log = structlog.get_logger("objstore.transfer.server")

_SPILLED = ObjectState.SPILLED
# Chunk CRCs remembered (object id, offset, length): objects are immutable.
_CRC_CACHE = 4096

# Connections proving themselves at once (TLS and token handshakes, refusal delays).
MAX_HANDSHAKES = 256

# A request for offset 0 of an object not here waits this long for a partial copy:
# the directory may attach a receiver below this node before this node's own
# first chunk came.
PARTIAL_GRACE_S = 0.25

# Make a spilled object readable here within this many seconds; True once it is sealed.
Restore = Callable[[bytes, float], Awaitable[bool]]


class TransferServer:
    """Serves chunks of this node's sealed objects to other nodes."""

    def __init__(
        self, store: Store, config: Config, restore: Restore, *, credentials: Credentials
    ) -> None:
        self.store = store
        self.config = config
        self.credentials = credentials
        self.restore = restore
        # Copies being received here, served on as they arrive (the node gives the
        # object manager's; see objstore.transfer.relay).
        self.partials = Partials()
        tc = config.transfer
        self.max_chunk = tc.chunk_size
        self.idle_timeout = tc.idle_timeout_s
        chunks = max(1, tc.max_bytes_in_flight // tc.chunk_size)
        self.push = PushManager(max_overall=chunks, max_per_destination=max(1, chunks // 2))
        # Request key -> future a queued send waits on; the send's task.
        self._granted: dict[Hashable, asyncio.Future[None]] = {}
        self._senders: dict[Hashable, asyncio.Task[None]] = {}
        # Destination -> its open connections' tasks (closed when it dies).
        self._by_dest: dict[Hashable, set[asyncio.Task[None]]] = {}
        self._keys = itertools.count(1)
        self._crcs: OrderedDict[tuple[bytes, int, int], int] = OrderedDict()
        self._listener: socket.socket | None = None
        self._ssl = credentials.server_ssl()
        sec = config.security
        self.handshake_timeout = sec.handshake_timeout_s
        self.refuse_delay = sec.refuse_delay_s
        # Connections accepted and not yet authenticated (or waiting out a refusal).
        self._handshaking = 0
        self._refusals = LogLimiter()
        # The accept loop and one task per connection.
        self._tasks = TaskSet("transfer-server")
        self.host = ""
        self.port = 0
        self.chunks_sent = 0
        self.bytes_sent = 0
        self.bad_requests = 0
        self.aborted = 0
        # Chunks sent from partial copies (relayed while this node received them).
        self.relayed_chunks = 0
        # Connections refused (no handshake, wrong token, bad certificate, timeout, flood).
        self.refused = 0

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
        self._tasks.spawn(self._accept_loop(), name="transfer-accept")

    async def close(self) -> None:
        """Stop accepting, close every connection (their leases go with them)."""
        await self._tasks.close()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def connections(self) -> int:
        """Open connections (tests)."""
        return sum(len(c) for c in self._by_dest.values())

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
            gate = self._ssl is not None or self.credentials.secure
            if gate and self._handshaking >= MAX_HANDSHAKES:
                sock.close()
                self._refuse_log(peer[0], f"{peer[0]}:{peer[1]}", "too many handshakes at once")
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if gate:
                self._handshaking += 1
            try:
                self._tasks.spawn(
                    self._serve(sock, peer[0], f"{peer[0]}:{peer[1]}", gate), name="transfer-conn"
                )
            except BaseException:
                if gate:
                    self._handshaking -= 1
                sock.close()
                raise

    def _refuse_log(self, ip: str, peer: str, reason: str) -> None:
        """Count a refusal; log it unless this IP was logged within the minute."""
        self.refused += 1
        held = self._refusals.note(ip)
        if held is not None:
            log.warning(
                "data plane: connection refused",
                peer=peer,
                reason=reason,
                suppressed=held,
            )

    async def _open(self, sock: socket.socket, ip: str, peer: str) -> Conn | None:
        """TLS and the token handshake; the connection, or None once refused and closed.

        Its slot in ``_handshaking`` is given back by the caller, after the
        refusal delay: a refused peer holds it until its socket is closed.
        """
        token = self.credentials.token
        try:
            async with asyncio.timeout(self.handshake_timeout):
                conn: Conn
                if self._ssl is not None:
                    try:
                        conn = await tls_accept(sock, self._ssl)
                    except ssl.SSLError as exc:
                        raise Refused(f"TLS handshake failed: {exc.reason or exc}") from None
                else:
                    conn = PlainConn(sock)
                if token is not None:
                    await accept_handshake(conn, token)
            return conn
        except Refused as exc:
            reason = exc.reason
        except TimeoutError:
            reason = "timeout"
        except (OSError, ConnectionError) as exc:
            reason = f"handshake failed: {exc.strerror or str(exc) or type(exc).__name__}"
        self._refuse_log(ip, peer, reason)
        if self.refuse_delay:
            await asyncio.sleep(self.refuse_delay)
        return None

    async def _serve(self, sock: socket.socket, ip: str, peer: str, gate: bool) -> None:
        try:
            if gate:
                try:
                    conn = await self._open(sock, ip, peer)
                finally:
                    self._handshaking -= 1
                if conn is None:
                    return
            else:
                conn = PlainConn(sock)
            await self._requests(conn, ip, peer)
        finally:
            sock.close()

    async def _requests(self, conn: Conn, ip: str, peer: str) -> None:
        """Serve one (authenticated) connection's requests until it ends."""
        # Until a HELLO names the node, the connection is a peer of its own.
        dest: Hashable = peer
        task = asyncio.current_task()
        assert task is not None
        self._by_dest.setdefault(dest, set()).add(task)
        head = bytearray(wire.REQUEST.size)
        head_view = memoryview(head)
        try:
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        await conn.recv_exactly(head_view)
                except ConnectionError:
                    return  # the peer closed between requests: fine
                except TimeoutError:
                    log.debug("data plane connection idle; closed", peer=peer)
                    return
                if not self.credentials.secure and looks_like_handshake(head):
                    self._refuse_log(
                        ip, peer, "peer wants authentication; this node runs --insecure"
                    )
                    return
                try:
                    kind, oid, offset, length = wire.decode_request(bytes(head))
                except wire.WireError as exc:
                    self.bad_requests += 1
                    log.warning(
                        "data plane: bad request; connection closed", peer=peer, error=str(exc)
                    )
                    return
                if kind == wire.HELLO:
                    self._forget_conn(dest, task)
                    dest = oid[:NODE_ID_SIZE]
                    # A node that speaks again registered again: serve it.
                    self.push.revive(dest)
                    self._by_dest.setdefault(dest, set()).add(task)
                    continue
                if kind == wire.FETCH_MANY:
                    ids = bytearray(length * 20)
                    await conn.recv_exactly(memoryview(ids))
                    # Each batch is a push of its own (offset -1 - key never repeats).
                    key = next(self._keys)
                    if not await self._admit(key, dest, b"", -key):
                        return
                    try:
                        await self._send_many(conn, bytes(ids))
                    finally:
                        self._finish(key)
                    continue
                key = next(self._keys)
                if not await self._admit(key, dest, oid, offset):
                    return
                try:
                    if not await self._send_chunk(conn, peer, oid, offset, length):
                        return
                finally:
                    self._finish(key)
        except (OSError, ConnectionError, TimeoutError) as exc:
            log.debug(
                "data plane connection ended", peer=peer, error=str(exc) or type(exc).__name__
            )
        finally:
            self._forget_conn(dest, task)

    def _forget_conn(self, dest: Hashable, task: asyncio.Task[None]) -> None:
        conns = self._by_dest.get(dest)
        if conns is not None:
            conns.discard(task)
            if not conns:
                del self._by_dest[dest]

    async def _admit(self, key: Hashable, dest: Hashable, oid: bytes, offset: int) -> bool:
        """Wait until the push manager lets this send run; False: refused (dead node)."""
        task = asyncio.current_task()
        assert task is not None
        self._senders[key] = task
        start, abort = self.push.request(key, dest, oid, offset)
        self._abort(abort)
        self._release(start)
        if key in start:
            return True
        if key not in self.push.requests:
            del self._senders[key]
            log.info("data plane: request from a node declared dead refused", node=_name(dest))
            return False
        fut = self._granted[key] = asyncio.get_running_loop().create_future()
        try:
            await fut
        except BaseException:
            self._granted.pop(key, None)
            self._finish(key)
            raise
        return True

    def _finish(self, key: Hashable) -> None:
        """A send ended (or its wait did): let the next ones go."""
        self._senders.pop(key, None)
        if key in self.push.running:
            self._release(self.push.done(key))
        else:
            self._release(self.push.cancel(key))

    def _release(self, keys: list[Hashable]) -> None:
        for k in keys:
            fut = self._granted.pop(k, None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    def _abort(self, keys: list[Hashable]) -> None:
        """Cancel the connections of sends the push manager gave up on."""
        me = asyncio.current_task()
        for k in keys:
            self.aborted += 1
            self._granted.pop(k, None)
            task = self._senders.pop(k, None)
            if task is not None and task is not me:
                task.cancel()

    def drop_destination(self, node_id: bytes) -> None:
        """The directory declared ``node_id`` dead: abort its sends, close its connections."""
        start, keys = self.push.drop_destination(node_id)
        conns = self._by_dest.pop(node_id, set())
        for task in conns:
            task.cancel()
        self._abort(keys)
        self._release(start)
        if keys or conns:
            log.info(
                "transfers to a dead node cancelled",
                node_id=node_id.hex(),
                sends=len(keys),
                connections=len(conns),
            )

    async def _restored(self, oid: bytes) -> bool:
        """Whether a spilled object here was made readable for a peer in time."""
        timeout = self.config.transfer.pull_timeout_s
        try:
            async with asyncio.timeout(timeout):
                return await self.restore(oid, timeout)
        except (TimeoutError, ObjectStoreError) as exc:
            log.info(
                "data plane: a spilled object could not be restored for a peer",
                object_id=oid.hex(),
                error=str(exc) or type(exc).__name__,
            )
            return False

    def _crc(self, oid: bytes, offset: int, view: memoryview) -> int:
        key = (oid, offset, len(view))
        crc = self._crcs.get(key)
        if crc is None:
            crc = self._crcs[key] = wire.crc32(view)
            if len(self._crcs) > _CRC_CACHE:
                self._crcs.popitem(last=False)
        else:
            self._crcs.move_to_end(key)
        return crc

    async def _send_many(self, conn: Conn, ids: bytes) -> None:
        """Answer a FETCH_MANY: each object whole, copied into ~1 MiB writes."""
        store = self.store
        oids = [ids[i : i + 20] for i in range(0, len(ids), 20)]
        sealed = store.sealed
        # Spilled objects here are restored first, together.
        spilled = [oid for oid in oids if sealed(oid) is None and store.state_of(oid) is _SPILLED]
        if spilled:
            await asyncio.gather(*(self._restored(oid) for oid in spilled))
        out = bytearray()
        for oid in oids:
            entry = sealed(oid)
            if entry is None:
                out += wire.encode_reply(wire.NOT_FOUND)
            elif entry.size > self.max_chunk:
                out += wire.encode_reply(wire.BAD_REQUEST, entry.size)
            else:
                # Copied into `out` with no await in between: nothing can free it
                # meanwhile, so it needs no lease.
                view = store.view(entry)
                try:
                    meta = entry.meta
                    out += wire.encode_reply(
                        wire.OK, entry.size, entry.size, len(meta), wire.crc32(view)
                    )
                    out += meta
                    out += view
                finally:
                    view.release()
                self.chunks_sent += 1
                self.bytes_sent += entry.size
            if len(out) >= 1 << 20:
                # The objects are copied already: a delete meanwhile cannot touch them.
                await conn.sendall(out)
                out = bytearray()
        if out:
            await conn.sendall(out)

    async def _send_chunk(
        self,
        conn: Conn,
        peer: str,
        oid: bytes,
        offset: int,
        length: int,
    ) -> bool:
        """Answer one FETCH; False when the connection must close."""
        store = self.store
        entry: Entry | None = store.sealed(oid)
        if entry is None and store.state_of(oid) is _SPILLED and await self._restored(oid):
            entry = store.sealed(oid)
        if entry is None:
            copy = self.partials.get(oid)
            if copy is None and offset == 0:
                # Attached below this node before its own first chunk came.
                copy = await self.partials.wait(oid, PARTIAL_GRACE_S)
                entry = store.sealed(oid)
            if copy is not None and entry is None:
                return await self._send_partial(conn, peer, copy, offset, length)
        if entry is None:
            await conn.sendall(wire.encode_reply(wire.NOT_FOUND))
            return True
        size = entry.size
        if offset > size or length > self.max_chunk or (length == 0 and size > 0 and offset < size):
            self.bad_requests += 1
            log.warning(
                "data plane: chunk outside the object; connection closed",
                peer=peer,
                object_id=oid.hex(),
                offset=offset,
                length=length,
                size=size,
            )
            await conn.sendall(wire.encode_reply(wire.BAD_REQUEST, size))
            return False
        n = min(length, size - offset)
        # Leased while it is sent: no delete, spill or eviction reuses its memory.
        with store.lease(oid) as entry:
            meta = entry.meta if offset == 0 else b""
            whole = store.view(entry)
            view = whole[offset : offset + n]
            try:
                crc = self._crc(oid, offset, view)
                await conn.sendall(wire.encode_reply(wire.OK, size, n, len(meta), crc) + meta)
                if n:
                    await conn.sendall(view)
            finally:
                view.release()
                whole.release()
        self.chunks_sent += 1
        self.bytes_sent += n
        return True

    async def _send_partial(
        self, conn: Conn, peer: str, copy: PartialCopy, offset: int, length: int
    ) -> bool:
        """Answer a FETCH from a copy still being received here, once the chunk is in."""
        loop = asyncio.get_running_loop()
        with copy.reading():
            deadline = loop.time() + self.config.transfer.pull_timeout_s
            if not await copy.wait_for(offset, length, deadline):
                # Given up here (or this node's own source is too slow): the
                # receiver is attached to another sender.
                await conn.sendall(wire.encode_reply(wire.NOT_FOUND))
                return True
            size = copy.size
            if offset > size or length > self.max_chunk or (length == 0 and offset < size):
                self.bad_requests += 1
                log.warning(
                    "data plane: chunk outside the object; connection closed",
                    peer=peer,
                    object_id=copy.oid.hex(),
                    offset=offset,
                    length=length,
                    size=size,
                )
                await conn.sendall(wire.encode_reply(wire.BAD_REQUEST, size))
                return False
            n = min(length, size - offset)
            assert copy.view is not None  # held by reading()
            view = copy.view[offset : offset + n]
            try:
                meta = copy.meta if offset == 0 else b""
                crc = self._crc(copy.oid, offset, view)
                await conn.sendall(wire.encode_reply(wire.OK, size, n, len(meta), crc) + meta)
                if n:
                    await conn.sendall(view)
            finally:
                view.release()
        self.chunks_sent += 1
        self.bytes_sent += n
        self.relayed_chunks += 1
        return True


def _name(dest: Hashable) -> str:
    return dest.hex() if isinstance(dest, bytes) else str(dest)
