"""An unhandled exception in the test process's own event loop fails the test.

asyncio reports what nobody handled to the loop's exception handler and, by
default, only logs it: "Task exception was never retrieved", an exception in a
callback (``call_soon``, a protocol's ``data_received``), an async generator
that failed while closing.  A test whose background task died that way would
pass.  Here the session's loop (pytest-asyncio, session loop scope) gets a
handler once that records each such report (and still logs it); every test
starts with an empty record and fails at teardown if something was recorded
while it ran.  Reports that carry no exception ("Task was destroyed but it is
pending!") are only logged.

A test that hits a known defect of the code under test (not of the test) can
say so until it is fixed, with the report it tolerates::

    @pytest.mark.known_loop_error("_Aborted", reason="what is wrong, and where")

Reports whose text matches the pattern (``re.search``) are then only logged.

A task's "exception was never retrieved" comes when the task is garbage
collected, which for a task caught in a reference cycle is whenever the
collector runs.  So that it is blamed on the test that made it, the teardown of
every async test runs the collector first (about 10-30 ms).

``tests/conftest.py`` imports the two fixtures; another test run can load this
module as a plugin (``pytest -p loop_errors`` with ``tests/`` on the path).
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import re
import traceback
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

__all__ = ["LoopErrors", "loop_error_handler", "loop_errors"]


class LoopErrors:
    """The unhandled exceptions a loop reported since the last :meth:`take`."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []

    def handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The loop's exception handler: record the report, then log it as asyncio would."""
        if context.get("exception") is not None:
            self.reports.append(context)
        loop.default_exception_handler(context)

    def take(self) -> list[dict[str, Any]]:
        """The reports so far; the record starts empty again."""
        reports, self.reports = self.reports, []
        return reports

    @staticmethod
    def describe(reports: list[dict[str, Any]]) -> str:
        """The reports as text: each message and its exception's traceback."""
        parts = []
        for context in reports:
            exc = context["exception"]
            where = context.get("task") or context.get("future") or context.get("handle")
            head = context.get("message", "unhandled exception in the event loop")
            if where is not None:
                head += f" ({where!r:.300})"
            parts.append(head + "\n" + "".join(traceback.format_exception(exc)))
        return "\n".join(parts)


@pytest_asyncio.fixture(scope="session", loop_scope="session", autouse=True)
async def loop_error_handler() -> AsyncIterator[LoopErrors]:
    """Installs the recording handler on the session's loop for the whole session."""
    loop = asyncio.get_running_loop()
    errors = LoopErrors()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(errors.handler)
    try:
        yield errors
    finally:
        gc.collect()
        loop.set_exception_handler(previous)
    reports = errors.take()
    if reports:
        pytest.fail(
            "unhandled exceptions in the event loop after the last test:\n"
            + LoopErrors.describe(reports),
            pytrace=False,
        )


@pytest_asyncio.fixture(loop_scope="session", autouse=True)
async def loop_errors(
    loop_error_handler: LoopErrors, request: pytest.FixtureRequest
) -> AsyncIterator[LoopErrors]:
    """Fails the test if the loop reported an unhandled exception while it ran."""
    # A module- or session-scoped fixture's teardown runs after the check of the test before.
    earlier = loop_error_handler.take()
    if earlier:
        pytest.fail(
            "unhandled exceptions in the event loop before this test (in the teardown of a "
            "wider-scoped fixture):\n" + LoopErrors.describe(earlier),
            pytrace=False,
        )
    yield loop_error_handler
    # Let callbacks the test scheduled last run, and collect the tasks it dropped.
    for _ in range(3):
        await asyncio.sleep(0)
    if inspect.iscoroutinefunction(getattr(request, "function", None)):
        gc.collect()
    reports = loop_error_handler.take()
    known = request.node.get_closest_marker("known_loop_error")
    if known is not None:
        pattern = re.compile(known.args[0])
        reports = [r for r in reports if not pattern.search(LoopErrors.describe([r]))]
    if reports:
        pytest.fail(
            "unhandled exceptions in the event loop during the test:\n"
            + LoopErrors.describe(reports),
            pytrace=False,
        )
