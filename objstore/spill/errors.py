"""The spill package's errors: lost bytes, and failures that may pass.

Both derive from :class:`~objstore.errors.ObjectStoreError`.  The backends
translate ``OSError`` and botocore errors into these (or into
:class:`~objstore.errors.OutOfDiskError` for a full disk or bucket quota); the
spill manager turns :class:`SpillCorruptError` into
:class:`~objstore.errors.ObjectLostError` for the gets that wait.
"""

from __future__ import annotations

from objstore.errors import ObjectStoreError

__all__ = ["SpillCorruptError", "SpillIOError"]


class SpillCorruptError(ObjectStoreError):
    """A spilled record is missing, short or wrong: the object is lost.

    The message names the URL (or the object) concerned.
    """


class SpillIOError(ObjectStoreError):
    """Spill storage failed in a way that may pass: retry later.

    (A timeout, a connection error, throttling, a 5xx, an I/O error.)
    """
