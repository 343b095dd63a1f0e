"""Request smuggling through both ways into a workspace: the router's own proxy and the
nginx front (nginx/front.conf). Each classic desync case (two Content-Lengths, CL with TE,
an obfuscated TE, obs-fold, bare LF, bad chunk sizes) is sent as raw bytes, by alice, into
her own workspace origin, with a second request hidden where a lenient parser would see
it. Afterwards the box's own log of the requests it served holds no smuggled one, and
no answer was a 5xx: a proxy that read the bytes one way and passed them on to be read
another would have let the hidden request through on a connection it keeps open."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from codepool.core.pool import CodePool
from codepool.core.store import create_store
from codepool.daemon.app import create_app
from codepool.daemon.context import ROUTER
from tests.conftest import make_settings
from tests.fakes import MemoryBackend
from tests.helpers import serve_app
from tests.nginx_fixtures import front_site, wait_listening
from tests.router_fixtures import PASSWORDS, Client, add_test_accounts, free_port, login
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
    async with serve_app(make_app(home)) as box:
        router_port, front_port = free_port(), free_port()
        port = router_port if request.param == "router" else front_port
        settings = make_settings(
            tmp_path / "state",
            pool={"warm_spares": 0},
            router={"public_url": f"http://127.0.0.1:{port}", "trusted_proxies": ["127.0.0.1"]},
        )
        pool = CodePool(settings, create_store("memory://"), MemoryBackend(box))
        await add_test_accounts(pool.store)
        app = create_app(pool, settings, run_loops=False)
        name = app[ROUTER].cookies.workspace
        server = TestServer(app, port=router_port)
        await server.start_server()
        if request.param == "front":
            nginx(front_site(f"http://127.0.0.1:{router_port}", front_port, tmp_path))
            await wait_listening(front_port)
        await pool.assign("alice")
        c = Client(f"http://127.0.0.1:{port}")
        try:
            assert (await login(c, "alice", PASSWORDS["alice"])).status == 302
            home_url = f"http://alice.localhost:{port}/"
            entered = await c.get(home_url, headers={"Accept": "text/html"})
            assert entered.status == 200 and entered.url.path == "/_codepool/enter"
            session = c.cookie(name, home_url)
            assert session is not None
            (home / ".requests").write_text("")  # from here on, what the box serves
            yield Entry(port, f"alice.localhost:{port}", f"{name}={session}", home / ".requests")
        finally:
            await c.close()
            await server.close()
            await pool.close()


async def exchange(port: int, raw: bytes, wait_s: float = 2.0) -> bytes:
    """Send raw bytes on one connection; what came back before it closed or went quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    got = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), wait_s):
            got += chunk
    except (TimeoutError, ConnectionError):
        pass
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return got


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
