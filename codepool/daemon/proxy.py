"""The workspace proxy: `/w/<user>/…` to that user's code-server, HTTP and WebSocket,
streamed both ways (DESIGN §5). The caller (routes.py) has already checked the session
and that the user may enter this workspace.

- The prefix is stripped; the browser's Host is kept (code-server compares it with the
  Origin of WebSockets) and X-Forwarded-* are set.
- Hop-by-hop headers are dropped; the router's own cookies never reach the workspace.
- Only HTML documents are buffered, to inject the heartbeat script before </head>; for
  those requests Accept-Encoding is dropped so the HTML comes uncompressed. Everything
  else streams with its compression intact.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import zlib
from html import escape
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from codepool.core.models import Workspace, WorkspaceState
from codepool.core.pool import CodePool
from codepool.core.tls import connect_args

log = logging.getLogger("codepool.proxy")

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Trailers",
        "Transfer-Encoding",
        "Upgrade",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Extensions",
        "Sec-WebSocket-Accept",
    )
)
MAX_HTML_BYTES = 8 * 1024 * 1024  # bigger "HTML" streams through untouched
MAX_WS_MESSAGE = 64 * 1024 * 1024
CACHE_S = 2.0  # how long a workspace's address is trusted without asking the store
_HEAD_CLOSE = re.compile(rb"</head\s*>", re.IGNORECASE)


class Stopped(Exception):
    """The user's workspace is not running: the caller shows the 'stopped' page."""


def heartbeat_tag(instance_id: str, interval_s: int) -> bytes:
    return (
        f'<script defer src="/assets/heartbeat.js?v=1" data-instance-id="{escape(instance_id)}" '
        f'data-interval="{interval_s}"></script>'
    ).encode()


def inject(html: bytes, tag: bytes) -> bytes:
    """Put the tag before the first </head>, or at the start if there is none."""
    match = _HEAD_CLOSE.search(html)
    if match is None:
        return tag + html
    return html[: match.start()] + tag + html[match.start() :]


def strip_cookies(header: str, private: frozenset[str]) -> str:
    """The Cookie header without the router's own cookies. A split on ';' as browsers send
    it (parsing into Morsels cost a twentieth of each proxied request); every other
    cookie goes upstream byte for byte, whatever it holds."""
    if not any(name in header for name in private):
        return header
    kept = [
        part
        for part in (p.strip() for p in header.split(";"))
        if part and part.partition("=")[0].strip() not in private
    ]
    return "; ".join(kept)


class WorkspaceProxy:
    def __init__(
        self,
        pool: CodePool,
        heartbeat_interval_s: int,
        private_cookies: frozenset[str],
        strip_authorization: bool = False,
    ) -> None:
        self.pool = pool
        self.heartbeat_interval_s = heartbeat_interval_s
        self.private_cookies = private_cookies  # the router's credentials: never upstream
        self.strip_authorization = strip_authorization
        self._cache: dict[str, tuple[Workspace, float]] = {}
        self._client: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._client = aiohttp.ClientSession(
            auto_decompress=False,  # pass compressed bytes through untouched
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            cookie_jar=aiohttp.DummyCookieJar(),  # never keep one user's cookies for another
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    @property
    def client(self) -> aiohttp.ClientSession:
        assert self._client is not None, "proxy not started"
        return self._client

    async def workspace(self, user: str) -> Workspace:
        """The user's running workspace, from a short cache in front of the store."""
        hit = self._cache.get(user)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        ws = await self.pool.store.get_workspace(user)
        if ws is None or ws.state is not WorkspaceState.RUNNING:
            self._cache.pop(user, None)
            raise Stopped(user)
        self._cache[user] = (ws, time.monotonic() + CACHE_S)
        return ws

    def forget(self, user: str) -> None:
        self._cache.pop(user, None)

    def _upstream_headers(self, request: web.Request, prefix: str) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in request.headers.items():
            low = name.lower()
            if low in HOP_BY_HOP or low.startswith("x-forwarded-"):
                continue
            if low == "authorization" and self.strip_authorization:
                continue  # the user's JWT is for the router, not for the workspace
            if low == "cookie":
                value = strip_cookies(value, self.private_cookies)
                if not value:
                    continue
            headers.add(name, value)
        peer = request.remote or ""
        prior = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        headers["X-Forwarded-Proto"] = request.headers.get("X-Forwarded-Proto", request.scheme)
        headers["X-Forwarded-Host"] = request.headers.get("X-Forwarded-Host", request.host)
        headers["X-Forwarded-Prefix"] = prefix
        return headers

    async def http(self, request: web.Request, user: str, path: str) -> web.StreamResponse:
        """Proxy one HTTP request; path is the raw (still percent-encoded) rest of the URL."""
        ws = await self.workspace(user)
        prefix = f"/w/{user}"
        headers = self._upstream_headers(request, prefix)
        wants_html = "text/html" in request.headers.get("Accept", "")
        if wants_html:
            headers.pop("Accept-Encoding", None)  # HTML must arrive readable for injection
        # encoded=True: the path and query go upstream byte for byte as the browser sent them
        url = URL(ws.address.rstrip("/") + path, encoded=True)
        try:
            upstream = await self.client.request(
                request.method,
                url,
                headers=headers,
                data=request.content if request.body_exists else None,
                allow_redirects=False,
                **connect_args(self.pool.backend.tls, url.scheme),
            )
        except (aiohttp.ClientError, OSError) as exc:
            self.forget(user)
            log.warning("proxy %s %s: %s", user, url, exc)
            raise web.HTTPBadGateway(text=f"workspace of {user} is not answering") from None
        async with upstream:
            out_headers = CIMultiDict(
                (k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP
            )
            location = out_headers.get("Location")
            if location and location.startswith("/") and not location.startswith("//"):
                out_headers["Location"] = prefix + location  # keep redirects inside the prefix
            ctype = upstream.headers.get("Content-Type", "")
            first = b""
            if ctype.startswith("text/html") and request.method != "HEAD":
                first, html = await self._read_html(upstream)
                if html is not None:
                    out_headers.popall("Content-Encoding", None)
                    out_headers.popall("Content-Length", None)
                    body = inject(html, heartbeat_tag(ws.instance_id, self.heartbeat_interval_s))
                    return web.Response(status=upstream.status, headers=out_headers, body=body)
            response = web.StreamResponse(status=upstream.status, headers=out_headers)
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            if first:
                await response.write(first)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def _read_html(self, upstream: aiohttp.ClientResponse) -> tuple[bytes, bytes | None]:
        """Read an HTML body: (bytes read, the decoded document). The document is None when
        it cannot be injected (over MAX_HTML_BYTES, or an encoding zlib cannot undo); the
        caller then sends the bytes read and streams the rest unchanged."""
        raw = bytearray()
        async for chunk in upstream.content.iter_any():
            raw += chunk
            if len(raw) > MAX_HTML_BYTES:
                return bytes(raw), None
        encoding = upstream.headers.get("Content-Encoding", "").lower()
        if encoding in ("", "identity"):
            return bytes(raw), bytes(raw)
        if encoding in ("gzip", "deflate"):
            wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
            with contextlib.suppress(zlib.error):
                return bytes(raw), zlib.decompress(bytes(raw), wbits)
        log.warning("HTML with Content-Encoding %s: heartbeat not injected", encoding)
        return bytes(raw), None

    async def websocket(self, request: web.Request, user: str, path: str) -> web.StreamResponse:
        """Proxy a WebSocket: connect upstream first, then accept the browser's."""
        ws = await self.workspace(user)
        headers = self._upstream_headers(request, f"/w/{user}")
        headers.pop("Sec-WebSocket-Protocol", None)
        protocols = [
            p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p
        ]
        url = URL("ws" + ws.address.rstrip("/").removeprefix("http") + path, encoded=True)
        try:
            upstream = await self.client.ws_connect(
                url,
                headers=headers,
                protocols=protocols,
                max_msg_size=MAX_WS_MESSAGE,
                autoping=True,
                **connect_args(self.pool.backend.tls, url.scheme),
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise web.HTTPBadGateway(
                text=f"workspace refused the WebSocket ({exc.status})"
            ) from None
        except (aiohttp.ClientError, OSError):
            self.forget(user)
            raise web.HTTPBadGateway(text=f"workspace of {user} is not answering") from None
        browser = web.WebSocketResponse(
            protocols=[upstream.protocol] if upstream.protocol else (),
            max_msg_size=MAX_WS_MESSAGE,
            autoping=True,
        )
        await browser.prepare(request)

        async def pump(src: Any, dst: Any) -> None:
            async for msg in src:
                if msg.type is WSMsgType.TEXT:
                    await dst.send_str(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)
                else:
                    break

        tasks = [
            asyncio.create_task(pump(browser, upstream)),
            asyncio.create_task(pump(upstream, browser)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(BaseException):
                    await t
            await upstream.close()
            await browser.close()
        return browser
