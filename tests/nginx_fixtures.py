"""nginx for tests: Debian's nginx started on a site config adapted to loopback ports and
the test's folder, the stand-in workspace as a box, and nginx/front.conf made ready to
run in front of a router."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import need
from tests.helpers import serve_app
from tests.standin_workspace import make_app

ROOT = Path(__file__).resolve().parents[1]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

MAIN = """
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


def front_site(router_url: str, front_port: int, tmp_path: Path) -> str:
    """nginx/front.conf on loopback: it listens on front_port, asks the router at
    router_url, and serves workspace origins under *.localhost."""
    return adapt(
        (ROOT / "nginx" / "front.conf").read_text(),
        {
            "listen 80;": f"listen 127.0.0.1:{front_port};",
            "server 127.0.0.1:8000;": f"server {router_url.removeprefix('http://')};",
            "/var/cache/nginx/codepool-auth": str(tmp_path / "auth-cache"),
            "server_name router.example.com;": "server_name 127.0.0.1;",
            r"\.ws\.example\.com$;": r"\.localhost$;",
        },
    )
