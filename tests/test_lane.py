"""The lane (codepool/daemon/lane.py): on one browser connection, the requests it carries
to the box itself and the ones it hands to aiohttp's server are answered in the order
they came, whatever mix, pipelining, bodies, refusals and WebSockets arrive; nothing a
browser sends makes it fail. (Every router test runs through the lane as well: the test
server is the router's own, tests/helpers.py RouterServer.)"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import serve_app
from tests.nginx_fixtures import entered, exchange
from tests.standin_workspace import make_app

STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


@pytest.fixture
async def alice(tmp_path: Path, nginx: Callable[[str], None]) -> AsyncIterator[tuple[int, str]]:
    """(router port, the head lines every request of alice's carries: Host and Cookie)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "note.txt").write_text("a note")
    async with (
        serve_app(make_app(home)) as box,
        entered("router", box, tmp_path, nginx) as (port, host, cookie),
    ):
        origin = f"http://{host}"
        yield port, f"Host: {host}\r\nCookie: {cookie}\r\nOrigin: {origin}\r\n"


async def carried(port: int) -> float:
    """How many requests the lane has carried so far (its counter in /metrics)."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        text = await resp.text()
    found = re.search(r"^codepool_lane_requests_total (\S+)$", text, re.M)
    assert found is not None
    return float(found.group(1))


def answers(raw: bytes) -> list[bytes]:
    return STATUS.findall(raw)


async def test_lane_and_router_requests_on_one_connection_are_answered_in_order(
    alice: tuple[int, str],
) -> None:
    port, who = alice
    ping = json.dumps({"instanceId": "not-hers"}).encode()
    requests = [
        (b"GET /files/note.txt", b"", b"lane"),
        (b"GET /_codepool/heartbeat.js", b"", b"router"),
        (
            b"POST /_codepool/ping",
            b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(ping),
            ping,
        ),
        (b"HEAD /files/note.txt", b"", b""),
        (b"GET /healthz", b"", b""),
        (b"GET /files/note.txt", b"Accept: text/html\r\n", b""),  # a page: the router's
        (b"GET /files/note.txt", b"Connection: close\r\n", b""),
    ]
    raw = b"".join(
        line + b" HTTP/1.1\r\n" + who.encode() + extra + b"\r\n" + (body if extra else b"")
        for line, extra, body in requests
    )
    before = await carried(port)
    got = await exchange(port, raw)  # all of them in one write: pipelined
    assert answers(got) == [b"200", b"200", b"409", b"200", b"200", b"200", b"200"], got
    assert got.count(b"a note") == 3  # HEAD's answer has no body
    assert b"Content-Type: text/javascript" in got  # the heartbeat script, from the router
    # The asset, the ping (refused: not her instance), the HEAD, healthz, the last.
    assert await carried(port) - before == 5


async def test_every_byte_at_a_time(alice: tuple[int, str]) -> None:
    """Requests split at every byte: a ping (its body waited for), a router's request
    between two of the lane's."""
    port, who = alice
    one = b"GET /files/note.txt HTTP/1.1\r\n" + who.encode() + b"\r\n"
    router = b"GET /_codepool/heartbeat.js HTTP/1.1\r\n" + who.encode() + b"\r\n"
    body = b'{"instanceId": "not-hers"}'
    ping = (
        b"POST /_codepool/ping HTTP/1.1\r\n" + who.encode()
        + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )  # fmt: skip
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for byte in one + ping + router + one:
        writer.write(bytes([byte]))
        await writer.drain()
    got = b""
    while got.count(b"HTTP/1.1 ") < 4 or not got.endswith(b"a note"):
        got += await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    assert answers(got) == [b"200", b"409", b"200", b"200"]
    assert b'"stale-instance"' in got


async def test_a_refusal_before_the_body_leaves_the_connection_usable(
    alice: tuple[int, str],
) -> None:
    """A ping refused for its size is answered before its body is read; the body is read
    past (never taken as a request) and the next request gets its own answer."""
    port, who = alice
    hidden = b"GET /smuggled HTTP/1.1\r\n" + who.encode() + b"\r\n"
    body = hidden + b"x" * (5000 - len(hidden))
    raw = (
        b"POST /_codepool/ping HTTP/1.1\r\n" + who.encode()
        + b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n" + body
        + b"GET /files/note.txt HTTP/1.1\r\n" + who.encode() + b"Connection: close\r\n\r\n"
    )  # fmt: skip
    got = await exchange(port, raw)
    assert answers(got) == [b"413", b"200"], got
    assert got.endswith(b"a note")


async def test_a_chunked_upload_through_aiohttp_then_the_lane(alice: tuple[int, str]) -> None:
    port, who = alice
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (b"hello ", b"world")) + b"0\r\n\r\n"
    raw = (
        b"PUT /files/up.txt HTTP/1.1\r\n" + who.encode()
        + b"Transfer-Encoding: chunked\r\n\r\n" + chunks
        + b"GET /files/up.txt HTTP/1.1\r\n" + who.encode() + b"Connection: close\r\n\r\n"
    )  # fmt: skip
    got = await exchange(port, raw)
    assert len(answers(got)) == 2 and answers(got)[1] == b"200", got
    assert got.endswith(b"hello world")


def frame(text: bytes) -> bytes:
    """A masked WebSocket text frame, as a browser sends it."""
    mask = os.urandom(4)
    return (
        bytes([0x81, 0x80 | len(text)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text))
    )


async def test_a_websocket_after_lane_requests_on_one_connection(alice: tuple[int, str]) -> None:
    port, who = alice
    key = base64.b64encode(os.urandom(16))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /files/note.txt HTTP/1.1\r\n" + who.encode() + b"\r\n")
    writer.write(
        b"GET /ws HTTP/1.1\r\n" + who.encode()
        + b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        + b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Protocol: echo\r\n\r\n"
        + frame(b"typed ahead")  # sent before the 101 came back
    )  # fmt: skip
    got = b""
    while b"typed ahead" not in got:
        got += await asyncio.wait_for(reader.read(65536), 10)
    assert answers(got) == [b"200", b"101"], got
    writer.write(frame(b"keystroke"))
    echoed = b""
    while b"keystroke" not in echoed:
        echoed += await asyncio.wait_for(reader.read(65536), 10)
    writer.close()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\nHost: a\n\n", b"400"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"400"),  # TLS to a plain port
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", b"414"),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", b"431"),
        (b"GET / HTTP/1.1\r\n" + b"X-A: 1\r\n" * 200 + b"\r\n", b"431"),
        (b"BREW /pot HTTP/1.1\r\nHost: a\r\n\r\n", b"400"),
    ],
)
async def test_what_cannot_be_read_is_refused_and_ends_the_connection(
    alice: tuple[int, str], raw: bytes, status: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    port, who = alice
    first = b"GET /files/note.txt HTTP/1.1\r\n" + who.encode() + b"\r\n"
    got = await exchange(port, first + raw + first)
    assert answers(got) == [b"200", status], got  # nothing after the refusal is read
    assert "Traceback" not in caplog.text and "unexpected failure" not in caplog.text


async def test_many_connections_mixing_both_kinds_at_once(alice: tuple[int, str]) -> None:
    port, who = alice
    lane = b"GET /files/note.txt HTTP/1.1\r\n" + who.encode() + b"\r\n"
    router = b"GET /_codepool/heartbeat.js HTTP/1.1\r\n" + who.encode() + b"\r\n"
    last = b"GET /healthz HTTP/1.1\r\n" + who.encode() + b"Connection: close\r\n\r\n"
    mixes = [[lane, router] * (i % 5) + [router, lane] * (i % 3) for i in range(40)]
    before = await carried(port)
    got = await asyncio.gather(*(exchange(port, b"".join([*m, last]), 10) for m in mixes))
    for mix, raw in zip(mixes, got, strict=True):
        assert answers(raw) == [b"200"] * (len(mix) + 1), raw[:300]
        assert raw.count(b"a note") == mix.count(lane)
        assert raw.endswith(b"}")  # healthz's JSON
    assert await carried(port) - before == sum(m.count(lane) + 1 for m in mixes)


async def test_an_answer_before_the_lane_closes_the_connection_says_so(
    alice: tuple[int, str],
) -> None:
    """A request asking to close (nginx asks so of each ping it forwards) gets an answer
    with Connection: close from the lane, whichever answers it: nginx keeps for its next
    request a connection whose answer does not say so, and sent that request into the
    lane's close (a reset, a 502 under load) until every answer of the lane's said it."""
    port, who = alice
    page = await exchange(
        port,
        b"GET / HTTP/1.1\r\n" + who.encode() + b"Accept: text/html\r\nConnection: close\r\n\r\n",
    )
    found = re.search(rb'data-instance-id="([^"]+)"', page)
    assert found is not None, page[:500]

    def ping(instance: bytes) -> bytes:
        body = b'{"instanceId": "%s"}' % instance
        return (
            b"POST /_codepool/ping HTTP/1.1\r\n" + who.encode() + b"Connection: close\r\n"
            + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )  # fmt: skip

    asset = b"GET /files/note.txt HTTP/1.1\r\n" + who.encode() + b"Connection: close\r\n\r\n"
    before = await carried(port)
    for raw, status in [
        (ping(found.group(1)), b"204"),
        (ping(b"not-hers"), b"409"),
        (asset, b"200"),
    ]:
        got = await exchange(port, raw + asset)  # the second never read: the first closes
        assert answers(got) == [status], got
        head = got.partition(b"\r\n\r\n")[0]
        assert b"\r\nConnection: close" in head, got
    assert await carried(port) - before == 3
