"""Which spill file holds each object's copy, and when a file can go (pure).

The spill manager records each file it wrote with the objects whose copies
in it are live (:meth:`SpillFiles.add_file`), and releases an object's copy
when the object leaves the node (:meth:`SpillFiles.release`); the release of
a file's last live copy says the file can be deleted.  No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["SpillFiles"]


class SpillFiles:
    """Which spill file holds each object's copy, and the live copies per file.

    A file is known from :meth:`add_file` until its last live copy is
    released (:meth:`release`); the driver then deletes it.
    """

    __slots__ = ("_file_of", "_objects")

    def __init__(self) -> None:
        """No files."""
        # oid -> the file holding its live copy.
        self._file_of: dict[bytes, str] = {}
        # file -> its live oids (in the order added).  Invariant: oid in _objects[f]
        # iff _file_of[oid] == f, so each mapped oid counts 1 in exactly its file's
        # live count; a file with no live object is not kept.
        self._objects: dict[str, dict[bytes, None]] = {}

    def add_file(self, file_key: str, oids: Iterable[bytes]) -> bool:
        """File ``file_key`` now holds the live copies of ``oids``.

        Returns whether the file is kept: False when ``oids`` is empty (nothing
        in it is live; delete it).  Raises :class:`ValueError`, changing
        nothing, if the file is known already, or an oid repeats or is in a
        file already.
        """
        if file_key in self._objects:
            raise ValueError(f"spill file {file_key!r} is known already")
        objects: dict[bytes, None] = {}
        for oid in oids:
            if oid in objects:
                raise ValueError(f"object {oid.hex()} twice in spill file {file_key!r}")
            where = self._file_of.get(oid)
            if where is not None:
                raise ValueError(f"object {oid.hex()} is in spill file {where!r} already")
            objects[oid] = None
        if not objects:
            return False
        self._objects[file_key] = objects
        for oid in objects:
            self._file_of[oid] = file_key
        return True

    def file_of(self, oid: bytes) -> str | None:
        """The file holding ``oid``'s live copy, or None."""
        return self._file_of.get(oid)

    def release(self, oid: bytes) -> str | None:
        """``oid``'s copy is no longer needed (it was deleted).

        Returns the file's key when that was its last live copy: the file is
        forgotten and the driver deletes it.  None otherwise, and for an oid
        with no copy.
        """
        file_key = self._file_of.pop(oid, None)
        if file_key is None:
            return None
        objects = self._objects[file_key]
        del objects[oid]
        if objects:
            return None
        del self._objects[file_key]
        return file_key

    def live(self, file_key: str) -> int:
        """Live copies in ``file_key`` (0 for a file not known)."""
        return len(self._objects.get(file_key, ()))

    def objects_in(self, file_key: str) -> tuple[bytes, ...]:
        """The objects whose live copy is in ``file_key``, in the order added."""
        return tuple(self._objects.get(file_key, ()))

    def files(self) -> list[str]:
        """The known files."""
        return list(self._objects)

    def __contains__(self, oid: object) -> bool:
        """Whether ``oid`` has a live copy in a file."""
        return oid in self._file_of

    def __len__(self) -> int:
        """Number of files kept (each with at least one live copy)."""
        return len(self._objects)

    def __repr__(self) -> str:
        return f"<SpillFiles files={len(self._objects)} objects={len(self._file_of)}>"

    def check(self) -> None:
        """Assert the internal invariants (tests call it after every step)."""
        total = 0
        for file_key, objects in self._objects.items():
            assert objects, f"spill file {file_key!r} kept with no live object"
            total += len(objects)
            for oid in objects:
                assert self._file_of[oid] == file_key, (oid, file_key)
        assert total == len(self._file_of), (total, len(self._file_of))
