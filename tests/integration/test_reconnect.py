"""Clients survive a node restart: ``kill -9`` of the node, a new one on the same socket."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import structlog

import objstore
import objstore.client as client_mod
from objstore.errors import NodeUnavailableError, ObjectLostError

pytestmark = pytest.mark.timeout(60)


async def _back(client: objstore.Client, timeout: float = 10.0) -> None:
    """Wait until the client's reconnect is done."""
    async with asyncio.timeout(timeout):
        while client._back is not None or client._transport is None:
            await asyncio.sleep(0.01)


def _restart(node_factory, node):
    node.kill()
    return node_factory(socket_path=node.socket)


async def test_client_survives_kill_and_restart(node_factory) -> None:
    node = node_factory()
    loop = asyncio.get_running_loop()
    async with objstore.connect(node.socket) as client:
        old_node = client.node_id
        small = await client.put(b"small before the kill")
        big = await client.put(np.arange(1 << 20, dtype=np.int64))  # 8 MiB, zero-copy
        view = await client.get(big)
        with structlog.testing.capture_logs() as logs:
            node.kill()
            await asyncio.sleep(0.1)  # the client sees the connection close
            # A get with a short timeout during the gap: NodeUnavailableError about then.
            t0 = loop.time()
            with pytest.raises(NodeUnavailableError, match="has been gone for"):
                await client.get(small, timeout=0.3)
            assert 0.25 < loop.time() - t0 < 2.0
            # A get started during the gap with a longer timeout returns after the
            # restart: the old ref is lost (at once, not a timeout).
            waiting = asyncio.ensure_future(client.get(small, timeout=20))
            await asyncio.sleep(0.5)
            node2 = node_factory(socket_path=node.socket)
            t1 = loop.time()
            with pytest.raises(ObjectLostError):
                await waiting
            assert loop.time() - t1 < 5.0
            await _back(client)
        assert client.node_id != old_node
        events = [(e["log_level"], e["event"]) for e in logs]
        assert ("warning", "connection to the node lost; reconnecting") in events
        back = [e for e in logs if e["event"] == "connection to the node is back"]
        assert len(back) == 1 and back[0]["gap_s"] > 0.5 and back[0]["restarted"]
        # A ref put before the kill is lost, fast.
        t2 = loop.time()
        with pytest.raises(ObjectLostError):
            await client.get(big, timeout=30)
        with pytest.raises(ObjectLostError):
            await client.get([small, big])
        assert loop.time() - t2 < 5.0
        # The view taken before the kill still reads its bytes.
        assert view[12345] == 12345 and int(view[-1]) == (1 << 20) - 1
        # The same Client works against the new node.
        ref = await client.put(b"after the restart")
        assert bytes(await client.get(ref)) == b"after the restart"
        arr = np.ones(4 << 20, dtype=np.uint8)
        ref2 = await client.put(arr)
        assert int((await client.get(ref2)).sum()) == arr.size
        assert (await client.stats())["node_id"] == node2.ready["node_id"]


async def test_get_during_the_gap_returns_an_object_put_after_the_restart(
    node_factory, monkeypatch
) -> None:
    node = node_factory()
    async with objstore.connect(node.socket) as client:
        await client.put(b"warm")
        node.kill()
        await asyncio.sleep(0.1)
        oid = bytes(20)  # not one this client had: no ObjectLostError for it
        waiting = asyncio.ensure_future(client.get(objstore.ObjectRef(oid), timeout=20))
        await asyncio.sleep(0.3)
        node_factory(socket_path=node.socket)
        await _back(client)
        monkeypatch.setattr(client_mod, "new_object_id", lambda: oid)
        async with objstore.connect(node.socket) as other:
            await other.put(b"named after the restart", name="made-after")
            assert bytes(await waiting) == b"named after the restart"


async def test_in_flight_get_is_retried_after_the_restart(node_factory, monkeypatch) -> None:
    node = node_factory()
    async with objstore.connect(node.socket) as client:
        oid = bytes(range(20))
        waiting = asyncio.ensure_future(client.get(objstore.ObjectRef(oid), timeout=20))
        await asyncio.sleep(0.2)  # in flight: the node waits for the object
        _restart(node_factory, node)
        await _back(client)
        assert not waiting.done()
        monkeypatch.setattr(client_mod, "new_object_id", lambda: oid)
        async with objstore.connect(node.socket) as other:
            await other.put(b"x" * 100, name="retried")
            assert bytes(await waiting) == b"x" * 100


async def test_in_flight_put_fails_at_once(node_factory) -> None:
    node = node_factory()
    async with objstore.connect(node.socket) as client:
        node.proc.send_signal(19)  # SIGSTOP: the put stays in flight
        try:
            put = asyncio.ensure_future(client.put(b"y" * 100))
            await asyncio.sleep(0.2)
        finally:
            node.kill()
        with pytest.raises(NodeUnavailableError, match="outcome is unknown"):
            await asyncio.wait_for(put, 2.0)


async def test_reconnect_false_never_reconnects(node_factory) -> None:
    node = node_factory()
    async with objstore.connect(node.socket, reconnect=False) as client:
        await client.put(b"before")
        node.kill()
        await asyncio.sleep(0.2)
        with pytest.raises(NodeUnavailableError, match="was lost"):
            await client.put(b"after")
        node_factory(socket_path=node.socket)
        await asyncio.sleep(1.0)
        with pytest.raises(NodeUnavailableError, match="was lost"):
            await client.get(objstore.ObjectRef(bytes(20)), timeout=1)
        assert client._reconnector is None and client._transport is None


async def test_close_during_the_gap_fails_waiting_calls(node_factory) -> None:
    node = node_factory()
    client = await objstore.connect(node.socket)
    await client.put(b"x")
    node.kill()
    waiting = asyncio.ensure_future(client.get(objstore.ObjectRef(bytes(20)), timeout=20))
    await asyncio.sleep(0.2)
    await client.close()
    with pytest.raises(NodeUnavailableError, match="closed"):
        await asyncio.wait_for(waiting, 2.0)
