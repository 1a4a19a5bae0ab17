"""A small tmpfs the full-disk tests fill up.

Mounting needs root, which ``.ci/run`` has: there a failed mount fails the
test.  Elsewhere (a developer's account) the full-disk tests are skipped with
that reason; every other test runs.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["tmpfs"]


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (e.g. ``"4m"``) on ``path`` for the block; unmount after."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        if os.geteuid() != 0:
            pytest.skip(
                "a full disk is a tmpfs the test mounts, which needs root (CI runs as root)"
            )
        raise AssertionError(f"cannot mount a tmpfs as root: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
