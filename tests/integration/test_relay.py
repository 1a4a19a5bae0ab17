"""Broadcasts through relays: receivers of a large object forward its chunks.

Real head and node processes on 127.0.0.1.  Several nodes get one large
object at once; the directory attaches them in chains
(objstore/directory/relays.py), each pulling from a node that is still
receiving it.  Every copy is checked by CRC chunk by chunk, so the bytes each
get returns are the object's.  Shaped links (where a relay saves the
source's bandwidth) are in tests/integration/test_netns_relay.py.
"""

from __future__ import annotations

import asyncio
import hashlib

import numpy as np
import pytest

import objstore

MiB = 1 << 20
ENV = {
    "OBJSTORE_TRANSFER_CHUNK_SIZE": "1MiB",
    "OBJSTORE_TRANSFER_RELAY_MIN_BYTES": "4MiB",
    "OBJSTORE_TRANSFER_PULL_TIMEOUT_S": "5",
}


async def _broadcast(cluster, size: int, seed: int = 1) -> list[dict[str, int]]:
    """Put ``size`` random bytes on the head, get them on every node at once;
    returns each receiver's stats."""
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    digest = hashlib.sha256(data).digest()
    async with objstore.connect(cluster.head.socket) as head:
        ref = await head.put(data)
        del data
        clients = [objstore.connect(n.socket) for n in cluster.nodes]
        try:
            opened = [await c.__aenter__() for c in clients]
            got = await asyncio.gather(*(c.get(ref, timeout=60) for c in opened))
            for value in got:
                assert hashlib.sha256(value).digest() == digest
            del got
            return [await c.stats() for c in opened]
        finally:
            for c in clients:
                await c.__aexit__(None, None, None)


@pytest.mark.slow
async def test_a_broadcast_to_four_nodes_is_relayed(cluster_factory) -> None:
    cluster = cluster_factory(4, env=ENV, memory="160MiB")
    stats = await _broadcast(cluster, 48 * MiB)
    assert [s["relayed_pulls"] for s in stats] == [1, 1, 1, 1]
    # Attached at once, most receivers pull from a node still receiving it.
    assert sum(s["relayed_from_partial"] for s in stats) >= 1, stats
    assert sum(s["relayed_chunks"] for s in stats) >= 1, stats


async def test_relays_off_pulls_from_the_whole_copy(cluster_factory) -> None:
    env = {**ENV, "OBJSTORE_TRANSFER_RELAY_FANOUT": "0"}
    cluster = cluster_factory(2, env=env, memory="96MiB")
    stats = await _broadcast(cluster, 12 * MiB)
    assert [s["relayed_pulls"] for s in stats] == [0, 0]
    assert [s["relayed_chunks"] for s in stats] == [0, 0]


async def test_a_small_object_is_not_relayed(cluster_factory) -> None:
    cluster = cluster_factory(2, env=ENV, memory="64MiB")
    stats = await _broadcast(cluster, 3 * MiB)
    assert [s["relayed_pulls"] for s in stats] == [0, 0]
