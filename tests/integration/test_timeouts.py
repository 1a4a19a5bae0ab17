"""Every request that waits on the node is bounded: a frozen node gives a clear error."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from waits import round_trip, until

import objstore
from objstore.errors import NodeUnavailableError


@pytest.mark.slow
async def test_frozen_node_fails_requests_after_request_timeout(node) -> None:
    node.allow_loop_stall = True  # the freeze shows up as a late tick
    async with objstore.connect(node.socket, request_timeout=0.5) as client:
        kept = await client.put(b"before the freeze")
        os.kill(node.pid, signal.SIGSTOP)
        try:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(NodeUnavailableError, match="did not answer a put_inline request"):
                await client.put(b"x" * 100)
            with pytest.raises(NodeUnavailableError, match="did not answer a stats request"):
                await client.stats()
            # Each request ends at the 0.5 s request timeout, far from the 60 s default.
            assert loop.time() - t0 < 10
        finally:
            os.kill(node.pid, signal.SIGCONT)
        # The node thaws and answers the abandoned put; the client deletes that
        # orphan (nobody holds its ref), and carries on.
        assert bytes(await client.get(kept)) == b"before the freeze"
        await until(lambda: _objects_are(client, 1), 10, "the orphaned put deleted by the client")


async def _objects_are(client: objstore.Client, n: int) -> bool:
    return bool((await client.stats())["objects"] == n)


async def test_request_timeout_must_be_positive(node) -> None:
    with pytest.raises(ValueError, match="request_timeout"):
        async with objstore.connect(node.socket, request_timeout=0):
            pass


def _raw_create(path: str, oid: bytes, size: int) -> object:
    """Open a raw protocol session and leave an unsealed object of `size` bytes."""
    import socket as socketlib

    from objstore.protocol import HEADER, encode_frame, pb

    sock = socketlib.socket(socketlib.AF_UNIX)
    sock.connect(path)
    sock.sendall(encode_frame(pb.Hello(version=1, segment=0, pid=os.getpid()).SerializeToString()))
    _, ancdata, _, _ = sock.recvmsg(4096, socketlib.CMSG_SPACE(16))
    for _level, _kind, data in ancdata:
        os.close(int.from_bytes(data[:4], "little"))
    req = pb.Request(id=1)
    req.create.object_id = oid
    req.create.data_size = size
    req.create.metadata = b"objstore/raw"
    sock.sendall(encode_frame(req.SerializeToString()))
    (n,) = HEADER.unpack(sock.recv(4))
    reply = pb.Reply.FromString(sock.recv(n))
    assert not reply.HasField("error"), reply.error.message
    return sock


async def test_get_of_an_object_whose_creator_left_unsealed_fails_fast(node) -> None:
    from objstore.errors import ObjectLostError
    from objstore.ids import new_object_id

    oid = new_object_id()
    sock = _raw_create(node.socket, oid, 1 << 20)
    async with objstore.connect(node.socket) as client:
        waiting = asyncio.create_task(client.get(objstore.ObjectRef(oid), timeout=30))
        await round_trip(client)
        assert not waiting.done()  # the object exists but is not sealed: the get waits
        sock.close()  # the creator goes away: its unsealed object is aborted
        with pytest.raises(ObjectLostError, match="never sealed"):
            await asyncio.wait_for(waiting, 5)
        # Later gets of that id fail at once too.
        with pytest.raises(ObjectLostError):
            await client.get(objstore.ObjectRef(oid), timeout=5)
