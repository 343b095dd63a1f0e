#!/usr/bin/env python3
"""Render every page a person or an operator sees into docs/images/, in Debian's Chromium:

    .venv/bin/python scripts/screenshots.py     # about a minute; commit docs/images/

The router's pages (login, home, starting, stopped, refused, admin, ...) come from
tests/gallery.py: the real page functions and assets with fixed data, so the pictures only
change when the pages do. The workspace's own banner (the codepool chip in VS Code's status
bar, its panel, the warning before an idle stop) needs a real workspace: the script starts
`codepool serve` on a throwaway state folder with the installed code-server, logs in and
photographs VS Code. docs/images/manifest.json records the sha256 of what the pictures
were made from; tests/test_docs.py fails when those change and the pictures were not
made again."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browsing import CHROMIUM, FLAGS  # noqa: E402
from tests.gallery import IMAGES, PAGES, digests, serving  # noqa: E402

DESKTOP = {"width": 1100, "height": 720}
PHONE = {"width": 390, "height": 844}
# Pages also shown in the dark and on a phone: the ones people use every day.
DARK = ("home", "starting")
ON_A_PHONE = ("home", "admin")
WORKSPACE_SHOTS = ("workspace-chip", "workspace-panel", "workspace-warning")


async def router_pages(browser: Any) -> list[str]:
    made = []
    async with serving() as base:
        for scheme, viewport, names, suffix in (
            ("light", DESKTOP, tuple(PAGES), ""),
            ("dark", DESKTOP, DARK, "-dark"),
            ("light", PHONE, ON_A_PHONE, "-phone"),
        ):
            context = await browser.new_context(
                viewport=viewport, color_scheme=scheme, device_scale_factor=1
            )
            page = await context.new_page()
            for name in names:
                await page.goto(f"{base}/{name}")
                if name == "starting":  # its status line comes from a fetch
                    await page.get_by_text("Usually about").wait_for()
                await page.evaluate("document.fonts.ready")
                await page.screenshot(path=str(IMAGES / f"{name}{suffix}.png"), full_page=True)
                made.append(f"{name}{suffix}.png")
            await context.close()
    return made


async def workspace_banner(browser: Any) -> list[str]:
    """The banner inside a real VS Code: start a router with code-server, log in, open it."""
    from codepool.core.backends.local import code_server_candidates
    from codepool.core.settings import DEFAULT_COMMAND
    from tests.browsing import log_in, set_hidden, start_router
    from tests.helpers import kill_slots
    from tests.serving import Server

    found = shutil.which("code-server") or next(
        (str(p) for p in code_server_candidates() if p.is_file()), None
    )
    if not found:
        sys.exit("code-server is not installed: run scripts/install-code-server first")
    servers: list[Server] = []
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        try:
            server, _ = await start_router(
                state,
                servers,
                CODEPOOL_LOCAL_COMMAND=" ".join([found, *DEFAULT_COMMAND[1:]]),
                CODEPOOL_POOL_ASSIGN_TIMEOUT_S="120",
                CODEPOOL_POOL_IDLE_TIMEOUT_S="150",
                CODEPOOL_POOL_IDLE_WARNING_S="130",
            )
            context = await browser.new_context(viewport=DESKTOP)
            page = await context.new_page()
            await log_in(page, server.url, "alice", "alice-password")
            await page.wait_for_url(f"http://alice.localhost:{server.port}/**", timeout=120_000)
            await page.locator(".explorer-folders-view").first.wait_for(timeout=90_000)
            await asyncio.sleep(3)  # VS Code's own notifications settle
            chip = page.locator("#codepool-chip")
            await chip.wait_for()
            await page.screenshot(path=str(IMAGES / "workspace-chip.png"))
            await chip.click()
            await page.locator("#codepool-panel").wait_for()
            await page.screenshot(path=str(IMAGES / "workspace-panel.png"))
            await chip.click()
            await set_hidden(page, True)  # the person looks away; the warning comes
            await page.locator("#codepool-warning").wait_for(timeout=60_000)
            await page.screenshot(path=str(IMAGES / "workspace-warning.png"))
            await context.close()
        finally:
            for server in servers:
                server.stop()
            kill_slots(state)
    return [f"{name}.png" for name in WORKSPACE_SHOTS]


async def shoot() -> list[str]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        made = await router_pages(browser)
        print(f"{len(made)} router pages", file=sys.stderr)
        made += await workspace_banner(browser)
        print("the workspace's banner", file=sys.stderr)
        await browser.close()
    return made


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} is missing: apt-get install chromium")
    IMAGES.mkdir(parents=True, exist_ok=True)
    made = asyncio.run(shoot())
    manifest_path = IMAGES / "manifest.json"
    manifest = {"inputs": digests(), "images": sorted(made)}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(made)} pictures and {manifest_path.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
