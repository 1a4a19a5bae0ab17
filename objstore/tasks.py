"""Background tasks that are kept, bounded in life, and never lost silently.

:class:`TaskSet` holds strong references to the tasks it starts (asyncio keeps
only weak ones), forgets each when it ends, logs one that failed with an
exception nobody will read, and cancels and awaits all of them on
:meth:`TaskSet.close`.  :func:`race` runs coroutines until the first ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import structlog

__all__ = ["TaskSet", "race"]

T = TypeVar("T")

log = structlog.get_logger("objstore.tasks")


class TaskSet:
    """Tasks started in the background by one component (see the module docstring)."""

    __slots__ = ("name", "_tasks", "_closed")

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
        """Start ``coro`` as a task of this set."""
        if self._closed:
            coro.close()
            raise RuntimeError(f"{self.name}: closed, no new tasks")
        task = asyncio.get_running_loop().create_task(coro, name=name or self.name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error(
                "background task failed",
                component=self.name,
                task=task.get_name(),
                error=repr(exc),
                exc_info=exc,
            )

    def cancel(self) -> None:
        """Cancel every task (they end on their next await)."""
        for task in list(self._tasks):
            task.cancel()

    async def close(self) -> None:
        """Cancel every task and wait until all have ended; no new ones after."""
        self._closed = True
        await self.drain(cancel=True)

    async def drain(self, *, cancel: bool = False) -> None:
        """Wait until every task has ended (cancelling them first with ``cancel``)."""
        while self._tasks:
            tasks = list(self._tasks)
            if cancel:
                for task in tasks:
                    task.cancel()
            # Waits without taking the tasks' outcomes (their done callback logs a
            # failure), and raises CancelledError only when the caller is cancelled.
            await asyncio.wait(tasks)
            # A done task's callback (which forgets it) may not have run yet.
            self._tasks.difference_update(t for t in tasks if t.done())

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    def __repr__(self) -> str:
        return f"<TaskSet {self.name} tasks={len(self._tasks)}>"


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
