"""Get ``{prefix}-{k}`` for k < N by name (waiting for each to appear); print their digests."""

from __future__ import annotations

import asyncio
import sys
import time

from _common import digest, emit, pattern

import objstore
from objstore.errors import ObjectNotFoundError


async def main(sock: str, prefix: str, n: int) -> None:
    digests = {}
    bad = []
    deadline = time.monotonic() + 10.0
    async with objstore.connect(sock) as client:
        for k in range(n):
            name = f"{prefix}-{k}"
            while True:
                try:
                    value = await client.get(name, timeout=5.0)
                    break
                except ObjectNotFoundError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.005)
            expect = pattern(value.nbytes, k)
            if value.dtype != expect.dtype or not (value == expect).all():
                bad.append(name)
            digests[name] = digest(value)
            del value
    emit(event="done", digests=digests, bad=bad)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
