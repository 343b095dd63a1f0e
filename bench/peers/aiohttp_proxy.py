"""The issue's minimal reverse proxy: about thirty lines of aiohttp (server and client),
streaming every request to one upstream with kept-alive connections, no checks at all.
What codepool's own proxy is compared with ("minimal" in bench/proxy.py).

    python -m bench.peers.aiohttp_proxy --port 9002 --upstream http://127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
from aiohttp import web

HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer"}


def make_app(upstream: str) -> web.Application:
    app = web.Application()

    async def start(app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=0)
        app["client"] = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def stop(app: web.Application) -> None:
        await app["client"].close()

    async def proxy(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        body = request.content if request.body_exists else None
        async with app["client"].request(
            request.method, upstream + request.path_qs, headers=headers, data=body
        ) as up:
            out = {k: v for k, v in up.headers.items() if k.lower() not in HOP}
            response = web.StreamResponse(status=up.status, headers=out)
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    a = ap.parse_args()
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    web.run_app(
        make_app(a.upstream.rstrip("/")),
        host="127.0.0.1",
        port=a.port,
        print=None,
        access_log=None,
        loop=loop,
    )


if __name__ == "__main__":
    main()
