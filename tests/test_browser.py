"""End to end in a real browser (Debian's Chromium driven by Playwright): log in, land in
the workspace through the proxy, see pings move lastSeen, hide the tab and see them stop,
see the workspace stopped after a short idle timeout, come back and find the same files.
Once with the stand-in workspace and once with real code-server (the VS Code workbench
must load and reach its server over the proxied WebSocket). Screenshots go to
build/screenshots/."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from codepool.core.settings import DEFAULT_COMMAND

try:
    from playwright.async_api import Error as PlaywrightError
except ImportError:  # the fixture below says what is missing
    PlaywrightError = Exception  # type: ignore[misc,assignment]
from codepool.daemon.auth import Users
from tests.conftest import need
from tests.router_fixtures import free_port
from tests.serving import Server, serve_env

pytestmark = pytest.mark.browser

SHOTS = Path(__file__).resolve().parents[1] / "build" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not Path(CHROMIUM).exists():
        need("Chromium", f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        need("Playwright", "the playwright package is not installed")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        await b.close()


def workspace_row(env: dict[str, str], user: str) -> dict[str, Any] | None:
    out = subprocess.run(
        [sys.executable, "-m", "codepool", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [r for r in json.loads(out)["workspaces"] if r["user"] == user]
    return rows[0] if rows else None


async def wait_for(check: Any, timeout_s: float, what: str) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.25)


async def log_in(page: Any, base: str, user: str, password: str) -> None:
    await page.goto(base + "/")
    await page.fill("input[name=user]", user)
    await page.fill("input[name=password]", password)
    await page.click("button[type=submit]")


async def set_hidden(page: Any, hidden: bool) -> None:
    """Make the tab report hidden or visible, as switching tabs does, and fire the event."""
    state = "hidden" if hidden else "visible"
    await page.evaluate(
        """(state) => {
            Object.defineProperty(
                document, "visibilityState", {configurable: true, get: () => state});
            document.dispatchEvent(new Event("visibilitychange"));
        }""",
        state,
    )


async def start_router(
    state_dir: Path, servers: list[Server], **env_extra: str
) -> tuple[Server, dict[str, str]]:
    """`codepool serve` with a quick heartbeat and reaper, and the account alice."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    env = serve_env(
        state_dir,
        CODEPOOL_ROUTER_HEARTBEAT_INTERVAL_S="1",
        CODEPOOL_ROUTER_REAP_INTERVAL_S="1",
        **env_extra,
    )
    state_dir.mkdir(parents=True, exist_ok=True)
    Users(state_dir / "users.json").add("alice", "alice-password")
    server = Server(env, free_port())
    servers.append(server)
    await asyncio.to_thread(server.wait_up)
    return server, env


async def test_stand_in_workspace_lifecycle_in_a_browser(
    browser: Any, state_dir: Path, servers: list[Server]
) -> None:
    server, env = await start_router(state_dir, servers, CODEPOOL_POOL_IDLE_TIMEOUT_S="4")

    page = await browser.new_page()
    await page.goto(server.url + "/")
    assert "/login" in page.url
    await page.screenshot(path=str(SHOTS / "login.png"))
    await log_in(page, server.url, "alice", "alice-password")
    await page.wait_for_url("**/w/alice/", timeout=30_000)
    assert await page.title() == "stand-in"
    assert await page.locator("script[src^='/assets/heartbeat.js']").count() == 1

    row = await wait_for(lambda: workspace_row(env, "alice"), 10, "alice's workspace")
    slot_home = state_dir / "slots" / row["instance_id"] / "home"
    (slot_home / "notes.txt").write_text("kept across the stop")
    first_seen = row["last_seen_ms"]
    await wait_for(
        lambda: (r := workspace_row(env, "alice")) and r["last_seen_ms"] > first_seen + 1500,
        10,
        "pings to move lastSeen",
    )

    await set_hidden(page, True)
    hidden_at = workspace_row(env, "alice")
    assert hidden_at is not None
    await wait_for(
        lambda: (r := workspace_row(env, "alice")) and r["state"] == "stopped",
        20,
        "the idle workspace to be stopped",
    )
    stopped = workspace_row(env, "alice")
    assert stopped is not None
    # No ping was recorded while hidden (one in flight at the switch may land).
    assert stopped["last_seen_ms"] - hidden_at["last_seen_ms"] < 1500

    await set_hidden(page, False)  # back to the tab: the ping says stopped; a banner offers resume
    banner = page.locator("#codepool-stopped")
    await banner.wait_for(timeout=10_000)
    await page.screenshot(path=str(SHOTS / "stopped-banner.png"))
    await banner.locator("a").click()
    await page.wait_for_url("**/w/alice/", timeout=30_000)
    assert "notes.txt" in await page.content()  # the same disk
    row = workspace_row(env, "alice")
    assert row is not None and row["state"] == "running"

    # The session ends (here: its cookie is gone): the next ping sends the tab to log in.
    await page.context.clear_cookies()
    await page.wait_for_url("**/login?next=*", timeout=10_000)
    assert "next=%2Fw%2Falice%2F" in page.url
    await page.close()

    # An admin sees the pool page with alice's workspace and the stop and extend buttons.
    Users(state_dir / "users.json").add("root", "root-password", admin=True)
    admin = await browser.new_page()
    await log_in(admin, server.url, "root", "root-password")
    await admin.wait_for_url("**/w/root/", timeout=30_000)
    await admin.goto(server.url + "/admin")
    assert await admin.locator("td", has_text="alice").count() == 1
    await admin.screenshot(path=str(SHOTS / "admin.png"), full_page=True)
    await admin.close()


@pytest.mark.code_server
async def test_real_code_server_workbench_through_the_proxy(
    browser: Any, state_dir: Path, servers: list[Server], code_server: str
) -> None:
    server, env = await start_router(
        state_dir,
        servers,
        CODEPOOL_LOCAL_COMMAND=" ".join([code_server, *DEFAULT_COMMAND[1:]]),
        CODEPOOL_POOL_ASSIGN_TIMEOUT_S="120",
        CODEPOOL_POOL_IDLE_TIMEOUT_S="5",
    )

    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    await log_in(page, server.url, "alice", "alice-password")
    if "/dispatch" in page.url:  # a cold start: the progress page shows first
        with contextlib.suppress(PlaywrightError):  # unless it is done before we look
            await page.locator("#steps li").first.wait_for(timeout=5_000)
            await page.screenshot(path=str(SHOTS / "starting.png"))
    await page.wait_for_url("**/w/alice/**", timeout=120_000)
    row = await wait_for(lambda: workspace_row(env, "alice"), 10, "alice's workspace")
    home = state_dir / "slots" / row["instance_id"] / "home"
    await page.locator(".monaco-workbench").wait_for(timeout=60_000)
    (home / "hello_codepool.py").write_text("print('hello from codepool')\n")
    await page.reload()  # list the folder afresh, whatever the file watcher saw
    await page.locator(".monaco-workbench").wait_for(timeout=60_000)
    # The explorer lists the folder's files: that needs the server over the WebSocket.
    await page.get_by_text("hello_codepool.py").first.wait_for(timeout=60_000)
    await page.screenshot(path=str(SHOTS / "workbench.png"))
    assert any("/w/alice/" in url for url in sockets), sockets
    assert await page.locator("script[src^='/assets/heartbeat.js']").count() == 1

    # Hide the tab: VS Code's own connections stay open, yet the workspace stops.
    await set_hidden(page, True)
    await wait_for(
        lambda: (r := workspace_row(env, "alice")) and r["state"] == "stopped",
        30,
        "the idle code-server to be stopped",
    )
    await set_hidden(page, False)
    banner = page.locator("#codepool-stopped")
    await banner.wait_for(timeout=15_000)
    await banner.locator("a").click()
    await page.wait_for_url("**/w/alice/**", timeout=120_000)
    await page.locator(".monaco-workbench").wait_for(timeout=60_000)
    await page.get_by_text("hello_codepool.py").first.wait_for(timeout=60_000)  # same disk
    row = workspace_row(env, "alice")
    assert row is not None and row["state"] == "running"
    await page.close()
