"""An aiohttp service that keeps one objstore client for its whole life.

    pip install aiohttp
    python -m objstore.node --head --memory 1GiB &
    python examples/web_backend.py          # serves http://127.0.0.1:8080

    curl -X POST --data-binary @somefile http://127.0.0.1:8080/blobs   -> {"ref": "..."}
    curl http://127.0.0.1:8080/blobs/<ref>                              -> the bytes

Requests never block the event loop: large copies run in the client's threads
and reads are zero-copy views of shared memory.
"""

from __future__ import annotations

import os

from aiohttp import web

import objstore


async def start(app: web.Application) -> None:
    app["store"] = await objstore.connect()


async def stop(app: web.Application) -> None:
    await app["store"].close()


async def put_blob(request: web.Request) -> web.Response:
    data = await request.read()
    ref = await request.app["store"].put(data)
    return web.json_response({"ref": ref.hex(), "size": len(data)})


async def get_blob(request: web.Request) -> web.Response:
    try:
        ref = objstore.ObjectRef.from_hex(request.match_info["ref"])
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from exc
    try:
        view = await request.app["store"].get(ref, timeout=1.0)
    except (objstore.GetTimeoutError, objstore.ObjectNotFoundError) as exc:
        raise web.HTTPNotFound(text=str(exc)) from exc
    return web.Response(body=bytes(view), content_type="application/octet-stream")


def main() -> None:
    app = web.Application(client_max_size=1 << 30)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_post("/blobs", put_blob)
    app.router.add_get("/blobs/{ref}", get_blob)
    web.run_app(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8080")))


if __name__ == "__main__":
    main()
