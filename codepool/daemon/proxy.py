"""The workspace proxy: a person's requests to their code-server, HTTP and WebSocket,
streamed both ways. The caller (workspace.py) has already checked the session, that the
person may enter this workspace, and that the request comes from the workspace's own
origin.

- On a workspace origin the path goes upstream as it came; in path mode the `/w/<user>`
  prefix is stripped (and put back on redirects). The browser's Host is kept
  (code-server compares it with the Origin of WebSockets) and X-Forwarded-* are set.
- Hop-by-hop headers are dropped; the router's own cookies never reach the workspace.
- What a box answers may not reach beyond its own origin: a Set-Cookie naming one of the
  router's cookies or carrying a Domain attribute (which would reach sibling hosts), and
  the Service-Worker-Allowed and Clear-Site-Data headers are dropped.
- Only HTML documents are buffered, to inject the heartbeat script before </head>; for
  those requests Accept-Encoding is dropped so the HTML comes uncompressed. Everything
  else streams with its compression intact.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any, TypeVar

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest
from aiohttp.tracing import Trace
from multidict import CIMultiDict
from yarl import URL

from codepool.core import sockets
from codepool.core.models import Workspace, WorkspaceState
from codepool.core.pool import CodePool
from codepool.core.tls import connect_args
from codepool.daemon import upstream

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
MAX_WS_MESSAGE = 64 * 1024 * 1024
CACHE_S = 2.0  # how long a workspace's address is trusted without asking the store
_HEAD_CLOSE = re.compile(rb"</head\s*>", re.IGNORECASE)
_HOP_BY_HOP_B = frozenset(h.encode() for h in HOP_BY_HOP)
# What the browser's request may not say to the box, besides: its framing (set anew for
# the body the box gets), and for an HTML document, the encodings it accepts (the HTML
# must arrive readable, to inject the heartbeat).
_DROP = {
    False: frozenset({b"content-length"}),
    True: frozenset({b"content-length", b"accept-encoding"}),
}
# A box may not send these: they reach beyond its own origin (the pages a service worker
# may control; the cookies and storage of the whole site).
_REFUSED_B = frozenset({b"service-worker-allowed", b"clear-site-data"})


MAX_UNIX_SESSIONS = 256
SMALL = 64 * 1024  # an answer this size or less is read whole, then sent in one write
T = TypeVar("T")


def _client_session(connector: aiohttp.BaseConnector) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        auto_decompress=False,  # pass compressed bytes through untouched
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),  # never keep one user's cookies for another
    )


class StaleSocket(aiohttp.ClientConnectionError):
    """A workspace's socket answered by another process than its address names."""


class CheckedUnixConnector(aiohttp.UnixConnector):
    """A local workspace's socket, reached only when the workspace's own process answers
    (sockets.py says why). aiohttp has no public hook between connecting and sending, so
    this extends its one connecting method."""

    def __init__(self, address: sockets.UnixAddress) -> None:
        super().__init__(address.path, limit=0, keepalive_timeout=30)
        self.address = address

    async def _create_connection(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp's signature)
    ) -> ResponseHandler:
        proto = await super()._create_connection(req, traces, timeout)
        transport = proto.transport
        why = "no connection" if transport is None else ""
        if transport is not None:
            why = sockets.peer_refusal(transport.get_extra_info("socket"), self.address)
        if why:
            if transport is not None:
                transport.close()
            raise StaleSocket(why)
        return proto


@dataclass(frozen=True, slots=True)
class Asked:
    """What the proxy takes from a browser's request: its method, its header bytes, who
    sent it (the peer), over what (http or https), to what Host, and whether it asks for
    an HTML document. From aiohttp's request, or from the lane's own parse (lane.py)."""

    method: str
    raw_headers: Sequence[tuple[bytes, bytes]]
    peer: str
    scheme: str
    host: bytes
    html: bool

    @classmethod
    def of(cls, request: web.BaseRequest) -> Asked:
        return cls(
            request.method,
            request.raw_headers,
            request.remote or "",
            request.scheme,
            request.host.encode("utf-8", "surrogateescape"),
            "text/html" in request.headers.get("Accept", ""),
        )


class Stopped(Exception):
    """The user's workspace is not running: the caller shows the 'stopped' page."""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Where the injected heartbeat script comes from and whom it talks to."""

    script: str  # the script's URL
    ping: str  # where it posts pings
    status: str  # where a hidden tab reads how long the workspace has left
    hold: str  # where it asks to keep the workspace running
    resume: str  # where "Resume it" leads when the workspace stopped
    login: str  # where to log in on a 401 ("": reload, which logs in again by itself)
    home: str  # the person's home page
    interval_s: int
    max_age_s: int = 0  # pool.max_age_s: a tab in view reads how long is left when set

    def tag(self, instance_id: str) -> bytes:
        data = {
            "instance-id": instance_id,
            "interval": str(self.interval_s),
            "max-age": str(self.max_age_s),
            "ping": self.ping,
            "status": self.status,
            "hold": self.hold,
            "resume": self.resume,
            "login": self.login,
            "home": self.home,
        }
        attributes = "".join(f' data-{k}="{escape(v)}"' for k, v in data.items())
        return f'<script defer src="{escape(self.script)}"{attributes}></script>'.encode()


def _text_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """A box's header bytes as text: UTF-8 as browsers read it (a file name in
    Content-Disposition), else Latin-1, so that no byte can make the answer fail."""
    out = []
    for name, value in raw:
        try:
            out.append((name.decode("ascii"), value.decode("utf-8")))
        except UnicodeDecodeError:
            out.append((name.decode("latin-1"), value.decode("latin-1")))
    return out


def inject(html: bytes, tag: bytes) -> bytes:
    """Put the tag before the first </head>, or at the start if there is none."""
    match = _HEAD_CLOSE.search(html)
    if match is None:
        return tag + html
    return html[: match.start()] + tag + html[match.start() :]


def box_may_set(set_cookie: str, private: frozenset[str]) -> bool:
    """Whether a box's Set-Cookie may pass: not one of the router's names (in any case),
    and host-only (a Domain attribute would plant it on other people's hosts too)."""
    name, _, attributes = set_cookie.partition(";")
    if name.partition("=")[0].strip().lower() in private:
        return False
    return not any(a.partition("=")[0].strip().lower() == "domain" for a in attributes.split(";"))


def strip_cookies(header: str, private: frozenset[str]) -> str:
    """The Cookie header without the router's own cookies, every copy of each. A split on
    ';' as browsers send it (parsing into Morsels cost a twentieth of each proxied
    request); every other cookie goes upstream byte for byte, whatever it holds."""
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
        heartbeat: Heartbeat,
        private_cookies: frozenset[str],
        *,
        path_mode: bool,
        strip_authorization: bool = False,
        max_html_bytes: int = 2 * 1024 * 1024,
    ) -> None:
        self.pool = pool
        self.heartbeat = heartbeat
        self.private_cookies = private_cookies  # the router's credentials: never upstream
        self._private_lower = frozenset(n.lower() for n in private_cookies)
        self.path_mode = path_mode  # workspaces under /w/<user>/ on the router's origin
        self.strip_authorization = strip_authorization
        self.max_html_bytes = max_html_bytes  # HTML read (and inflated) whole at most
        self._cache: dict[str, tuple[Workspace, float]] = {}
        self._client: aiohttp.ClientSession | None = None
        self._unix: dict[str, aiohttp.ClientSession] = {}  # one per socket address
        self._closing: set[asyncio.Task[None]] = set()
        self._websockets: set[web.WebSocketResponse] = set()  # browsers' open sockets
        self.boxes = upstream.BoxPool()  # kept-alive HTTP connections, per box
        self._connectors: dict[str, Callable[[], Awaitable[upstream.Connection]]] = {}
        self._tags: dict[str, bytes] = {}  # instance id: its heartbeat's script tag

    async def start(self) -> None:
        self._client = _client_session(aiohttp.TCPConnector(limit=0, keepalive_timeout=30))

    async def close_websockets(self) -> None:
        """Close every browser's WebSocket with 1001 (going away): the router is stopping
        or reloading, and VS Code reconnects (to the next app or another router)."""
        await asyncio.gather(
            *(ws.close(code=WSCloseCode.GOING_AWAY, message=b"router restarting")
              for ws in list(self._websockets)),
            return_exceptions=True,
        )  # fmt: skip

    async def close(self) -> None:
        await self.boxes.close()
        if self._client is not None:
            await self._client.close()
        for session in self._unix.values():
            await session.close()
        self._unix.clear()

    @property
    def client(self) -> aiohttp.ClientSession:
        assert self._client is not None, "proxy not started"
        return self._client

    def ws_client(self, address: str) -> tuple[aiohttp.ClientSession, str]:
        """The client session and base URL that reach a workspace's address: a box over
        the network, or a socket of the local backend (sockets.py), through a connector
        that checks who answers."""
        unix = sockets.parse(address)
        if unix is None:
            return self.client, address.rstrip("/")
        session = self._unix.get(address)
        if session is None:
            if len(self._unix) >= MAX_UNIX_SESSIONS:  # old addresses of resumed workspaces
                stale = self._unix.pop(next(iter(self._unix)))
                closing = asyncio.create_task(stale.close())
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)
            session = self._unix[address] = _client_session(CheckedUnixConnector(unix))
        return session, "http://localhost"

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

    async def _open(
        self, user: str, connect: Callable[[aiohttp.ClientSession, str], Awaitable[T]]
    ) -> tuple[Workspace, T]:
        """Connect to user's workspace. A socket answered by another process than the
        address names (a workspace resumed since the address was cached: same path, new
        process) is asked again once with a fresh address; nothing was sent yet."""
        for attempt in (1, 2):
            ws = await self.workspace(user)
            client, base = self.ws_client(ws.address)
            try:
                return ws, await connect(client, base)
            except StaleSocket as exc:
                self.forget(user)
                if attempt == 2:
                    log.warning("proxy %s: %s", user, exc)
            except aiohttp.WSServerHandshakeError:
                raise
            except (aiohttp.ClientError, OSError) as exc:
                self.forget(user)
                log.warning("proxy %s %s: %s", user, base, exc)
                break
        raise web.HTTPBadGateway(text=f"workspace of {user} is not answering")

    def upstream_headers(
        self, asked: Asked, prefix: str, *, drop: frozenset[bytes] = frozenset()
    ) -> list[tuple[bytes, bytes]]:
        """The browser's headers for the box, as the bytes it sent (no decoding and
        encoding again on the way: a tenth of a proxied request went there), less the
        hop-by-hop ones, the router's cookies and credentials, and drop; then
        X-Forwarded-*."""
        headers: list[tuple[bytes, bytes]] = []
        prior = b""
        proto = host = None
        for name, value in asked.raw_headers:
            low = name.lower()
            if low in _HOP_BY_HOP_B or low.startswith(b"x-forwarded-") or low in drop:
                if low == b"x-forwarded-for" and not prior:
                    prior = value
                elif low == b"x-forwarded-proto" and proto is None:
                    proto = value
                elif low == b"x-forwarded-host" and host is None:
                    host = value
                continue
            if low == b"authorization" and self.strip_authorization:
                continue  # the user's JWT is for the router, not for the workspace
            if low == b"cookie":
                text = strip_cookies(value.decode("latin-1"), self.private_cookies)
                if not text:
                    continue
                value = text.encode("latin-1")
            headers.append((name, value))
        peer = asked.peer.encode()
        headers.append((b"X-Forwarded-For", prior + b", " + peer if prior else peer))
        headers.append((b"X-Forwarded-Proto", asked.scheme.encode() if proto is None else proto))
        headers.append((b"X-Forwarded-Host", asked.host if host is None else host))
        if prefix:
            headers.append((b"X-Forwarded-Prefix", prefix.encode()))
        return headers

    def upstream_head(self, asked: Asked, prefix: str, target: bytes) -> bytes:
        """The request line and head the box gets (its framing is added by the caller)."""
        # HTML must arrive readable for injection.
        headers = self.upstream_headers(asked, prefix, drop=_DROP[asked.html])
        line = b"%s %s HTTP/1.1\r\n" % (asked.method.encode(), target)
        return b"".join([line, *(b"%s: %s\r\n" % h for h in headers)])

    def prefix(self, user: str) -> str:
        return f"/w/{user}" if self.path_mode else ""

    def box_headers(
        self, headers: Iterable[tuple[bytes, bytes]], prefix: str
    ) -> list[tuple[bytes, bytes]]:
        """The box's answer's headers that may reach the browser, as the bytes it sent."""
        out = []
        for name, value in headers:
            low = name.lower()
            if low in _HOP_BY_HOP_B or low in _REFUSED_B:
                continue
            if low == b"set-cookie" and not box_may_set(
                value.decode("latin-1"), self._private_lower
            ):
                log.info("proxy: a box's Set-Cookie was dropped (router name or Domain)")
                continue
            if low == b"location" and prefix and value[:1] == b"/" and value[:2] != b"//":
                value = prefix.encode() + value  # keep redirects inside the prefix
            out.append((name, value))
        return out

    async def http(self, request: web.Request, user: str, path: str) -> web.StreamResponse:
        """Proxy one HTTP request; path is the raw (still percent-encoded) rest of the URL."""
        prefix = self.prefix(user)
        asked = Asked.of(request)
        # The path and query go upstream byte for byte as the browser sent them.
        head = self.upstream_head(asked, prefix, path.encode("utf-8", "surrogateescape"))
        body: upstream.Body | None = None
        if request.body_exists:  # its framing is set anew for the box
            length = request.content_length
            if length is None:
                head += b"Transfer-Encoding: chunked\r\n"
            else:
                head += b"Content-Length: %d\r\n" % length
            chunks = request.content.iter_any()

            def body(conn: upstream.Connection) -> Awaitable[None]:
                return upstream.send_body(conn, chunks, chunked=length is None)

        ws, answer = await self.exchange(user, request.method, head + b"\r\n", body)
        try:
            return await self._answer(request, ws, answer, prefix)
        finally:
            answer.release()

    async def exchange(
        self, user: str, method: str, head: bytes, body: upstream.Body | None
    ) -> tuple[Workspace, upstream.Answer]:
        """Send a request to user's workspace. A socket answered by another process than
        the address names (a workspace resumed since the address was cached: same path,
        new process) is asked again once with a fresh address; nothing was sent yet."""
        for attempt in (1, 2):
            ws = await self.workspace(user)
            try:
                return ws, await self.boxes.exchange(
                    ws.address, self._connector(ws.address), method, head, body
                )
            except StaleSocket as exc:
                self.forget(user)
                self.boxes.forget(ws.address)
                if attempt == 2:
                    log.warning("proxy %s: %s", user, exc)
            except (upstream.BadAnswer, OSError, TimeoutError) as exc:
                self.forget(user)
                log.warning("proxy %s %s: %s", user, ws.address, exc or type(exc).__name__)
                break
        raise web.HTTPBadGateway(text=f"workspace of {user} is not answering")

    def _connector(self, address: str) -> Callable[[], Awaitable[upstream.Connection]]:
        """How to open a new connection to a box: over the network (TLS as the backend
        says), or to a local workspace's socket, checking that its own process answers.
        Made once per address: the same for every request to that box."""
        found = self._connectors.get(address)
        if found is not None:
            return found
        unix = sockets.parse(address)
        if unix is None:
            box = upstream.Box.from_url(address, connect_args(self.pool.backend.tls, address[:5]))
            found = functools.partial(upstream.connect_tcp, box)
        else:

            async def connect() -> upstream.Connection:
                conn = await upstream.connect_unix(unix.path)
                transport = conn.transport
                why = "no connection" if transport is None else ""
                if transport is not None:
                    why = sockets.peer_refusal(transport.get_extra_info("socket"), unix)
                if why:
                    conn.close()
                    raise StaleSocket(why)
                return conn

            found = connect
        if len(self._connectors) >= 10_000:  # addresses of boxes long gone
            self._connectors.clear()
        self._connectors[address] = found
        return found

    async def _answer(
        self, request: web.Request, ws: Workspace, answer: upstream.Answer, prefix: str
    ) -> web.StreamResponse:
        """The box's answer, for the browser: headers filtered, the heartbeat in HTML."""
        out_headers = CIMultiDict(_text_headers(self.box_headers(answer.headers, prefix)))
        ctype = out_headers.get("Content-Type", "")
        first = b""
        try:
            if ctype.startswith("text/html") and request.method != "HEAD":
                encoding = out_headers.get("Content-Encoding", "")
                first, html = await self.read_html(encoding, answer)
                if html is not None:
                    out_headers.popall("Content-Encoding", None)
                    out_headers.popall("Content-Length", None)
                    body = self.injected(html, ws.instance_id)
                    return web.Response(status=answer.status, headers=out_headers, body=body)
            length = answer.content_length
            if length is not None and length <= SMALL and request.method != "HEAD" and not first:
                # Small and whole: one write to the browser, headers and body together.
                small = await answer.read()
                return web.Response(status=answer.status, headers=out_headers, body=small)
        except upstream.BadAnswer as exc:  # cut or malformed before anything was sent
            log.warning("proxy %s: %s", ws.user, exc)
            raise web.HTTPBadGateway(text=f"workspace of {ws.user} is not answering") from None
        response = web.StreamResponse(status=answer.status, headers=out_headers)
        if length is not None:
            response.content_length = length
        try:
            await response.prepare(request)
            if first:
                await response.write(first)
            async for chunk in answer.chunks():
                await response.write(chunk)
            await response.write_eof()
        except upstream.BadAnswer as exc:
            # Cut or malformed mid-body, after the head went out: the browser's connection
            # is closed before the body's end is written, so it sees a cut body (never a
            # whole one, and never a second answer on the same connection).
            log.warning("proxy %s: %s", ws.user, exc)
            if request.transport is not None:
                request.transport.abort()
        except ConnectionResetError:
            # The browser went away (a tab closed, a page left): nothing to answer. The
            # box's connection is closed with the rest of its answer unread.
            log.debug("proxy %s: the browser left before the answer's end", ws.user)
        return response

    async def read_html(self, encoding: str, answer: upstream.Answer) -> tuple[bytes, bytes | None]:
        """Read an HTML body: (bytes read, the document). A compressed body is inflated,
        never past max_html_bytes (a box could send a megabyte that inflates to a
        gigabyte). The document is None when it cannot be injected (read or inflated past
        the bound, or an encoding zlib cannot undo); the caller then sends the bytes read
        and streams the rest unchanged, compression and all."""
        limit = self.max_html_bytes
        encoding = encoding.lower()
        if encoding not in ("", "identity", "gzip", "deflate"):
            log.warning("HTML with Content-Encoding %s: heartbeat not injected", encoding)
            return b"", None
        if answer.whole:
            raw = await answer.read()  # here already: no reading chunk by chunk
        else:
            read = bytearray()
            async for chunk in answer.chunks():
                read += chunk
                if len(read) > limit:
                    return bytes(read), None
            raw = bytes(read)
        if len(raw) > limit:
            return raw, None
        if encoding in ("", "identity"):
            return raw, raw
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else 0)
        try:
            html = inflate.decompress(raw, limit + 1)
        except zlib.error:
            return raw, None
        if len(html) > limit or inflate.unconsumed_tail:
            log.warning("HTML inflates past %d bytes: heartbeat not injected", limit)
            return raw, None
        return raw, html

    def injected(self, html: bytes, instance_id: str) -> bytes:
        """The document with the heartbeat's script tag (made once per instance)."""
        tag = self._tags.get(instance_id)
        if tag is None:
            if len(self._tags) >= 10_000:
                self._tags.clear()
            tag = self._tags[instance_id] = self.heartbeat.tag(instance_id)
        return inject(html, tag)

    async def websocket(self, request: web.Request, user: str, path: str) -> web.StreamResponse:
        """Proxy a WebSocket: connect upstream first, then accept the browser's."""
        headers = CIMultiDict(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
            for name, value in self.upstream_headers(
                Asked.of(request), self.prefix(user), drop=frozenset({b"sec-websocket-protocol"})
            )
        )
        protocols = [
            p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p
        ]

        def connect(
            client: aiohttp.ClientSession, base: str
        ) -> Awaitable[aiohttp.ClientWebSocketResponse]:
            url = URL("ws" + base.removeprefix("http") + path, encoded=True)
            return client.ws_connect(
                url,
                headers=headers,
                protocols=protocols,
                max_msg_size=MAX_WS_MESSAGE,
                autoping=True,
                **connect_args(self.pool.backend.tls, url.scheme),
            )

        try:
            _, box = await self._open(user, connect)
        except aiohttp.WSServerHandshakeError as exc:
            raise web.HTTPBadGateway(
                text=f"workspace refused the WebSocket ({exc.status})"
            ) from None
        browser = web.WebSocketResponse(
            protocols=[box.protocol] if box.protocol else (),
            max_msg_size=MAX_WS_MESSAGE,
            autoping=True,
        )
        try:
            await browser.prepare(request)
        except ConnectionError:
            # The browser left while its WebSocket was being set up (a tab that went
            # elsewhere, a logout with VS Code open): nobody to answer; the box's side ends.
            log.debug("proxy %s: the browser left before its WebSocket was open", user)
            await box.close()
            return web.Response(status=499, reason="Client Closed Request")  # as nginx logs it
        self._websockets.add(browser)

        async def pump(src: Any, dst: Any) -> None:
            async for msg in src:
                if msg.type is WSMsgType.TEXT:
                    await dst.send_str(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)
                else:
                    break

        tasks = [
            asyncio.create_task(pump(browser, box)),
            asyncio.create_task(pump(box, browser)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(BaseException):
                    await t
            self._websockets.discard(browser)
            await box.close()
            await browser.close()
        return browser
