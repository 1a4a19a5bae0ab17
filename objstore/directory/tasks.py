"""A small asyncio helper shared by the directory's client and server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

__all__ = ["race"]


async def race(*coros: Coroutine[Any, Any, Any]) -> None:
    """Run ``coros`` until the first ends; cancel the others (and wait for them).

    The first one's exception, if any, is raised.
    """
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            t.result()
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
