"""The quick tier keeps every module: hooks that refuse a selection emptying one.

``pytest -m "not slow"`` is the quick tier (see pyproject.toml).  Every test
module keeps at least one test in it, so that a quick run of any one module
runs something (never pytest's exit code 5, "no tests ran"); a run whose
``-m`` expression drops every test of a module because they are all marked
``slow`` stops with a usage error naming the module.  ``tests/conftest.py``
imports the hooks; another run loads this module with ``-p tiers``.
"""

from __future__ import annotations

import pytest

__all__ = ["pytest_deselected", "pytest_collection_finish"]

_DESELECTED = pytest.StashKey[list[pytest.Item]]()


def pytest_deselected(items: list[pytest.Item]) -> None:
    """Remember what the selection left out."""
    if items:
        items[0].config.stash.setdefault(_DESELECTED, []).extend(items)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Stop if the ``slow`` marker left a module with no test (a ``-k`` run is not checked)."""
    config = session.config
    if "slow" not in (config.option.markexpr or "") or config.option.keyword:
        return
    kept = {item.path for item in session.items}
    emptied = sorted(
        {
            item.nodeid.split("::")[0]
            for item in config.stash.get(_DESELECTED, [])
            if item.get_closest_marker("slow") is not None and item.path not in kept
        }
    )
    if emptied:
        pytest.exit(
            f"-m {config.option.markexpr!r} leaves no test of {', '.join(emptied)}: keep "
            "the fastest test of each module out of the slow tier",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )
