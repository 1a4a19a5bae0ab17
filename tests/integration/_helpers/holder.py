"""Get NAME (or the ref whose hex is NAME) zero-copy and hold the view; obey commands read from stdin.

Prints ``{"event": "holding", ...}`` once the view is held, then for each line:
``check FILL`` -> ``{"event": "check", "ok": bool, ...}`` (every byte still FILL),
``drop`` -> drops the view (del + gc.collect + a short sleep) -> ``{"event": "dropped"}``,
``exit`` -> closes the client and exits 0.
"""

from __future__ import annotations

import asyncio
import gc
import sys

import numpy as np
from _common import emit

import objstore


async def main(sock: str, name: str, fill: int) -> None:
    loop = asyncio.get_running_loop()
    async with objstore.connect(sock) as client:
        target = objstore.ObjectRef.from_hex(name) if len(name) == 40 else name
        view = await client.get(target, timeout=5.0)
        ok = (
            isinstance(view, np.ndarray) and not view.flags.writeable and bool((view == fill).all())
        )
        emit(event="holding", ok=ok, nbytes=int(view.nbytes), stats=await client.stats())
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
            if not line or line[0] == "exit":
                break
            if line[0] == "check":
                want = int(line[1])
                wrong = int(np.count_nonzero(view != want)) if view is not None else -1
                emit(event="check", ok=wrong == 0, wrong=wrong)
            elif line[0] == "drop":
                del view
                view = None
                gc.collect()
                await asyncio.sleep(0.2)
                emit(event="dropped")
    emit(event="exit")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
