"""DirectoryServer in the test's loop on 127.0.0.1 port 0: serving, errors, stop, restart.

The node-facing behaviour (registration, reports, subscriptions) is driven
through real clients in test_directory_client.py; here the server itself.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import grpclib.const
import pytest
from _directory import directory_config, member, no_new_tasks, oid, serving, until
from fakes import CREDS
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Status

from objstore.directory.client import DirectoryAdmin
from objstore.directory.codec import join_ids, pb
from objstore.directory.guard import open_channel
from objstore.directory.local import LocalLink
from objstore.directory.server import DirectoryServer
from objstore.errors import (
    InvalidRequestError,
    NodeUnavailableError,
    NotRegisteredError,
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectStoreError,
)
from objstore.locations import LocationState
from objstore.status import error_to_grpc


async def test_serves_on_a_free_port_and_reports_the_cluster() -> None:
    head_id = os.urandom(16)
    server = DirectoryServer(directory_config(), head_node_id=head_id, credentials=CREDS)
    await server.start("127.0.0.1", 0)
    try:
        assert server.host == "127.0.0.1" and server.port > 0
        async with member(server) as a, member(server) as b:
            a.node.add(oid(1), 100)
            a.node.spill(oid(1), "s3://b/p#1")
            await a.client.flush_reports()
            async with DirectoryAdmin(server.address, credentials=CREDS) as admin:
                status = await admin.cluster_status()
                rows, total = await admin.list_objects()
            assert {n.node_id for n in status.nodes} == {a.node_id, b.node_id}
            assert all(n.alive and not n.head for n in status.nodes)
            assert status.objects == 1 and status.spilled_objects == 1
            assert status.spilled_bytes == 100 and status.store == "memory"
            assert total == 1 and rows[0].object_id == oid(1)
    finally:
        await server.stop()


async def test_a_second_server_on_a_taken_port_fails_clearly() -> None:
    async with serving() as first:
        second = DirectoryServer(directory_config(), credentials=CREDS)
        with pytest.raises(ObjectStoreError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            await second.start("127.0.0.1", first.port)
        await second.stop()  # nothing started: nothing to do


async def test_stop_closes_open_connections() -> None:
    server = DirectoryServer(directory_config(), credentials=CREDS)
    await server.start("127.0.0.1", 0)
    async with DirectoryAdmin(server.address, timeout=2.0, credentials=CREDS) as admin:
        await admin.cluster_status()  # the connection is open
        await server.stop()
        await server.stop()  # a second stop does nothing
        # The same connection is not answered by the stopped directory.
        with pytest.raises(NodeUnavailableError):
            await admin.cluster_status()
    # And the port is free for the next one.
    async with (
        serving(port=server.port) as again,
        DirectoryAdmin(again.address, credentials=CREDS) as admin,
    ):
        assert (await admin.cluster_status()).nodes == []


async def test_stop_ends_the_in_process_streams_of_the_head() -> None:
    server = DirectoryServer(directory_config(request_timeout_s=0.5), credentials=CREDS)
    await server.start("127.0.0.1", 0)
    before = set(asyncio.all_tasks())
    async with member(server, local=True) as head:
        head.client.watch(oid(1))
        await head.node.wait_for(lambda: head.node.rows_of(oid(1)), what="subscribed")
        assert len(server.tasks) == 2  # the death timer and the head's stream
        await server.stop()
        assert len(server.tasks) == 0
        await until(lambda: not head.client.registered.is_set(), what="the head's session ended")
        with pytest.raises(NodeUnavailableError):
            await head.client.lookup([oid(1)])
    await no_new_tasks(before)


async def test_restart_with_a_state_dir_recovers_names_and_objects(tmp_path: Path) -> None:
    cfg = directory_config(state_dir=str(tmp_path), flush_interval_s=0.01)
    x = oid(1)
    async with serving(cfg) as first:
        port = first.port
        async with member(first) as a:
            a.node.add(x, 123, name="model")
            await a.client.flush_reports()
            await until(lambda: first.persist.pending == 0, what="state written")
    assert (tmp_path / "directory.sqlite3").exists()
    async with serving(cfg, port=port) as second:
        # Known before any node registers again.
        assert second.state.resolve_name("model") == x
        async with DirectoryAdmin(second.address, credentials=CREDS) as admin:
            [row] = await admin.lookup([x])
        assert row.state == LocationState.PRESENT and row.size == 123 and row.name == "model"


@pytest.mark.parametrize("local", [False, True], ids=["grpc", "in-process"])
async def test_errors_are_the_status_table_s(local: bool) -> None:
    """Each refusal arrives as the status objstore.status gives its error."""
    async with serving() as server:
        channel: Channel | None = None
        stub: Any
        if local:
            stub = LocalLink(server).stub
        else:
            channel = open_channel(server.host, server.port, CREDS)
            stub = pb.DirectoryStub(channel)
        try:
            node, session = os.urandom(16), os.urandom(16)
            cases = [
                (
                    stub.heartbeat(pb.HeartbeatRequest(node_id=node, session=session), timeout=5),
                    NotRegisteredError,
                ),
                (
                    stub.register(pb.RegisterRequest(node_id=b"short", session=session), timeout=5),
                    InvalidRequestError,
                ),
                (
                    stub.lookup(pb.LookupRequest(object_ids=b"x" * 21), timeout=5),
                    InvalidRequestError,
                ),
                (
                    stub.resolve_name(pb.ResolveNameRequest(name="nope"), timeout=5),
                    ObjectNotFoundError,
                ),
            ]
            for call, error in cases:
                with pytest.raises(GRPCError) as info:
                    await call
                assert info.value.status is error_to_grpc(error("x"))[0]
            await stub.register(pb.RegisterRequest(node_id=node, session=session), timeout=5)
            req = pb.ReserveNameRequest(
                node_id=node, session=session, name="n", object_id=oid(1), size=1
            )
            await stub.reserve_name(req, timeout=5)
            req.object_id = oid(2)
            with pytest.raises(GRPCError) as info:
                await stub.reserve_name(req, timeout=5)
            assert info.value.status is error_to_grpc(ObjectExistsError("x"))[0]
            # Still serving after every refusal.
            reply = await stub.lookup(pb.LookupRequest(object_ids=join_ids([oid(1)])), timeout=5)
            assert list(reply.states) == [pb.ObjectState(LocationState.PENDING)]
        finally:
            if channel is not None:
                channel.close()


async def test_a_request_over_the_size_limit_is_refused_before_it_is_read() -> None:
    cfg = directory_config(max_message_bytes=4096)
    async with serving(cfg) as server, DirectoryAdmin(server.address, credentials=CREDS) as admin:
        with pytest.raises(ObjectStoreError, match="over the limit of 4096"):
            await admin.lookup([oid(i) for i in range(1000)])
        assert (await admin.lookup([oid(1)]))[0].state == LocationState.UNKNOWN


async def test_a_node_that_stops_heartbeating_is_dead_and_its_stream_ends() -> None:
    async with serving(directory_config(node_timeout_s=0.5)) as server, member(server) as a:
        channel = open_channel(server.host, server.port, CREDS)
        try:
            stub = pb.DirectoryStub(channel)
            silent, session = os.urandom(16), os.urandom(16)
            await stub.register(pb.RegisterRequest(node_id=silent, session=session), timeout=5)
            # No heartbeats: declared dead, its stream ends with UNAVAILABLE.
            with pytest.raises(GRPCError) as info:
                async with (
                    asyncio.timeout(10),
                    channel.request(
                        "/objstore.directory.v1.Directory/Subscribe",
                        grpclib.const.Cardinality.STREAM_STREAM,
                        pb.SubscribeRequest,
                        pb.Notification,
                    ) as stream,
                ):
                    await stream.send_message(pb.SubscribeRequest(node_id=silent, session=session))
                    while await stream.recv_message() is not None:
                        pass
            assert info.value.status is Status.UNAVAILABLE
            await a.node.wait_for(lambda: silent in a.node.dead, what="a told of the death")
            assert not server.state.nodes[silent].alive
            assert server.state.nodes[a.node_id].alive
        finally:
            channel.close()
