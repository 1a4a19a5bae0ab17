"""Quick start: put and get values through a running node.

Start a node first (it prints a ready line and keeps running):

    python -m objstore.node --head --memory 1GiB

then, in another shell:

    python examples/quickstart.py
"""

from __future__ import annotations

import asyncio

import numpy as np

import objstore


async def main() -> None:
    async with objstore.connect() as client:  # $OBJSTORE_SOCKET or the default socket
        # numpy arrays are copied once into shared memory and read back zero-copy.
        weights = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
        ref = await client.put(weights)
        view = await client.get(ref)
        assert not view.flags.writeable  # a read-only view of shared memory
        assert np.array_equal(view, weights)

        # bytes come back as read-only memoryviews; other values are pickled.
        blob = await client.put(b"\x00" * 1_000_000)
        config = await client.put({"lr": 3e-4, "layers": [64, 64]})
        print("bytes:", len(await client.get(blob)), "config:", await config)

        # Names make objects findable from other processes and outlive this client.
        await client.put(np.arange(10), name="quickstart/arange")
        print("by name:", await client.get("quickstart/arange"))

        # Refs are small and picklable: pass ref.hex() to another process.
        same = objstore.ObjectRef.from_hex(ref.hex())
        ready, pending = await client.wait([same, blob], num_returns=2, timeout=1.0)
        print(f"{len(ready)} ready, {len(pending)} pending")

        # A get of something that never appears times out with a clear error.
        try:
            await client.get(objstore.ObjectRef(b"\x01" * 20), timeout=0.1)
        except objstore.GetTimeoutError as exc:
            print("timed out as expected:", exc)

        del view  # the object stays pinned while any view of it is alive
        await client.delete([ref, blob, config])
        await client.delete("quickstart/arange")
        print(
            "stats:", {k: v for k, v in (await client.stats()).items() if k in ("used", "objects")}
        )


if __name__ == "__main__":
    asyncio.run(main())
