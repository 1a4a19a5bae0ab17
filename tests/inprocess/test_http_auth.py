"""The cluster's HTTP key on a real aiohttp server (objstore/node/http_auth.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from objstore.auth import ChannelProver, Credentials, http_key
from objstore.node.http_auth import COOKIE, check_http, token_middleware

TOKEN = b"k" * 64


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="secret stats")


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    app = web.Application(middlewares=[token_middleware(Credentials(TOKEN), ["/metrics"])])
    app.router.add_get("/", _hello)
    app.router.add_get("/metrics", _hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _get(url: str, **kw: object) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url, **kw) as r:  # type: ignore[arg-type]
        return r.status, await r.text()


async def test_the_key_opens_and_nothing_else_does(base_url: str) -> None:
    key = http_key(TOKEN).decode()
    assert await _get(base_url + "/", headers={"Authorization": f"Bearer {key}"}) == (
        200,
        "secret stats",
    )
    assert (await _get(base_url + "/", cookies={COOKIE: key}))[0] == 200
    status, body = await _get(base_url + "/")
    assert status == 401 and "secret" not in body
    wrong = http_key(b"z" * 64).decode()
    status, body = await _get(base_url + "/", headers={"Authorization": f"Bearer {wrong}"})
    assert status == 403 and "secret" not in body
    # The cluster token itself, or a directory proof seen on the wire, is not the key.
    for other in (TOKEN.decode(), ChannelProver(TOKEN).proof("/")):
        assert (await _get(base_url + "/", headers={"Authorization": f"Bearer {other}"}))[0] == 403
    assert (await _get(base_url + "/", cookies={COOKIE: wrong}))[0] == 403


async def test_open_paths_need_no_key(base_url: str) -> None:
    assert (await _get(base_url + "/metrics"))[0] == 200


def test_check_http_reads_bearer_then_cookie() -> None:
    key = http_key(TOKEN)
    assert check_http(key, None, None) == 401
    assert check_http(key, "Basic abc", None) == 401
    assert check_http(key, "Bearer ", None) == 401
    assert check_http(key, f"bearer {key.decode()}", None) is None
    assert check_http(key, None, key.decode()) is None
    assert check_http(key, "Bearer nope", key.decode()) == 403
    assert TOKEN not in key


async def test_insecure_serves_everyone() -> None:
    app = web.Application(middlewares=[token_middleware(Credentials.insecure())])
    app.router.add_get("/", _hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        assert (await _get(f"http://127.0.0.1:{runner.addresses[0][1]}/"))[0] == 200
    finally:
        await runner.cleanup()
