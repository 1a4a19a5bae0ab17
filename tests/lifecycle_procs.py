"""Processes for the lifecycle tests, started with multiprocessing (spawn): an owner
that puts and hands its ref through a pipe, and a borrower that reads through it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

import objstore


def payload(nbytes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)


def digest(value: Any) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(value)).cast("B")).hexdigest()


def owner(sock: str, nbytes: int, seed: int, conn: Connection, how: str) -> None:
    """Put a value, send its ref (pickled) through ``conn``, drop the ref, then exit
    (``how``: "exit") or SIGKILL itself ("kill") once the borrower says it has it."""

    async def main() -> None:
        async with objstore.connect(sock) as client:
            ref = await client.put(payload(nbytes, seed))
            conn.send(ref)  # pickles it: the grace starts on this node
            del ref
            await asyncio.sleep(0.05)  # the drop reaches the node before the borrower reads
            conn.send("dropped")
            assert conn.recv() == "have it"
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())


def borrower(sock: str, conn: Connection, delay_s: float) -> None:
    """Receive a ref, read its bytes, report their digest, drop everything on "drop"."""

    async def main() -> None:
        async with objstore.connect(sock) as client:
            ref = conn.recv()
            assert conn.recv() == "dropped"
            conn.send("have it")
            await asyncio.sleep(delay_s)  # let the owner go (and its grace end) first
            value = await client.get(ref, timeout=30)
            conn.send(("digest", digest(value)))
            assert conn.recv() == "drop"
            del value, ref
            import gc

            gc.collect()
            await asyncio.sleep(0.2)
            conn.send("dropped")
            conn.recv()

    asyncio.run(main())
