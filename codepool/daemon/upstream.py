"""The proxy's way to a box: HTTP/1.1 over kept-alive connections, a pool per box, and
llhttp (httptools, the parser uvicorn uses) reading the answers, strict.

aiohttp's client costs most of a proxied request (docs/performance.md): a URL object, a
request and a response object, tracing, a connector and a stream reader for each. What
the proxy needs is less: write one request head it has already checked, read an answer
whose framing nobody can bend, and keep the connection for the next request to the same
box. A box is hostile until proven otherwise, so an answer is refused (502) when llhttp
finds its framing ambiguous (Content-Length with Transfer-Encoding, two Content-Lengths,
obs-fold, bare LF) or its head too large, and a connection goes back to the pool only
after a complete answer that allows it, with nothing left over on it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

MAX_HEAD = 64 * 1024  # bytes of status line and headers a box may send
MAX_HEADERS = 200
IDLE_S = 30.0  # a kept-alive connection unused this long is closed
MAX_IDLE_PER_BOX = 64  # kept-alive connections per box (more are closed after use)
HIGH_WATER = 256 * 1024  # bytes of body read ahead of the browser before reading pauses
CONNECT_S = 10.0
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})


class BadAnswer(Exception):
    """The box's answer cannot be trusted or did not come (refused, cut, ambiguous)."""


@dataclass(frozen=True, slots=True)
class Box:
    """Where a box listens: host and port (with TLS for https), or a Unix socket."""

    host: str = ""
    port: int = 0
    ssl: ssl.SSLContext | bool | None = None
    server_hostname: str | None = None
    socket_path: str = ""

    @classmethod
    def from_url(cls, base: str, tls: dict[str, Any]) -> Box:
        parts = urlsplit(base)
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        if not https:
            return cls(parts.hostname or "", port)
        return cls(parts.hostname or "", port, tls.get("ssl", True), tls.get("server_hostname"))


class Connection(asyncio.Protocol):
    """One connection to a box, carrying one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.error: BaseException | None = None
        self.head_bytes = 0
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.body: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.complete = False
        self.received = False  # any byte of this exchange's answer
        self.head_request = False
        self.busy = False  # an exchange is under way (bytes are expected)
        self._keep = True
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._drain: asyncio.Future[None] | None = None
        self.head_bytes = 0

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # once, whether uvloop or connect_* called it first
            self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.received = True
        if not self.busy or self.complete or self.error is not None:
            # Bytes nobody asked for (on an idle connection, or after a complete answer):
            # a box trying to put an answer in front of the next request. The connection
            # is not used again; an answer already complete stays so.
            self._keep = False
            if self.transport is not None:
                self.transport.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadAnswer("the box switched protocols on a plain request"))
        except (httptools.HttpParserError, BadAnswer) as exc:
            self._fail(BadAnswer(f"the box's answer is malformed: {exc}"))

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.status and not self.complete and self.error is None and self._until_close():
            self.complete = True  # a body delimited by the end of the connection
        elif not self.complete and self.error is None:
            self._fail(BadAnswer(f"the box closed the connection{f': {exc}' if exc else ''}"))
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    # -- llhttp's callbacks ---------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self.head_bytes += len(status)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > MAX_HEAD or len(self.headers) >= MAX_HEADERS:
            raise BadAnswer("its head is too large")
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # 100 Continue, 103 Early Hints: the real answer follows
            self.headers = []
            return
        self.status = status
        # Asked here: once the message is complete llhttp has moved on to the next one.
        self._keep = self._keep and self.parser.should_keep_alive()
        if not self.head_done.done():
            self.head_done.set_result(None)
        if self.head_request:
            # llhttp cannot be told that this answered a HEAD (it would wait for the
            # Content-Length's bytes): the answer ends here, and so does the connection.
            self.complete = True
            self._keep = False
            if self.transport is not None:
                self.transport.close()

    def on_body(self, body: bytes) -> None:
        if self.head_request:
            return  # an answer to HEAD has no body, whatever the box sends after its head
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status:  # not the end of a 1xx
            self.complete = True
            self._wake()

    # -- the exchange ---------------------------------------------------------------------

    def _until_close(self) -> bool:
        names = {n.lower() for n, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if not self.head_done.done():
            self.head_done.set_exception(exc)
            self.head_done.exception()  # retrieved: a late failure must not be logged
        if self.transport is not None:
            self.transport.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def drain(self) -> None:
        if self._drain is not None:
            await self._drain
        if self.closed:
            raise BadAnswer("the box closed the connection")

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The answer's body as it arrives."""
        while True:
            if self.body:
                chunk = self.body.popleft()
                self.buffered -= len(chunk)
                if self._paused and self.buffered < HIGH_WATER // 2:
                    self._paused = False
                    if self.transport is not None and not self.closed:
                        self.transport.resume_reading()
                yield chunk
                continue
            if self.error is not None:
                raise self.error
            if self.complete:
                return
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None

    @property
    def reusable(self) -> bool:
        return (
            self.complete
            and not self.closed
            and self.error is None
            and not self.body
            and self._keep
        )

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


Body = Callable[[Connection], Any]  # writes a request body on the connection (a coroutine)


class Answer:
    """A box's answer: status, raw headers, and its body to read (once)."""

    def __init__(
        self, pool: BoxPool, key: str, conn: Connection, body_task: asyncio.Task[None] | None
    ) -> None:
        self._pool, self._key, self.conn = pool, key, conn
        self.status = conn.status
        self.headers = conn.headers
        self._body_task = body_task  # still sending the request's body, if not done

    def header(self, name: bytes) -> bytes | None:
        low = name.lower()
        return next((v for n, v in self.headers if n.lower() == low), None)

    @property
    def content_length(self) -> int | None:
        value = self.header(b"content-length")
        return int(value) if value is not None and value.isdigit() else None

    def chunks(self) -> AsyncIterator[bytes]:
        return self.conn.chunks()

    @property
    def whole(self) -> bool:
        """Whether the whole body has arrived (read() then takes no waiting)."""
        return self.conn.complete and self.conn.error is None

    async def read(self) -> bytes:
        conn = self.conn
        if self.whole:  # all here already (most small answers)
            body, conn.buffered = b"".join(conn.body), 0
            conn.body.clear()
            if conn._paused and conn.transport is not None and not conn.closed:
                conn._paused = False
                conn.transport.resume_reading()
            return body
        return b"".join([c async for c in conn.chunks()])

    def release(self) -> None:
        """Give the connection back (kept alive if the answer was whole), or close it."""
        body_sent = self._body_task is None or self._body_task.done()
        if self._body_task is not None and not self._body_task.done():
            self._body_task.cancel()
        self._pool.put_back(self._key, self.conn, self.conn.reusable and body_sent)


class BoxPool:
    """Kept-alive connections to boxes, per box (the address string is the key)."""

    def __init__(self) -> None:
        self._idle: dict[str, list[Connection]] = {}

    def _take(self, key: str) -> Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_S:
                return conn
            conn.close()
        self._idle.pop(key, None)
        return None

    def put_back(self, key: str, conn: Connection, keep: bool) -> None:
        idle = self._idle.setdefault(key, [])
        if not keep or len(idle) >= MAX_IDLE_PER_BOX:
            conn.close()
            if not idle:
                self._idle.pop(key, None)
            return
        conn._reset()  # llhttp reads the next answer on the same parser
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def forget(self, key: str) -> None:
        for conn in self._idle.pop(key, []):
            conn.close()

    async def close(self) -> None:
        for key in list(self._idle):
            self.forget(key)

    async def exchange(
        self,
        key: str,
        connect: Callable[[], Awaitable[Connection]],
        method: str,
        head: bytes,
        body: Body | None,
    ) -> Answer:
        """Send a request head (and its body) to a box and wait for the answer's head.
        A kept-alive connection the box closed just before the request arrived is
        replaced once, when nothing of the request can have been acted upon (an
        idempotent request without a body)."""
        for attempt in (1, 2):
            kept = self._take(key)
            reused = kept is not None
            if kept is None:
                conn = await asyncio.wait_for(connect(), CONNECT_S)
            else:
                conn = kept
            conn.head_request = method == "HEAD"
            conn.busy = True
            conn.send(head)
            body_task = asyncio.create_task(body(conn)) if body is not None else None
            try:
                await conn.head_done
            except BaseException as exc:
                if body_task is not None:
                    body_task.cancel()
                conn.close()
                retry = reused and not conn.received and body is None and method in IDEMPOTENT
                if isinstance(exc, BadAnswer) and retry and attempt == 1:
                    continue
                raise
            return Answer(self, key, conn, body_task)
        raise AssertionError("unreachable")


def _made(transport: asyncio.BaseTransport, conn: Connection) -> Connection:
    # uvloop may call connection_made a turn of the loop after create_connection returns.
    if conn.transport is None:
        conn.connection_made(transport)
    return conn


async def connect_tcp(box: Box) -> Connection:
    loop = asyncio.get_running_loop()
    transport, conn = await loop.create_connection(
        Connection,
        box.host,
        box.port,
        ssl=box.ssl,
        server_hostname=box.server_hostname if box.ssl else None,
    )
    return _made(transport, conn)


async def connect_unix(path: str) -> Connection:
    loop = asyncio.get_running_loop()
    transport, conn = await loop.create_unix_connection(Connection, path)
    return _made(transport, conn)


async def send_body(conn: Connection, chunks: AsyncIterator[bytes], chunked: bool) -> None:
    """Stream a request body to the box: as it came (Content-Length) or chunk-encoded."""
    with contextlib.suppress(BadAnswer):
        async for chunk in chunks:
            if not chunk:
                continue
            conn.send(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            await conn.drain()
        if chunked:
            conn.send(b"0\r\n\r\n")
