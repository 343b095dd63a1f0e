"""A small stand-in for code-server, started by the local backend in tests.

It answers /healthz like code-server, lists the files of its folder on /, reads and writes
files under /files/<name> (so tests can prove a resumed workspace has the same disk; a
.html, .js or .txt file is served as such, so a test can put a page of its own in a
workspace), and has what the proxy tests need: a WebSocket echo, a gzip asset, a large
streamed body, an upload counter, a header echo and an absolute redirect. Every request
is noted in <home>/.requests (method and path), so a test can tell whether anything
reached this box.
It also runs shell commands (POST /exec, the command as the body), as code-server's
terminal would: the isolation tests run their attempts through it.
Usage: python standin_workspace.py (--socket PATH | --port N) --home DIR [--delay S]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gzip
import mimetypes
import os
import time
import zlib
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

GZIP_JS = gzip.compress(b"console.log('compressed');\n" * 200, mtime=0)
# What /set-cookies answers: the box's own cookie, and what a hostile box would try.
SET_COOKIES = (
    "theirs=1; Path=/",
    "codepool_session=planted; Path=/",
    "codepool_ws=planted; Path=/",
    "__Host-codepool_ws=planted; Path=/; Secure",
    "CODEPOOL_SESSION=planted",
    "spread=1; Domain=localhost; Path=/",
    "spread2=1; path=/; DOMAIN=.localhost",
)


@functools.cache
def gzip_bomb(mb: int) -> bytes:
    """gzip of mb MiB of "<p>" and zeros: about 1 KB per MiB."""
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"<p>" + b"\0" * (1024 * 1024 - 3)
    out = [squeeze.compress(block) for _ in range(mb)]
    return b"".join(out) + squeeze.flush()


def make_app(home: Path) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "pid": os.getpid()})

    async def index(_: web.Request) -> web.Response:
        names = sorted(p.name for p in home.iterdir())
        body = "".join(f"<p>{n}</p>" for n in names)
        html = f"<html><head><title>stand-in</title></head><body>{body}</body></html>"
        return web.Response(text=html, content_type="text/html")

    async def nohead(_: web.Request) -> web.Response:
        return web.Response(text="<p>no head here</p>", content_type="text/html")

    async def get_file(request: web.Request) -> web.Response:
        f = home / Path(request.match_info["name"]).name
        if not f.is_file():
            raise web.HTTPNotFound(text="no such file")
        kind = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
        return web.Response(body=f.read_bytes(), headers={"Content-Type": kind})

    async def put_file(request: web.Request) -> web.Response:
        (home / Path(request.match_info["name"]).name).write_bytes(await request.read())
        return web.Response(status=201, text="written")

    async def echo_headers(request: web.Request) -> web.Response:
        return web.json_response({"headers": dict(request.headers), "path_qs": request.raw_path})

    async def gzip_js(_: web.Request) -> web.Response:
        return web.Response(
            body=GZIP_JS,
            headers={"Content-Encoding": "gzip", "Content-Type": "text/javascript"},
        )

    async def big(request: web.Request) -> web.StreamResponse:
        size = int(request.query.get("mb", "5")) * 1024 * 1024
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = size
        await response.prepare(request)
        chunk = b"x" * 65536
        for _ in range(size // len(chunk)):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def upload(request: web.Request) -> web.Response:
        n = 0
        async for chunk in request.content.iter_any():
            n += len(chunk)
        return web.json_response({"received": n})

    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPFound("/files/target.txt")

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        return web.Response(text=str(time.time()))

    async def ws_echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("echo",))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    @web.middleware
    async def note(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path != "/healthz":  # readiness probes are the router's own
            with (home / ".requests").open("a") as log:
                log.write(f"{request.method} {request.raw_path}\n")
        response: web.StreamResponse = await handler(request)
        return response

    async def run(request: web.Request) -> web.Response:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", await request.text(), cwd=home,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        body = {"code": proc.returncode, "out": out.decode(errors="replace")}
        return web.json_response({**body, "err": err.decode(errors="replace")})

    async def bomb(request: web.Request) -> web.Response:
        """An "HTML page" of a few hundred KB that inflates to many MB (a hostile box)."""
        mb = min(int(request.query.get("mb", "1024")), 4096)
        return web.Response(
            body=gzip_bomb(mb),
            headers={"Content-Type": "text/html", "Content-Encoding": "gzip"},
        )

    async def set_cookies(_: web.Request) -> web.Response:
        response = web.Response(text="cookies")
        for header in SET_COOKIES:
            response.headers.add("Set-Cookie", header)
        response.headers["Service-Worker-Allowed"] = "/"
        response.headers["Clear-Site-Data"] = '"cookies"'
        return response

    app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[note])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/", index)
    app.router.add_get("/nohead", nohead)
    app.router.add_get("/files/{name}", get_file)
    app.router.add_put("/files/{name}", put_file)
    app.router.add_get("/echo-headers", echo_headers)
    app.router.add_get("/gzip.js", gzip_js)
    app.router.add_get("/big", big)
    app.router.add_post("/upload", upload)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/slow", slow)
    app.router.add_get("/ws", ws_echo)
    app.router.add_get("/set-cookies", set_cookies)
    app.router.add_post("/exec", run)
    app.router.add_get("/bomb", bomb)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", help="listen on this Unix socket (as code-server --socket)")
    where.add_argument("--port", type=int)
    parser.add_argument("--home", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before listening")
    args = parser.parse_args()
    time.sleep(args.delay)
    app = make_app(Path(args.home))
    if args.socket:
        web.run_app(app, path=args.socket, print=None)
    else:
        web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
