"""The data plane's gate, in one process over real sockets: a TransferServer over
a FakeStore on 127.0.0.1 port 0, PeerClients with the right or a wrong token,
with and without TLS (certificates from tests/certs.py), and raw TCP clients
that know the wire format and try to get an object without proving the token.

Every refused connection must get no byte of any object, close, be counted,
and leave the server serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator

import pytest
from certs import CertFiles, make_certs
from fakes import CREDS, FakeStore
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from objstore.auth import (
    CLIENT_ANSWER_SIZE,
    SERVER_CHALLENGE,
    VERDICT_REFUSED,
    ClientHandshake,
    Credentials,
)
from objstore.config import Config
from objstore.errors import AuthenticationError
from objstore.transfer import server as server_mod
from objstore.transfer import wire
from objstore.transfer.conn import tls_accept, tls_connect
from objstore.transfer.peer import PeerAuthenticationError, PeerClient, TransferError
from objstore.transfer.server import TransferServer

KiB = 1024
MiB = 1024 * KiB
CHUNK = 64 * KiB
ME = b"\x01" * 20
OTHER = Credentials.for_test(b"o" * 32)
# A secret the object holds: it must never come back to a refused peer.
SECRET = (b"the-secret-payload-" * 12000)[: 3 * CHUNK + 11]
SMALL_SECRET = b"small-secret-object-bytes" * 8


def oid(i: int) -> bytes:
    return struct.pack(">I", i).rjust(20, b"\xcc")


async def no_restore(o: bytes, timeout: float) -> bool:
    return False


def config(**security: float) -> Config:
    return Config.for_test(security={"refuse_delay_s": 0.02, **security})


def store() -> FakeStore:
    src = FakeStore()
    src.put(oid(1), SECRET, meta=b"meta-1")
    src.put(oid(2), SMALL_SECRET, meta=b"meta-2")
    return src


@contextlib.asynccontextmanager
async def serving(
    creds: Credentials = CREDS, cfg: Config | None = None, src: FakeStore | None = None
) -> AsyncIterator[TransferServer]:
    src = src or store()
    server = TransferServer(src, cfg or config(), no_restore, credentials=creds)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.close()
        src.check()


def deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def fetch_all(client: PeerClient, address: str) -> bytes:
    """The multi-chunk object whole, through first chunk and later chunks."""
    first = await client.fetch_first(address, oid(1), CHUNK, deadline())
    got = bytearray(first.size)
    view = memoryview(got)
    await first.read_into(view[:CHUNK], deadline())
    for off in range(CHUNK, first.size, CHUNK):
        n = min(CHUNK, first.size - off)
        await client.fetch_chunk(address, oid(1), off, view[off : off + n], deadline())
    return bytes(got)


async def raw(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, _, port = address.rpartition(":")
    return await asyncio.open_connection(host, int(port))


async def read_to_end(reader: asyncio.StreamReader, timeout: float = 3.0) -> bytes:
    """Everything the server sends until it closes (TimeoutError if it does not)."""
    out = bytearray()
    async with asyncio.timeout(timeout):
        while True:
            try:
                data = await reader.read(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            out += data
    return bytes(out)


def assert_no_object_bytes(got: bytes) -> None:
    for secret in (SECRET, SMALL_SECRET):
        assert secret[:32] not in got
        assert secret[-32:] not in got
    assert b"meta-1" not in got and b"meta-2" not in got


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_certs(tmp_path_factory.mktemp("certs"))


# ----------------------------------------------------------------------------- tokens


async def test_the_right_token_fetches_over_one_authenticated_connection() -> None:
    client = PeerClient(ME, credentials=CREDS, idle_s=30)
    async with serving() as server:
        assert await fetch_all(client, server.address) == SECRET
        replies = await client.fetch_many(server.address, [oid(2)], deadline())
        assert replies[0].data == SMALL_SECRET
        # One connection, authenticated once, reused for every request.
        assert client.pool.idle_count(server.address) == 1 and len(client.pool.open) == 1
        assert server.refused == 0 and client.pool.auth_failures == 0
    client.close()


async def test_a_client_refuses_a_server_with_another_token() -> None:
    client = PeerClient(ME, credentials=OTHER, idle_s=30)
    async with serving() as server:
        with capture_logs() as logs:
            for _ in range(3):
                with pytest.raises(AuthenticationError, match="does not know the cluster token"):
                    await client.fetch_first(server.address, oid(1), CHUNK, deadline())
            with pytest.raises(PeerAuthenticationError):
                await client.fetch_many(server.address, [oid(2)], deadline())
        assert not client.pool.open
        assert client.pool.auth_failures == 4
        # Logged once for the source, however many times it failed.
        warned = [
            e for e in logs if e["event"] == "data plane: could not authenticate with a source"
        ]
        assert len(warned) == 1 and warned[0]["peer"] == server.address
        # The server saw each one leave without answering.
        async with asyncio.timeout(5):
            while server.refused < 4:
                await asyncio.sleep(0.01)
        assert server.chunks_sent == 0
    client.close()


def test_an_authentication_failure_is_a_transfer_error_the_pull_fails_over_on() -> None:
    exc = PeerAuthenticationError("x")
    assert isinstance(exc, TransferError) and isinstance(exc, AuthenticationError)


async def test_the_server_refuses_a_wrong_answer_with_a_verdict() -> None:
    async with serving() as server:
        reader, writer = await raw(server.address)
        hs = ClientHandshake(OTHER.token or b"")
        writer.write(hs.hello())
        await reader.readexactly(SERVER_CHALLENGE.size)
        # A client that answers even though it cannot check the server: a wrong MAC.
        writer.write(os.urandom(CLIENT_ANSWER_SIZE))
        writer.write(wire.encode_request(wire.FETCH, oid(1), 0, CHUNK))
        got = await read_to_end(reader)
        writer.close()
        assert got == VERDICT_REFUSED
        assert server.refused == 1 and server.chunks_sent == 0


async def test_a_raw_client_without_the_handshake_gets_no_byte() -> None:
    async with serving() as server:
        for request in (
            wire.encode_request(wire.FETCH, oid(1), 0, CHUNK),
            wire.encode_request(wire.FETCH_MANY, bytes(20), 0, 2) + oid(1) + oid(2),
            wire.encode_request(wire.HELLO, ME, 0, 0)
            + wire.encode_request(wire.FETCH, oid(2), 0, CHUNK),
        ):
            reader, writer = await raw(server.address)
            writer.write(request)
            got = await read_to_end(reader)
            writer.close()
            assert_no_object_bytes(got)
            assert got == b""  # not even a reply header
        assert server.refused == 3
        assert server.chunks_sent == 0 and server.bytes_sent == 0
        # It serves on.
        client = PeerClient(ME, credentials=CREDS)
        assert await fetch_all(client, server.address) == SECRET
        client.close()


class Recorder:
    """A TCP proxy that records what the client sent, per connection."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.sent: list[bytearray] = []
        self.server: asyncio.Server | None = None

    async def _pipe(
        self, r: asyncio.StreamReader, w: asyncio.StreamWriter, record: bytearray | None
    ) -> None:
        try:
            while data := await r.read(65536):
                if record is not None:
                    record += data
                w.write(data)
                await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await raw(self.target)
        record = bytearray()
        self.sent.append(record)
        await asyncio.gather(self._pipe(r, uw, record), self._pipe(ur, w, None))

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def test_a_replayed_session_is_refused() -> None:
    async with serving() as server:
        rec = Recorder(server.address)
        async with rec as via:
            client = PeerClient(ME, credentials=CREDS)
            assert await fetch_all(client, via) == SECRET
            client.close()
        session = bytes(rec.sent[0])
        assert server.refused == 0
        # The same bytes on a new connection: the server's nonce differs, the answer is stale.
        reader, writer = await raw(server.address)
        writer.write(session)
        got = await read_to_end(reader)
        writer.close()
        assert got[: SERVER_CHALLENGE.size][:4] == b"OSXA"
        assert got[SERVER_CHALLENGE.size :] == VERDICT_REFUSED
        assert_no_object_bytes(got)
        assert server.refused == 1


async def test_a_client_that_says_nothing_is_closed_after_the_handshake_timeout() -> None:
    async with serving(cfg=config(handshake_timeout_s=0.3)) as server:
        loop = asyncio.get_running_loop()
        reader, writer = await raw(server.address)
        t0 = loop.time()
        with capture_logs() as logs:
            got = await read_to_end(reader)
        elapsed = loop.time() - t0
        writer.close()
        assert got == b"" and 0.25 < elapsed < 2.5, elapsed
        assert server.refused == 1
        assert [
            e["reason"] for e in logs if e.get("event") == "data plane: connection refused"
        ] == ["timeout"]


async def test_refusals_are_logged_once_per_ip_per_minute() -> None:
    async with serving() as server:
        with capture_logs() as logs:
            for _ in range(6):
                reader, writer = await raw(server.address)
                writer.write(b"GET / HTTP/1.1\r\n\r\n".ljust(44, b" "))
                assert await read_to_end(reader) == b""
                writer.close()
        assert server.refused == 6
        refused = [e for e in logs if e.get("event") == "data plane: connection refused"]
        assert len(refused) == 1 and refused[0]["reason"] == "no handshake"


async def test_handshakes_in_progress_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_mod, "MAX_HANDSHAKES", 4)
    async with serving(cfg=config(handshake_timeout_s=3.0)) as server:
        idle = [await raw(server.address) for _ in range(4)]
        async with asyncio.timeout(2):
            while server._handshaking < 4:
                await asyncio.sleep(0.005)
        loop = asyncio.get_running_loop()
        reader, writer = await raw(server.address)
        t0 = loop.time()
        assert await read_to_end(reader) == b""
        assert loop.time() - t0 < 1.0  # closed at once, not after the timeout
        writer.close()
        assert server.refused == 1
        for _, w in idle:
            w.close()
        async with asyncio.timeout(2):
            while server._handshaking:
                await asyncio.sleep(0.005)
        client = PeerClient(ME, credentials=CREDS)
        assert await fetch_all(client, server.address) == SECRET
        client.close()


async def test_an_insecure_server_closes_a_connection_that_wants_authentication() -> None:
    async with serving(creds=Credentials.insecure()) as server:
        client = PeerClient(ME, credentials=CREDS)
        with capture_logs() as logs, pytest.raises(TransferError, match="insecure"):
            await client.fetch_first(server.address, oid(1), CHUNK, deadline())
        assert server.refused == 1 and server.chunks_sent == 0
        reasons = [
            e.get("reason") for e in logs if e.get("event") == "data plane: connection refused"
        ]
        assert reasons == ["peer wants authentication; this node runs --insecure"]
        # Both insecure: today's protocol.
        plain = PeerClient(ME, credentials=Credentials.insecure())
        assert await fetch_all(plain, server.address) == SECRET
        plain.close()
        client.close()


# ----------------------------------------------------------------------------- garbage


_HELLO = ClientHandshake(CREDS.token or b"").hello()
garbage = st.one_of(
    st.binary(max_size=200),
    st.integers(0, len(_HELLO) - 1).map(lambda n: _HELLO[:n]),  # a truncated hello
    st.binary(max_size=CLIENT_ANSWER_SIZE).map(lambda b: _HELLO + b),  # hello, then anything
    st.just(wire.encode_request(wire.FETCH, oid(1), 0, CHUNK)),
)


def test_garbage_against_the_handshake_leaves_the_server_serving() -> None:
    """Random bytes, truncated hellos, partial answers: each refused, the server serves on."""
    errors: list[dict[str, object]] = []
    with asyncio.Runner() as runner:
        runner.get_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        src = store()
        server = TransferServer(src, config(refuse_delay_s=0.0), no_restore, credentials=CREDS)
        runner.run(server.start("127.0.0.1", 0))
        tried = [0]

        async def one(parts: list[bytes], half_close: bool) -> None:
            reader, writer = await raw(server.address)
            for p in parts:
                writer.write(p)
                await writer.drain()
            if half_close:
                writer.write_eof()
            else:
                writer.close()
            with contextlib.suppress(ConnectionError):
                assert_no_object_bytes(await read_to_end(reader))
            writer.close()

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(st.lists(garbage, max_size=3), st.booleans())
        def example(parts: list[bytes], half_close: bool) -> None:
            tried[0] += 1
            runner.run(one(parts, half_close))

        example()

        async def after() -> None:
            async with asyncio.timeout(5):
                while server.refused < tried[0]:
                    await asyncio.sleep(0.01)
            client = PeerClient(ME, credentials=CREDS)
            assert await fetch_all(client, server.address) == SECRET
            client.close()
            assert server._handshaking == 0
            await server.close()

        runner.run(after())
        assert server.refused == tried[0] and server.chunks_sent == 4, (
            server.chunks_sent,
            server.bytes_sent,
        )
        src.check()
    assert not errors, errors


async def test_a_partial_answer_then_silence_is_a_timeout() -> None:
    async with serving(cfg=config(handshake_timeout_s=0.3)) as server:
        reader, writer = await raw(server.address)
        writer.write(_HELLO)
        await reader.readexactly(SERVER_CHALLENGE.size)
        writer.write(b"\0" * (CLIENT_ANSWER_SIZE - 1))
        got = await read_to_end(reader)
        writer.close()
        assert got == b"" and server.refused == 1


# ----------------------------------------------------------------------------- TLS


async def test_tls_round_trip_of_a_multi_chunk_object(certs: CertFiles) -> None:
    big = os.urandom(2 * MiB + 123)  # chunks large enough for the threaded crypto path
    src = store()
    src.put(oid(3), big, meta=b"big")
    cfg = Config.for_test(transfer={"chunk_size": 1 * MiB, "max_bytes_in_flight": 4 * MiB})
    client = PeerClient(ME, credentials=certs.creds(i=1), idle_s=30)
    async with serving(certs.creds(i=0), cfg, src) as server:
        first = await client.fetch_first(server.address, oid(3), MiB, deadline())
        got = bytearray(first.size)
        view = memoryview(got)
        await first.read_into(view[:MiB], deadline())
        for off in range(MiB, first.size, MiB):
            n = min(MiB, first.size - off)
            await client.fetch_chunk(server.address, oid(3), off, view[off : off + n], deadline())
        assert bytes(got) == big and first.meta == b"big"
        replies = await client.fetch_many(server.address, [oid(2), oid(9)], deadline())
        assert replies[0].data == SMALL_SECRET and replies[1].error == "source says not found"
        assert client.pool.idle_count(server.address) == 1
        for c in client.pool.idle_sockets():
            assert c.alive()
        assert server.refused == 0
    client.close()


async def test_a_certificate_from_another_ca_is_refused(certs: CertFiles) -> None:
    stranger = PeerClient(ME, credentials=certs.untrusted_creds())
    async with serving(certs.creds(i=0)) as server:
        with capture_logs() as logs:
            with pytest.raises(PeerAuthenticationError, match="certificate"):
                await stranger.fetch_first(server.address, oid(1), CHUNK, deadline())
            async with asyncio.timeout(5):
                while server.refused < 1:
                    await asyncio.sleep(0.01)
        assert server.chunks_sent == 0
        refused = [e for e in logs if e.get("event") == "data plane: connection refused"]
        assert len(refused) == 1 and "TLS handshake failed" in str(refused[0]["reason"])
        # A node with the cluster's certificate refuses a server with another CA's too.
    stranger.close()
    client = PeerClient(ME, credentials=certs.creds(i=1))
    async with serving(certs.untrusted_creds()) as server:
        with pytest.raises(PeerAuthenticationError, match="not from the cluster's CA"):
            await client.fetch_first(server.address, oid(1), CHUNK, deadline())
        assert server.chunks_sent == 0
    client.close()


async def test_tls_with_a_wrong_token_is_refused(certs: CertFiles) -> None:
    client = PeerClient(ME, credentials=certs.creds(b"o" * 32, i=1))
    async with serving(certs.creds(i=0)) as server:
        with pytest.raises(AuthenticationError, match="does not know the cluster token"):
            await client.fetch_first(server.address, oid(1), CHUNK, deadline())
        async with asyncio.timeout(5):
            while server.refused < 1:
                await asyncio.sleep(0.01)
        assert server.chunks_sent == 0
    client.close()


async def test_a_plain_client_against_a_tls_server_gets_no_byte(certs: CertFiles) -> None:
    async with serving(certs.creds(i=0)) as server:
        reader, writer = await raw(server.address)
        writer.write(wire.encode_request(wire.FETCH, oid(1), 0, CHUNK))
        got = await read_to_end(reader)
        writer.close()
        assert_no_object_bytes(got)
        assert server.refused == 1 and server.chunks_sent == 0


async def test_a_pooled_tls_connection_the_server_closed_is_not_reused(certs: CertFiles) -> None:
    client = PeerClient(ME, credentials=certs.creds(i=1), idle_s=30)
    async with serving(certs.creds(i=0)) as server:
        await client.fetch_many(server.address, [oid(2)], deadline())
        (conn,) = client.pool.idle_sockets()
        assert conn.alive()
        await server.close()
        async with asyncio.timeout(2):
            while conn.alive():
                await asyncio.sleep(0.01)
        assert client.pool.take(server.address) is None
    client.close()


async def test_a_tls_connection_carries_every_size_whole(certs: CertFiles) -> None:
    """Writes and reads around the record size and the threaded piece size, in
    reads split unlike the writes (OpenSSL keeps part of a record to itself)."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    server, client = await asyncio.gather(
        tls_accept(a, certs.creds(i=0).server_ssl() or _no_ssl()),
        tls_connect(b, certs.creds(i=1).client_ssl() or _no_ssl()),
    )
    sizes = [1, 100, 16383, 16384, 16385, 300_000, MiB, MiB + 17, 5 * MiB // 2]
    data = os.urandom(sum(sizes))
    reads = [7, 16384, MiB - 5, 3 * MiB, 1, 250_000, len(data)]

    async def send() -> None:
        off = 0
        for n in sizes:
            await server.sendall(memoryview(data)[off : off + n])
            off += n

    async def receive() -> bytes:
        got = bytearray(len(data))
        view = memoryview(got)
        off = 0
        for n in reads:
            n = min(n, len(data) - off)
            await client.recv_exactly(view[off : off + n])
            off += n
        return bytes(got)

    async with asyncio.timeout(10):
        _, got = await asyncio.gather(send(), receive())
    assert got == data
    assert client.alive() and server.alive()
    server.close()
    client.close()


def _no_ssl() -> ssl.SSLContext:
    raise AssertionError("credentials without TLS")


async def test_tls_fetches_cut_by_their_deadline_leave_nothing_behind(certs: CertFiles) -> None:
    """Deadlines that fall while a thread decrypts into the view: the fetch ends
    once the thread let go, its connection closes, the server serves on."""
    big = os.urandom(4 * MiB)
    src = store()
    src.put(oid(3), big)
    cfg = Config.for_test(transfer={"chunk_size": 4 * MiB, "max_bytes_in_flight": 8 * MiB})
    client = PeerClient(ME, credentials=certs.creds(i=1), idle_s=30)
    async with serving(certs.creds(i=0), cfg, src) as server:
        view = memoryview(bytearray(4 * MiB))
        for cut in (0.005, 0.01, 0.02, 0.04):
            with contextlib.suppress(TransferError):
                first = await client.fetch_first(server.address, oid(3), 4 * MiB, deadline())
                await first.read_into(view, deadline(cut))
        assert all(c.alive() for c in client.pool.idle_sockets())
        first = await client.fetch_first(server.address, oid(3), 4 * MiB, deadline())
        await first.read_into(view, deadline())
        assert bytes(view) == big
    client.close()
    assert not client.pool.open
