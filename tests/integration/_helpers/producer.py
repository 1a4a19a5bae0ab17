"""Put N named arrays ``{prefix}-{k}`` (uint8, ``pattern(size_k, k)``); print their digests."""

from __future__ import annotations

import asyncio
import sys

from _common import digest, emit, pattern

import objstore


def size_of(k: int) -> int:
    # Mixed sizes: inline (< 64 KiB), copied on get (< 16 KiB) and zero-copy ones.
    return (1000, 20_000, 300_000, 2_000_000)[k % 4] + 8 * k


async def main(sock: str, prefix: str, n: int) -> None:
    digests = {}
    async with objstore.connect(sock) as client:
        for k in range(n):
            arr = pattern(size_of(k), k)
            await client.put(arr, name=f"{prefix}-{k}")
            digests[f"{prefix}-{k}"] = digest(arr)
    emit(event="done", digests=digests)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
