"""The person's side of the router, over HTTP: the home page, holding and stopping one's
own workspace (forms on the main origin, JSON on the workspace origin), the state a
hidden tab reads to warn before an idle stop, and refusals as pages. Each on the local
backend and on moto's AWS, like every router test."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from codepool.core.models import WorkspaceState
from codepool.daemon.home import WARNING_READ_S
from tests.router_fixtures import Client, Served, dispatched

SAME = {"Sec-Fetch-Site": "same-origin"}
JSON = {"Accept": "application/json"}


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, page
    return found.group(1)


async def home(c: Client) -> str:
    resp = await c.get("/")
    assert resp.status == 200 and resp.url.path == "/", resp.url
    return await resp.text()


@pytest.fixture
async def alice(served: Served) -> Client:
    c = await served.client("alice")
    await dispatched(c, "alice", served)
    return c


async def test_the_home_page_says_who_and_what_and_offers_the_actions(served: Served) -> None:
    c = await served.client("alice")
    page = await home(c)
    assert "Hello, alice" in page and "Not started" in page and "Start my workspace" in page
    assert 'action="/stop"' not in page and "/admin" not in page  # no admin link for her
    assert 'action="/logout"' in page
    await dispatched(c, "alice", served)
    page = await home(c)
    assert "Running" in page and "Open VS Code" in page and 'href="/dispatch"' in page
    assert 'action="/stop"' in page and 'class="danger"' in page
    # Holds up to pool.max_hold_s (8h), the hour chosen by default
    options = re.findall(r'<option value="(\d+)"', page)
    assert options == ["1800", "3600", "7200", "14400", "28800"]
    assert '<option value="3600" selected>' in page
    root = await served.client("root")
    assert 'href="/admin"' in await home(root)


async def test_home_without_a_session_goes_to_log_in(served: Served) -> None:
    c = await served.client()
    resp = await c.get("/", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/login"


async def test_holding_from_the_home_page_is_bounded_and_never_adds_up(
    served: Served, alice: Client
) -> None:
    token = csrf_of(await home(alice))

    async def hold(value: str, **kw: Any) -> int:
        resp = await alice.post(
            "/hold", data={"csrf": token, "for": value}, allow_redirects=False, **kw
        )
        return resp.status

    assert await hold("2h") == 303
    ws = await served.pool.store.get_workspace("alice")
    assert ws is not None
    first = ws.hold_until_ms
    assert abs(first - (time.time() * 1000 + 7200_000)) < 5000
    page = await home(alice)
    assert "Kept running" in page and "Let it stop when idle" in page
    assert await hold("8h") == 303 and await hold("8h") == 303  # again and again...
    ws = await served.pool.store.get_workspace("alice")
    assert ws is not None and ws.hold_until_ms <= time.time() * 1000 + 8 * 3600_000
    for bad in ("9h", "-1", "soon", "", "1" * 40):  # ... but never beyond 8h from now
        assert await hold(bad) == 400, bad
    assert await hold("0") == 303
    ws = await served.pool.store.get_workspace("alice")
    assert ws is not None and ws.hold_until_ms == 0
    assert "stops when idle again" in await (await alice.get("/?done=unheld")).text()
    # Without the token, or from another site, nothing is held
    resp = await alice.post("/hold", data={"for": "1h"}, allow_redirects=False)
    assert resp.status == 403
    elsewhere = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
    assert await hold("1h", headers=elsewhere) == 403
    ws = await served.pool.store.get_workspace("alice")
    assert ws is not None and ws.hold_until_ms == 0


async def test_stopping_asks_first_then_stops_and_home_offers_the_resume(
    served: Served, alice: Client
) -> None:
    token = csrf_of(await home(alice))
    resp = await alice.post("/stop", data={"csrf": token}, allow_redirects=False)
    page = await resp.text()
    assert resp.status == 200 and "Stop your workspace?" in page and 'value="yes"' in page
    ws = await served.pool.store.get_workspace("alice")
    assert ws is not None and ws.state is WorkspaceState.RUNNING
    resp = await alice.post("/stop", data={"csrf": token, "confirm": "yes"}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/?done=stopped"
    page = await home(alice)
    assert "Stopped" in page and "Your files are" in page and "Start my workspace" in page
    ws = await served.pool.store.get_workspace("alice")
    assert ws is not None and ws.state is WorkspaceState.STOPPED
    resp = await alice.post(
        "/stop", data={"csrf": token, "confirm": "yes"}, headers={"Accept": "text/html"}
    )
    assert resp.status == 409 and "already stopped" in await resp.text()
    await dispatched(alice, "alice", served)  # and it resumes
    assert "Running" in await home(alice)


async def test_a_notice_is_chosen_by_code_never_written_by_a_link(served: Served) -> None:
    c = await served.client("alice")
    assert "Your files are kept" in await (await c.get("/?done=stopped")).text()
    page = await (await c.get("/?done=<script>alert(1)</script>")).text()
    assert "alert(1)" not in page and 'class="notice"' not in page
    root = await served.client("root")
    page = await (await root.get("/admin?done=stopped&user=<b>x</b>")).text()
    assert "<b>x</b>" not in page and "&lt;b&gt;" not in page


async def test_the_workspace_state_as_json_for_a_hidden_tab(
    make_served: Callable[..., Any],
) -> None:
    served: Served = await make_served(pool={"idle_timeout_s": 6, "idle_warning_s": 4})
    c = await served.client("alice")
    await dispatched(c, "alice", served)
    status = served.ws("alice", "/_codepool/status")
    body = await (await c.get(status, headers=SAME)).json()
    assert body["state"] == "running" and body["warn_s"] == 4 and 4 <= body["left_s"] <= 6
    assert body["held_s"] == 0 and body["notify_hold_s"] == 3600
    ws = await served.pool.store.get_workspace("alice")
    assert ws is not None
    # A read waits until the warning is due (about 2 s here), not the 50 s asked...
    started = time.monotonic()
    body = await (await c.get(status + "?wait=50", headers=SAME)).json()
    waited = time.monotonic() - started
    assert 1 <= waited < 40, waited
    assert body["left_s"] <= 4
    # Within the warning a read waits too (the tab asks again at once when answered), as
    # long as the countdown takes to move: not a tight loop of reads.
    started = time.monotonic()
    body = await (await c.get(status + "?wait=50", headers=SAME)).json()
    assert WARNING_READ_S <= time.monotonic() - started < 40
    assert body["state"] == "running" and body["left_s"] <= 4
    # ... and is not activity: the workspace's last ping is where it was
    after = await served.pool.store.get_workspace("alice")
    assert after is not None and after.last_seen_ms == ws.last_seen_ms
    # From another origin (another workspace's page), or without its session: refused
    other = {"Origin": served.ws("bob").rstrip("/"), "Sec-Fetch-Site": "same-site"}
    if served.router.origins.per_user:
        assert (await c.get(status, headers=other)).status == 403
        stranger = await served.client()
        assert (await stranger.get(status, headers=SAME)).status == 401
    me = await (await c.get("/api/me", headers=SAME)).json()
    assert me["state"] == "running"
    assert (await c.get("/api/me", headers={"Origin": "http://evil.example"})).status == 403


async def test_holding_from_the_workspace_page(served: Served, alice: Client) -> None:
    hold = served.ws("alice", "/_codepool/hold") if served.router.origins.per_user else "/hold"
    resp = await alice.post(hold, json={"for_s": 3600}, headers=SAME)
    body = await resp.json()
    assert resp.status == 200 and 3590 <= body["held_s"] <= 3600
    assert body["left_s"] >= 3590
    for bad in (
        {"for_s": 99999},
        {"for_s": -5},
        {"for_s": "1h"},
        {"for_s": 1.5},
        {"for_s": True},
        {"for_s": None},
        {"for_s": 60, "user": "bob"},
        [60],
        "60",
    ):
        resp = await alice.post(hold, json=bad, headers=SAME)
        assert resp.status == 400, (bad, resp.status)
        assert (await resp.json())["error"] in ("bad-fields", "invalid-input")
    for raw, kind in ((b"{", "application/json"), (b"x" * 400, "application/json")):
        resp = await alice.post(hold, data=raw, headers={**SAME, "Content-Type": kind})
        assert resp.status == 400
    resp = await alice.post(
        hold, data=b'{"for_s": 60}', headers={**SAME, "Content-Type": "text/plain"}
    )
    assert resp.status in (403, 415)  # a form from elsewhere can send text/plain
    evil = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
    resp = await alice.post(hold, json={"for_s": 0}, headers=evil)
    assert resp.status == 403
    ws = await served.pool.store.get_workspace("alice")
    assert ws is not None and ws.hold_until_ms > time.time() * 1000 + 3500_000  # unchanged
    resp = await alice.post(hold, json={"for_s": 0}, headers=SAME)
    assert resp.status == 200 and (await resp.json())["held_s"] == 0
    await served.pool.release("alice")
    resp = await alice.post(hold, json={"for_s": 60}, headers=SAME)
    assert resp.status == 409 and (await resp.json())["error"] == "no-workspace"


async def test_bob_holds_only_his_own(served: Served, alice: Client) -> None:
    """bob's session on the main origin, however he words it, holds bob's workspace
    (which he does not have), never alice's; her origin's endpoints need her session."""
    bob = await served.client("bob")
    resp = await bob.post("/hold", json={"for_s": 60}, headers=SAME)
    assert resp.status == 409
    if served.router.origins.per_user:
        resp = await bob.post(
            served.ws("alice", "/_codepool/hold"), json={"for_s": 60}, headers=SAME
        )
        assert resp.status == 401
    ws = await served.pool.store.get_workspace("alice")
    assert ws is not None and ws.hold_until_ms == 0


async def test_refusals_are_pages_with_a_way_home_for_browsers_only(served: Served) -> None:
    bob = await served.client("bob")
    html = {"Accept": "text/html"}
    resp = await bob.get("/admin", headers=html)
    page = await resp.text()
    assert resp.status == 403 and "<h1>Not allowed</h1>" in page
    assert "for administrators" in page and "Go to my home page" in page
    assert 'rel="icon"' in page and "/assets/style.css" in page
    resp = await bob.get("/nowhere", headers=html)
    assert resp.status == 404 and "<h1>Page not found</h1>" in await resp.text()
    resp = await bob.get("/nowhere")  # a script gets it plainly
    assert resp.status == 404 and "<h1>" not in await resp.text()
    favicon = await bob.get("/favicon.ico")
    assert favicon.status == 200 and favicon.content_type == "image/svg+xml"


async def test_the_starting_page_speaks_plainly_and_estimates_from_recent_starts(
    served: Served,
) -> None:
    c = await served.client("alice")
    await dispatched(c, "alice", served)
    job = served.router.dispatcher.current("alice")
    assert job is not None and job.done
    assert all("slot-" not in m and "i-" not in m for m in job.messages), job.messages
    await served.pool.release("alice")
    resp = await c.get("/dispatch", headers=SAME, allow_redirects=False)
    for _ in range(100):
        status = await (await c.get("/dispatch/status", headers=SAME)).json()
        assert "estimate_s" in status and status["elapsed_s"] >= 0
        if status["state"] == "ready":
            break
        await asyncio.sleep(0.1)
    assert status["messages"][:1] == ["Waking up your workspace"], status
    # the next wake-up is estimated from this one
    job = served.router.dispatcher.current("alice")
    assert job is not None
    assert served.router.dispatcher.estimate_s(job) is not None
    assert resp.status in (200, 302)
