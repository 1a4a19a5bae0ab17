"""The head node's own link to its directory: the same calls, in-process.

:class:`LocalLink` gives :class:`~objstore.directory.client.DirectoryClient` a
stub and a subscription stream that call the directory's handlers directly
(no encoding, no HTTP/2), with the gRPC statuses a remote node would see.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Self

from grpclib import GRPCError

from objstore.directory.codec import pb
from objstore.directory.server import DirectoryServer, _as_grpc
from objstore.errors import NodeUnavailableError, ObjectStoreError

__all__ = ["LocalLink"]


class LocalLink:
    """The head node's own link to its directory: the same calls, in-process.

    Requests and notifications are passed as message objects (no encoding, no
    HTTP/2): a location report from the head's store costs the directory's
    bookkeeping only.  Errors arrive as the same gRPC statuses a remote node
    sees, so :class:`~objstore.directory.client.DirectoryClient` treats both
    alike; after :meth:`DirectoryServer.stop`, every call is UNAVAILABLE.
    """

    def __init__(self, server: DirectoryServer) -> None:
        assert server.service is not None, "the directory server is not started"
        self.server = server
        self.stub = _LocalStub(server)

    def open_stream(self) -> _LocalStream:
        return _LocalStream(self.server)

    def close(self) -> None:
        return None


def _unavailable() -> GRPCError:
    return _as_grpc(NodeUnavailableError("the directory stopped"))


class _LocalStub:
    """Calls the service's handlers directly, with gRPC's error statuses."""

    def __init__(self, server: DirectoryServer) -> None:
        self._server = server
        assert server.service is not None
        self._service = server.service

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        fn = getattr(self._service, name)
        server = self._server

        async def call(message: Any, *, timeout: float | None = None) -> Any:
            if server.stopped:
                raise _unavailable()
            try:
                async with asyncio.timeout(timeout):
                    return await fn(message)
            except ObjectStoreError as exc:
                raise _as_grpc(exc) from exc

        return call


class _LocalStream:
    """A subscription stream between two tasks of one process (bounded like HTTP/2's window).

    The serving side runs in the server's task set, so stopping the server ends it.
    """

    def __init__(self, server: DirectoryServer) -> None:
        assert server.service is not None
        self._server = server
        self._service = server.service
        self._to_server: asyncio.Queue[Any] = asyncio.Queue()
        self._to_client: asyncio.Queue[pb.Notification] = asyncio.Queue(maxsize=64)
        self._task: asyncio.Task[BaseException | None] | None = None

    async def __aenter__(self) -> Self:
        if self._server.stopped:
            raise _unavailable()
        self._task = self._server.tasks.spawn(self._serve(), name="directory-local-stream")
        return self

    async def _serve(self) -> BaseException | None:
        """Serve the stream; its error is the client's to read, not a failed task's."""
        try:
            await self._service.serve_subscription(self._to_server.get, self._to_client.put)
        except Exception as exc:  # noqa: BLE001 - handed to recv_message
            return exc
        return None

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def send_message(self, message: Any, *, end: bool = False) -> None:
        await self._to_server.put(message)
        if end:
            await self._to_server.put(None)

    async def recv_message(self) -> pb.Notification | None:
        assert self._task is not None
        get = asyncio.ensure_future(self._to_client.get())
        try:
            done, _ = await asyncio.wait({get, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not get.done():
                get.cancel()
        if get in done:
            return get.result()
        if self._task.cancelled():
            raise _unavailable()  # the server stopped
        err = self._task.result()
        if isinstance(err, ObjectStoreError):
            raise _as_grpc(err) from err
        if err is not None:
            raise err
        return None
