"""The nginx configs in nginx/ with a real nginx (Debian's): `nginx -t` passes on both, and
through workspace.conf the stand-in workspace's HTML and compressed assets pass untouched
(the router injects the heartbeat, not the box), and a WebSocket echoes; router.conf
proxies HTTP and WebSockets and redirects plain HTTP to HTTPS.
A box provisioned by deploy/ serves real code-server to the router over verified TLS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from codepool.core.errors import UntrustedBox
from codepool.core.pool import CodePool
from codepool.core.ready import probe
from codepool.core.store import create_store
from codepool.core.tls import workspace_tls
from codepool.daemon.app import create_app
from codepool.daemon.context import ROUTER
from tests.conftest import make_settings, need
from tests.fakes import MemoryBackend
from tests.helpers import RouterServer, serve_app
from tests.nginx_fixtures import ROOT, adapt, entered, exchange, front_site, wait_listening
from tests.ports import free_port
from tests.router_fixtures import PASSWORDS, Client, add_test_accounts, login
from tests.standin_workspace import GZIP_JS, gzip_bomb


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def client() -> aiohttp.ClientSession:
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # our own throwaway certificate
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=insecure), auto_decompress=False
    )


async def test_workspace_conf_injects_once_keeps_compression_and_carries_websockets(
    nginx: Callable[[str], None], tls: tuple[Path, Path], workspace: str
) -> None:
    port = free_port()
    upstream = workspace.removeprefix("http://")
    site = adapt(
        (ROOT / "nginx" / "workspace.conf").read_text(),
        {
            "listen 8443 ssl;": f"listen 127.0.0.1:{port} ssl;",
            "server 127.0.0.1:8080;": f"server {upstream};",
            "/etc/codepool/tls/workspace.crt": str(tls[0]),
            "/etc/codepool/tls/workspace.key": str(tls[1]),
        },
    )
    nginx(site)
    await wait_listening(port)
    base = f"https://127.0.0.1:{port}"
    async with client() as http:
        # As the router asks for a document: without Accept-Encoding, to read it whole.
        async with http.get(base + "/", headers={"Accept": "text/html"}) as r:
            html = await r.text()
        assert r.status == 200 and "notes.txt" in html
        assert "heartbeat" not in html  # the router adds it on the way to the person
        async with http.get(base + "/gzip.js", headers={"Accept-Encoding": "gzip"}) as r:
            assert r.headers["Content-Encoding"] == "gzip"
            assert await r.read() == GZIP_JS  # byte for byte: not decompressed, not injected
        async with http.get(base + "/codepool/nginx-health") as r:
            assert r.status == 200 and await r.text() == "ok\n"
        async with http.ws_connect(base.replace("https", "wss") + "/ws", protocols=("echo",)) as ws:
            await ws.send_str("through nginx")
            assert await ws.receive_str() == "through nginx"
            await ws.send_bytes(b"\x00" * 100_000)
            assert await ws.receive_bytes() == b"\x00" * 100_000

        async def body() -> AsyncIterator[bytes]:
            for _ in range(64):
                yield b"z" * 65536

        async with http.post(base + "/upload", data=body()) as r:
            assert (await r.json())["received"] == 64 * 65536


async def test_router_conf_fronts_the_router(
    nginx: Callable[[str], None], tls: tuple[Path, Path], workspace: str
) -> None:
    https_port, http_port = free_port(), free_port()
    site = adapt(
        (ROOT / "nginx" / "router.conf").read_text(),
        {
            "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
            "listen 80;": f"listen 127.0.0.1:{http_port};",
            "server 127.0.0.1:8000;": f"server {workspace.removeprefix('http://')};",
            "/etc/codepool/tls/router.crt": str(tls[0]),
            "/etc/codepool/tls/router.key": str(tls[1]),
        },
    )
    nginx(site)
    await wait_listening(https_port)
    async with client() as http:
        async with http.get(
            f"http://127.0.0.1:{http_port}/login?next=/x", allow_redirects=False
        ) as r:
            assert r.status == 301 and r.headers["Location"].startswith("https://")
            assert r.headers["Location"].endswith("/login?next=/x")
        async with http.get(f"https://127.0.0.1:{https_port}/echo-headers") as r:
            headers = {k.lower(): v for k, v in (await r.json())["headers"].items()}
        assert headers["x-forwarded-proto"] == "https" and headers["x-forwarded-for"] == "127.0.0.1"
        url = f"wss://127.0.0.1:{https_port}/ws"
        async with http.ws_connect(url, protocols=("echo",)) as ws:
            await ws.send_str("hello router")
            assert await ws.receive_str() == "hello router"


@dataclass
class Box:
    root: Path  # the staged /
    tls_dir: Path  # what deploy/workspace-tls.sh made
    code_server_port: int


@pytest.fixture
def provisioned_box(code_server: str, tmp_path: Path) -> Iterator[Box]:
    """The TLS material from workspace-tls.sh, provision-workspace.sh staged into a folder,
    and code-server started as the staged unit says, relocated into that folder."""
    tls_dir, root = tmp_path / "tls", tmp_path / "box"
    subprocess.run([str(ROOT / "deploy" / "workspace-tls.sh"), str(tls_dir)], check=True)
    prefix = Path(code_server).parents[2]  # <prefix>/node_modules/.bin/code-server
    if not (prefix / ".codepool-installed").is_file():
        need("code-server from scripts/install-code-server", f"{prefix} is another install")
    (root / "opt").mkdir(parents=True)
    (root / "opt" / "code-server").symlink_to(prefix)  # already built: the script reuses it
    provision = ROOT / "deploy" / "provision-workspace.sh"
    subprocess.run([str(provision), "--tls-dir", str(tls_dir), "--stage", str(root)], check=True)
    assert (root / "etc/codepool/tls/workspace.key").stat().st_mode & 0o777 == 0o600

    unit = (root / "etc/systemd/system/codepool-code-server.service").read_text()
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.MULTILINE)
    assert exec_start is not None
    port = free_port()
    relocate = {"/opt/": f"{root}/opt/", "/home/": f"{root}/home/", ":8080": f":{port}"}
    argv = [adapt_all(arg, relocate) for arg in exec_start.group(1).split()]
    proc = subprocess.Popen(
        argv,
        env={**os.environ, "HOME": str(root / "home" / "coder")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield Box(root, tls_dir, port)
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.code_server
async def test_a_provisioned_box_serves_code_server_to_the_router_over_verified_tls(
    nginx: Callable[[str], None], provisioned_box: Box, tmp_path: Path
) -> None:
    """deploy/ end to end, short of systemd and EC2: nginx with the staged config in front
    of the staged code-server; the router trusts the box only with the right CA and name,
    assigns it over verified TLS and proxies the workbench with the heartbeat."""
    root, port = provisioned_box.root, free_port()
    conf = (root / "etc/nginx/conf.d/codepool-workspace.conf").read_text()
    nginx(
        adapt(
            conf,
            {
                "listen 8443 ssl;": f"listen 127.0.0.1:{port} ssl;",
                "server 127.0.0.1:8080;": f"server 127.0.0.1:{provisioned_box.code_server_port};",
                "/etc/codepool/tls/": f"{root}/etc/codepool/tls/",
            },
        )
    )
    await wait_listening(port)
    address = f"https://127.0.0.1:{port}"
    name, ca = "workspace.codepool.internal", str(provisioned_box.tls_dir / "ca.crt")
    for wrong in (workspace_tls(ca, "other.internal"), workspace_tls("", name)):
        with pytest.raises(UntrustedBox, match=r"aws\.workspace_tls_name"):
            await probe(address, "/healthz", wrong)  # at once: no waiting for a timeout

    router_port = free_port()
    settings = make_settings(
        tmp_path / "state",
        pool={"warm_spares": 0},
        router={"public_url": f"http://127.0.0.1:{router_port}"},
    )
    backend = MemoryBackend(address)
    backend.tls = workspace_tls(ca, name)
    pool = CodePool(settings, create_store("memory://"), backend)
    await add_test_accounts(pool.store)
    server = RouterServer(create_app(pool, settings, run_loops=False), port=router_port)
    await server.start_server()
    c = Client(f"http://127.0.0.1:{router_port}")
    try:
        assigned = await pool.assign("alice")  # readiness over verified TLS
        assert assigned.workspace.address == address
        assert (await login(c, "alice", PASSWORDS["alice"])).status == 302
        home, html = f"http://alice.localhost:{router_port}/", {"Accept": "text/html"}
        entered = await c.get(home, headers=html)  # her origin's login, by a one-time pass
        assert entered.status == 200 and entered.url.path == "/_codepool/enter"
        resp = await c.get(home, headers=html)
        page = await resp.text()
        assert resp.status == 200, page
        assert page.count("/_codepool/heartbeat.js") == 1  # the workbench, through TLS
    finally:
        await c.close()
        await server.close()
        await pool.close()


def adapt_all(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text


async def test_front_conf_carries_workspace_traffic_the_router_allows(
    nginx: Callable[[str], None], workspace: str, tmp_path: Path
) -> None:
    """nginx/front.conf: after the router's yes, nginx carries assets, redirects, uploads and
    WebSockets of a workspace origin to the box itself, without any of the router's
    cookies (every copy). The router still answers HTML documents (the heartbeat), people
    not logged in, other people's workspaces, requests from other origins, foreign-Origin
    WebSockets and stopped workspaces."""
    front_port = free_port()
    base = f"http://127.0.0.1:{front_port}"
    alice_home = f"http://alice.localhost:{front_port}"
    settings = make_settings(
        tmp_path / "state",
        pool={"warm_spares": 0},
        router={"public_url": base, "trusted_proxies": ["127.0.0.1"]},
    )
    pool = CodePool(settings, create_store("memory://"), MemoryBackend(workspace))
    await add_test_accounts(pool.store)
    app = create_app(pool, settings, run_loops=False)
    proxy = app[ROUTER].proxy
    carried_by_router: list[str] = []
    http_of, ws_of = proxy.http, proxy.websocket

    async def counted_http(request: web.Request, user: str, path: str) -> web.StreamResponse:
        carried_by_router.append(path)
        return await http_of(request, user, path)

    async def counted_ws(request: web.Request, user: str, path: str) -> web.StreamResponse:
        carried_by_router.append("ws:" + path)
        return await ws_of(request, user, path)

    proxy.http, proxy.websocket = counted_http, counted_ws  # type: ignore[method-assign]
    async with serve_app(app) as router_url:
        nginx(front_site(router_url, front_port, tmp_path))
        await wait_listening(front_port)
        await pool.assign("alice")
        await pool.assign("bob")
        c = Client(base)
        try:
            resp = await c.get(alice_home + "/echo-headers", allow_redirects=False)
            assert resp.status == 401  # not logged in: the router's answer
            assert (await login(c, "alice", PASSWORDS["alice"])).status == 302
            resp = await c.get(alice_home + "/", headers={"Accept": "text/html"})
            assert resp.status == 200 and resp.url.path == "/_codepool/enter"
            carried_by_router.clear()

            for _ in range(3):  # the first asks the router; the others use nginx's cache
                resp = await c.get(alice_home + "/echo-headers?x=a%26b%20c")
                assert resp.status == 200
                echoed = await resp.json()
            headers = {k.lower(): v for k, v in echoed["headers"].items()}
            assert "codepool" not in headers.get("cookie", "")  # the router's stayed out
            assert echoed["path_qs"] == "/echo-headers?x=a%26b%20c"
            assert headers["host"] == f"alice.localhost:{front_port}"
            resp = await c.get(alice_home + "/redirect", allow_redirects=False)
            assert resp.headers["Location"] == "/files/target.txt"
            resp = await c.post(alice_home + "/upload", data=b"y" * 300_000)
            assert (await resp.json())["received"] == 300_000
            async with c.ws_connect(
                alice_home + "/ws", protocols=("echo",), origin=alice_home
            ) as ws:
                await ws.send_str("through the front")
                assert await ws.receive_str() == "through the front"
            resp = await c.get(alice_home + "/bomb?mb=64", headers={"Accept-Encoding": "gzip"})
            assert await resp.read() == gzip_bomb(64)  # carried as it came, never inflated
            resp = await c.get(alice_home + "/set-cookies")
            assert "Set-Cookie" not in resp.headers  # nginx cannot pick: it sets none
            assert "Service-Worker-Allowed" not in resp.headers
            assert "Clear-Site-Data" not in resp.headers
            assert carried_by_router == []  # nginx carried all of it
            # People's own apps (behind code-server's /proxy/<port>/) keep their cookies:
            # the router carries them and drops only what may not pass.
            resp = await c.get(alice_home + "/proxy/3000/set-cookies")
            assert carried_by_router == ["/proxy/3000/set-cookies"]
            carried_by_router.clear()

            # Every copy of every router cookie is cut, by nginx itself.
            session = c.cookie(app[ROUTER].cookies.workspace, alice_home)
            assert session is not None
            planted = ["codepool_session=x", "__Host-codepool_ws=y", "codepool_state=z"]
            for copies in (1, 3, 10):
                header = "; ".join(
                    [f"codepool_ws={session}", "theirs=1", *planted * copies, "more=2"]
                )
                echoed = await raw_get(front_port, "alice.localhost", "/echo-headers", header)
                sent = {k.lower(): v for k, v in echoed["headers"].items()}["cookie"]
                assert sent == "theirs=1; more=2", (copies, sent)
            assert carried_by_router == []

            resp = await c.get(alice_home + "/", headers={"Accept": "text/html"})
            assert (await resp.text()).count("/_codepool/heartbeat.js") == 1
            assert carried_by_router[-1] == "/"  # the page went through the router
            resp = await c.get(f"http://bob.localhost:{front_port}/echo-headers")
            assert resp.status == 401  # alice has no session on bob's origin
            resp = await c.get(
                alice_home + "/echo-headers",
                headers={
                    "Origin": f"http://bob.localhost:{front_port}",
                    "Sec-Fetch-Site": "same-site",
                },
            )
            assert resp.status == 403  # from another origin: refused by the router
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await c.ws_connect(alice_home + "/ws", protocols=("echo",), origin=base)
            assert refused.value.status == 403
            resp = await c.get(alice_home + "/_codepool/auth")
            assert resp.status == 404  # the front's questions are not for browsers
            await pool.release("alice")
            await asyncio.sleep(2.5)  # nginx's yes and the router's address cache expire
            resp = await c.get(alice_home + "/echo-headers")
            assert resp.status == 409  # stopped: the router says so
        finally:
            await c.close()
    await pool.close()


async def raw_get(port: int, host: str, path: str, cookie: str) -> dict[str, Any]:
    """A GET with exactly this Cookie header (HTTP clients merge and dedupe cookies)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nCookie: {cookie}\r\n"
    writer.write((request + "Connection: close\r\n\r\n").encode())
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), (head, body, cookie)
    if b"chunked" in head.lower():
        body = dechunk(body)
    result: dict[str, Any] = json.loads(body)
    return result


def dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size, _, body = body.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out, body = out + body[:n], body[n + 2 :]
    return out


async def test_front_keeps_boxes_connections_and_a_bounded_memory_of_yeses(
    nginx: Callable[[str], None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nginx/front.conf: requests to a box reuse kept-alive connections to it; the
    router's yes is asked once per browser and kept in shared memory, whose size bounds
    it: when full, the least recently used yes is forgotten (its next request asks the
    router again) and nothing fails."""
    from codepool.daemon import workspace

    asked: list[str] = []
    authorize = workspace.authorize_front

    async def counted(request: web.Request, label: str) -> web.StreamResponse:
        asked.append(request.headers.get("Cookie", ""))
        return await authorize(request, label)

    monkeypatch.setattr(workspace, "authorize_front", counted)
    box = OkBox()
    server = await asyncio.start_server(box, "127.0.0.1", 0)
    address = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with (
        server,
        entered("front", address, tmp_path, nginx, yes_size="64k", yes_s=600) as entry,
    ):
        port, host, cookie = entry
        # The box's own health checks (the assignment's) are not the front's.
        box.connections, asked[:] = 0, []

        async def get(extra_cookie: str) -> bytes:
            raw = f"GET /a.js HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}{extra_cookie}\r\n"
            return await exchange(port, (raw + "Connection: close\r\n\r\n").encode(), 1)

        for _ in range(20):
            assert (await get("")).endswith(b"ok")
        assert len(asked) == 1  # one yes, kept
        assert box.connections == 1  # one connection to the box, kept alive
        # A burst of one browser that has no yes (one ended while a page loads): one of
        # its requests asks the router, the others wait for that answer.
        burst = await asyncio.gather(*(get("; burst=1") for _ in range(20)))
        assert all(answer.endswith(b"ok") for answer in burst)
        assert 1 <= sum("burst=1" in c for c in asked) <= 3, asked  # not twenty
        asked[:], box.connections = asked[:1], 1
        # Many browsers (each its own Cookie header): far more yeses than 64 KB hold, each
        # kept for 10 minutes here, so only the bound can make one be forgotten.
        for n in range(1500):
            assert (await get(f"; n={n}")).endswith(b"ok")
        assert len(asked) == 1 + 1500
        assert (await get("; n=1499")).endswith(b"ok")  # the latest is still known
        assert len(asked) == 1501
        assert (await get("; n=0")).endswith(b"ok")  # the oldest was forgotten: asked again
        assert len(asked) == 1502
        assert box.connections <= 2
    errors = (tmp_path / "error.log").read_text()
    assert "no memory" not in errors and "[error]" not in errors, errors[-2000:]


async def test_front_renews_a_yes_before_it_ends_while_the_others_go_on(
    nginx: Callable[[str], None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a yes's last half second one request asks the router again; the browser's other
    requests go on with the yes meanwhile, not waiting for the router; a no ends the yes
    at once."""
    from codepool.daemon import workspace

    asked: list[float] = []
    gate = asyncio.Event()
    gate.set()
    authorize = workspace.authorize_front

    refuse = False

    async def held(request: web.Request, label: str) -> web.StreamResponse:
        asked.append(time.monotonic())
        await gate.wait()
        return web.Response(status=403) if refuse else await authorize(request, label)

    monkeypatch.setattr(workspace, "authorize_front", held)
    server = await asyncio.start_server(OkBox(), "127.0.0.1", 0)
    address = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server, entered("front", address, tmp_path, nginx) as (port, host, cookie):
        raw = f"GET /a.js HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
        raw += "Connection: close\r\n\r\n"
        asked.clear()
        assert (await exchange(port, raw.encode(), 1)).endswith(b"ok")
        assert len(asked) == 1
        await asyncio.sleep(2 - 0.4 - (time.monotonic() - asked[0]))  # 0.4 s left
        gate.clear()  # the router is slow now
        renewing = asyncio.create_task(exchange(port, raw.encode(), 5))
        for _ in range(100):
            if len(asked) == 2:
                break
            await asyncio.sleep(0.005)
        assert len(asked) == 2, "no request renewed the yes in its last half second"
        for _ in range(3):  # the router is still asked: these go on with the yes
            assert (await exchange(port, raw.encode(), 1)).endswith(b"ok")
        assert len(asked) == 2
        gate.set()
        assert (await renewing).endswith(b"ok")
        # The next renewal is told no (a session revoked, say): that yes is gone at once.
        refuse = True
        await asyncio.sleep(2 - 0.4 - (time.monotonic() - asked[1]))
        await exchange(port, raw.encode(), 1)  # renews, is told no, goes to the router
        assert len(asked) == 3
        await exchange(port, raw.encode(), 1)
        assert len(asked) == 4, "the yes was used after the router said no"


@pytest.fixture
def box_tls(tmp_path: Path) -> Path:
    """What deploy/workspace-tls.sh makes: the pool's private CA and a box certificate."""
    tls_dir = tmp_path / "tls"
    subprocess.run([str(ROOT / "deploy" / "workspace-tls.sh"), str(tls_dir)], check=True)
    return tls_dir


async def test_front_reaches_boxes_over_verified_tls(
    nginx: Callable[[str], None], tmp_path: Path, box_tls: Path
) -> None:
    """nginx/front.conf with its proxy_ssl_* lines on (boxes on AWS serve TLS with the
    pool's private CA): a box the router names https:// is reached over TLS, its
    certificate checked, over a kept-alive connection, and gets no router cookie."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(box_tls / "workspace.crt", box_tls / "workspace.key")
    box = OkBox()
    server = await asyncio.start_server(box, "127.0.0.1", 0, ssl=context)
    address = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    ca = str(box_tls / "ca.crt")
    tls = workspace_tls(ca, "workspace.codepool.internal")
    async with (
        server,
        entered("front", address, tmp_path, nginx, tls=tls, box_ca=ca) as (port, host, cookie),
    ):
        box.connections, box.heads[:] = 0, []  # the assignment's own health checks
        for _ in range(5):
            raw = f"GET /a.js HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}; theirs=1\r\n"
            got = await exchange(port, (raw + "Connection: close\r\n\r\n").encode(), 1)
            assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"ok"), got
        assert len(box.heads) == 5 and box.connections == 1
        assert all(b"\r\nCookie: theirs=1\r\n" in h for h in box.heads), box.heads[0]
    errors = (tmp_path / "error.log").read_text()
    assert "[error]" not in errors, errors[-2000:]


async def test_front_refuses_a_box_whose_certificate_the_pool_did_not_sign(
    nginx: Callable[[str], None], tmp_path: Path, box_tls: Path
) -> None:
    """nginx/front.conf as shipped verifies boxes: something answering on a box's address
    with a certificate of another CA (of the right name) gets no request of the person's."""
    other = tmp_path / "other-tls"
    tls_script = [str(ROOT / "deploy" / "workspace-tls.sh"), str(other)]
    await asyncio.to_thread(subprocess.run, tls_script, check=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(other / "workspace.crt", other / "workspace.key")
    box = OkBox()
    server = await asyncio.start_server(box, "127.0.0.1", 0, ssl=context)
    address = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    ca = str(box_tls / "ca.crt")  # the pool's CA: the front trusts it alone
    # The router is told to trust the impostor's CA, so that only the front decides here.
    tls = workspace_tls(str(other / "ca.crt"), "workspace.codepool.internal")
    async with (
        server,
        entered("front", address, tmp_path, nginx, tls=tls, box_ca=ca) as (port, host, cookie),
    ):
        box.heads[:] = []  # the router's own health checks
        raw = f"GET /a.js HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        got = await exchange(port, raw.encode(), 1)
        assert got.startswith(b"HTTP/1.1 502"), got[:200]
        assert box.heads == []
    assert "upstream SSL certificate verify error" in (tmp_path / "error.log").read_text()


class OkBox:
    """A box that answers every request 200 "ok" on kept-alive connections; it counts
    the connections and keeps each request's head."""

    def __init__(self) -> None:
        self.connections = 0
        self.heads: list[bytes] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while head := await reader.readuntil(b"\r\n\r\n"):
                    self.heads.append(head)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await writer.drain()
        finally:  # also when the server's close cancels this handler
            writer.close()
