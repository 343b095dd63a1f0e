"""`codepool serve` as a real process, for the tests that need one (or two): start it on
the stand-in workspace, wait for /health, log people in and dispatch them over HTTP."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import tempfile
import time
from http.cookies import BaseCookie
from pathlib import Path
from typing import ClassVar

import aiohttp
from yarl import URL

from codepool.core.accounts import hash_password
from codepool.core.models import Account
from codepool.core.store import create_store
from tests.helpers import codepool_env


def serve_env(state_dir: Path, **extra: str) -> dict[str, str]:
    """A router with no warm spare and a loop cycle every second."""
    settings = {"CODEPOOL_POOL_WARM_SPARES": "0", "CODEPOOL_ROUTER_REAP_INTERVAL_S": "1"}
    return codepool_env(state_dir, **{**settings, **extra})


class Server:
    """A `codepool serve` process. Its output goes to a file (a pipe nobody reads would
    fill and stall it); after each test, every one started is stopped and its output
    checked for tracebacks (tests/conftest.py)."""

    started: ClassVar[list[Server]] = []  # running, or stopped and not yet looked at
    outputs: ClassVar[list[tuple[str, str]]] = []  # (url, output) of each one closed

    def __init__(self, env: dict[str, str], port: int, *args: str) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        # Opened for appending: the server writes at the end whatever the test reads.
        self.log = tempfile.TemporaryFile("a+")  # noqa: SIM115 (closed by close())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "codepool", "serve", "--port", str(port), *args],
            env={**env, "CODEPOOL_ROUTER_PUBLIC_URL": self.url},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        Server.started.append(self)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait_up(self) -> None:
        import urllib.request

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.proc.kill()
        self.proc.wait()
        raise AssertionError("server did not come up: " + self.output())

    def stop(self) -> str:
        """SIGTERM, as systemd stops it; its whole output."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        return self.output()

    def close(self) -> None:
        """Kill it if it still runs; its output is kept in Server.outputs."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        Server.outputs.append((self.url, self.output()))
        self.log.close()

    @classmethod
    def close_all(cls) -> None:
        """Close every server started and not closed yet: after each test, and before a
        test's state folder's workspaces are stopped (a router left running would start
        them again)."""
        for server in cls.started:
            server.close()
        cls.started = []

    @classmethod
    def take_outputs(cls) -> list[tuple[str, str]]:
        """Close them all; the (url, output) of each closed since the last call."""
        cls.close_all()
        outputs, cls.outputs = cls.outputs, []
        return outputs


async def add_accounts(
    state_dir: Path,
    names: list[str],
    store_url: str = "",
    key_prefix: str = "",
    admins: tuple[str, ...] = (),
) -> None:
    """Accounts for names, each with the password "<name>-password", in the store a router
    on state_dir uses (its SQLite file unless store_url says otherwise)."""
    url = store_url or f"sqlite:///{state_dir / 'codepool.db'}"
    hashes = await asyncio.gather(
        *(asyncio.to_thread(hash_password, f"{name}-password") for name in names)
    )
    store = create_store(url, key_prefix=key_prefix)
    try:
        for name, digest in zip(names, hashes, strict=True):
            assert await store.add_account(Account(name, name in admins, digest, 1))
    finally:
        await store.close()


def client(inflate: bool = True) -> aiohttp.ClientSession:
    """A browser's session: its cookies, *.localhost on the loopback address as browsers
    have it, and no request that may hang (a stuck one fails the test naming its URL).
    inflate=False reads compressed bodies as they come."""
    from tests.helpers import LoopbackNames

    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(resolver=LoopbackNames()),
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        timeout=aiohttp.ClientTimeout(total=60),
        auto_decompress=inflate,
    )


async def log_in(http: aiohttp.ClientSession, base: str, user: str) -> None:
    """Log in as a test account (password "<user>-password")."""
    async with http.get(base + "/login") as resp:
        csrf = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
    assert csrf is not None
    form = {"csrf": csrf.group(1), "user": user, "password": f"{user}-password"}
    async with http.post(base + "/login", data=form, allow_redirects=False) as resp:
        assert resp.status == 302, await resp.text()


async def log_in_and_dispatch(http: aiohttp.ClientSession, base: str, user: str) -> str:
    """Log in (unless http has a session already) and follow /dispatch until it sends the
    user to their workspace; returns that location."""
    if not http.cookie_jar.filter_cookies(URL(base)):
        await log_in(http, base, user)
    for _ in range(100):
        async with http.get(base + "/dispatch", allow_redirects=False) as resp:
            if resp.status == 302:
                return resp.headers["Location"]
            assert resp.status == 200, await resp.text()
        await asyncio.sleep(0.2)
    async with http.get(base + "/dispatch/status") as resp:
        raise AssertionError(f"{user} never dispatched: {await resp.text()}")


async def enter(http: aiohttp.ClientSession, location: str) -> None:
    """Open a workspace's origin the first time, as a browser does (through the main
    origin's one-time pass)."""
    async with http.get(location, headers={"Accept": "text/html"}) as resp:
        assert resp.status == 200, (location, resp.status, await resp.text())
        assert resp.url.path == "/_codepool/enter", (location, resp.url)


async def session_cookies(base: str, user: str) -> BaseCookie[str]:
    """Log in in a fresh browser; its cookies, for other browsers of the same person."""
    async with client() as http:
        await log_in(http, base, user)
        return http.cookie_jar.filter_cookies(URL(base))


async def login_and_dispatch(base: str, user: str, cookies: BaseCookie[str] | None = None) -> str:
    """One visit in a fresh browser (logged in with cookies when given), checked to land
    in a workspace that answers; the workspace's host."""
    async with client() as http:
        if cookies:
            http.cookie_jar.update_cookies(cookies, URL(base))
        location = await log_in_and_dispatch(http, base, user)
        await enter(http, location + "healthz")
        async with http.get(location + "healthz") as probe:
            assert probe.status == 200, (user, location, probe.status, await probe.text())
    return str(URL(location).host)


async def is_leader(server: Server) -> bool:
    async with aiohttp.ClientSession() as http, http.get(server.url + "/health") as resp:
        return bool((await resp.json())["leader"])
