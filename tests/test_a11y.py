"""Every page passes axe-core (from npm, run in Chromium) with no serious or critical
violation: each of the router's pages and the banner the proxy puts into a workspace (its
button, its panel, the warning before an idle stop), in light and dark, on a desktop and at
a phone's width. The pages are the gallery's (tests/gallery.py): the real page functions
and assets with fixed data. scripts/test installs axe-core into build/npm."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.browsing import set_hidden
from tests.conftest import need
from tests.gallery import PAGES, ROOT, serving

pytestmark = pytest.mark.browser

AXE = ROOT / "build" / "npm" / "node_modules" / "axe-core" / "axe.min.js"
LOOKS = {  # name -> (color scheme, viewport)
    "light": ("light", {"width": 1100, "height": 720}),
    "dark": ("dark", {"width": 1100, "height": 720}),
    "phone": ("light", {"width": 390, "height": 844}),
}
BAD = ("serious", "critical")


@pytest.fixture
def axe() -> Path:
    if not AXE.is_file():
        need("axe-core", f"{AXE} is missing (scripts/test installs it from npm)")
    return AXE


async def violations(page: Any, axe: Path) -> list[str]:
    """axe-core's serious and critical findings on the page as it is now, one line each."""
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        await page.add_script_tag(path=str(axe))
    found = await page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ["violations"]})).violations
            .map(v => ({id: v.id, impact: v.impact, help: v.help,
                        where: v.nodes.map(n => n.target.join(" ")).slice(0, 3)}))"""
    )
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {v['where']}"
        for v in found
        if v["impact"] in BAD
    ]


async def new_page(browser: Any, look: str) -> Any:
    scheme, viewport = LOOKS[look]
    # The router's pages allow no inline or foreign script; axe is put in by the test.
    context = await browser.new_context(color_scheme=scheme, viewport=viewport, bypass_csp=True)
    return await context.new_page()


@pytest.mark.parametrize("look", list(LOOKS))
async def test_every_router_page_passes_axe(browser: Any, axe: Path, look: str) -> None:
    page = await new_page(browser, look)
    found = {}
    async with serving() as base:
        for name in PAGES:
            await page.goto(f"{base}/{name}")
            if name == "starting":  # check it with its status line and estimate filled in
                await page.get_by_text("Usually about").wait_for()
            if problems := await violations(page, axe):
                found[name] = problems
    assert not found, found
    await page.context.close()


@pytest.mark.parametrize("look", list(LOOKS))
async def test_the_workspace_banner_passes_axe(browser: Any, axe: Path, look: str) -> None:
    """The button, its open panel, and the warning bar of a hidden tab, on a workspace
    page whose colours are VS Code's (the banner draws its own, light or dark)."""
    page = await new_page(browser, look)
    async with serving() as base:
        await page.goto(f"{base}/workspace/")
        chip = page.locator("#codepool-chip")
        await chip.wait_for()
        assert await violations(page, axe) == []
        await chip.click()
        await page.get_by_role("button", name="Keep running").wait_for()
        assert await violations(page, axe) == []
        await chip.click()
        await set_hidden(page, True)
        await page.locator("#codepool-warning").wait_for()
        assert await violations(page, axe) == []
    await page.context.close()


async def test_the_check_finds_what_it_should(browser: Any, axe: Path) -> None:
    """The check is not empty: pale text and an image without words fail it."""
    page = await new_page(browser, "light")
    await page.set_content(
        "<html lang=en><title>t</title><main><h1>t</h1>"
        "<p style='color:#ccc;background:#fff'>pale</p><img src=x></main></html>"
    )
    found = await violations(page, axe)
    assert [line.split(" ")[0] for line in found] == ["color-contrast", "image-alt"], found
    await page.context.close()
