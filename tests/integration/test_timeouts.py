"""Every request that waits on the node is bounded: a frozen node gives a clear error."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

import objstore
from objstore.errors import NodeUnavailableError


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
            assert loop.time() - t0 < 3
        finally:
            os.kill(node.pid, signal.SIGCONT)
        # The node thaws and answers the abandoned put; the client deletes that
        # orphan (nobody holds its ref), and carries on.
        assert bytes(await client.get(kept)) == b"before the freeze"
        for _ in range(100):
            if (await client.stats())["objects"] == 1:
                break
            await asyncio.sleep(0.02)
        assert (await client.stats())["objects"] == 1


async def test_request_timeout_must_be_positive(node) -> None:
    with pytest.raises(ValueError, match="request_timeout"):
        async with objstore.connect(node.socket, request_timeout=0):
            pass
