"""What the browser tests share: Debian's Chromium driven by Playwright, a real `codepool
serve` with a quick heartbeat and reaper, and the steps a person takes (log in, hide the
tab)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need
from tests.ports import free_port
from tests.serving import Server, add_accounts, serve_env

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


async def log_in(page: Any, base: str, user: str, password: str, open_it: bool = True) -> None:
    """Log in, land on the home page, and (open_it) press its button to the workspace."""
    await page.goto(base + "/")
    await page.fill("input[name=user]", user)
    await page.fill("input[name=password]", password)
    await page.click("button[type=submit]")
    await page.wait_for_url(base + "/", timeout=30_000)
    await page.get_by_role("heading", name=f"Hello, {user}").wait_for(timeout=10_000)
    if open_it:
        await page.click("a[href='/dispatch']")


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
    """`codepool serve` with a quick heartbeat and reaper, and the accounts alice, bob and
    root (an admin); passwords "<name>-password"."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    env = serve_env(
        state_dir,
        CODEPOOL_ROUTER_HEARTBEAT_INTERVAL_S="1",
        CODEPOOL_ROUTER_REAP_INTERVAL_S="1",
        **env_extra,
    )
    await add_accounts(state_dir, ["alice", "bob", "root"], admins=("root",))
    server = Server(env, free_port())
    servers.append(server)
    await asyncio.to_thread(server.wait_up)
    return server, env
