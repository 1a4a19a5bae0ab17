"""``ObjectRef``: a small, hashable, picklable reference to an object in the store."""

from __future__ import annotations

import contextvars
from typing import Any

from objstore.errors import ObjectStoreError
from objstore.ids import object_id_from_hex

__all__ = ["ObjectRef", "current_client"]

# The client of the enclosing `async with objstore.connect()` block, for `await ref`.
current_client: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "objstore_client", default=None
)


class ObjectRef:
    """A reference to an object in the store: small, hashable, picklable.

    ``ref.hex()`` and ``ObjectRef.from_hex(s)`` round-trip it.  ``await ref``
    gets the value through the client of the enclosing ``async with
    objstore.connect()`` block.
    """

    __slots__ = ("_id", "__weakref__")

    def __init__(self, object_id: bytes) -> None:
        if not isinstance(object_id, bytes) or len(object_id) != 20:
            raise ValueError("an ObjectRef wraps a 20-byte object id")
        self._id = object_id

    @property
    def binary(self) -> bytes:
        """The 20-byte id."""
        return self._id

    def hex(self) -> str:
        """The id as 40 hex characters."""
        return self._id.hex()

    @classmethod
    def from_hex(cls, text: str) -> ObjectRef:
        """Parse :meth:`hex` output; ``ValueError`` for anything else."""
        return cls(object_id_from_hex(text))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return (ObjectRef, (self._id,))

    def __await__(self) -> Any:
        client = current_client.get()
        if client is None:
            raise ObjectStoreError(
                "`await ref` needs an enclosing `async with objstore.connect()`; "
                "use `await client.get(ref)` otherwise"
            )
        return client.get(self).__await__()
