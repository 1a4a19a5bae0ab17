"""Put one uint8 array of NBYTES filled with FILL under NAME ("-": unnamed), then exit.

With a fifth argument ``wait``, stays connected (owning the object) until a
line arrives on stdin.  Prints ``{"event": "put", "ref": HEX}``.
"""

from __future__ import annotations

import asyncio
import sys

import numpy as np
from _common import emit

import objstore


async def main(sock: str, name: str, nbytes: int, fill: int, wait: bool) -> None:
    async with objstore.connect(sock) as client:
        ref = await client.put(
            np.full(nbytes, fill, dtype=np.uint8), name=None if name == "-" else name
        )
        emit(event="put", ref=ref.hex())
        if wait:
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    emit(event="exit")


if __name__ == "__main__":
    a = sys.argv
    asyncio.run(main(a[1], a[2], int(a[3]), int(a[4]), len(a) > 5 and a[5] == "wait"))
