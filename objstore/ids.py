"""Object and node identifiers.

An :class:`ObjectID` is 20 random bytes, made by the client that puts the
object, so a put needs no round trip to learn its id.  A :class:`NodeID` is 16
random bytes chosen when a node starts.
"""

from __future__ import annotations

import os

OBJECT_ID_SIZE = 20
NODE_ID_SIZE = 16


def new_object_id() -> bytes:
    """Return a fresh random object id."""
    return os.urandom(OBJECT_ID_SIZE)


def new_node_id() -> bytes:
    """Return a fresh random node id."""
    return os.urandom(NODE_ID_SIZE)


def object_id_from_hex(text: str) -> bytes:
    """Parse the hex form of an object id, raising ``ValueError`` on anything else."""
    if not isinstance(text, str):
        raise TypeError(f"an object id in hex is a str, not {type(text).__name__}")
    if len(text) != OBJECT_ID_SIZE * 2:
        raise ValueError(
            f"an object id in hex has {OBJECT_ID_SIZE * 2} characters, got {len(text)}: {text!r}"
        )
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise ValueError(f"not a hex object id: {text!r}") from exc
