"""The lane: the router's own HTTP/1.1 server in front of aiohttp's, carrying the requests
that make up almost all of a workspace's traffic (its assets, its API calls) straight
to the box, and handing every other request to aiohttp, one at a time, on the same
connection.

Why: aiohttp's server costs about two thirds of a proxied 2 KB asset (a request object,
routing, a response object and its writer, per request), several times what carrying
the bytes costs (docs/performance.md). The lane parses each request once with llhttp
(httptools, the parser aiohttp's own C parser is built on, strict: no duplicate
Content-Length, no Content-Length with Transfer-Encoding, no obs-fold, no bare LF), and
serves it itself only when all of this holds, else aiohttp gets it:
  - GET or HEAD over HTTP/1.1, with no body and no Upgrade;
  - its Host is a workspace origin (router.origin_mode = "host"), its path is the box's
    (not /_codepool/...), and it does not ask for an HTML document (a page load: the
    router answers those, logins and refusals included);
  - it comes from that origin (Origin, Sec-Fetch-Site), with that host's session, whose
    person may enter the workspace, and the workspace runs.
These are the checks workspace.py makes, with the same functions; the request goes to
the box with the same head (proxy.py's upstream_head), and the answer comes back with
the same filtering and the heartbeat injected into HTML (proxy.py).

A request for aiohttp is written out again from what llhttp parsed (its framing made
anew: the exact Content-Length, or chunked) to the connection's handler of aiohttp's
own, over a relay transport: its answer goes to the browser as it is written, and once
the answer is whole (the relay reads its framing) the connection goes on with the next
request. The handler is kept for the connection's next request for aiohttp, and made
again only after aiohttp closes its side. A WebSocket (101) stays with its handler for
good. Answers go out in the order the requests came.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from http import HTTPStatus
from typing import Any, cast

import httptools
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from codepool.core.errors import CodepoolError
from codepool.daemon import upstream
from codepool.daemon.access import note
from codepool.daemon.context import ROUTER, Router
from codepool.daemon.http import client_of, cookie_values_in, same_origin_of
from codepool.daemon.proxy import SMALL, Asked, Stopped
from codepool.daemon.sessions import Session
from codepool.daemon.workspace import MAX_PING_BYTES, PING, may_enter, ping_answer

log = logging.getLogger("codepool.router")

MAX_LINE = 8190  # bytes of a request's target, as aiohttp allows
MAX_FIELD = 8190  # bytes of one header's value
MAX_HEAD = 64 * 1024  # bytes of all of a request's headers
MAX_HEADERS = 128
MAX_BUFFERED = 1024 * 1024  # bytes of requests read ahead of their answers: then pause
IDLE_S = 75.0  # a connection with no request under way is closed after this (aiohttp's)
ROUTE = "/{tail:.*}"
PING_B = PING.encode()  # the route template of workspace traffic in metrics and the log
# What a request that cannot be read is told.
UNREAD = "The request is not HTTP/1.1 as this router reads it (RFC 9112, strictly)."
METHOD = "The request's method is not one HTTP defines."
LONG_TARGET = f"The request's target is longer than {MAX_LINE} bytes."
BIG_HEAD = (
    f"The request's headers are over the limits: {MAX_FIELD} bytes each, {MAX_HEADERS} "
    f"headers, {MAX_HEAD // 1024} KiB in all."
)
_SKIP_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_NO_BODY = frozenset({204, 304})


class Message:
    """One request as llhttp read it: its head, and its body as it arrives."""

    __slots__ = (
        "body",
        "chunked",
        "complete",
        "error",
        "first",
        "has_body",
        "head_bytes",
        "headers",
        "keep_alive",
        "method",
        "refusal",
        "sink",
        "target",
        "upgrade",
        "version",
        "waiter",
    )  # fmt: skip

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.first: dict[bytes, bytes] = {}  # lower-case name: its first value
        self.keep_alive = True
        self.upgrade = False
        self.chunked = False
        self.has_body = False
        self.body: collections.deque[bytes] = collections.deque()  # framed for aiohttp
        self.complete = False
        self.sink: Any = None  # where body bytes go once the request is being answered
        self.error = 0  # a status to refuse it with (malformed, too large)
        self.refusal = ""  # and what to say
        self.waiter: asyncio.Future[None] | None = None  # for the lane reading its body
        self.head_bytes = 0

    def header(self, name: bytes) -> bytes | None:
        """The first value under name (as aiohttp's request.headers.get gives it)."""
        return self.first.get(name)

    def head_for_aiohttp(self) -> bytes:
        """The request written out again from what llhttp read: the same line and headers,
        its framing made anew (chunked bodies are chunked again as they arrive)."""
        lines = [b"%s %s HTTP/%s\r\n" % (self.method, self.target, self.version.encode())]
        lines += [b"%s: %s\r\n" % h for h in self.headers if h[0].lower() != b"transfer-encoding"]
        if self.chunked:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)


class Relay(asyncio.Transport):
    """The transport of the connection's aiohttp handler: what it writes goes to the
    browser, its framing read on the way (llhttp) to know when an answer is whole."""

    def __init__(self, conn: LaneConnection, handler: RequestHandler) -> None:
        super().__init__()
        self.conn, self.handler = conn, handler
        self.closed = False
        self.upgraded = False  # 101: the connection is the handler's for good
        self.begin(head_only=False)

    def begin(self, head_only: bool) -> None:
        """Before each request the handler is given."""
        self.head_only = head_only
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.whole = False  # the final answer is written whole
        self.keep_alive = False
        # Done with the request: its answer is whole, or the handler closed its side, or
        # it took the connection (101).
        self.settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # what aiohttp writes ---------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed:
            return
        self.conn.write(data)
        if self.whole or self.upgraded:
            return
        try:
            self.parser.feed_data(bytes(data))
        except httptools.HttpParserUpgrade:
            self.upgraded = True
            self._settle()
        except httptools.HttpParserError:  # never from aiohttp; if it were, the end
            self.keep_alive = False
            self.abort()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            return  # 100 Continue: the answer follows
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        if self.head_only:
            self._whole()

    def on_message_complete(self) -> None:
        if self.status:
            self._whole()

    def _whole(self) -> None:
        self.whole = True
        self._settle()

    # the rest of a transport ----------------------------------------------------------

    def _settle(self) -> None:
        if not self.settled.done():
            self.settled.set_result(None)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.upgraded:  # the WebSocket's end is the connection's
            self.conn.transport.close()
        if self.settled.done():  # between requests (its keep-alive ran out): let it go
            self.conn.drop_handler(self)
        self._settle()

    def abort(self) -> None:
        self.keep_alive = False
        self.close()

    def is_closing(self) -> bool:
        return self.closed or self.conn.transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.conn.transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self.conn.pause("aiohttp")

    def resume_reading(self) -> None:
        self.conn.resume("aiohttp")

    def is_reading(self) -> bool:
        return self.conn.transport.is_reading()

    def get_write_buffer_size(self) -> int:
        return self.conn.transport.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.conn.transport.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        return False


class LaneConnection(asyncio.Protocol):
    """One browser connection: requests parsed as they come, answered in order."""

    def __init__(self, lane: Lane) -> None:
        self.lane = lane
        self.transport: asyncio.Transport = cast(asyncio.Transport, None)
        self.parser = httptools.HttpRequestParser(self)
        self.queue: collections.deque[Message] = collections.deque()
        self.parsing: Message | None = None
        self.task: asyncio.Task[None] | None = None
        self.relay: Relay | None = None  # the transport of aiohttp's handler, if one
        self.upgraded: bytearray | None = None  # bytes after an Upgrade request
        self.handed = False  # a WebSocket: every byte is its handler's
        self.buffered = 0
        self.pausers: set[str] = set()
        self.drained: asyncio.Future[None] | None = None
        self.closing = False
        self.last = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None
        self.peer = ""  # the browser's address (or a load balancer's)
        self.scheme = "http"

    @property
    def handler(self) -> RequestHandler | None:
        """aiohttp's handler for the requests the lane hands on (made at the first)."""
        return None if self.relay is None else self.relay.handler

    # asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        # Asked once: each is a system call with uvloop.
        peer = self.transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.scheme = "https" if self.transport.get_extra_info("sslcontext") else "http"
        self.lane.connections.add(self)
        self._arm()

    def data_received(self, data: bytes) -> None:
        self.last = time.monotonic()
        if self.handed:
            assert self.handler is not None
            self.handler.data_received(data)
            return
        if self.upgraded is not None:  # held until its request is answered
            self.upgraded += data
            self.count(len(data))
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgraded = bytearray(data[exc.args[0] :])
        except httptools.HttpParserInvalidMethodError:
            self._refuse(400, METHOD)
        except httptools.HttpParserError as exc:
            # A limit of ours raised from a callback comes back as the error's context.
            refused = exc.__context__
            self._refuse(*(refused.args if isinstance(refused, _Refused) else (400, UNREAD)))

    def eof_received(self) -> bool | None:
        if self.handler is not None:
            self.handler.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.lane.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        if self.relay is not None:
            relay, self.relay = self.relay, None
            relay.handler.connection_lost(exc)
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        if self.task is not None:
            self.task.cancel()

    def pause_writing(self) -> None:
        self.drained = asyncio.get_running_loop().create_future()
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None
        if self.handler is not None:
            self.handler.resume_writing()

    # llhttp's callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.parsing = Message()

    def on_url(self, url: bytes) -> None:
        msg = self._msg()
        msg.target += url
        if len(msg.target) > MAX_LINE:
            raise _Refused(414, LONG_TARGET)

    def on_header(self, name: bytes, value: bytes) -> None:
        msg = self._msg()
        msg.head_bytes += len(name) + len(value) + 4
        if len(value) > MAX_FIELD or msg.head_bytes > MAX_HEAD or len(msg.headers) >= MAX_HEADERS:
            raise _Refused(431, BIG_HEAD)
        msg.headers.append((name, value))
        msg.first.setdefault(name.lower(), value)

    def on_headers_complete(self) -> None:
        msg, parser = self._msg(), self.parser
        msg.method = parser.get_method()
        msg.version = parser.get_http_version()
        msg.keep_alive = parser.should_keep_alive()
        msg.upgrade = parser.should_upgrade()
        msg.chunked = b"transfer-encoding" in msg.first
        length = msg.header(b"content-length")
        msg.has_body = msg.chunked or (length is not None and length.strip(b" \t0") != b"")
        self._queue(msg)

    def on_body(self, body: bytes) -> None:
        msg = self._msg()
        self._feed(msg, b"%x\r\n%b\r\n" % (len(body), body) if msg.chunked else body)

    def on_message_complete(self) -> None:
        msg = self._msg()
        if msg.chunked:
            self._feed(msg, b"0\r\n\r\n")
        msg.complete = True
        self.parsing = None
        if msg.waiter is not None and not msg.waiter.done():
            msg.waiter.set_result(None)

    def _msg(self) -> Message:
        if self.parsing is None:  # llhttp calls on_message_begin first; never otherwise
            raise _Refused(400, UNREAD)
        return self.parsing

    # the queue of requests ---------------------------------------------------------------

    def _queue(self, msg: Message) -> None:
        self.queue.append(msg)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._answer_all())

    def _feed(self, msg: Message, data: bytes) -> None:
        if msg.sink is not None:
            msg.sink(data)
        else:
            msg.body.append(data)
            self.count(len(data))

    def count(self, n: int) -> None:
        self.buffered += n
        if self.buffered > MAX_BUFFERED:
            self.pause("ahead")
        elif n < 0 and self.buffered <= MAX_BUFFERED // 2:
            self.resume("ahead")

    def _refuse(self, status: int, text: str) -> None:
        """A request that cannot be read: refused after the ones before it are answered,
        and nothing more is read from this connection."""
        msg = self.parsing or Message()
        msg.error, msg.refusal, msg.keep_alive = status, text, False
        self.parsing = None
        self.pause("refused")
        self._queue(msg)

    async def _answer_all(self) -> None:
        try:
            while self.queue and not self.transport.is_closing():
                msg = self.queue[0]
                if msg.error:
                    self._write_refusal(msg.error, msg.refusal)
                    break
                if not await self.lane.carry(self, msg):
                    await self._to_aiohttp(msg)
                    if self.handed:
                        return
                self.queue.popleft()
                if not self.keeps(msg):
                    break
            else:
                self.task = None
                self._arm()
                return
            self.transport.close()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("lane: unexpected failure; the connection is closed")
            self.transport.abort()
        finally:
            if self.task is asyncio.current_task():
                self.task = None

    async def _to_aiohttp(self, msg: Message) -> None:
        """Answer one request by the connection's handler of aiohttp's (made at its first
        such request, and again after aiohttp lets one go)."""
        relay = self.relay
        if relay is None:
            relay = self.relay = Relay(self, self.lane.inner())
            relay.handler.connection_made(relay)
            if self.drained is not None:
                relay.handler.pause_writing()
        relay.begin(head_only=msg.method == b"HEAD")
        handler = relay.handler
        handler.data_received(msg.head_for_aiohttp())
        while msg.body and not relay.closed:
            data = msg.body.popleft()
            self.count(-len(data))
            handler.data_received(data)
        msg.sink = self._sink(handler, relay)
        if msg.upgrade and self.upgraded:  # what came after its head, so far
            tail = bytes(self.upgraded)
            del self.upgraded[:]
            self.count(-len(tail))
            handler.data_received(tail)
        await relay.settled
        msg.sink = _discard
        left = sum(len(data) for data in msg.body)  # never given: answered before its end
        msg.body.clear()
        self.count(-left)
        if relay.upgraded and not relay.closed:
            self.handed = True  # a WebSocket: its handler's until it ends
            held, self.upgraded = bytes(self.upgraded or b""), None
            self.count(-len(held))
            if held:  # what came since the 101 was written
                handler.data_received(held)
            return
        if relay.closed:
            self.drop_handler(relay)
        if not (relay.whole and relay.keep_alive and msg.complete and not msg.upgrade):
            self.closing = True

    def keeps(self, msg: Message) -> bool:
        """Whether the connection goes on after msg's answer (which must say so when not:
        see Lane._own_answer)."""
        return msg.keep_alive and not self.closing and not self.lane.closing

    def drop_handler(self, relay: Relay) -> None:
        """The handler closed its side: it is done with, and the next request gets a new one."""
        if self.relay is relay:
            self.relay = None
            relay.handler.connection_lost(None)
            self.resume("aiohttp")  # a pause it asked for ends with it

    @staticmethod
    def _sink(handler: RequestHandler, relay: Relay) -> Any:
        def sink(data: bytes) -> None:
            if not relay.closed:
                handler.data_received(data)

        return sink

    # writing -----------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.transport.write(data)

    async def drain(self) -> None:
        if self.drained is not None:
            await self.drained
        if self.transport.is_closing():
            raise ConnectionResetError("the browser left")

    def _write_refusal(self, status: int, refusal: str) -> None:
        phrase = HTTPStatus(status).phrase.encode()
        text = refusal.encode()
        self.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (status, phrase, len(text), text)
        )
        note(self.lane.router, "other", "(none)", status, 0.0, "", lambda: self.peer)

    # flow and lifetime -------------------------------------------------------------------

    def pause(self, why: str) -> None:
        if not self.pausers and not self.transport.is_closing():
            self.transport.pause_reading()
        self.pausers.add(why)

    def resume(self, why: str) -> None:
        if why in self.pausers:
            self.pausers.discard(why)
            if not self.pausers and not self.transport.is_closing():
                self.transport.resume_reading()

    def _arm(self) -> None:
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(IDLE_S, self._idle_check)

    def _idle_check(self) -> None:
        """Close a connection that has had nothing under way for IDLE_S (a browser's idle
        keep-alive, or one that never finishes its head)."""
        self.timer = None
        if self.task is not None or self.handed:
            return
        if time.monotonic() - self.last >= IDLE_S:
            self.transport.close()
        else:
            self._arm()


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _discard(data: bytes) -> None:
    """Body bytes of a request already answered (a refusal before its body was read)."""


class _Refused(Exception):
    """A request refused while it is read: (status, what it is told)."""


class Lane:
    """The listening side: a LaneConnection per connection; aiohttp's server (inner) makes
    the handlers for the requests the lane hands on, and drains with it on shutdown."""

    def __init__(self, inner: web.Server, router: Router) -> None:
        self.inner = inner
        self.router = router
        self.connections: set[LaneConnection] = set()
        self.closing = False
        self.per_user = router.origins.per_user
        self.own_headers = b"X-Content-Type-Options: nosniff\r\nReferrer-Policy: same-origin\r\n"
        if router.secure_cookies:
            self.own_headers += b"Strict-Transport-Security: max-age=31536000\r\n"

    def __call__(self) -> LaneConnection:
        return LaneConnection(self)

    # what aiohttp's runner asks of its server
    @property
    def requests_count(self) -> int:
        return self.inner.requests_count

    def pre_shutdown(self) -> None:
        """Stop: idle connections close now, busy ones after their answer."""
        self.closing = True
        self.inner.pre_shutdown()
        for conn in list(self.connections):
            if conn.task is None and not conn.handed:
                conn.transport.close()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 (aiohttp's)
        await self.inner.shutdown(timeout)
        busy = [c.task for c in self.connections if c.task is not None]
        if busy:
            await asyncio.wait(busy, timeout=timeout)
        for conn in list(self.connections):
            conn.transport.abort()

    # the lane's own requests -------------------------------------------------------------

    async def carry(self, conn: LaneConnection, msg: Message) -> bool:
        """Answer msg if it is the lane's to answer (see the module's docstring): a
        request for the box, or a ping; False, with nothing written, when aiohttp must."""
        if msg.upgrade or msg.version != "1.1":
            return False
        started = time.monotonic()
        if msg.method == b"POST":  # a ping, on a workspace's origin or (path mode) the main
            session = await self._pinger(msg)
            if session is None:
                return False
            user = session.owner if session.host else session.user
            status = await self._ping(conn, msg, user)
        else:
            session = await self._box_request(msg)
            if session is None:
                return False
            status = await self._carry(conn, msg, session.owner)
        if status is None:
            return False
        self.router.metrics.lane.inc()
        note(
            self.router,
            msg.method.decode("latin-1"),
            ROUTE if session.host else "/ping",
            status,
            time.monotonic() - started,
            user=session.user,
            client=lambda: self._client(conn, msg),
            counted=msg.method != b"POST",  # codepool_pings_total counts pings
        )
        return True

    async def _box_request(self, msg: Message) -> Session | None:
        """The session to carry msg to its box with, if it is a request the lane carries:
        GET or HEAD with no body, to a workspace origin, not a page load, from that origin,
        with that host's session, to a running workspace."""
        if not self.per_user or msg.has_body or msg.method not in (b"GET", b"HEAD"):
            return None
        target = msg.target
        if target[:1] != b"/" or target.startswith(b"/_codepool/"):
            return None
        if msg.header(b"upgrade") is not None or b"text/html" in (msg.header(b"accept") or b""):
            return None
        session = await self._session(msg, workspace=True)
        if session is None:
            return None
        try:
            await self.router.proxy.workspace(session.owner)
        except Exception:  # stopped, or the store: aiohttp's answer says what is wrong
            return None
        return session

    async def _pinger(self, msg: Message) -> Session | None:
        """The session of a ping the lane answers: JSON of at most MAX_PING_BYTES, with a
        Content-Length, to a workspace origin's /_codepool/ping or the main origin's /ping
        (a session cookie, not a JWT), from that origin (workspace.ping_refusal's checks;
        a ping that fails one goes to aiohttp, which says why)."""
        length = msg.header(b"content-length") or b""
        kind = (msg.header(b"content-type") or b"").partition(b";")[0].strip().lower()
        if msg.chunked or not length.isdigit() or int(length) > MAX_PING_BYTES:
            return None
        if kind != b"application/json":
            return None
        if msg.target == PING_B:
            return await self._session(msg, workspace=True)
        if msg.target == b"/ping" and self.router.jwt is None:
            return await self._session(msg, workspace=False)
        return None

    async def _session(self, msg: Message, workspace: bool) -> Session | None:
        """The session of a request from a workspace origin's own pages, whose person may
        enter it (workspace.py's checks, with its functions), or (workspace=False) from
        the main origin's; None when the request is not one, or the store cannot tell."""
        router = self.router
        host = _text(msg.header(b"host"))
        if host is None:
            return None
        if workspace:
            label = router.origins.label_in(host)
            if label is None:
                return None
            origin, cookie = router.origins.origin_of(label), router.cookies.workspace
        elif router.origins.is_main(host):
            label, origin, cookie = "", router.origins.main, router.cookies.session
        else:
            return None
        sent, site = msg.header(b"origin"), msg.header(b"sec-fetch-site")
        if not same_origin_of(_text(sent), _text(site), origin):
            return None
        values = cookie_values_in(_text(msg.header(b"cookie")) or "", cookie)
        if not values:
            return None
        try:
            session = await router.sessions.find(values, host=label)
        except Exception:  # the store: aiohttp's answer says what is wrong
            return None
        if session is None or (workspace and not may_enter(router, session, session.owner)):
            return None
        return session

    async def _ping(self, conn: LaneConnection, msg: Message, owner: str) -> int | None:
        """A heartbeat: its body read (at most MAX_PING_BYTES, waited for at most IDLE_S),
        recorded, answered (None: aiohttp answers it, with its body given back)."""
        if not msg.complete:
            msg.waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(msg.waiter, IDLE_S)
            except TimeoutError:
                conn.transport.close()
                return 408
        raw = b"".join(msg.body)
        msg.body.clear()
        conn.count(-len(raw))
        try:
            status, answer = await ping_answer(self.router, owner, raw)
        except CodepoolError:  # the store: aiohttp's error answer, with the body again
            msg.body.append(raw)
            conn.count(len(raw))
            return None
        if answer is None:
            self._own_answer(conn, msg, status)
        else:
            self._own_answer(conn, msg, status, b"application/json", json.dumps(answer).encode())
        return status

    def _client(self, conn: LaneConnection, msg: Message) -> str:
        forwarded = (msg.header(b"x-forwarded-for") or b"").decode("latin-1")
        return client_of(conn.peer, forwarded, self.router.trusted_proxies)

    async def _carry(self, conn: LaneConnection, msg: Message, owner: str) -> int | None:
        """The request to owner's box, and its answer to the browser; the status sent
        (None: the workspace stopped just now, and nothing was sent)."""
        proxy = self.router.proxy
        method = msg.method.decode()
        host = msg.header(b"host") or b""
        asked = Asked(method, msg.headers, conn.peer, conn.scheme, host, html=False)
        head = proxy.upstream_head(asked, "", msg.target) + b"\r\n"
        try:
            ws, answer = await proxy.exchange(owner, method, head, None)
        except Stopped:
            return None
        except web.HTTPBadGateway as exc:
            return self._bad_gateway(conn, msg, exc.text or "")
        try:
            return await self._answer(conn, msg, answer, ws.instance_id, owner)
        finally:
            answer.release()

    def _bad_gateway(self, conn: LaneConnection, msg: Message, text: str) -> int:
        self._own_answer(conn, msg, 502, b"text/plain", text.encode())
        return 502

    def _own_answer(
        self, conn: LaneConnection, msg: Message, status: int, kind: bytes = b"", body: bytes = b""
    ) -> None:
        """An answer of the router's own (no body when no kind), with the headers all of its
        own answers carry (http.py page_headers), and Connection: close when the request
        ends the connection: a front (nginx) keeps for its next request a connection whose
        answer does not say so, and would send it into the lane's close."""
        phrase = HTTPStatus(status).phrase.encode()
        head = b"HTTP/1.1 %d %s\r\n%s" % (status, phrase, self.own_headers)
        if kind:
            head += b"Content-Type: %s; charset=utf-8\r\nContent-Length: %d\r\n" % (kind, len(body))
        if not conn.keeps(msg):
            head += b"Connection: close\r\n"
        conn.write(head + b"\r\n" + body)

    async def _answer(
        self,
        conn: LaneConnection,
        msg: Message,
        answer: upstream.Answer,
        instance_id: str,
        owner: str,
    ) -> int:
        proxy = self.router.proxy
        status = answer.status
        headers = proxy.box_headers(answer.headers, "")
        head_only = msg.method == b"HEAD" or status in _NO_BODY
        ctype = next((v for n, v in headers if n.lower() == b"content-type"), b"")
        length = answer.content_length
        body = b""
        try:
            if ctype.lower().startswith(b"text/html") and not head_only:
                encoding = next(
                    (v for n, v in headers if n.lower() == b"content-encoding"), b""
                ).decode("latin-1")
                first, html = await proxy.read_html(encoding, answer)
                if html is not None:
                    skip = {b"content-encoding", *_SKIP_FRAMING}
                    headers = [h for h in headers if h[0].lower() not in skip]
                    body = proxy.injected(html, instance_id)
                    length = len(body)
                    headers.append((b"Content-Length", b"%d" % length))
                    conn.write(_head(status, headers, conn.keeps(msg)) + body)
                    return status
                body = first
            elif length is not None and length <= SMALL and not head_only:
                body = await answer.read()  # small and whole: one write, head and body
                conn.write(_head(status, headers, conn.keeps(msg)) + body)
                return status
        except upstream.BadAnswer as exc:  # cut or malformed before anything was sent
            log.warning("proxy %s: %s", owner, exc)
            return self._bad_gateway(conn, msg, f"workspace of {owner} is not answering")
        chunked = length is None and not head_only
        if chunked:
            headers = [h for h in headers if h[0].lower() != b"content-length"]
            headers.append((b"Transfer-Encoding", b"chunked"))
        conn.write(_head(status, headers, conn.keeps(msg)))
        if head_only:
            return status
        try:
            if body:
                conn.write(b"%x\r\n%b\r\n" % (len(body), body) if chunked else body)
            async for chunk in answer.chunks():
                conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                await conn.drain()
            if chunked:
                conn.write(b"0\r\n\r\n")
        except upstream.BadAnswer as exc:
            # Cut or malformed mid-body, after the head went out: the browser's connection
            # is closed before the body's end, so it sees a cut body, never a whole one.
            log.warning("proxy %s: %s", owner, exc)
            conn.transport.abort()
        except ConnectionResetError:
            log.debug("proxy %s: the browser left before the answer's end", owner)
        return status


def _head(status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> bytes:
    try:
        reason = HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason), *(b"%s: %s\r\n" % h for h in headers)]
    if not keep_alive:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


class LaneRunner(web.AppRunner):
    """aiohttp's runner for the router's app, with the lane in front of its server."""

    async def _make_server(self) -> web.Server:
        inner = await super()._make_server()
        # The runner needs of its server only what Lane has: a protocol factory, and
        # pre_shutdown and shutdown.
        return cast(web.Server, Lane(inner, self.app[ROUTER]))
