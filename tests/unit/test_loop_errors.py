"""The harness: an unhandled exception in the test process's loop fails the test.

Inner test sessions (pytester, in a subprocess) load ``tests/loop_errors.py``
the way ``tests/conftest.py`` does and run tests that leak an exception to the
loop in each way asyncio reports one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = session
asyncio_default_test_loop_scope = session
markers = known_loop_error(pattern, reason): tolerated loop reports
"""

INNER = """
import asyncio
import gc

import pytest


class Boom(Exception):
    pass


async def _fail(what):
    raise Boom(what)


async def test_a_dropped_task_that_failed():
    task = asyncio.create_task(_fail("dropped task"))
    await asyncio.sleep(0.01)
    assert task.done()
    del task


async def test_a_failing_callback():
    def callback():
        raise Boom("in a callback")

    asyncio.get_running_loop().call_soon(callback)
    await asyncio.sleep(0.01)


async def test_a_task_in_a_cycle():
    class Holder:
        pass

    h = Holder()
    h.self = h
    h.task = asyncio.create_task(_fail("task in a cycle"))
    await asyncio.sleep(0.01)
    del h


def test_a_sync_test_after_them_is_not_blamed():
    pass


async def test_an_awaited_failure_is_handled():
    task = asyncio.create_task(_fail("awaited"))
    with pytest.raises(Boom):
        await task


async def test_a_clean_test():
    await asyncio.sleep(0)


@pytest.fixture(scope="module")
async def leaks_in_teardown():
    yield
    asyncio.get_running_loop().call_soon(lambda: 1 / 0)
    await asyncio.sleep(0)


async def test_module_fixture_user(leaks_in_teardown):
    pass


@pytest.mark.known_loop_error("Boom: known", reason="a defect of the code under test")
async def test_a_known_defect_is_tolerated():
    def callback():
        raise Boom("known")

    asyncio.get_running_loop().call_soon(callback)
    await asyncio.sleep(0.01)
"""

NEXT_MODULE = """
def test_after_a_module_teardown_leaked():
    pass


def test_then_clean_again():
    pass
"""


def test_unhandled_loop_exceptions_fail_the_test_that_ran(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n"
        "from loop_errors import loop_error_handler, loop_errors  # noqa: F401\n"
    )
    pytester.makepyfile(test_a=INNER, test_b=NEXT_MODULE)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=9, errors=4)
    out = result.stdout.str()
    errors = {
        m[1] for line in result.outlines if (m := re.match(r"ERROR test_\w\.py::(\w+)", line))
    }
    assert errors == {
        "test_a_dropped_task_that_failed",
        "test_a_failing_callback",
        "test_a_task_in_a_cycle",
        "test_after_a_module_teardown_leaked",
    }, out
    result.stdout.fnmatch_lines(
        [
            "*unhandled exceptions in the event loop during the test:*",
            "*Task exception was never retrieved*",
            "*Boom: dropped task*",
        ]
    )
    assert "Exception in callback" in out and "Boom: in a callback" in out
    assert "Boom: task in a cycle" in out
    assert "before this test (in the teardown of a wider-scoped fixture)" in out
    assert "ZeroDivisionError" in out
    assert "Boom: awaited" not in out and "Boom: known" not in out
