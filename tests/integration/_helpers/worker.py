"""A busy client for DURATION seconds: mixed-size puts and gets, all verified.

Worker IDX first publishes ``NAMED`` named arrays ``w{IDX}-{k}``, then loops:
put a value (numpy array or bytes, 10 B .. 1.5 MiB) through one connection,
read it back through that connection and through a second one (a pinned
zero-copy view there), read a random other worker's named array by name,
and delete old refs now and then (the rest go when the client disconnects).
Prints ``{"event": "done", "ops": n, "bad": [...]}``.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time

from _common import digest, emit, pattern

import objstore
from objstore.errors import ObjectNotFoundError

NAMED = 3
SIZES = (10, 1000, 17_000, 70_000, 500_000, 1_500_000)


def named_size(k: int) -> int:
    return (3000, 30_000, 700_000)[k % 3]


async def main(sock: str, idx: int, workers: int, duration: float) -> None:
    rng = random.Random(idx)
    bad: list[str] = []
    ops = 0
    async with objstore.connect(sock) as a, objstore.connect(sock) as b:
        for k in range(NAMED):
            await a.put(pattern(named_size(k), idx * 1000 + k), name=f"w{idx}-{k}")
        live: list[objstore.ObjectRef] = []
        deadline = time.monotonic() + duration
        seed = idx * 1_000_000
        while time.monotonic() < deadline:
            seed += 1
            size = rng.choice(SIZES)
            value = pattern(size, seed)
            if rng.random() < 0.3:
                value = value.tobytes()
            want = digest(value)
            ref = await a.put(value)
            live.append(ref)
            got_a = await a.get(ref)
            got_b = await b.get(ref, timeout=5.0)
            if digest(got_a) != want or digest(got_b) != want:
                bad.append(f"own {ref.hex()} size {size}")
            del got_a, got_b, value
            other = rng.randrange(workers)
            k = rng.randrange(NAMED)
            try:
                shared = await b.get(f"w{other}-{k}", timeout=5.0)
            except ObjectNotFoundError:
                pass  # not published yet
            else:
                if digest(shared) != digest(pattern(named_size(k), other * 1000 + k)):
                    bad.append(f"named w{other}-{k}")
                del shared
            if len(live) > 6:
                old = live.pop(rng.randrange(len(live)))
                if await a.delete(old) != 1:
                    bad.append(f"delete {old.hex()}")
            ops += 1
            await asyncio.sleep(0.002)
    emit(event="done", ops=ops, bad=bad)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
