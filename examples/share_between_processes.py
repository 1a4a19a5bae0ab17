"""Two processes share a large array through one node without copying it.

    python -m objstore.node --head --memory 1GiB &
    python examples/share_between_processes.py

The parent puts a 256 MiB array under a name; a child process (a separate
Python interpreter) gets it by name: the child's array is a read-only view of
the node's shared memory, so no bytes are copied between the processes.
"""

from __future__ import annotations

import asyncio
import sys
import time

import numpy as np

import objstore

NAME = "example/shared-array"


async def child() -> None:
    async with objstore.connect() as client:
        t = time.perf_counter()
        arr = await client.get(NAME, timeout=10)
        took = (time.perf_counter() - t) * 1e6
        print(f"child: got {arr.nbytes >> 20} MiB in {took:.0f} us, sum={float(arr.sum()):.1f}")


async def parent() -> None:
    async with objstore.connect() as client:
        arr = np.ones(256 << 20 >> 3, dtype=np.float64)
        t = time.perf_counter()
        await client.put(arr, name=NAME)
        print(f"parent: put {arr.nbytes >> 20} MiB in {(time.perf_counter() - t) * 1e3:.1f} ms")
        proc = await asyncio.create_subprocess_exec(sys.executable, __file__, "child")
        await proc.wait()
        await client.delete(NAME)


if __name__ == "__main__":
    asyncio.run(child() if sys.argv[1:] == ["child"] else parent())
