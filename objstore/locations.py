"""Where an object is in the cluster: the directory's location row and its states.

These are the directory's answers as every part of a node reads them (the
object service, the transfer's pull policy, the command line), so they live
in the core rather than in :mod:`objstore.directory`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["LocationState", "ObjectRow", "Usage"]


class LocationState(enum.IntEnum):
    """An object's state in the directory (the numbers of ``ObjectState`` in directory.proto)."""

    #: The directory has never heard of it (or forgot it).
    UNKNOWN = 0
    #: A name was reserved for an object being created.
    PENDING = 1
    #: At least one live node holds a copy (or a spill copy survives).
    PRESENT = 2
    #: Every copy was on nodes that died and no spill copy survives.
    LOST = 3
    #: Deleted a moment ago (remembered for a while).
    DELETED = 4


@dataclass(frozen=True, slots=True)
class ObjectRow:
    """One object's state as lookups and notifications carry it."""

    object_id: bytes
    state: int
    size: int = 0
    primary: bytes | None = None
    nodes: tuple[bytes, ...] = ()
    name: str = ""
    spilled_url: str = ""
    spilled_node: bytes | None = None
    #: Nodes whose processes hold refs to it, other than its primary node (borrowers).
    borrowers: tuple[bytes, ...] = ()
    #: Put with ``replicas=N``: N (0 for an object without replicas).
    replicas: int = 0
    #: Live nodes holding a copy kept for the replica count (the primary's included).
    replica_nodes: tuple[bytes, ...] = ()
    #: Nodes asked to make a copy that have not reported one yet.
    replicas_asked: int = 0
    #: Its owner can make it again (put with ``recreate=fn``): when it is LOST,
    #: gets wait ``lifecycle.recreate_wait_s`` for the recreation.
    recreatable: bool = False


@dataclass(slots=True)
class Usage:
    """What a node's heartbeat says about it."""

    memory_used: int = 0
    memory_total: int = 0
    pinned_bytes: int = 0
    objects: int = 0
    spilled_bytes: int = 0
    fallback_used: int = 0
    clients: int = 0
