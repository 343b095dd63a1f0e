"""The issue's reference ping apps: a minimal aiohttp app that does one redis.asyncio HSET
per POST, and the same app with no store write at all (the HTTP floor). No session, no
validation beyond parsing JSON: what the router's /ping is compared with.

    python -m bench.peers.ping_app --port 9000 --store redis://127.0.0.1:6379/0 --workers 2
    python -m bench.peers.ping_app --port 9001 --store none
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from aiohttp import web


def make_app(store: str) -> web.Application:
    app = web.Application()
    client = None
    if store != "none":
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(store, decode_responses=True)

    async def ping(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        if client is not None:
            await client.hset(f"bench-peer:{body['user']}", "lastSeen", int(time.time() * 1000))
        return web.Response(status=204)

    app.router.add_post("/ping", ping)
    return app


def run(port: int, store: str) -> None:
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    web.run_app(
        make_app(store),
        host="127.0.0.1",
        port=port,
        reuse_port=True,
        print=None,
        access_log=None,
        loop=loop,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--store", default="none", help="a redis:// URL, or none")
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args()
    children = []
    for _ in range(a.workers - 1):
        pid = os.fork()
        if pid == 0:
            run(a.port, a.store)
            os._exit(0)
        children.append(pid)
    run(a.port, a.store)
    for pid in children:
        os.kill(pid, 15)


if __name__ == "__main__":
    main()
