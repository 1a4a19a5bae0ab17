"""Where spilled bytes are: record URLs, file base URLs, and the file and key layout.

A spill file's *base URL* is ``file:///abs/path`` or ``s3://bucket/key``; a
record in it is a :class:`SpillURL`, the base URL with the record's byte
range (``?offset=N&size=M``).  These URLs go to the directory, so any node can
tell where an object's spill copy is.

Each node spills under its own *namespace* (:func:`check_namespace`), and each
run of it names its files ``<run_id>-<seq>.spill`` (:func:`spill_file_name`):

* local: ``<dir>/<namespace>/<run_id>-<seq>.spill``;
* S3: ``<prefix>/<namespace>/<run_id>-<seq>.spill`` (no prefix: the namespace
  is first), made and parsed back by :class:`S3SpillFile`, so a node can
  read another node's S3 records knowing only their URL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import quote, unquote

__all__ = [
    "SPILL_SUFFIX",
    "SpillURL",
    "S3SpillFile",
    "check_namespace",
    "spill_file_name",
    "file_base",
    "s3_base",
    "split_base",
    "s3_namespace_prefix",
]

SPILL_SUFFIX = ".spill"
"""Every spill file's name ends with this (a node's start removes those it finds)."""

_NAMESPACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DIGITS_RE = re.compile(r"[0-9]{1,20}")


def check_namespace(namespace: str) -> None:
    """``ValueError`` unless ``namespace`` is one safe path segment."""
    if not isinstance(namespace, str) or not _NAMESPACE_RE.fullmatch(namespace):
        raise ValueError(
            f"a spill namespace is letters, digits, '.', '_' and '-' (not first), got {namespace!r}"
        )


def spill_file_name(run_id: str, seq: int) -> str:
    """The name of a run's ``seq``-th spill file."""
    return f"{run_id}-{seq:08d}{SPILL_SUFFIX}"


def file_base(path: str) -> str:
    """The base URL of a local spill file (an absolute path)."""
    return "file://" + quote(path, safe="/", errors="surrogateescape")


def s3_base(bucket: str, key: str) -> str:
    """The base URL of a spill file in S3."""
    return f"s3://{bucket}/" + quote(key, safe="/")


def split_base(base: str) -> tuple[str, str, str]:
    """``(scheme, bucket or "", path or key)`` of a base URL; ``ValueError`` if malformed."""
    if not isinstance(base, str):
        raise TypeError(f"a spill URL is a str, not {type(base).__name__}")
    if "?" in base or "#" in base:
        raise ValueError(f"a spill file's base URL has no query or fragment: {base!r}")
    if base.startswith("file://"):
        rest = base[len("file://") :]
        if not rest.startswith("/") or rest == "/":
            raise ValueError(f"a file spill URL is file:///absolute/path (no host), got {base!r}")
        return "file", "", unquote(rest, errors="surrogateescape")
    if base.startswith("s3://"):
        bucket, slash, key = base[len("s3://") :].partition("/")
        if not bucket or not slash or not key:
            raise ValueError(f"an S3 spill URL is s3://bucket/key, got {base!r}")
        return "s3", bucket, unquote(key)
    raise ValueError(
        f"a spill URL is file:///path?offset=N&size=M or s3://bucket/key?offset=N&size=M, "
        f"got {base!r}"
    )


def s3_namespace_prefix(prefix: str, namespace: str) -> str:
    """What every key of ``namespace`` under ``prefix`` starts with (ends with ``/``)."""
    prefix = prefix.strip("/")
    return f"{prefix}/{namespace}/" if prefix else f"{namespace}/"


class S3SpillFile(NamedTuple):
    """One spill file in S3: ``s3://<bucket>/<prefix>/<namespace>/<name>``."""

    bucket: str
    prefix: str
    """Without leading or trailing ``/``; may be empty."""
    namespace: str
    """The node's folder (see :func:`check_namespace`)."""
    name: str
    """``<run_id>-<seq>.spill``."""

    @property
    def key(self) -> str:
        """The object's key in the bucket."""
        return s3_namespace_prefix(self.prefix, self.namespace) + self.name

    @property
    def base(self) -> str:
        """The file's base URL."""
        return s3_base(self.bucket, self.key)

    @classmethod
    def parse(cls, base: str) -> S3SpillFile:
        """Read a base URL back; ``ValueError`` if it is not an S3 spill file's."""
        scheme, bucket, key = split_base(base)
        if scheme != "s3":
            raise ValueError(f"not an S3 spill URL: {base!r}")
        prefix, _, rest = key.rpartition("/")
        prefix, _, namespace = prefix.rpartition("/")
        if not namespace or not rest.endswith(SPILL_SUFFIX) or rest == SPILL_SUFFIX:
            raise ValueError(f"not a spill file of a node: {base!r}")
        check_namespace(namespace)
        return cls(bucket, prefix, namespace, rest)


@dataclass(frozen=True, slots=True)
class SpillURL:
    """Where one spilled record is: a file, and a byte range of it.

    ``str()`` gives ``file:///abs/path?offset=N&size=M`` or
    ``s3://bucket/key?offset=N&size=M``; :meth:`parse` reads that back.
    """

    base: str
    """The file's URL, as ``SpillBackend.write`` returned it (no query)."""
    offset: int
    """Where the record starts in the file."""
    size: int
    """The record's size in bytes."""

    def __post_init__(self) -> None:
        split_base(self.base)
        for name in ("offset", "size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"a spill URL's {name} is an int >= 0, got {value!r}")

    @classmethod
    def parse(cls, text: str) -> SpillURL:
        """Parse ``BASE?offset=N&size=M``; ``ValueError`` on anything else."""
        if not isinstance(text, str):
            raise TypeError(f"a spill URL is a str, not {type(text).__name__}")
        base, sep, query = text.partition("?")
        if not sep:
            raise ValueError(f"a spill URL ends with ?offset=N&size=M, got {text!r}")
        params: dict[str, int] = {}
        for item in query.split("&"):
            name, eq, value = item.partition("=")
            if name not in ("offset", "size") or not eq or name in params:
                raise ValueError(
                    f"a spill URL's query is exactly offset=N&size=M, got {query!r} in {text!r}"
                )
            if not _DIGITS_RE.fullmatch(value):
                raise ValueError(f"a spill URL's {name} is a decimal number, got {value!r}")
            params[name] = int(value)
        if len(params) != 2:
            raise ValueError(f"a spill URL needs both offset and size, got {text!r}")
        return cls(base, params["offset"], params["size"])

    def __str__(self) -> str:
        return f"{self.base}?offset={self.offset}&size={self.size}"
