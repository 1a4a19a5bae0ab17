"""The harness: the quick tier (``-m "not slow"``) never empties a module.

Inner pytest sessions run in this process (pytester): the hooks keep their
state on each session's config, and the inner tests are plain functions.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]

INI = """
[pytest]
markers = slow: the slow tier
asyncio_default_fixture_loop_scope = session
"""

CONFTEST = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from tiers import pytest_collection_finish, pytest_deselected  # noqa: F401
"""

MIXED = """
import pytest

def test_quick():
    pass

@pytest.mark.slow
def test_slow():
    pass
"""

ALL_SLOW = """
import pytest

pytestmark = pytest.mark.slow

def test_slow_one():
    pass
"""


def _setup(pytester: pytest.Pytester, **modules: str) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(**modules)


def test_quick_tier_keeps_every_module(pytester: pytest.Pytester) -> None:
    _setup(pytester, test_mixed=MIXED)
    result = pytester.runpytest("-m", "not slow", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, deselected=1)
    assert pytester.runpytest("-p", "no:cacheprovider").ret == 0


def test_a_module_with_only_slow_tests_is_refused(pytester: pytest.Pytester) -> None:
    _setup(pytester, test_mixed=MIXED, test_all_slow=ALL_SLOW)
    result = pytester.runpytest("-m", "not slow", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["*leaves no test of test_all_slow.py*"])
    # The slow tier alone and a -k selection are not checked.
    assert pytester.runpytest("-m", "slow", "-p", "no:cacheprovider").ret == 0
    assert pytester.runpytest("-k", "quick", "-p", "no:cacheprovider").ret == 0
