"""An aiohttp service that keeps one objstore client for its whole life.

    pip install aiohttp
    python -m objstore.node --head --memory 1GiB &
    python examples/web_backend.py          # serves http://127.0.0.1:8080

    curl -X POST --data-binary @somefile http://127.0.0.1:8080/blobs   -> {"ref": "..."}
    curl http://127.0.0.1:8080/blobs/<ref>                              -> the bytes
    curl -X DELETE http://127.0.0.1:8080/blobs/<ref>                    -> freed

Requests never block the event loop: large copies run in the client's threads
and reads are zero-copy views of shared memory.

Objects live while a ref to them does (docs/lifecycle.md): a ref's hex in a
response is only text, so the service keeps the refs of the blobs it handed
out until they are deleted.  A handler that puts a value and drops its ref
leaves nothing behind.
"""

from __future__ import annotations

import os

from aiohttp import web

import objstore


async def start(app: web.Application) -> None:
    app["store"] = await objstore.connect()
    app["blobs"] = {}  # hex -> ObjectRef: what keeps the uploaded blobs alive


async def stop(app: web.Application) -> None:
    await app["store"].close()


async def put_blob(request: web.Request) -> web.Response:
    data = await request.read()
    ref = await request.app["store"].put(data)
    request.app["blobs"][ref.hex()] = ref
    return web.json_response({"ref": ref.hex(), "size": len(data)})


async def delete_blob(request: web.Request) -> web.Response:
    ref = request.app["blobs"].pop(request.match_info["ref"], None)
    if ref is None:
        raise web.HTTPNotFound(text="no such blob")
    del ref  # the last ref: the object is freed
    return web.json_response({"deleted": True})


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
    app.router.add_delete("/blobs/{ref}", delete_blob)
    web.run_app(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8080")))


if __name__ == "__main__":
    main()
