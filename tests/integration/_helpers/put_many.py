"""Put N objects (unnamed, or named ``{prefix}-{k}`` when a prefix is given), then exit.

Prints the stats the node reports just before this client disconnects.
"""

from __future__ import annotations

import asyncio
import sys

from _common import digest, emit, pattern

import objstore


async def main(sock: str, n: int, prefix: str | None) -> None:
    digests = {}
    refs = []  # held until exit: unnamed objects live while a ref does
    async with objstore.connect(sock) as client:
        for k in range(n):
            arr = pattern((100, 5_000, 40_000, 300_000)[k % 4], k)
            name = f"{prefix}-{k}" if prefix else None
            ref = await client.put(arr, name=name)
            refs.append(ref)
            digests[name or ref.hex()] = digest(arr)
        stats = await client.stats()
    emit(event="done", stats=stats, digests=digests)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
