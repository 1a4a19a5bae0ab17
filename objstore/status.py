"""The one table between objstore's errors and the status codes on the wire.

Each row names an error class, its code in the local protocol
(``ErrorCode`` in local.proto) and its gRPC status (the directory).  Going
out, an exception takes the row of the first class it is an instance of
(subclasses come before their bases); coming in, a code takes the row marked
as the one that code stands for, so an ``ObjectExistsError`` raised by the
directory is an ``ObjectExistsError`` for the node that asked.
"""

from __future__ import annotations

from typing import NamedTuple

from grpclib.const import Status

from objstore import errors
from objstore._proto.local import local_pb2 as pb

__all__ = [
    "error_to_local",
    "local_to_error",
    "error_to_grpc",
    "grpc_to_error",
]


class _Row(NamedTuple):
    error: type[errors.ObjectStoreError]
    local: int
    grpc: Status
    # Whether a code coming in becomes this class (one row per code says so).
    local_in: bool = True
    grpc_in: bool = True


# Subclasses before their bases.
_TABLE: tuple[_Row, ...] = (
    _Row(
        errors.ObjectStoreFullError,
        pb.ERROR_CODE_STORE_FULL,
        Status.RESOURCE_EXHAUSTED,
        grpc_in=False,
    ),
    _Row(
        errors.OutOfDiskError, pb.ERROR_CODE_OUT_OF_DISK, Status.RESOURCE_EXHAUSTED, grpc_in=False
    ),
    _Row(errors.ObjectFreedError, pb.ERROR_CODE_FREED, Status.NOT_FOUND, grpc_in=False),
    _Row(errors.ObjectNotFoundError, pb.ERROR_CODE_NOT_FOUND, Status.NOT_FOUND),
    _Row(errors.ObjectExistsError, pb.ERROR_CODE_EXISTS, Status.ALREADY_EXISTS),
    _Row(errors.OwnerDiedError, pb.ERROR_CODE_OWNER_DIED, Status.DATA_LOSS, grpc_in=False),
    _Row(
        errors.ObjectReconstructionFailedError,
        pb.ERROR_CODE_RECONSTRUCTION_FAILED,
        Status.DATA_LOSS,
        grpc_in=False,
    ),
    _Row(errors.ObjectLostError, pb.ERROR_CODE_LOST, Status.DATA_LOSS),
    _Row(
        errors.ObjectFetchTimedOutError,
        pb.ERROR_CODE_FETCH_TIMED_OUT,
        Status.DEADLINE_EXCEEDED,
        grpc_in=False,
    ),
    _Row(errors.GetTimeoutError, pb.ERROR_CODE_TIMEOUT, Status.DEADLINE_EXCEEDED, grpc_in=False),
    _Row(errors.ProtocolError, pb.ERROR_CODE_PROTOCOL, Status.INVALID_ARGUMENT, grpc_in=False),
    _Row(
        errors.InvalidRequestError,
        pb.ERROR_CODE_INVALID,
        Status.INVALID_ARGUMENT,
        local_in=False,
        grpc_in=False,
    ),
    _Row(
        errors.NotRegisteredError,
        pb.ERROR_CODE_INVALID,
        Status.FAILED_PRECONDITION,
        local_in=False,
        grpc_in=False,
    ),
    _Row(
        errors.TooManySubscriptionsError,
        pb.ERROR_CODE_INVALID,
        Status.RESOURCE_EXHAUSTED,
        local_in=False,
        grpc_in=False,
    ),
    _Row(errors.NodeUnavailableError, pb.ERROR_CODE_UNAVAILABLE, Status.UNAVAILABLE),
    _Row(errors.AuthenticationError, pb.ERROR_CODE_UNAUTHENTICATED, Status.UNAUTHENTICATED),
)

_LOCAL_IN: dict[int, type[errors.ObjectStoreError]] = {
    r.local: r.error for r in _TABLE if r.local_in
}
_GRPC_IN: dict[Status, type[errors.ObjectStoreError]] = {
    r.grpc: r.error for r in _TABLE if r.grpc_in
}


def _row_of(exc: BaseException) -> _Row | None:
    for row in _TABLE:
        if isinstance(exc, row.error):
            return row
    return None


def error_to_local(exc: BaseException) -> tuple[int, str]:
    """The local protocol's (code, message) for an exception raised serving a request."""
    row = _row_of(exc)
    return (row.local if row is not None else pb.ERROR_CODE_INVALID), str(exc)


def local_to_error(code: int, message: str) -> errors.ObjectStoreError:
    """The exception a client raises for an error reply."""
    return _LOCAL_IN.get(code, errors.ObjectStoreError)(message)


def error_to_grpc(exc: BaseException) -> tuple[Status, str]:
    """The directory's (status, message) for an exception raised serving an RPC.

    Anything not in the table is a bug: INTERNAL, with the exception's repr.
    """
    row = _row_of(exc)
    if row is None:
        return Status.INTERNAL, f"internal error: {exc!r}"
    return row.grpc, str(exc)


def grpc_to_error(status: Status, message: str, what: str) -> errors.ObjectStoreError:
    """The exception a node raises for a directory status (``what``: the request)."""
    if status in (Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED):
        return errors.NodeUnavailableError(f"{what}: the directory is unavailable: {message}")
    cls = _GRPC_IN.get(status)
    if cls is None or cls is errors.NodeUnavailableError:
        return errors.ObjectStoreError(f"{what}: the directory refused: {message}")
    return cls(message)
