"""Where spill files go: local directories (:mod:`.local`) or an S3 bucket (:mod:`.s3`).

:func:`open_backend` makes the one a spill setting names; both follow the
:class:`~objstore.spill.backends.base.SpillBackend` protocol.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from objstore.spill.backends.base import Buffer, SpillBackend
from objstore.spill.backends.local import LocalBackend
from objstore.spill.backends.s3 import S3Backend

if TYPE_CHECKING:
    from objstore.config import SpillConfig

__all__ = ["Buffer", "SpillBackend", "LocalBackend", "S3Backend", "open_backend"]


def open_backend(spec: str, namespace: str, config: SpillConfig | None = None) -> SpillBackend:
    """The backend a spill setting names.

    ``s3://bucket/prefix`` is an :class:`S3Backend` (with ``config``'s S3
    settings, or the defaults); anything else is one or more local directories
    separated by commas (made absolute), a :class:`LocalBackend`.  Not
    started: call ``await backend.start()``.  ``ValueError`` for a bad setting.
    """
    if not isinstance(spec, str):
        raise TypeError(f"a spill setting is a str, not {type(spec).__name__}")
    spec = spec.strip()
    if not spec:
        raise ValueError("the spill setting is empty: give directories or s3://bucket/prefix")
    if spec.startswith("s3://"):
        bucket, _, prefix = spec[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"a spill setting s3://bucket/prefix needs a bucket, got {spec!r}")
        if config is None:
            return S3Backend(bucket, prefix, namespace)
        return S3Backend.from_config(bucket, prefix, namespace, config)
    if "://" in spec:
        raise ValueError(f"spill storage is local directories or s3://bucket/prefix, got {spec!r}")
    dirs = [os.path.abspath(os.path.expanduser(d.strip())) for d in spec.split(",") if d.strip()]
    if not dirs:
        raise ValueError(f"the spill setting names no directory: {spec!r}")
    return LocalBackend(dirs, namespace)


if TYPE_CHECKING:  # mypy checks that both implement the protocol

    def _conforms(local: LocalBackend, s3: S3Backend) -> list[SpillBackend]:
        return [local, s3]
