"""Logging a refusal once per peer per period, with bounded memory.

Every port that refuses strangers (the local socket, the directory, the data
plane, HTTP) logs the first refusal of a peer, then stays quiet about that
peer for ``every_s``; its next line says how many it held back.  At most
``max_keys`` peers are remembered, the one logged longest ago forgotten
first, so a flood of new peers costs bounded memory (at worst a forgotten
peer is logged again early).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

__all__ = ["LogLimiter"]


class LogLimiter:
    """Whether to log an event of ``key`` now: once per key per ``every_s``."""

    def __init__(
        self,
        every_s: float = 60.0,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every_s = every_s
        self.max_keys = max_keys
        self.clock = clock
        # key -> (when it was last logged, events held back since); oldest first.
        self._last: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()

    def note(self, key: Hashable, now: float | None = None) -> int | None:
        """None to stay quiet; else log now, saying how many were held back before."""
        now = self.clock() if now is None else now
        seen = self._last.get(key)
        if seen is not None and now - seen[0] < self.every_s:
            self._last[key] = (seen[0], seen[1] + 1)
            return None
        self._last[key] = (now, 0)
        self._last.move_to_end(key)
        while len(self._last) > self.max_keys:
            self._last.popitem(last=False)
        return 0 if seen is None else seen[1]

    def __len__(self) -> int:
        return len(self._last)
