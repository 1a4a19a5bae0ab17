"""A state store that keeps nothing durable (no ``--state-dir``)."""

from __future__ import annotations

from objstore.directory.persist.base import WriteBatch, _check_open

__all__ = ["MemoryStore"]


# ---------------------------------------------------------------------- memory
class MemoryStore:
    """Keeps nothing durable: ``load`` returns what this instance was given."""

    def __init__(self) -> None:
        self.describe = "memory"
        self.nodes: dict[bytes, bytes] = {}
        self.objects: dict[bytes, bytes] = {}
        self._closed = False

    async def load(self) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
        """Copies of the records applied so far."""
        _check_open(self._closed, self.describe)
        return dict(self.nodes), dict(self.objects)

    async def apply(self, batch: WriteBatch) -> None:
        """Apply ``batch`` (no await inside, so no one sees half of it)."""
        _check_open(self._closed, self.describe)
        for key in batch.node_deletes:
            self.nodes.pop(key, None)
        self.nodes.update(batch.node_puts)
        for key in batch.object_deletes:
            self.objects.pop(key, None)
        self.objects.update(batch.object_puts)

    async def clear(self) -> None:
        """Forget every record."""
        _check_open(self._closed, self.describe)
        self.nodes.clear()
        self.objects.clear()

    async def close(self) -> None:
        """Mark the store closed (the records stay readable as attributes)."""
        self._closed = True


# ---------------------------------------------------------------------- sqlite
