"""``client.put`` of one big array (to be SIGKILLed while the copy runs)."""

from __future__ import annotations

import asyncio
import sys

import numpy as np
from _common import emit

import objstore


async def main(sock: str, nbytes: int) -> None:
    arr = np.ones(nbytes, dtype=np.uint8)  # faulted in before the put starts
    async with objstore.connect(sock) as client:
        emit(event="putting")
        await client.put(arr)
        emit(event="put")
        while True:
            await asyncio.sleep(60)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
