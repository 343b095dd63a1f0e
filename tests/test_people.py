"""A person's day with real code-server, in Chromium: log in and land on the home page;
open VS Code with no trust prompt and no internal path in sight; keep the workspace
running for an hour with its tab closed and find it running after the idle timeout;
leave a tab hidden, get the warning, click it and keep the workspace; leave it hidden
with neither, and find it stopped, which the home page says and undoes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from codepool.core.settings import DEFAULT_COMMAND
from tests.browsing import SHOTS, log_in, set_hidden, start_router, wait_for, workspace_row
from tests.serving import Server

pytestmark = [pytest.mark.browser, pytest.mark.code_server]

IDLE_S, WARN_S = 14, 10

# Keeps every Notification the page makes, so the test can click one as a person would
# click the one their desktop shows (a headless browser shows none).
SPY_ON_NOTIFICATIONS = """
(() => {
  if (!window.Notification) return;
  const Real = window.Notification;
  window.__notes = [];
  window.Notification = class extends Real {
    constructor(title, options) { super(title, options); window.__notes.push(this); }
  };
})();
"""


def running(env: dict[str, str]) -> bool:
    row = workspace_row(env, "alice")
    return row is not None and row["state"] == "running"


@contextlib.asynccontextmanager
async def telling_why(page: Any) -> AsyncIterator[None]:
    """On a failure inside, print what the page logged and failed to load, and what it
    shows (a screenshot in build/screenshots/people-failure.png)."""
    log: list[str] = []
    page.on("console", lambda m: log.append(f"console {m.type}: {m.text}"))
    page.on("requestfailed", lambda r: log.append(f"failed {r.url} {r.failure}"))
    page.on("response", lambda r: log.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    try:
        yield
    except Exception:
        await page.screenshot(path=str(SHOTS / "people-failure.png"))
        print("\n".join(log[-60:]), page.url, (await page.content())[:3000], sep="\n")
        raise


async def open_vs_code(page: Any, site: str) -> None:
    async with telling_why(page):
        await page.wait_for_url(site + "**", timeout=120_000)
        await page.locator(".monaco-workbench").wait_for(timeout=120_000)
        await page.locator(".explorer-folders-view").first.wait_for(timeout=60_000)


# A whole day in one test: real code-server opened three times in Chromium and idle waits
# of about a minute in all. 88 s on a fast machine, over 120 s (the default guard against
# a hang) on a slow one.
@pytest.mark.timeout(360)
async def test_a_persons_day(
    browser: Any, state_dir: Path, servers: list[Server], code_server: str
) -> None:
    server, env = await start_router(
        state_dir,
        servers,
        CODEPOOL_LOCAL_COMMAND=" ".join([code_server, *DEFAULT_COMMAND[1:]]),
        CODEPOOL_POOL_ASSIGN_TIMEOUT_S="120",
        CODEPOOL_POOL_IDLE_TIMEOUT_S=str(IDLE_S),
        CODEPOOL_POOL_IDLE_WARNING_S=str(WARN_S),
    )
    main, site = server.url, f"http://alice.localhost:{server.port}/"
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    await context.grant_permissions(["notifications"], origin=site.rstrip("/"))
    await context.add_init_script(SPY_ON_NOTIFICATIONS)

    # A new person logs in and lands on the home page, then opens VS Code.
    home = await context.new_page()
    await log_in(home, main, "alice", "alice-password", open_it=False)
    assert await home.get_by_text("Not started").count() == 1
    await home.get_by_role("link", name="Start my workspace").click()
    await open_vs_code(home, site)
    # No trust prompt, no Restricted Mode, and no internal path in the URL or the window.
    await asyncio.sleep(3)  # the prompt, when on, shows within a second of the workbench
    assert await home.get_by_text("Do you trust the authors").count() == 0
    assert await home.get_by_text("Restricted Mode").count() == 0
    row = workspace_row(env, "alice")
    assert row is not None
    for visible in (home.url, await home.title()):
        assert str(state_dir) not in visible and row["instance_id"] not in visible, visible
        assert "slots" not in visible, visible
    assert "alice" in await home.title()  # the folder is named for her
    await home.screenshot(path=str(SHOTS / "people-workbench.png"))

    # She keeps it running for an hour from the home page and closes the workspace's tab.
    await home.goto(main + "/")
    await home.select_option("#hold-for", "3600")
    await home.get_by_role("button", name="Keep running", exact=True).click()
    await home.get_by_text("keeps running for the time you chose").wait_for()
    assert await home.get_by_text("Kept running").count() == 1
    await home.screenshot(path=str(SHOTS / "people-home-held.png"))
    held_at = time.monotonic()
    await asyncio.sleep(IDLE_S + 4 - (time.monotonic() - held_at))
    assert running(env), "a held workspace was stopped"
    await home.reload()
    assert await home.get_by_text("Running", exact=True).count() == 1

    # Back in VS Code, she ends the hold and leaves the tab in the background: it warns
    # her, and one click on the warning keeps the workspace running.
    tab = await context.new_page()
    await tab.goto(site)
    await open_vs_code(tab, site)
    await home.get_by_role("button", name="Let it stop when idle").click()
    await home.get_by_text("stops when idle again").wait_for()
    await set_hidden(tab, True)
    async with telling_why(tab):
        await tab.locator("#codepool-warning").wait_for(timeout=60_000)
    assert (await tab.title()).startswith("\u23f8 Stops soon")
    await tab.screenshot(path=str(SHOTS / "people-warning.png"))
    await tab.wait_for_function("window.__notes && window.__notes.length > 0", timeout=30_000)
    title = await tab.evaluate("window.__notes[0].title")
    assert title.startswith("Your workspace stops in about"), title
    await tab.evaluate("window.__notes[0].dispatchEvent(new Event('click'))")
    await tab.locator("#codepool-warning").wait_for(state="detached", timeout=30_000)
    row = workspace_row(env, "alice")
    assert row is not None and row["hold_until_ms"] > time.time() * 1000 + 3500_000
    await asyncio.sleep(WARN_S + 3)
    assert running(env), "the workspace stopped although the warning was clicked"

    # With neither, it stops; the tab says so, and the home page says so and resumes it.
    await tab.evaluate(
        """() => fetch("/_codepool/hold", {method: "POST",
            headers: {"Content-Type": "application/json"}, body: '{"for_s": 0}'})"""
    )
    await wait_for(lambda: not running(env), 90, "the idle workspace to stop")
    await tab.locator("#codepool-stopped").wait_for(timeout=60_000)
    await home.goto(main + "/")
    assert await home.get_by_text("Stopped", exact=True).count() == 1
    await home.screenshot(path=str(SHOTS / "people-home-stopped.png"))
    await home.get_by_role("link", name="Start my workspace").click()
    await open_vs_code(home, site)
    assert running(env)
    await context.close()
