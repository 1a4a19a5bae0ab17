"""The cluster token on a node's HTTP endpoints (metrics, dashboard).

A browser or a Prometheus scraper cannot run the directory's HMAC proofs, so
HTTP takes a bearer credential: not the cluster token itself but a key
derived from it (:func:`objstore.auth.http_key`, an HMAC of the token under a
label of its own).  Whoever holds it can read what the HTTP endpoints show,
and nothing more: it proves nothing on the directory or the data plane, and
the cluster token cannot be computed back from it.  It comes as
``Authorization: Bearer KEY`` or as the ``objstore_auth`` cookie; a request
with neither gets 401, one with a wrong key 403 (both plain text, no detail).
Paths in ``open_paths`` (e.g. ``/metrics``, for scrapers that cannot send
a key) are served without it.  A bearer key can be replayed by whoever sees
it: serve HTTP only on loopback or behind TLS.  With authentication off
(``--insecure``) everything is open.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Collection

import structlog
from aiohttp import web

from objstore.auth import Credentials, http_key
from objstore.lograte import LogLimiter

__all__ = ["COOKIE", "token_middleware", "check_http"]

log = structlog.get_logger("objstore.node.http")

COOKIE = "objstore_auth"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def check_http(expected: bytes, authorization: str | None, cookie: str | None) -> int | None:
    """None if the request carries the key; else the status to answer (401 or 403)."""
    given: str | None = None
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            given = value.strip()
    if given is None and cookie:
        given = cookie
    if given is None:
        return 401
    if not hmac.compare_digest(given.encode(), expected):
        return 403
    return None


def token_middleware(
    credentials: Credentials, open_paths: Collection[str] = ()
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """An aiohttp middleware refusing requests without the HTTP key."""
    expected = http_key(credentials.token) if credentials.token is not None else None
    opened = frozenset(open_paths)
    refusals = LogLimiter()

    def note(peer: str, status: int) -> None:
        held = refusals.note(peer)
        if held is not None:
            log.warning(
                "http: request refused",
                peer=peer,
                reason="no credentials" if status == 401 else "wrong credentials",
                suppressed=held,
            )

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is None or request.path in opened:
            return await handler(request)
        status = check_http(
            expected, request.headers.get("Authorization"), request.cookies.get(COOKIE)
        )
        if status is None:
            return await handler(request)
        note(request.remote or "?", status)
        if status == 401:
            return web.Response(
                status=401,
                text="401: this node needs its cluster's HTTP key\n",
                headers={"WWW-Authenticate": 'Bearer realm="objstore"'},
            )
        return web.Response(status=403, text="403: wrong credentials\n")

    return middleware
