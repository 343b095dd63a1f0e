"""nginx for tests: Debian's nginx started on a site config adapted to loopback ports and
the test's folder, the stand-in workspace as a box, nginx/front.conf made ready to run
in front of a router, and a router (with or without the front) that alice has entered,
for raw requests into her workspace."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from codepool.core.pool import CodePool
from codepool.core.store import create_store
from codepool.core.tls import WorkspaceTls
from codepool.daemon.app import create_app
from codepool.daemon.context import ROUTER
from tests.conftest import make_settings, need
from tests.fakes import MemoryBackend
from tests.helpers import RouterServer, serve_app
from tests.ports import free_port
from tests.router_fixtures import PASSWORDS, Client, add_test_accounts, login
from tests.standin_workspace import make_app

ROOT = Path(__file__).resolve().parents[1]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

# nginx/front.conf needs Debian's Lua module (libnginx-mod-http-lua, which scripts/test
# installs); Debian's own nginx.conf loads it from modules-enabled, this one names it.
MAIN = """
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
{user}worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/site.conf;
}}
"""


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[[str], None]]:
    """Start nginx with a site config (already adapted to loopback ports and temp paths)."""
    if not Path(NGINX).exists():
        need("nginx", "it is not installed (apt-get install nginx)")
    procs: list[subprocess.Popen[bytes]] = []

    def start(site: str) -> None:
        (tmp_path / "site.conf").write_text(site)
        main = tmp_path / "nginx.conf"
        # Under root, workers would run as nobody, who cannot write into the test's folder.
        user = "user root;\n" if os.geteuid() == 0 else ""
        main.write_text(MAIN.format(tmp=tmp_path, user=user))
        test = subprocess.run(
            [NGINX, "-t", "-c", str(main), "-p", str(tmp_path)], capture_output=True, text=True
        )
        assert test.returncode == 0, test.stderr
        procs.append(
            subprocess.Popen([NGINX, "-c", str(main), "-p", str(tmp_path), "-g", "daemon off;"])
        )

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


@pytest.fixture
async def workspace(tmp_path: Path) -> AsyncIterator[str]:
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("x")
    async with serve_app(make_app(home)) as url:
        yield url


def adapt(conf: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in conf, old
        conf = conf.replace(old, new)
    return conf


async def wait_listening(port: int) -> None:
    for _ in range(100):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"nginx did not listen on {port}")


def front_site(
    router_url: str,
    front_port: int,
    tmp_path: Path,
    yes_size: str = "10m",
    yes_s: int = 2,
    box_ca: str = "",
) -> str:
    """nginx/front.conf on loopback: it listens on front_port, asks the router at
    router_url, and serves workspace origins under *.localhost (yes_size and yes_s: the
    shared memory for the router's yeses and how long one is kept, instead of the
    file's 10m and 2 s; box_ca: its lines for boxes serving TLS, on, with this CA)."""
    conf = (ROOT / "nginx" / "front.conf").read_text()
    trusted = "proxy_ssl_trusted_certificate /etc/codepool/tls/workspace-ca.crt;"
    if box_ca:
        conf = adapt(conf, {trusted: f"proxy_ssl_trusted_certificate {box_ca};"})
    else:  # boxes on plain http: the file's TLS lines go, as it says
        conf = adapt(
            conf,
            {
                "proxy_ssl_verify on;": "",
                trusted: "",
                "proxy_ssl_name workspace.codepool.internal;": "",
                "proxy_ssl_server_name on;": "",
            },
        )
    return adapt(
        conf,
        {
            "lua_shared_dict codepool_yes 10m;": f"lua_shared_dict codepool_yes {yes_size};",
            "yes:set(key, box, 2, port)": f"yes:set(key, box, {yes_s}, port)",
            "listen 80;": f"listen 127.0.0.1:{front_port};",
            "server 127.0.0.1:8000;": f"server {router_url.removeprefix('http://')};",
            "server_name router.example.com;": "server_name 127.0.0.1;",
            r"\.ws\.example\.com$;": r"\.localhost$;",
        },
    )


@contextlib.asynccontextmanager
async def entered(
    kind: str,
    box: str,
    tmp_path: Path,
    nginx: Callable[[str], None],
    tls: WorkspaceTls | None = None,
    **front: Any,
) -> AsyncIterator[tuple[int, str, str]]:
    """A router (behind the nginx front when kind is "front") whose alice has her
    workspace at box (reached with tls when it serves https) and has entered it: (port
    to send to, her Host, her Cookie)."""
    router_port, front_port = free_port(), free_port()
    port = router_port if kind == "router" else front_port
    settings = make_settings(
        tmp_path / "state",
        pool={"warm_spares": 0},
        router={"public_url": f"http://127.0.0.1:{port}", "trusted_proxies": ["127.0.0.1"]},
    )
    backend = MemoryBackend(box)
    backend.tls = tls
    pool = CodePool(settings, create_store("memory://"), backend)
    await add_test_accounts(pool.store)
    app = create_app(pool, settings, run_loops=False)
    name = app[ROUTER].cookies.workspace
    server = RouterServer(app, port=router_port)
    await server.start_server()
    if kind == "front":
        nginx(front_site(f"http://127.0.0.1:{router_port}", front_port, tmp_path, **front))
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
        yield port, f"alice.localhost:{port}", f"{name}={session}"
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
