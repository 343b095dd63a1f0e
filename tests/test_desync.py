"""Request smuggling through both ways into a workspace: the router's own proxy and the
nginx front (nginx/front.conf). Each classic desync case (two Content-Lengths, CL with TE,
an obfuscated TE, obs-fold, bare LF, bad chunk sizes) is sent as raw bytes, by alice, into
her own workspace origin, with a second request hidden where a lenient parser would see
it. Afterwards the box's own log of the requests it served holds no smuggled one, and
no answer was a 5xx: a proxy that read the bytes one way and passed them on to be read
another would have let the hidden request through on a connection it keeps open."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.helpers import serve_app
from tests.nginx_fixtures import entered, exchange
from tests.standin_workspace import make_app

STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")


@dataclass
class Entry:
    """Where alice's raw requests go, as whom, and where her box logs what it served."""

    port: int
    host: str  # her workspace origin's Host header
    cookie: str  # her workspace session, as a Cookie header
    box_log: Path


@pytest.fixture(params=["router", "front"])
async def entry(
    request: pytest.FixtureRequest, tmp_path: Path, nginx: Callable[[str], None]
) -> AsyncIterator[Entry]:
    home = tmp_path / "home"
    home.mkdir()
    async with (
        serve_app(make_app(home)) as box,
        entered(request.param, box, tmp_path, nginx) as (port, host, cookie),
    ):
        (home / ".requests").write_text("")  # from here on, what the box serves
        yield Entry(port, host, cookie, home / ".requests")


def cases(e: Entry) -> dict[str, bytes]:
    """Each case: a request whose framing is ambiguous, then a hidden request to
    /smuggled-<case> that only a parser reading the framing another way would find."""
    head = f"Host: {e.host}\r\nCookie: {e.cookie}\r\n"

    def hidden(name: str) -> str:
        return f"GET /smuggled-{name} HTTP/1.1\r\nHost: {e.host}\r\nCookie: {e.cookie}\r\n\r\n"

    def req(first: str, headers: str, body: str, eol: str = "\r\n") -> bytes:
        text = first + eol + (head + headers).replace("\r\n", eol) + eol + body
        return text.encode()

    h = {name: hidden(name) for name in NAMES}
    return {
        "two-content-lengths": req(
            "POST /upload HTTP/1.1",
            f"Content-Length: 0\r\nContent-Length: {len(h['two-content-lengths'])}\r\n",
            h["two-content-lengths"],
        ),
        "cl-te": req(
            "POST /upload HTTP/1.1",
            "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\n" + h["cl-te"],
        ),
        "te-cl": req(
            "POST /upload HTTP/1.1",
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
            f"{len(h['te-cl']):x}\r\n{h['te-cl']}\r\n0\r\n\r\n",
        ),
        "te-obfuscated": req(
            "POST /upload HTTP/1.1",
            f"Content-Length: {len(h['te-obfuscated']) + 5}\r\nTransfer-Encoding: xchunked\r\n",
            "0\r\n\r\n" + h["te-obfuscated"],
        ),
        "te-space-before-colon": req(
            "POST /upload HTTP/1.1",
            "Transfer-Encoding : chunked\r\nContent-Length: 5\r\n",
            "0\r\n\r\n" + h["te-space-before-colon"],
        ),
        "te-twice": req(
            "POST /upload HTTP/1.1",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
            "0\r\n\r\n" + h["te-twice"],
        ),
        "te-not-last": req(
            "POST /upload HTTP/1.1",
            "Transfer-Encoding: chunked, identity\r\n",
            "0\r\n\r\n" + h["te-not-last"],
        ),
        "obs-fold": req(
            "POST /upload HTTP/1.1",
            "X-Folded: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "0\r\n\r\n" + h["obs-fold"],
        ),
        "bare-lf": req(
            "POST /upload HTTP/1.1",
            "X-A: b\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "0\r\n\r\n" + h["bare-lf"],
        ),
        "bare-cr": req(
            "POST /upload HTTP/1.1",
            "X-A: b\rTransfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "0\r\n\r\n" + h["bare-cr"],
        ),
        "chunk-size-overflow": req(
            "POST /upload HTTP/1.1",
            "Transfer-Encoding: chunked\r\n",
            "10000000000000001\r\na\r\n0\r\n\r\n" + h["chunk-size-overflow"],
        ),
        "chunk-size-junk": req(
            "POST /upload HTTP/1.1",
            "Transfer-Encoding: chunked\r\n",
            "0x5\r\nhello\r\n0\r\n\r\n" + h["chunk-size-junk"],
        ),
        "nul-in-header": req(
            "GET /echo-headers HTTP/1.1",
            "X-A: a\x00b\r\nContent-Length: 5\r\n",
            "0\r\n\r\n" + h["nul-in-header"],
        ),
        "http-1.0-keepalive-te": req(
            "POST /upload HTTP/1.0",
            "Connection: keep-alive\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "0\r\n\r\n" + h["http-1.0-keepalive-te"],
        ),
    }


NAMES = (
    "two-content-lengths",
    "cl-te",
    "te-cl",
    "te-obfuscated",
    "te-space-before-colon",
    "te-twice",
    "te-not-last",
    "obs-fold",
    "bare-lf",
    "bare-cr",
    "chunk-size-overflow",
    "chunk-size-junk",
    "nul-in-header",
    "http-1.0-keepalive-te",
)


async def test_no_desync_case_reaches_the_box_as_a_second_request(entry: Entry) -> None:
    answers: dict[str, list[bytes]] = {}
    for name, raw in cases(entry).items():
        got = await exchange(entry.port, raw)
        answers[name] = STATUS.findall(got)
    served = entry.box_log.read_text()
    print({k: [s.decode() for s in v] for k, v in answers.items()}, served)
    assert "smuggled" not in served, served
    # 501 is HTTP's answer to a transfer coding the server does not know (nginx's); any
    # other 5xx would be a failure of the proxy's own.
    fives = {k: v for k, v in answers.items() if any(s.startswith(b"5") for s in v)}
    assert set(fives) <= {"te-obfuscated", "te-not-last"}, fives
    assert all(v == [b"501"] for v in fives.values()), fives
    # Each ambiguous request is refused or answered once: never two answers on its bytes.
    assert all(len(v) <= 1 for v in answers.values()), answers
    # The way in still works for a plain request on the same entry.
    plain = f"GET /echo-headers HTTP/1.1\r\nHost: {entry.host}\r\nCookie: {entry.cookie}\r\n"
    got = await exchange(entry.port, (plain + "Connection: close\r\n\r\n").encode())
    assert STATUS.findall(got) == [b"200"], got[:300]


# -- a hostile box: answers whose framing is ambiguous, or that do not stop where they end

SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nContent-Type: text/plain\r\n\r\nsmuggled"
EVIL: dict[str, bytes] = {
    "cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n" + SMUGGLED,
    "two-content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Length: %d\r\n\r\n"
    % len(SMUGGLED)
    + SMUGGLED,
    "answer-after-answer": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + SMUGGLED,
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok" + SMUGGLED,
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok" + SMUGGLED,
    "huge-head": b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * 100_000 + b"\r\n"
    b"Content-Length: 2\r\n\r\nok",
    "cut-body": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b",  # then closed
    "cut-stream": b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"s" * 70_000,
    "bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
    "switching": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\n\r\n" + SMUGGLED,
    "not-utf8-header": b"HTTP/1.1 200 OK\r\nX-Name: \xff\xfe\r\nContent-Length: 2\r\n\r\nok",
    "early-hints": b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
}
CLEAN = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nclean"
LATE = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate" + SMUGGLED  # then, idle: more


async def hostile_box(conn: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Keeps every connection open (for the proxy to reuse) and answers each request: the
    evil answer its path names, a clean one otherwise; /late answers, then sends another
    answer unasked while the connection sits idle in the proxy's pool."""
    try:
        while head := await conn.readuntil(b"\r\n\r\n"):
            path = head.split(b" ", 2)[1].decode()
            name = path.removeprefix("/evil/")
            writer.write(EVIL.get(name, LATE if path == "/late" else CLEAN))
            await writer.drain()
            if name.startswith("cut-"):
                break
            if path == "/late":
                await asyncio.sleep(0.2)
                writer.write(SMUGGLED)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.mark.parametrize("kind", ["router", "front"])
async def test_a_hostile_boxs_answers_never_reach_the_next_request(
    kind: str, tmp_path: Path, nginx: Callable[[str], None], caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever a box answers, the next request gets its own answer: a refused answer
    is a 502 (never another 5xx), and a connection with bytes nobody asked for is not
    used again."""
    server = await asyncio.start_server(hostile_box, "127.0.0.1", 0)
    box = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    got: dict[str, tuple[list[bytes], bytes]] = {}
    async with server, entered(kind, box, tmp_path, nginx) as (port, host, cookie):

        async def get(path: str) -> bytes:
            raw = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
            return await exchange(port, (raw + "Connection: close\r\n\r\n").encode())

        for name in [*EVIL, "late"]:
            answer = await get("/late" if name == "late" else f"/evil/{name}")
            if name == "late":
                await asyncio.sleep(0.5)  # the unasked answer arrives on the idle connection
            after = await get("/after")
            got[name] = (STATUS.findall(answer.partition(b"\r\n")[0]), after)
    print({k: v[0] for k, v in got.items()})
    for name, (statuses, after) in got.items():
        assert after.endswith(b"clean") and b"smuggled" not in after, (name, after)
        # One answer that is not a failure of the proxy's own, a 502, or (nginx, for a
        # broken chunk) the connection closed without an answer.
        ok = len(statuses) == 1 and not statuses[0].startswith(b"5")
        assert ok or statuses in ([b"502"], []), (name, statuses)
    assert "Error handling request" not in caplog.text  # no traceback for a box's bytes
    if kind == "front":
        return  # nginx reads a box's answers its own way (1.22 takes CL+TE as chunked)
    refused = ["cl-te", "two-content-lengths", "obs-fold", "bare-lf", "huge-head"]
    for name in [*refused, "cut-body", "switching"]:
        assert got[name][0] == [b"502"], (name, got[name])
    assert got["not-utf8-header"][0] == [b"200"]
    assert got["early-hints"][0] == [b"200"]


async def test_a_browser_leaving_mid_answer_leaves_no_traceback(
    tmp_path: Path, nginx: Callable[[str], None], caplog: pytest.LogCaptureFixture
) -> None:
    """A tab closed while a large answer streams is ordinary: the router drops the rest
    of the box's answer and logs no error; the next request is served."""

    async def slow_box(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while head := await reader.readuntil(b"\r\n\r\n"):
                    if b"/big" not in head.split(b"\r\n")[0]:
                        writer.write(CLEAN)
                        continue
                    await asyncio.sleep(0.2)  # long enough for some tabs to close first
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50000000\r\n\r\n")
                    for _ in range(500):
                        writer.write(b"b" * 100_000)
                        await writer.drain()
                        await asyncio.sleep(0.001)
        finally:  # also when the server's close cancels this handler
            writer.close()

    server = await asyncio.start_server(slow_box, "127.0.0.1", 0)
    box = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server, entered("router", box, tmp_path, nginx) as (port, host, cookie):
        for early in (False, True, False, True):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET /big HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n".encode())
            if not early:  # the tab closes mid-body, or before the box has answered
                assert (await reader.readexactly(200)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(0.05)
            writer.transport.abort()
            await asyncio.sleep(0.5)
        raw = (
            f"GET /after HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        )
        assert (await exchange(port, raw.encode())).endswith(b"clean")
    assert "Error handling request" not in caplog.text
    assert "Traceback" not in caplog.text


async def test_a_browser_leaving_during_a_websocket_upgrade_leaves_no_traceback(
    tmp_path: Path,
    nginx: Callable[[str], None],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tab that goes elsewhere (a logout with VS Code open) while its WebSocket is being
    set up: once while the box has not answered yet, once just as the router accepts the
    browser's side (the box has said yes). Either way the router closes the box's
    WebSocket and logs no error."""
    asked, accept, closed = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def box(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while (head := await reader.readuntil(b"\r\n\r\n")) and b"/socket" not in head:
                    writer.write(CLEAN)  # readiness probes, and the request after
                key = re.search(rb"(?i)\r\nsec-websocket-key: *([^\r]+)", head)
                assert key is not None, head
                asked.set()
                await accept.wait()
                digest = hashlib.sha1(key.group(1) + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
                writer.write(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                    + base64.b64encode(digest.digest())
                    + b"\r\n\r\n"
                )
                await reader.read(65536)  # the router's close frame (or its close): done
        finally:
            closed.set()
            writer.close()

    # The second time, the browser leaves as the router's answer to it is about to go out.
    prepare = web.WebSocketResponse.prepare
    leave_at_prepare = False

    async def leaving(self: web.WebSocketResponse, request: web.BaseRequest) -> Any:
        if leave_at_prepare:
            request.transport.conn.transport.abort()  # type: ignore[union-attr]
            await asyncio.sleep(0)  # the router hears of it
        return await prepare(self, request)

    monkeypatch.setattr(web.WebSocketResponse, "prepare", leaving)
    server = await asyncio.start_server(box, "127.0.0.1", 0)
    address = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server, entered("router", address, tmp_path, nginx) as (port, host, cookie):
        for leave_at_prepare in (False, True):
            asked.clear()
            accept.clear()
            closed.clear()
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"GET /socket HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
                f"Origin: http://{host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "\r\n".encode()
            )
            await asyncio.wait_for(asked.wait(), 10)
            if not leave_at_prepare:
                writer.transport.abort()  # the browser leaves before the box has answered
                await asyncio.sleep(0.5)  # the router sees it go
            accept.set()
            await asyncio.wait_for(closed.wait(), 10)  # the box's WebSocket is not left open
            writer.transport.abort()
        after = f"GET /after HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
        answer = await exchange(port, f"{after}Connection: close\r\n\r\n".encode())
        assert answer.endswith(b"clean")
    assert "Error handling request" not in caplog.text
    assert "Traceback" not in caplog.text
