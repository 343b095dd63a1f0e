"""End to end in a real browser (Debian's Chromium driven by Playwright): log in, land in
the workspace on its own origin (alice.localhost), see pings move lastSeen, hide the tab
and see them stop, see the workspace stopped after a short idle timeout, come back and
find the same files. Once with the stand-in workspace and once with real code-server
(the VS Code workbench must load and reach its server over the proxied WebSocket).
Then as an attacker: a page that alice's workspace serves, opened by an admin, tries to
reach the admin page, bob's workspace and the router's cookies. Screenshots go to
build/screenshots/."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from codepool.core.settings import DEFAULT_COMMAND

try:
    from playwright.async_api import Error as PlaywrightError
except ImportError:  # the fixture below says what is missing
    PlaywrightError = Exception  # type: ignore[misc,assignment]
from tests.browsing import (
    SHOTS,
    log_in,
    set_hidden,
    start_router,
    wait_for,
    workspace_row,
)
from tests.serving import Server

pytestmark = pytest.mark.browser


async def test_stand_in_workspace_lifecycle_in_a_browser(
    browser: Any, state_dir: Path, servers: list[Server]
) -> None:
    server, env = await start_router(state_dir, servers, CODEPOOL_POOL_IDLE_TIMEOUT_S="4")

    page = await browser.new_page()
    await page.goto(server.url + "/")
    assert "/login" in page.url
    await page.screenshot(path=str(SHOTS / "login.png"))
    await log_in(page, server.url, "alice", "alice-password")
    home = f"http://alice.localhost:{server.port}/"
    await page.wait_for_url(home, timeout=30_000)  # her own origin, entered by a pass
    await page.wait_for_function("document.title === 'stand-in'", timeout=10_000)
    assert await page.locator("script[src^='/_codepool/heartbeat.js']").count() == 1

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
    await page.wait_for_url(home, timeout=30_000)
    await page.get_by_text("notes.txt").wait_for(timeout=10_000)  # the same disk
    row = workspace_row(env, "alice")
    assert row is not None and row["state"] == "running"

    # The session ends (here: its cookies are gone): the next ping reloads the page, which
    # goes to the main origin to log in, and comes back to the same page afterwards.
    await page.context.clear_cookies()
    await page.wait_for_url(f"{server.url}/login?next=**", timeout=10_000)
    await page.fill("input[name=user]", "alice")
    await page.fill("input[name=password]", "alice-password")
    await page.click("button[type=submit]")
    await page.wait_for_url(home, timeout=30_000)
    await page.close()

    # An admin sees the pool page with alice's workspace and the stop and extend buttons.
    admin = await browser.new_page()
    await log_in(admin, server.url, "root", "root-password")
    await admin.wait_for_url(f"http://root.localhost:{server.port}/", timeout=30_000)
    await admin.goto(server.url + "/admin")
    assert await admin.locator("#pool td", has_text="alice").count() == 1
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
            await page.locator("#status", has_text="workspace").wait_for(timeout=5_000)
            await page.screenshot(path=str(SHOTS / "starting.png"))
    site = f"http://alice.localhost:{server.port}/"
    await page.wait_for_url(site + "**", timeout=120_000)
    row = await wait_for(lambda: workspace_row(env, "alice"), 10, "alice's workspace")
    home = state_dir / "slots" / row["instance_id"] / "home"
    await page.locator(".monaco-workbench").wait_for(timeout=60_000)
    (home / "hello_codepool.py").write_text("print('hello from codepool')\n")
    await page.reload()  # list the folder afresh, whatever the file watcher saw
    await page.locator(".monaco-workbench").wait_for(timeout=60_000)
    # The explorer lists the folder's files: that needs the server over the WebSocket.
    await page.get_by_text("hello_codepool.py").first.wait_for(timeout=60_000)
    await page.screenshot(path=str(SHOTS / "workbench.png"))
    assert any(url.startswith(f"ws://alice.localhost:{server.port}/") for url in sockets), sockets
    assert await page.locator("script[src^='/_codepool/heartbeat.js']").count() == 1

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
    await page.wait_for_url(site + "**", timeout=120_000)
    await page.locator(".monaco-workbench").wait_for(timeout=60_000)
    await page.get_by_text("hello_codepool.py").first.wait_for(timeout=60_000)  # same disk
    row = workspace_row(env, "alice")
    assert row is not None and row["state"] == "running"
    await page.close()


EVIL_PAGE = """<!doctype html><html><head><title>evil</title></head><body><pre id="out"></pre>
<script>
const MAIN = "%(main)s", BOB = "%(bob)s";
const out = {};
async function attempt(name, fn) {
  try { out[name] = await fn(); } catch (e) { out[name] = "error: " + e.name; }
}
(async () => {
  await attempt("read_admin", async () =>
    (await fetch(MAIN + "/admin", {credentials: "include"})).status);
  await attempt("stop_bob", async () => {
    const form = new URLSearchParams({user: "bob", csrf: "a-guess"});
    return (await fetch(MAIN + "/admin/stop",
      {method: "POST", body: form, credentials: "include", mode: "no-cors"})).type;
  });
  await attempt("read_bob", async () =>
    (await fetch(BOB + "/files/secret.txt", {credentials: "include"})).status);
  await attempt("poke_bob", async () =>
    (await fetch(BOB + "/upload",
      {method: "POST", body: "x", credentials: "include", mode: "no-cors"})).type);
  await attempt("enter_bob", async () =>
    (await fetch(MAIN + "/w/bob/", {credentials: "include", mode: "no-cors"})).type);
  await attempt("ws_bob", () => new Promise((resolve) => {
    const ws = new WebSocket(BOB.replace("http", "ws") + "/ws");
    ws.onopen = () => resolve("open");
    ws.onerror = () => resolve("refused");
  }));
  document.cookie = "codepool_session=tossed; domain=localhost; path=/";
  document.cookie = "tossed=1; domain=localhost; path=/";
  await attempt("box_cookies", async () =>
    (await fetch("/set-cookies", {credentials: "include"})).status);
  await attempt("service_worker", async () => {
    await navigator.serviceWorker.register("/files/sw.js", {scope: "/files/"});
    await navigator.serviceWorker.ready;
    return "registered";
  });
  document.getElementById("out").textContent = JSON.stringify(out);
  document.title = "done";
})();
</script></body></html>"""

HIJACK = 'self.addEventListener("fetch", (e) => e.respondWith(new Response("hijacked")));\n'


def slot_home(env: dict[str, str], state_dir: Path, user: str) -> Path:
    row = workspace_row(env, user)
    assert row is not None, user
    return Path(state_dir / "slots" / row["instance_id"] / "home")


async def test_a_workspace_page_reaches_nothing_beyond_its_origin(
    browser: Any, state_dir: Path, servers: list[Server]
) -> None:
    """alice serves a hostile page from her workspace; an admin opens it (admins may enter
    workspaces here). It cannot read or use the admin page, reach bob's box by fetch or
    WebSocket (bob's box sees no request at all), plant cookies for the router or for bob,
    or put a service worker over any page but her own."""
    server, env = await start_router(
        state_dir, servers, CODEPOOL_ROUTER_ADMINS_ENTER_WORKSPACES="true"
    )
    port = server.port
    main, alice_origin, bob_origin = (
        server.url,
        f"http://alice.localhost:{port}",
        f"http://bob.localhost:{port}",
    )
    people = {name: await browser.new_context() for name in ("alice", "bob", "root")}
    for name, context in people.items():
        page = await context.new_page()
        await log_in(page, main, name, f"{name}-password")
        await page.wait_for_url(f"http://{name}.localhost:{port}/", timeout=30_000)
        await page.close()
    bob_home = slot_home(env, state_dir, "bob")
    (bob_home / "secret.txt").write_text("bob's secret")
    alice_home = slot_home(env, state_dir, "alice")
    (alice_home / "evil.html").write_text(EVIL_PAGE % {"main": main, "bob": bob_origin})
    (alice_home / "sw.js").write_text(HIJACK)
    (bob_home / ".requests").write_text("")  # from here on, nothing may reach bob's box

    admin = await people["root"].new_page()
    await admin.goto(alice_origin + "/files/evil.html")
    await admin.wait_for_function("document.title === 'done'", timeout=30_000)
    found = json.loads(await admin.locator("#out").text_content() or "{}")
    await admin.screenshot(path=str(SHOTS / "evil-page.png"))
    assert found["read_admin"] == "error: TypeError", found  # no CORS: unreadable
    assert found["read_bob"] == "error: TypeError", found
    assert found["ws_bob"] == "refused", found
    assert found["service_worker"] == "registered", found  # on alice's own origin only
    assert (bob_home / ".requests").read_text() == ""  # bob's box never saw any of it
    bob_row = workspace_row(env, "bob")
    assert bob_row is not None and bob_row["state"] == "running"  # the forged stop failed

    # Cookies: nothing planted by the page or by alice's box reaches the router or bob.
    router_cookies = {c["name"] for c in await people["root"].cookies(main)}
    assert not router_cookies & {"tossed", "spread", "spread2", "theirs"}, router_cookies
    await admin.goto(bob_origin + "/echo-headers")  # the admin may enter bob's, too
    echoed = json.loads(await admin.locator("body").text_content() or "{}")
    sent = echoed["headers"].get("Cookie", "")
    assert "tossed" not in sent and "spread" not in sent and "codepool" not in sent, sent
    # The service worker controls alice's origin, and no other.
    for url in (main + "/admin", bob_origin + "/files/secret.txt"):
        await admin.goto(url)
        assert "hijacked" not in await admin.content(), url
        assert await admin.evaluate("navigator.serviceWorker.controller") is None, url
    await admin.goto(alice_origin + "/files/anything")
    assert "hijacked" in await admin.content()  # ... which is hers to break
    await admin.close()
    for context in people.values():
        await context.close()


async def test_an_entry_pass_works_once_on_its_own_host_in_its_own_browser(
    browser: Any, state_dir: Path, servers: list[Server]
) -> None:
    server, _ = await start_router(state_dir, servers)
    port, main = server.port, server.url
    alice_origin = f"http://alice.localhost:{port}"
    context = await browser.new_context()
    page = await context.new_page()
    passes: list[str] = []
    page.on("request", lambda r: passes.append(r.url) if "/_codepool/enter" in r.url else None)
    await log_in(page, main, "alice", "alice-password")
    await page.wait_for_url(alice_origin + "/", timeout=30_000)
    assert len(passes) == 1 and passes[0].startswith(alice_origin + "/_codepool/enter?token=")

    async def refused(ctx: Any, url: str) -> bool:
        probe = await ctx.new_page()
        resp = await probe.goto(url)
        text = await probe.content()
        await probe.close()
        return resp is not None and resp.status == 403 and "This link has expired" in text

    assert await refused(context, passes[0])  # used once already
    stranger = await browser.new_context()
    assert await refused(stranger, passes[0])

    async def fresh_pass(state: str) -> str:
        """A pass for alice's host bound to state, caught on its way (unused): step b of
        the entry, asked for directly, and step a's state cookie put in the browser."""
        caught: list[str] = []

        async def hold(route: Any) -> None:
            # Only the one asked for here: the page left behind may ask for its own entry
            # meanwhile (its heartbeat, logged out of this host, goes to log in again).
            if f"state={state}" in route.request.url and not caught:
                answer = await route.fetch(max_redirects=0)
                caught.append(answer.headers["location"])
            await route.abort()

        await page.route("**/authorize*", hold)
        with contextlib.suppress(PlaywrightError):
            await page.goto(f"{main}/authorize?host=alice&state={state}")
        await page.unroute("**/authorize*")
        packed = base64.urlsafe_b64encode(b"/files/x").decode().rstrip("=")
        for host in ("alice.localhost", "bob.localhost"):
            cookie = {"name": "codepool_state", "value": f"{state}.{packed}", "path": "/"}
            await context.add_cookies([{**cookie, "domain": host}])
        assert len(caught) == 1 and caught[0].startswith(alice_origin + "/_codepool/enter")
        return caught[0]

    on_alice = await fresh_pass("s" * 43)
    # On bob's host (with the right state cookie there too) it fails, and is used up.
    assert await refused(context, on_alice.replace("alice.localhost", "bob.localhost"))
    assert await refused(context, on_alice)
    # In another browser (which lacks the state cookie) a fresh pass is worthless too.
    assert await refused(stranger, await fresh_pass("t" * 43))
    # And a fresh pass in its own browser, on its own host, works: once.
    good = await fresh_pass("u" * 43)
    probe = await context.new_page()
    await probe.goto(good)
    await probe.wait_for_url(alice_origin + "/files/x", timeout=10_000)
    await probe.close()
    assert await refused(context, good)
    await stranger.close()
    await context.close()


async def test_a_hidden_tab_reads_a_few_times_through_the_warning_and_its_bar_takes_a_click(
    browser: Any, state_dir: Path, servers: list[Server]
) -> None:
    """A tab left in the background through the idle warning asks the router about its
    workspace once every few seconds (it used to ask hundreds of times a second), and a
    person's click on the bar's button keeps the workspace."""
    server, env = await start_router(
        state_dir, servers, CODEPOOL_POOL_IDLE_TIMEOUT_S="40", CODEPOOL_POOL_IDLE_WARNING_S="35"
    )
    page = await browser.new_page()
    await log_in(page, server.url, "alice", "alice-password")
    await page.wait_for_url(f"http://alice.localhost:{server.port}/", timeout=30_000)
    reads: list[float] = []
    loop = asyncio.get_running_loop()

    def count(request: Any) -> None:
        if "/_codepool/status" in request.url:
            reads.append(loop.time())

    page.on("request", count)
    await set_hidden(page, True)
    bar = page.locator("#codepool-warning")
    await bar.wait_for(timeout=60_000)  # 5 s after the tab was hidden
    started, before = loop.time(), len(reads)
    await asyncio.sleep(10)  # a look at ten seconds of the warning
    seen = len(reads) - before
    assert seen <= 10 / 5 + 2, f"{seen} reads in {loop.time() - started:.0f} s"
    assert await bar.count() == 1
    await bar.get_by_role("button", name="Keep running for 1 hour").click()
    await bar.wait_for(state="detached", timeout=20_000)
    row = workspace_row(env, "alice")
    assert row is not None and row["state"] == "running"
    assert row["hold_until_ms"] > time.time() * 1000 + 3000_000
