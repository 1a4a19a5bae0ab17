"""Two nodes in one cluster: names, gets and deletes reach across nodes.

    python -m objstore.node --head --directory-port 6380 --socket /tmp/head.sock &
    python -m objstore.node --directory 127.0.0.1:6380 --socket /tmp/node2.sock &
    python examples/cluster.py /tmp/head.sock /tmp/node2.sock 127.0.0.1:6380

A client of the head puts a named object; a client of the second node reads
it by name (the second node pulls a copy from the head), finds the name taken
(names are unique in the cluster), deletes the object by name (the directory
frees every copy), then claims the name for itself.  The directory's view is
printed at each step.
"""

from __future__ import annotations

import asyncio
import sys

import objstore
from objstore.directory.client import DirectoryAdmin

STATES = {0: "unknown", 1: "pending", 2: "present", 3: "lost", 4: "deleted"}


async def where(directory: str, ref: objstore.ObjectRef) -> str:
    async with DirectoryAdmin(directory) as d:
        (row,) = await d.lookup([ref._id])
    nodes = ", ".join(n.hex()[:8] for n in row.nodes) or "nowhere"
    return f"{STATES[row.state]} on {nodes} (name {row.name!r})"


async def main(head_socket: str, other_socket: str, directory: str) -> None:
    async with objstore.connect(head_socket) as head, objstore.connect(other_socket) as other:
        print(f"head node {head.node_id.hex()[:8]}, second node {other.node_id.hex()[:8]}")
        ref = await head.put(b"weights v1", name="model")
        await asyncio.sleep(0.1)  # location reports are batched: give this one a moment
        print(f"put 'model' on the head: {await where(directory, ref)}")
        print(f"the second node reads it: {bytes(await other.get('model', timeout=10))!r}")
        await asyncio.sleep(0.1)
        print(f"now {await where(directory, ref)}")
        try:
            await other.put(b"weights v2", name="model")
        except objstore.ObjectExistsError as exc:
            print(f"the second node cannot take the name: {exc}")
        print(f"the second node deletes 'model': deleted {await other.delete('model')}")
        await asyncio.sleep(0.1)
        print(f"the head still holds it? {await head.contains(ref)}; {await where(directory, ref)}")
        ref2 = await other.put(b"weights v2", name="model")
        print(f"the second node now owns 'model': {bytes(await other.get('model'))!r}")
        await asyncio.sleep(0.1)
        print(f"directory: {await where(directory, ref2)}")
        async with DirectoryAdmin(directory) as d:
            st = await d.cluster_status()
        print(f"cluster: {sum(n.alive for n in st.nodes)} nodes alive, {st.objects} objects")
        await other.delete("model")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    asyncio.run(main(*sys.argv[1:]))
