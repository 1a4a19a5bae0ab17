"""Every error a user of objstore can catch.

All of them derive from :class:`ObjectStoreError`; where a builtin helps a
caller (``TimeoutError``, ``ValueError``) it is mixed in.  Foreign errors
(``OSError``, protobuf decode errors, grpclib errors) are translated at the
boundary with ``raise X(...) from exc``.
"""

from __future__ import annotations

__all__ = [
    "ObjectStoreError",
    "ObjectStoreFullError",
    "OutOfDiskError",
    "ObjectNotFoundError",
    "ObjectExistsError",
    "ObjectLostError",
    "GetTimeoutError",
    "NodeUnavailableError",
    "ProtocolError",
    "ConfigError",
    "SerializationError",
    "InvalidRequestError",
    "NotRegisteredError",
    "TooManySubscriptionsError",
    "AuthenticationError",
    "ObjectFreedError",
    "OwnerDiedError",
    "ObjectReconstructionFailedError",
    "ObjectFetchTimedOutError",
]


class ObjectStoreError(Exception):
    """Root of every objstore error."""


class ObjectStoreFullError(ObjectStoreError, MemoryError):
    """No room for an object: not in the arena after eviction, nor in the fallback."""


class OutOfDiskError(ObjectStoreError, OSError):
    """The disk that backs fallback allocations or spill files is full."""


class ObjectNotFoundError(ObjectStoreError, KeyError):
    """No object with this id or name (never created, deleted, or its owner left)."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message plain.
        return str(self.args[0]) if self.args else ""


class ObjectExistsError(ObjectStoreError, ValueError):
    """An object with this name (or id) exists already."""


class ObjectLostError(ObjectStoreError):
    """Every copy of the object is gone and it cannot be restored."""


class GetTimeoutError(ObjectStoreError, TimeoutError):
    """A get or wait did not complete within its timeout."""


# -- Object lifetime (docs/lifecycle.md): each derives from the error old code caught.


class ObjectFreedError(ObjectNotFoundError):
    """The object was freed: no reference to it was left anywhere, or it was deleted."""


class OwnerDiedError(ObjectLostError):
    """Every copy of the object is gone, and the process that put it (which could
    have recreated it) is gone too."""


class ObjectReconstructionFailedError(ObjectLostError):
    """Every copy of the object is gone and recreating it failed (or was tried too often)."""


class ObjectFetchTimedOutError(GetTimeoutError):
    """Pulling the object from another node made no progress for ``transfer.fetch_timeout_s``."""


class NodeUnavailableError(ObjectStoreError, ConnectionError):
    """The node cannot be reached, or the connection to it was lost."""


class ProtocolError(ObjectStoreError):
    """A peer sent a frame that does not follow the protocol."""


class ConfigError(ObjectStoreError, ValueError):
    """A setting has a bad value; the message names the setting."""


class SerializationError(ObjectStoreError, TypeError):
    """A value cannot be serialized (or a stored payload cannot be read back)."""


# -- Errors of the cluster's own protocols (a node or a tool broke the rules).


class InvalidRequestError(ObjectStoreError, ValueError):
    """A request that breaks a protocol's rules (bad ids, sizes, lengths)."""


class NotRegisteredError(ObjectStoreError):
    """The node is not registered with the directory (unknown, declared dead, or another session)."""


class TooManySubscriptionsError(ObjectStoreError):
    """A stream asked for more subscriptions than the directory allows one stream."""


class AuthenticationError(ObjectStoreError, PermissionError):
    """A peer, a node, a tool or a local client could not prove it may connect:
    a missing or wrong cluster token, an untrusted certificate, or a uid the
    node's socket does not admit."""
