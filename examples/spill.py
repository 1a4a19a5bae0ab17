"""Put three times the node's memory: the least recently used objects spill to disk.

    python -m objstore.node --head --memory 256MiB --spill /var/tmp/objstore-spill &
    OBJSTORE_SOCKET=... python examples/spill.py

Puts 24 arrays of 32 MiB (768 MiB) into a node with 256 MiB of memory. The
node writes the least recently used ones to fused files under the spill
directory and frees their memory; each get of a spilled array reads it back
(checked by CRC) and returns it zero-copy like any other. Deleting the arrays
deletes the files.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

import objstore

MiB = 1 << 20


def show(s: dict) -> str:
    return (
        f"{s['used'] // MiB} MiB of {s['capacity'] // MiB} MiB in memory, "
        f"{s['spilled_objects']} objects ({s['spilled_bytes'] // MiB} MiB) spilled "
        f"in {s['spill_files']} files, {s['restored']} restored"
    )


async def main() -> None:
    async with objstore.connect() as client:
        stats = await client.stats()
        if not stats["spill"]:
            raise SystemExit("start the node with --spill DIR (see this file's docstring)")
        n = 3 * stats["capacity"] // (32 * MiB)
        t0 = time.perf_counter()
        refs = [await client.put(np.full(32 * MiB // 8, i, dtype=np.int64)) for i in range(n)]
        print(f"put {n} x 32 MiB in {time.perf_counter() - t0:.2f} s")
        print("after the puts:", show(await client.stats()))
        for i, ref in enumerate(refs):
            arr = await client.get(ref, timeout=60)
            assert arr[0] == arr[-1] == i, f"object {i} came back different"
            del arr  # let go of the view, so its memory can be spilled again
        print(f"read all {n} back, every one identical")
        print("after the gets:", show(await client.stats()))
        for ref in refs:
            await client.delete(ref)
        await asyncio.sleep(0.2)  # file deletions run in the background
        print("after deleting them:", show(await client.stats()))


if __name__ == "__main__":
    asyncio.run(main())
