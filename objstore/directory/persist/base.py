"""The seam of the directory's durable state: the store Protocol and its batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from objstore.errors import (
    ObjectStoreError,
)

__all__ = ["SCHEMA_VERSION", "WriteBatch", "StateStore"]

# Version of the stored layout, kept in each store's meta table.  A store that
# holds another version is refused (written by a newer objstore, or not ours).
SCHEMA_VERSION = 1
_SCHEMA_KEY = "schema_version"


# --------------------------------------------------------------------- batches
@dataclass(slots=True)
class WriteBatch:
    """Changes to both tables, applied atomically by :meth:`StateStore.apply`.

    Deletes are applied before puts, so a key that is in both ends up put.
    """

    node_puts: list[tuple[bytes, bytes]] = field(default_factory=list)
    node_deletes: list[bytes] = field(default_factory=list)
    object_puts: list[tuple[bytes, bytes]] = field(default_factory=list)
    object_deletes: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return (
            len(self.node_puts)
            + len(self.node_deletes)
            + len(self.object_puts)
            + len(self.object_deletes)
        )

    @property
    def empty(self) -> bool:
        """True if the batch changes nothing."""
        return not (self.node_puts or self.node_deletes or self.object_puts or self.object_deletes)


class StateStore(Protocol):
    """Where the directory's tables are kept.

    ``load`` is called first, once, when the directory starts; ``apply`` calls
    come one at a time (from :class:`WriteBehind`).
    """

    #: Where the state lives, for logs and status (never holds a password).
    describe: str

    async def load(self) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
        """Every stored record: ``(nodes, objects)``, id -> blob."""
        ...

    async def apply(self, batch: WriteBatch) -> None:
        """Apply ``batch`` atomically: all of it or none of it."""
        ...

    async def clear(self) -> None:
        """Delete every record of both tables."""
        ...

    async def close(self) -> None:
        """Release connections and threads; the store cannot be used afterwards."""
        ...


def _check_open(closed: bool, describe: str) -> None:
    if closed:
        raise ObjectStoreError(f"directory state {describe} is closed")
