"""The heartbeat script (codepool/daemon/static/heartbeat.js) in a real browser, with the
router played by the test: every answer is held and given in an order the test chooses,
so the interleavings a busy router produces now and then happen every time."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import codepool.daemon

pytestmark = pytest.mark.browser

SITE = "http://workspace.test"
SCRIPT = (Path(codepool.daemon.__file__).parent / "static" / "heartbeat.js").read_text()
PAGE = (
    "<!doctype html><title>a workspace</title><body><p>the workbench</p>"
    '<script src="/heartbeat.js" data-instance-id="i-1" data-interval="30" '
    'data-ping="/ping" data-status="/status" data-hold="/hold" data-home="/home"></script>'
)
HIDDEN = """Object.defineProperty(document, "visibilityState",
    {configurable: true, get: () => "hidden"});"""
# What the router says of the workspace: within the idle warning, and held for an hour.
STATE = {"state": "running", "ends": "idle", "warn_s": 60, "notify_hold_s": 3600}
WARNED = {**STATE, "held_s": 0, "left_s": 30, "hold_choices_s": [3600]}
HELD = {**STATE, "held_s": 3600, "left_s": 3600, "hold_choices_s": [3600]}


class PlayedRouter:
    """The router's side of the page: each status read and hold waits in a queue until
    the test answers it."""

    def __init__(self) -> None:
        self.reads: asyncio.Queue[Any] = asyncio.Queue()
        self.holds: asyncio.Queue[Any] = asyncio.Queue()

    async def attach(self, page: Any) -> None:
        async def serve(route: Any) -> None:
            path = route.request.url.removeprefix(SITE).partition("?")[0]
            if path == "/":
                await route.fulfill(status=200, content_type="text/html", body=PAGE)
            elif path == "/heartbeat.js":
                await route.fulfill(status=200, content_type="text/javascript", body=SCRIPT)
            elif path == "/status":
                await self.reads.put(route)
            elif path == "/hold":
                await self.holds.put(route)
            else:
                await route.fulfill(status=204)

        await page.route(SITE + "/**", serve)

    @staticmethod
    async def answer(route: Any, state: dict[str, Any]) -> None:
        await route.fulfill(status=200, content_type="application/json", body=json.dumps(state))

    async def next_read(self) -> Any:
        return await asyncio.wait_for(self.reads.get(), 10)


@pytest.fixture
async def hidden_tab(browser: Any) -> AsyncIterator[tuple[Any, PlayedRouter]]:
    context = await browser.new_context()
    await context.add_init_script(HIDDEN)
    page = await context.new_page()
    router = PlayedRouter()
    await router.attach(page)
    await page.goto(SITE + "/")
    yield page, router
    await context.close()


async def test_a_read_answered_before_a_hold_never_brings_the_warning_back(
    hidden_tab: tuple[Any, PlayedRouter],
) -> None:
    """A hidden tab warns; the person keeps the workspace from the warning's bar. A read
    the tab asked while the hold was under way, which the router answered before the hold
    was written, arrives after the hold's answer: the warning stays gone."""
    page, router = hidden_tab
    warning = page.locator("#codepool-warning")
    await router.answer(await router.next_read(), WARNED)
    await warning.wait_for(timeout=10_000)
    pending = await router.next_read()  # the tab's next read, held as a router holds it

    await page.get_by_role("button", name="Keep running for 1 hour").click()
    hold = await asyncio.wait_for(router.holds.get(), 10)
    await router.answer(pending, WARNED)  # answered as the hold arrives: still warned
    during = await router.next_read()  # asked while the hold is under way
    await router.answer(hold, HELD)
    await warning.wait_for(state="detached", timeout=10_000)

    await router.answer(during, WARNED)  # made before the hold was written
    after = await router.next_read()  # the tab has taken that answer in: it reads again
    assert await warning.count() == 0, "a stale read brought the warning back"
    await router.answer(after, HELD)
    await router.next_read()
    assert await warning.count() == 0
    assert not (await page.title()).startswith("\u23f8")


async def test_a_read_answered_while_a_hold_is_under_way_does_not_undo_the_hold(
    hidden_tab: tuple[Any, PlayedRouter],
) -> None:
    """A read asked while the hold is under way and answered (still warned) before the
    hold's answer comes: the hold's answer, when it comes, takes the warning away."""
    page, router = hidden_tab
    warning = page.locator("#codepool-warning")
    await router.answer(await router.next_read(), WARNED)
    await warning.wait_for(timeout=10_000)
    pending = await router.next_read()
    await page.get_by_role("button", name="Keep running for 1 hour").click()
    hold = await asyncio.wait_for(router.holds.get(), 10)
    await router.answer(pending, WARNED)
    during = await router.next_read()  # asked while the hold is under way...
    await router.answer(during, WARNED)  # ...and answered before it
    later = await router.next_read()
    await router.answer(hold, HELD)
    await warning.wait_for(state="detached", timeout=10_000)
    await router.answer(later, WARNED)  # asked before the hold's answer came: set aside
    await router.next_read()
    assert await warning.count() == 0


async def test_the_warning_bar_is_changed_in_place_and_reads_are_paced(
    hidden_tab: tuple[Any, PlayedRouter],
) -> None:
    """Within the warning, a router that answers every read at once (one that does not
    hold them) gets a read every couple of seconds, not hundreds a second; each answer
    changes the bar's words in place, so the button under the pointer stays the one the
    person presses."""
    page, router = hidden_tab
    await router.answer(await router.next_read(), WARNED)
    button = page.get_by_role("button", name="Keep running for 1 hour")
    await button.wait_for(timeout=10_000)
    handle = await button.element_handle()
    started = asyncio.get_running_loop().time()
    reads = 0
    for left_s in (29, 28, 27):
        await router.answer(await router.next_read(), {**WARNED, "left_s": left_s})
        reads += 1
    await page.get_by_text("stops in about 27 seconds").wait_for(timeout=10_000)
    took = asyncio.get_running_loop().time() - started
    assert took >= 2 * (reads - 1) - 0.5, f"{reads} reads in {took:.1f}s"
    assert await handle.evaluate("b => b.isConnected"), "the button was made again"
    await handle.click()  # a real pointer click on the bar's own button
    hold = await asyncio.wait_for(router.holds.get(), 10)
    assert json.loads(hold.request.post_data) == {"for_s": 3600}
    await router.answer(hold, HELD)
    await page.locator("#codepool-warning").wait_for(state="detached", timeout=10_000)
