"""The directory's gate: a real grpclib server on 127.0.0.1 refusing calls without a proof.

Attackers here are raw grpclib channels with the generated stub, sending
whatever metadata they like: none, garbage, a proof under another token, an
old proof, or the exact bytes of a good call captured and sent again.  Every
refusal must be UNAUTHENTICATED, happen before the handler (no state moves),
and be logged once per peer per minute.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpclib.const
import pytest
from _directory import directory_config, member, serving
from certs import make_certs
from fakes import CREDS
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.events import SendRequest, listen
from structlog.testing import capture_logs

from objstore.auth import METADATA_KEY, ChannelProver, Credentials, TlsFiles
from objstore.directory.client import DirectoryAdmin
from objstore.directory.codec import pb
from objstore.directory.guard import open_channel
from objstore.directory.server import DirectoryServer
from objstore.errors import AuthenticationError, NodeUnavailableError

PREFIX = "/objstore.directory.v1.Directory/"
SUBSCRIBE = PREFIX + "Subscribe"
WRONG = Credentials.for_test(b"w" * 32)
assert CREDS.token is not None


def _proof(method: str, token: bytes = CREDS.token, now: float | None = None) -> str:
    return ChannelProver(token).proof(PREFIX + method, now=now)


# What an attacker may send, per method: (metadata, the reason the server gives).
def _bad(method: str) -> dict[str, tuple[dict[str, str] | None, str]]:
    return {
        "missing": (None, "no credentials"),
        "malformed": ({METADATA_KEY: "v1.not-a-proof"}, "malformed credentials"),
        "wrong token": ({METADATA_KEY: _proof(method, token=WRONG.token or b"")}, "wrong"),
        "expired": ({METADATA_KEY: _proof(method, now=time.time() - 3600)}, "expired"),
        "other method": ({METADATA_KEY: _proof("Delete")}, "wrong"),
    }


@asynccontextmanager
async def raw_channel(server: DirectoryServer) -> AsyncIterator[Channel]:
    channel = Channel(server.host, server.port)
    try:
        yield channel
    finally:
        channel.close()


def _captured(channel: Channel) -> list[dict[str, Any]]:
    """The metadata of every request ``channel`` sends (its proof listener runs first)."""
    seen: list[dict[str, Any]] = []

    async def capture(event: SendRequest) -> None:
        seen.append(dict(event.metadata))

    listen(channel, SendRequest, capture)
    return seen


@pytest.mark.parametrize("case", list(_bad("ClusterStatus")))
async def test_unary_calls_without_a_valid_proof_are_refused(case: str) -> None:
    async with serving() as server, raw_channel(server) as channel:
        stub = pb.DirectoryStub(channel)
        for method, call in (
            ("ClusterStatus", lambda md: stub.cluster_status(pb.ClusterStatusRequest(), **md)),
            ("ListObjects", lambda md: stub.list_objects(pb.ListObjectsRequest(), **md)),
        ):
            metadata, reason = _bad(method)[case]
            with pytest.raises(GRPCError) as info:
                await call({"metadata": metadata, "timeout": 5} if metadata else {"timeout": 5})
            assert info.value.status is Status.UNAUTHENTICATED
            assert reason in (info.value.message or "")
        # Refused before the handler and before the verifier remembered anything.
        assert server.gate is not None and server.gate.verifier.channels() == 0
        assert server.gate.refused == 2


async def test_the_right_proof_is_accepted_and_the_same_proof_twice_is_not() -> None:
    async with serving() as server:
        channel = open_channel(server.host, server.port, CREDS)
        sent = _captured(channel)
        try:
            status = await pb.DirectoryStub(channel).cluster_status(
                pb.ClusterStatusRequest(), timeout=5
            )
            assert status.store == "memory"
        finally:
            channel.close()
        assert server.gate is not None and server.gate.verifier.channels() == 1
        proof = sent[0][METADATA_KEY]
        # The captured bytes, replayed on a channel of the attacker's own.
        async with raw_channel(server) as attacker:
            with pytest.raises(GRPCError) as info:
                await pb.DirectoryStub(attacker).cluster_status(
                    pb.ClusterStatusRequest(), metadata={METADATA_KEY: proof}, timeout=5
                )
        assert info.value.status is Status.UNAUTHENTICATED
        assert info.value.message == "replayed credentials"
        assert server.gate.verifier.channels() == 1 and server.gate.refused == 1


async def _subscribe(channel: Channel, metadata: dict[str, str] | None, node_id: bytes) -> None:
    async with channel.request(
        SUBSCRIBE,
        grpclib.const.Cardinality.STREAM_STREAM,
        pb.SubscribeRequest,
        pb.Notification,
        metadata=metadata,
        timeout=5,
    ) as stream:
        await stream.send_message(pb.SubscribeRequest(node_id=node_id, session=b"s" * 16))
        await stream.recv_message()


async def test_subscribe_streams_without_a_valid_proof_are_refused() -> None:
    async with serving() as server, member(server) as victim:
        # One good stream's proof, to replay.
        good = open_channel(server.host, server.port, CREDS)
        sent = _captured(good)
        try:
            with pytest.raises(GRPCError) as info:  # a real node's stream ends NOT_REGISTERED
                await _subscribe(good, None, os.urandom(16))
            assert info.value.status is Status.FAILED_PRECONDITION
        finally:
            good.close()
        assert server.gate is not None
        channels = server.gate.verifier.channels()
        cases = {k: v for k, v in _bad("Subscribe").items()}
        cases["replayed"] = ({METADATA_KEY: sent[0][METADATA_KEY]}, "replayed")
        async with raw_channel(server) as attacker:
            for case, (metadata, reason) in cases.items():
                # Posing as the victim: its stream would be replaced if this got through.
                with pytest.raises(GRPCError) as info:
                    await _subscribe(attacker, metadata, victim.node_id)
                assert info.value.status is Status.UNAUTHENTICATED, case
                assert reason in (info.value.message or ""), case
        assert server.gate.verifier.channels() == channels
        # The victim's own stream is the only one, untouched.
        assert [s.node_id for s in server.streams] == [victim.node_id]
        assert victim.client.registrations == 1


async def test_refusals_are_logged_once_per_peer_per_minute() -> None:
    async with serving() as server, raw_channel(server) as channel:
        assert server.gate is not None
        now = [1000.0]
        server.gate.clock = lambda: now[0]
        stub = pb.DirectoryStub(channel)
        with capture_logs() as logs:
            for _ in range(5):
                with pytest.raises(GRPCError):
                    await stub.list_objects(pb.ListObjectsRequest(), timeout=5)
            now[0] += 61
            with pytest.raises(GRPCError):
                await stub.delete(pb.DeleteRequest(names=["x"]), timeout=5)
        warnings = [e for e in logs if e["event"].startswith("directory refused a call")]
        assert [(w["log_level"], w["peer"], w["method"]) for w in warnings] == [
            ("warning", "127.0.0.1", "ListObjects"),
            ("warning", "127.0.0.1", "Delete"),
        ]
        assert warnings[0]["reason"] == "no credentials"
        assert [w["refused_unlogged"] for w in warnings] == [0, 4]
        assert server.gate.refused == 6


async def test_an_insecure_directory_checks_nothing() -> None:
    server = DirectoryServer(directory_config(), credentials=Credentials.insecure())
    await server.start("127.0.0.1", 0)
    try:
        assert server.gate is None
        async with raw_channel(server) as channel:
            status = await pb.DirectoryStub(channel).cluster_status(
                pb.ClusterStatusRequest(), timeout=5
            )
        assert status.store == "memory"
    finally:
        await server.stop()


async def test_a_node_with_the_wrong_token_fails_its_start_at_once() -> None:
    async with serving() as server:
        cfg = server.config.replace(node={"directory": server.address})
        t0 = time.monotonic()
        with pytest.raises(AuthenticationError) as info:
            async with member(server, cfg, credentials=WRONG):
                pass
        assert time.monotonic() - t0 < 1.0  # no retrying until the 2 s request timeout
        assert str(info.value) == (
            f"the directory at {server.address} refused this node's cluster token "
            "(wrong credentials); give this node the head's token with --token-file"
        )
        assert server.state.nodes == {}


async def test_a_tool_with_the_wrong_token_gets_an_authentication_error() -> None:
    async with serving() as server:
        async with DirectoryAdmin(server.address, timeout=5, credentials=WRONG) as admin:
            with pytest.raises(AuthenticationError, match="refused this tool's cluster token"):
                await admin.cluster_status()
        async with DirectoryAdmin(server.address, timeout=5, credentials=CREDS) as admin:
            assert (await admin.cluster_status()).store == "memory"


@pytest.mark.slow
async def test_a_node_refused_after_it_joined_logs_it_and_keeps_trying() -> None:
    """The head came back with another token: the node says so, and rejoins once it is right."""
    async with serving() as first:
        port = first.port
        async with member(first) as node:
            with capture_logs() as logs:
                await first.stop()
                other = DirectoryServer(first.config, credentials=WRONG)
                await other.start("127.0.0.1", port)
                try:
                    await asyncio.sleep(1.0)
                    assert node.client.registrations == 1 and not node.client.registered.is_set()
                finally:
                    await other.stop()
                errors = [e for e in logs if e["log_level"] == "error"]
                assert len(errors) == 1, errors  # once, not once per retry
                assert errors[0]["event"] == "the directory refuses this node; retrying"
                assert "refused this node's cluster token (wrong credentials)" in errors[0]["error"]
                async with serving(first.config, port=port):
                    await asyncio.wait_for(node.client.registered.wait(), 10)
                assert node.client.registrations == 2


# ------------------------------------------------------------------------------- TLS
def _tls(creds: Credentials, tls: TlsFiles) -> Credentials:
    return Credentials(creds.token, tls, "test")


async def test_tls_round_trip_and_a_stranger_certificate_is_refused(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "tls")
    server = DirectoryServer(directory_config(), credentials=_tls(CREDS, certs.tls(0)))
    await server.start("127.0.0.1", 0)
    try:
        client = _tls(CREDS, certs.tls(1))
        async with member(server, credentials=client) as node:
            async with DirectoryAdmin(server.address, timeout=5, credentials=client) as admin:
                status = await admin.cluster_status()
            assert [n.node_id for n in status.nodes] == [node.node_id]
        # A certificate from another CA, presented to a directory of this cluster's CA.
        stranger = TlsFiles(*certs.untrusted, certs.ca)
        async with DirectoryAdmin(
            server.address, timeout=5, credentials=_tls(CREDS, stranger)
        ) as admin:
            with pytest.raises(NodeUnavailableError, match="does the directory trust"):
                await admin.cluster_status()
        # The stranger's own CA does not vouch for the directory either.
        async with DirectoryAdmin(
            server.address, timeout=5, credentials=_tls(CREDS, certs.untrusted_tls())
        ) as admin:
            with pytest.raises(AuthenticationError, match="TLS handshake .* failed"):
                await admin.cluster_status()
        # And no TLS at all gets nowhere.
        async with DirectoryAdmin(server.address, timeout=5, credentials=CREDS) as admin:
            with pytest.raises(NodeUnavailableError):
                await admin.cluster_status()
        assert len(server.state.nodes) == 1
    finally:
        await server.stop()
