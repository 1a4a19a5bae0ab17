"""put(value, replicas=N) on real node processes: copies on N distinct nodes that
survive the death of their putting node, and are made again to keep N."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from waits import poll

import objstore
from objstore import ObjectRef
from objstore.directory.client import DirectoryAdmin
from objstore.errors import NodeUnavailableError
from objstore.locations import LocationState, ObjectRow


def _node_id(node: Any) -> bytes:
    return bytes.fromhex(str(node.ready["node_id"]))


async def _row(directory: str, oid: bytes) -> ObjectRow:
    async with DirectoryAdmin(directory) as d:
        (row,) = await d.lookup([oid])
    return row


async def test_replicas_survive_sigkill_of_the_putting_node_and_are_made_again(
    cluster_factory: Any,
) -> None:
    cluster = cluster_factory(2)
    head, a, b = cluster.head, cluster.nodes[0], cluster.nodes[1]
    payload = bytes(range(256)) * 4096  # 1 MiB: a Create, not an inline put
    async with objstore.connect(a.socket, reconnect=False) as ca:
        ref = await ca.put(payload, replicas=2)
        oid = ref.binary
        row = await _row(cluster.directory, oid)
        # put returned: two distinct nodes keep a copy, the putting node one of them.
        assert row.replicas == 2
        assert len(set(row.replica_nodes)) == 2, row
        assert _node_id(a) in row.replica_nodes
        other = next(n for n in row.replica_nodes if n != _node_id(a))
        assert other in (_node_id(head), _node_id(b))
        # The copy kept elsewhere is not evictable: it shows as pinned there.
        keeper = head if other == _node_id(head) else b
        async with objstore.connect(keeper.socket, reconnect=False) as ck:
            assert (await ck.stats())["pinned_bytes"] >= len(payload)
        text = ref.hex()
        a.kill()  # SIGKILL of the putting node (its client stays, disconnected)

    # A get on the node that had no copy returns the bytes (from the replica).
    third = b if keeper is head else head
    async with objstore.connect(third.socket, reconnect=False) as c3:
        borrowed = ObjectRef.from_hex(text)  # a borrower keeps it alive
        got = await c3.get(borrowed, timeout=20)
        assert bytes(got) == payload
        del got

        # Within the node timeout (3 s here) plus a few seconds, the directory
        # finds a's death and asks another node for a copy: two copies again.
        def replaced(r: ObjectRow) -> bool:
            return (
                r.state == LocationState.PRESENT
                and len(r.replica_nodes) == 2
                and _node_id(a) not in r.replica_nodes
            )

        row = await poll(lambda: _row(cluster.directory, oid), replaced, deadline=20)
        assert set(row.replica_nodes) == {_node_id(head), _node_id(b)}

        # The last ref in this process dropped: the object goes from every node.
        del borrowed, ref
        gc.collect()

        def gone(r: ObjectRow) -> bool:
            return r.state in (LocationState.DELETED, LocationState.UNKNOWN)

        await poll(lambda: _row(cluster.directory, oid), gone, deadline=20)
        for n in (head, b):
            async with objstore.connect(n.socket, reconnect=False) as c:

                async def stats(c: objstore.Client = c) -> dict[str, Any]:
                    return await c.stats()

                await poll(stats, lambda s: s["objects"] == 0 and s["pinned_bytes"] == 0, 20)


async def test_replicas_of_a_small_object_on_every_node(cluster_factory: Any) -> None:
    cluster = cluster_factory(2)
    async with objstore.connect(cluster.head.socket) as c:
        ref = await c.put(b"small" * 10, replicas=3)
        row = await _row(cluster.directory, ref.binary)
        assert len(set(row.replica_nodes)) == 3
        assert await c.get(ref) == b"small" * 10


async def test_more_replicas_than_nodes_fails_and_leaves_nothing(cluster_factory: Any) -> None:
    cluster = cluster_factory(1)
    async with objstore.connect(cluster.head.socket) as c:
        with pytest.raises(NodeUnavailableError, match="replicas=3"):
            await c.put(b"x" * 100, replicas=3)

        async def stats() -> dict[str, Any]:
            return await c.stats()

        await poll(stats, lambda s: s["objects"] == 0, deadline=10)


async def test_replicas_on_a_lone_node_and_bad_counts(node: Any) -> None:
    async with objstore.connect(node.socket) as c:
        # A head alone is a cluster of one: no second node to keep a copy on.
        with pytest.raises(NodeUnavailableError, match="no node left to keep a copy"):
            await c.put(b"x", replicas=2)
        for bad in (0, -1, 1.5, True, "2"):
            with pytest.raises(ValueError, match="replicas"):
                await c.put(b"x", replicas=bad)  # type: ignore[arg-type]
        ref = await c.put(b"one", replicas=1)
        assert await c.get(ref) == b"one"
