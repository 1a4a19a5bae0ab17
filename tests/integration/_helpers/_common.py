"""Shared bits of the helper scripts (imported as a sibling module: each script
is run as ``python path/to/script.py``, so its directory is on ``sys.path``)."""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import numpy as np

_MULT = np.uint64(0x9E3779B97F4A7C15)


def pattern(nbytes: int, seed: int) -> np.ndarray:
    """A uint8 array of ``nbytes`` whose content depends on every position and ``seed``."""
    words = -(-nbytes // 8)
    arr = (np.arange(words, dtype=np.uint64) + np.uint64(seed)) * _MULT
    return arr.view(np.uint8)[:nbytes].copy()


def digest(value: Any) -> str:
    """sha256 of a buffer's bytes (numpy array, memoryview, bytes)."""
    if isinstance(value, np.ndarray):
        value = np.ascontiguousarray(value).view(np.uint8).reshape(-1)
    return hashlib.sha256(memoryview(value).cast("B")).hexdigest()


def emit(**fields: Any) -> None:
    """One JSON line on stdout, flushed."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()
