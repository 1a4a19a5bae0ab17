"""Logging a failure that repeats: one warning per streak, one line when it ends.

A spill disk that stays full, a directory that stays away, a state store that
keeps refusing writes: each would log thousands of identical warnings.
:class:`FailureStreak` logs the first failure of a streak as a warning, the
repeats at debug level, and one info line with the count when the next
success ends the streak.  It also keeps the streak's :class:`~objstore.backoff.Backoff`.
"""

from __future__ import annotations

from typing import Any

from objstore.backoff import Backoff

__all__ = ["FailureStreak"]


class FailureStreak:
    """See the module docstring.  ``log`` is a structlog logger."""

    __slots__ = ("log", "what", "recovered", "backoff", "last_error")

    def __init__(
        self,
        log: Any,
        what: str,
        recovered: str,
        *,
        first: float = 0.1,
        maximum: float = 5.0,
        jitter: float = 0.5,
    ) -> None:
        self.log = log
        # The warning's text ("spilling failed; ...") and the recovery's ("spilling works again").
        self.what = what
        self.recovered = recovered
        self.backoff = Backoff(first, maximum, jitter=jitter)
        # The error of the last failure while the streak lasts; None after a success.
        self.last_error: BaseException | None = None

    @property
    def failures(self) -> int:
        """Failures in a row since the last success."""
        return self.backoff.failures

    def failed(self, exc: BaseException, **fields: Any) -> float:
        """Log one failure (a warning only if it starts a streak); return the delay to wait."""
        delay = self.backoff.failed()
        self.last_error = exc
        if self.backoff.failures == 1:
            self.log.warning(self.what, error=str(exc) or type(exc).__name__, **fields)
        else:
            self.log.debug(
                self.what, error=str(exc) or type(exc).__name__, failures=self.failures, **fields
            )
        return delay

    def ok(self, **fields: Any) -> None:
        """A success: end the streak (one info line if there was one)."""
        if self.backoff.failures:
            self.log.info(self.recovered, failures=self.failures, **fields)
        self.backoff.reset()
        self.last_error = None
