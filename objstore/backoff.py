"""Exponential backoff with jitter, the one way objstore waits before trying again.

The delay after the ``n``-th failure in a row is ``first * 2 ** (n - 1)``,
capped at ``maximum``, times a random factor in ``[1 - jitter, 1 + jitter)``
so that many nodes failing together do not retry together.
"""

from __future__ import annotations

import random

__all__ = ["backoff_delay", "Backoff"]


def backoff_delay(
    failures: int,
    first: float,
    maximum: float,
    *,
    jitter: float = 0.5,
    rng: random.Random | None = None,
) -> float:
    """The delay to wait after ``failures`` failures in a row (``failures >= 1``)."""
    if failures < 1:
        raise ValueError(f"failures counts from 1, got {failures}")
    if first <= 0 or maximum < first:
        raise ValueError(f"need 0 < first <= maximum, got first={first}, maximum={maximum}")
    if not 0 <= jitter < 1:
        raise ValueError(f"jitter is a fraction in [0, 1), got {jitter}")
    delay = min(maximum, first * 2 ** min(failures - 1, 60))
    if jitter:
        delay *= 1 - jitter + 2 * jitter * (rng or random).random()
    return delay


class Backoff:
    """A failure streak's delays: :meth:`failed` returns the next one, :meth:`reset` ends it."""

    __slots__ = ("first", "maximum", "jitter", "rng", "failures")

    def __init__(
        self,
        first: float,
        maximum: float,
        *,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        backoff_delay(1, first, maximum, jitter=jitter)  # validates the arguments
        self.first = first
        self.maximum = maximum
        self.jitter = jitter
        self.rng = rng
        # Failures in a row since the last success.
        self.failures = 0

    def failed(self) -> float:
        """Count one more failure; return how long to wait before the next try."""
        self.failures += 1
        return backoff_delay(
            self.failures, self.first, self.maximum, jitter=self.jitter, rng=self.rng
        )

    def reset(self) -> None:
        """A success: the next failure waits ``first`` again."""
        self.failures = 0

    def __repr__(self) -> str:
        return f"<Backoff {self.first}..{self.maximum}s failures={self.failures}>"
