"""The router in process (aiohttp's test client) against the local backend running the
stand-in workspace: every route, each bad input, and someone else's workspace."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from yarl import URL

from codepool.core.models import WorkspaceState
from codepool.daemon.proxy import strip_cookies
from codepool.daemon.sessions import CookieNames
from tests.router_fixtures import PASSWORDS, Client, Served, dispatched, login
from tests.standin_workspace import GZIP_JS, gzip_bomb

SESSION_COOKIE = CookieNames.for_scheme(secure=False).session

# -- open and closed routes -------------------------------------------------------------------


async def test_health_and_metrics_need_no_login(served: Served) -> None:
    c = await served.client()
    resp = await c.get("/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ok" and body["checks"] == {"store": "ok", "backend": "ok"}
    resp = await c.get("/metrics")
    assert resp.status == 200 and "codepool_pings_total" in await resp.text()


async def test_health_tells_strangers_nothing_of_the_inside(served: Served) -> None:
    c = await served.client()
    stranger = {"X-Forwarded-For": "203.0.113.9"}  # a browser's request, forwarded
    body = await (await c.get("/health", headers=stranger)).json()
    assert body == {"status": "ok", "checks": {"store": "ok", "backend": "ok"}}
    assert (await (await c.get("/livez")).json()) == {"status": "ok"}
    assert (await (await c.get("/readyz")).json()) == {"status": "ok"}
    await served.pool.store.close()  # the store goes away (SQLite closed, Redis unreachable)
    resp = await c.get("/health", headers=stranger)
    body = await resp.json()
    assert resp.status == 503 and body["checks"]["store"] == "error", body
    assert "sqlite" not in json.dumps(body) and "redis" not in json.dumps(body)
    resp = await c.get("/readyz")
    assert resp.status == 503 and (await resp.json())["failed"] == ["store"]
    assert (await c.get("/livez")).status == 200
    detailed = await (await c.get("/health")).json()  # a probe on this machine
    assert detailed["checks"]["store"].startswith("error: ") and "pid" in detailed


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/dispatch"), ("GET", "/admin"), ("GET", "/")]
)
async def test_pages_need_login(served: Served, method: str, path: str) -> None:
    c = await served.client()
    resp = await c.request(method, path, allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"].startswith("/login")


async def test_a_workspace_origin_sends_strangers_to_log_in(served: Served) -> None:
    c = await served.client()
    resp = await c.get(served.ws("alice", "/files/x?y=1"), headers={"Accept": "text/html"})
    assert resp.status == 200 and resp.url.path == "/login"  # via /authorize
    assert (await c.get(served.ws("alice", "/gzip.js"))).status == 401  # not a page load
    resp = await c.post(served.ws("alice", "/upload"), data=b"x")
    assert resp.status == 401


async def test_apis_answer_401_without_login(served: Served) -> None:
    c = await served.client()
    assert (await c.get("/dispatch/status")).status == 401
    resp = await c.post("/ping", json={"instanceId": "x"})
    assert resp.status == 401 and (await resp.json())["error"] == "unauthenticated"


async def test_assets(served: Served) -> None:
    c = await served.client()
    resp = await c.get("/assets/heartbeat.js")
    assert resp.status == 200 and resp.content_type == "text/javascript"
    assert "visibilitychange" in await resp.text()
    for bad in ("/assets/nope.js", "/assets/..%2fapp.py", "/assets/.hidden.js", "/assets/x.py"):
        assert (await c.get(bad)).status == 404, bad


# -- login --------------------------------------------------------------------------------------


async def test_login_sets_a_hardened_cookie_and_rotates_the_session(served: Served) -> None:
    c = await served.client()
    resp = await login(c, "alice", PASSWORDS["alice"])
    assert resp.status == 302 and resp.headers["Location"] == "/dispatch"
    cookie = resp.cookies[SESSION_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and not cookie["secure"]
    first = cookie.value
    resp = await c.get("/login?next=/admin", allow_redirects=False)  # logged in: sent on
    assert resp.status == 302 and resp.headers["Location"] == "/admin"
    c.session.cookie_jar.clear()
    resp = await login(c, "alice", PASSWORDS["alice"])
    assert resp.cookies[SESSION_COOKIE].value != first  # a new session id at every login


async def test_the_routers_pages_forbid_framing_and_inline_script(
    served: Served,
) -> None:
    c = await served.client()
    for path in ("/login", "/dispatch", "/nope"):
        resp = await c.get(path, allow_redirects=False)
        assert resp.headers["X-Content-Type-Options"] == "nosniff", path
        assert resp.headers["Referrer-Policy"] == "same-origin", path
    page = await c.get("/login")
    policy = page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy and "Strict-Transport-Security" not in page.headers
    alice = await served.client("alice")
    await dispatched(alice, "alice", served)
    proxied = await alice.get(served.ws("alice", "/echo-headers"))
    assert "Content-Security-Policy" not in proxied.headers  # the box's answer, as it is
    stopped_page = await alice.get(served.ws("alice", "/_codepool/enter?token=x"))
    assert "frame-ancestors 'none'" in stopped_page.headers["Content-Security-Policy"]


async def test_wrong_password_and_unknown_user(served: Served) -> None:
    c = await served.client()
    for user, password in (("alice", "wrong-password"), ("nobody", "whatever123")):
        resp = await login(c, user, password)
        assert resp.status == 401
        assert "Wrong user name or password." in await resp.text()
        assert SESSION_COOKIE not in resp.cookies


async def test_login_rate_limit_answers_429_and_recovers(served: Served) -> None:
    c = await served.client()
    for _ in range(served.settings.router.login_attempts_per_minute):
        assert (await login(c, "alice", "wrong-password")).status == 401
    resp = await login(c, "alice", PASSWORDS["alice"])  # right password, still limited
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    assert "Too many failed logins" in await resp.text()
    # Once the window has moved past those attempts, she gets in (the window made short
    # here rather than waited for: how long ten password checks take depends on the load).
    served.router.limiter.window_s = 0.05
    await asyncio.sleep(0.1)
    assert (await login(c, "alice", PASSWORDS["alice"])).status == 302


async def test_login_refuses_cross_site_posts(served: Served) -> None:
    c = await served.client()
    await c.get("/login")
    form = {"user": "alice", "password": PASSWORDS["alice"], "csrf": "forged"}
    assert (await c.post("/login", data=form, allow_redirects=False)).status == 403
    page = await (await c.get("/login")).text()
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token is not None
    form["csrf"] = token.group(1)
    resp = await c.post(
        "/login", data=form, headers={"Origin": "https://evil.example"}, allow_redirects=False
    )
    assert resp.status == 403


@pytest.mark.parametrize(
    ("next_path", "landing"),
    [
        ("/admin", "/admin"),
        ("//evil.example/x", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("", "/"),
    ],
)
async def test_login_next_goes_only_to_local_paths(
    served: Served, next_path: str, landing: str
) -> None:
    c = await served.client()
    resp = await login(c, "root", PASSWORDS["root"], next_path)
    assert resp.status == 302 and resp.headers["Location"] == landing


async def test_forged_and_expired_sessions_are_refused(served: Served) -> None:
    c = await served.client("alice")
    cookie = c.cookie(SESSION_COOKIE)
    assert cookie is not None
    forged = cookie[:-2] + ("AA" if cookie[-2:] != "AA" else "BB")
    for value in (forged, "garbage", cookie + "x", "é" * 43, cookie.upper()):
        c.session.cookie_jar.clear()
        c.session.cookie_jar.update_cookies({SESSION_COOKIE: value}, URL(served.origin))
        resp = await c.get("/dispatch", allow_redirects=False)
        assert resp.status == 302 and resp.headers["Location"].startswith("/login")
    session = await served.router.sessions.find([cookie])
    assert session is not None
    record = await served.pool.store.get_session(session.sid)
    assert record is not None
    await served.pool.store.put_session(replace(record, expires_ms=record.created_ms))
    await asyncio.sleep(1.1)  # the router's lookup cache
    c.session.cookie_jar.update_cookies({SESSION_COOKIE: cookie}, URL(served.origin))
    resp = await c.get("/dispatch", allow_redirects=False)
    assert resp.headers["Location"].startswith("/login")  # expired


async def test_logout_needs_the_csrf_token_and_ends_the_session_everywhere(
    served: Served,
) -> None:
    c = await served.client("alice")
    await dispatched(c, "alice", served)
    assert (await c.post("/logout", data={"csrf": "nope"}, allow_redirects=False)).status == 403
    assert (await c.post("/logout", data={"csrf": "é"}, allow_redirects=False)).status == 403
    cookie = c.cookie(SESSION_COOKIE)
    assert cookie is not None
    session = await served.router.sessions.find([cookie])
    assert session is not None
    copy = await served.client()  # someone who copied both cookies
    for morsel in c.session.cookie_jar:
        copy.session.cookie_jar.update_cookies(
            {morsel.key: morsel.value}, URL(f"http://{morsel['domain']}/")
        )
    resp = await c.post("/logout", data={"csrf": session.csrf}, allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/login"
    assert resp.headers["Clear-Site-Data"] == '"cache", "cookies", "storage"'
    await asyncio.sleep(1.1)  # the router's lookup cache
    resp = await copy.get("/dispatch", allow_redirects=False)
    assert resp.headers["Location"].startswith("/login")
    assert (await copy.get(served.ws("alice", "/healthz"))).status == 401


# -- dispatch ----------------------------------------------------------------------------------


async def test_dispatch_lands_in_the_workspace(served: Served) -> None:
    c = await served.client("alice")
    await dispatched(c, "alice", served)
    ws = await served.pool.store.get_workspace("alice")
    assert ws is not None and ws.state is WorkspaceState.RUNNING
    # Old /w/<user>/ links lead to the workspace's own origin.
    resp = await c.get("/w/alice", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == served.ws("alice")
    resp = await c.get("/w/alice/files/a?b=1", allow_redirects=False)
    assert resp.headers["Location"] == served.ws("alice", "/files/a?b=1")
    resp = await c.get(
        "/w/alice/files/a", headers={"Sec-Fetch-Site": "cross-site"}, allow_redirects=False
    )
    assert resp.headers["Location"] == served.ws("alice")  # a link elsewhere: the start


async def test_a_link_from_elsewhere_starts_nothing(served: Served) -> None:
    """GET /dispatch from another site's link (or another workspace's page) leads to the
    home page, whose button starts it, instead of starting or resuming a workspace; the
    starting page's own polls start one only from our own pages."""
    c = await served.client("alice")
    elsewhere = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    resp = await c.get("/dispatch", headers=elsewhere, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/"
    resp = await c.get("/dispatch/status", headers={"Sec-Fetch-Site": "same-site"})
    assert resp.status == 403
    assert await served.pool.store.get_workspace("alice") is None  # nothing started
    own = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "navigate"}
    resp = await c.get("/dispatch", headers=own, allow_redirects=False)
    assert resp.status in (200, 302) and resp.headers.get("Location") != "/"
    await dispatched(c, "alice", served)


async def test_resume_from_the_workspaces_own_page(served: Served) -> None:
    alice = await served.client("alice")
    await dispatched(alice, "alice", served)
    await served.pool.release("alice")
    served.router.proxy.forget("alice")
    page = await alice.get(served.ws("alice"), headers={"Accept": "text/html"})
    assert page.status == 409 and 'href="/_codepool/resume"' in await page.text()
    page_load = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    sibling = {**page_load, "Sec-Fetch-Site": "same-site"}
    earlier = served.router.dispatcher.current("alice")  # the first dispatch's, finished
    resp = await alice.get(served.ws("alice", "/_codepool/resume"), headers=sibling)
    assert resp.status == 200 and served.router.dispatcher.current("alice") is earlier
    own = {**page_load, "Sec-Fetch-Site": "same-origin"}
    resp = await alice.get(
        served.ws("alice", "/_codepool/resume"), headers=own, allow_redirects=False
    )
    assert resp.status == 302 and resp.headers["Location"] == served.origin + "/dispatch"
    assert served.router.dispatcher.current("alice") is not earlier  # a resume, under way
    await dispatched(alice, "alice", served)
    assert (await alice.get(served.ws("alice", "/healthz"))).status == 200


async def test_concurrent_dispatches_of_one_user_make_one_workspace(served: Served) -> None:
    clients = [await served.client("alice") for _ in range(3)]
    await asyncio.gather(*(dispatched(c, "alice") for c in clients for _ in range(3)))
    owned = [i for i in await served.pool.backend.list_instances() if i.owner == "alice"]
    assert len(owned) == 1


async def test_pool_full_page_and_status(make_served: Callable[..., Any]) -> None:
    served: Served = await make_served(local={"max_size": 1})
    alice = await served.client("alice")
    await dispatched(alice, "alice")
    bob = await served.client("bob")
    resp = await bob.get("/dispatch", allow_redirects=False)
    assert resp.status == 503 and resp.headers["Retry-After"] == "60"
    assert "The pool is full" in await resp.text()
    status = await (await bob.get("/dispatch/status")).json()
    assert status["state"] == "error" and status["kind"] == "pool-full"
    assert status["retry_after_s"] == 60


# -- the proxy ---------------------------------------------------------------------------------


@pytest.fixture(params=["host", "path"])
async def moded(make_served: Callable[..., Any], request: pytest.FixtureRequest) -> Served:
    """A router with per-user origins, and one in path mode: the proxy works the same."""
    served: Served = await make_served(router={"origin_mode": request.param})
    return served


@pytest.fixture
async def alice(moded: Served) -> Client:
    c = await moded.client("alice")
    await dispatched(c, "alice", moded)
    return c


async def test_html_gets_the_heartbeat_once(moded: Served, alice: Client) -> None:
    ws = await moded.pool.store.get_workspace("alice")
    assert ws is not None
    resp = await alice.get(moded.ws("alice"), headers={"Accept": "text/html"})
    html = await resp.text()
    assert resp.status == 200
    script = "/_codepool/heartbeat.js" if moded.router.origins.per_user else "/assets/heart"
    assert html.count(script) == 1
    assert f'data-instance-id="{ws.instance_id}"' in html
    assert html.index("heartbeat.js") < html.index("</head>")
    nohead = await alice.get(moded.ws("alice", "/nohead"), headers={"Accept": "text/html"})
    assert (await nohead.text()).startswith(f'<script defer src="{script}')
    resp = await alice.get(moded.ws("alice", "/_codepool/heartbeat.js"))
    expected = 200 if moded.router.origins.per_user else 404
    assert resp.status == expected


async def test_compressed_assets_pass_through_untouched(moded: Served, alice: Client) -> None:
    resp = await alice.get(moded.ws("alice", "/gzip.js"), headers={"Accept-Encoding": "gzip"})
    assert resp.headers["Content-Encoding"] == "gzip"
    body = await resp.read()
    assert body == GZIP_JS and b"heartbeat" not in gzip.decompress(body)


async def test_forwarded_headers_and_no_router_cookie_upstream(
    moded: Served, alice: Client
) -> None:
    origin = moded.router.origins.workspace("alice")
    alice.session.cookie_jar.update_cookies({"theme": "dark"}, URL(origin))
    resp = await alice.get(
        moded.ws("alice", "/echo-headers?x=a%26b%20c"),
        headers={"Connection": "keep-alive, X-Secret", "TE": "trailers"},
    )
    echoed = await resp.json()
    headers = {k.lower(): v for k, v in echoed["headers"].items()}
    assert echoed["path_qs"] == "/echo-headers?x=a%26b%20c"  # prefix stripped, encoding kept
    assert headers["cookie"] == "theme=dark"  # the router's own cookies stay out
    per_user = moded.router.origins.per_user
    assert headers.get("x-forwarded-prefix") == (None if per_user else "/w/alice")
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["host"] == origin.removeprefix("http://")
    assert "te" not in headers


async def test_a_box_cannot_set_cookies_or_headers_beyond_its_own_origin(
    moded: Served, alice: Client
) -> None:
    resp = await alice.get(moded.ws("alice", "/set-cookies"))
    assert resp.status == 200
    assert resp.headers.getall("Set-Cookie") == ["theirs=1; Path=/"]
    assert "Service-Worker-Allowed" not in resp.headers
    assert "Clear-Site-Data" not in resp.headers


async def test_an_html_bomb_passes_through_without_the_heartbeat(
    moded: Served, alice: Client
) -> None:
    """64 KB of gzip that inflates to 64 MB: inflated only up to router.max_html_bytes,
    then passed through as the box sent it."""
    resp = await alice.get(
        moded.ws("alice", "/bomb?mb=64"), headers={"Accept": "text/html", "Accept-Encoding": "gzip"}
    )
    body = await resp.read()
    assert resp.status == 200 and resp.headers["Content-Encoding"] == "gzip"
    assert body == gzip_bomb(64) and b"heartbeat" not in body


async def test_redirects_stay_inside_the_workspace(moded: Served, alice: Client) -> None:
    resp = await alice.get(moded.ws("alice", "/redirect"), allow_redirects=False)
    assert resp.status == 302
    expected = "/files/target.txt" if moded.router.origins.per_user else "/w/alice/files/target.txt"
    assert resp.headers["Location"] == expected


async def test_large_bodies_stream_both_ways(moded: Served, alice: Client) -> None:
    resp = await alice.get(moded.ws("alice", "/big?mb=6"))
    assert resp.status == 200 and resp.content_length == 6 * 1024 * 1024
    total = 0
    async for chunk in resp.content.iter_any():
        total += len(chunk)
    assert total == 6 * 1024 * 1024

    async def body() -> AsyncIterator[bytes]:
        for _ in range(128):
            yield b"y" * 65536

    resp = await alice.post(moded.ws("alice", "/upload"), data=body())
    assert (await resp.json())["received"] == 128 * 65536


async def test_websocket_echo_and_origin_check(moded: Served, alice: Client) -> None:
    origin = moded.router.origins.workspace("alice")
    async with alice.ws_connect(
        moded.ws("alice", "/ws"), headers={"Origin": origin}, protocols=("echo",)
    ) as ws:
        assert ws.protocol == "echo"
        await ws.send_str("hello")
        assert await ws.receive_str() == "hello"
        await ws.send_bytes(b"\x00\x01" * 1000)
        assert await ws.receive_bytes() == b"\x00\x01" * 1000
    others = ["https://evil.example", origin.replace("alice.", "bob."), moded.origin]
    if not moded.router.origins.per_user:
        others = ["https://evil.example", moded.origin.replace("127.0.0.1", "localhost")]
    for other in others:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await alice.ws_connect(moded.ws("alice", "/ws"), headers={"Origin": other})
        assert info.value.status == 403, other
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await alice.ws_connect(moded.ws("alice", "/ws"))  # no Origin at all


async def test_other_users_workspaces_are_refused(make_served: Callable[..., Any]) -> None:
    served: Served = await make_served()
    alice = await served.client("alice")
    await dispatched(alice, "alice", served)
    bob = await served.client("bob")
    root = await served.client("root")
    await dispatched(bob, "bob", served)
    for c in (bob, root):
        resp = await c.get(served.ws("alice"), headers={"Accept": "text/html"})
        assert resp.status == 403 and "belongs to someone else" in await resp.text()
        assert resp.url.path == "/authorize"
        resp = await c.get(
            served.ws("alice", "/ws"),
            headers={"Origin": served.ws("alice")[:-1], "Upgrade": "websocket"},
        )
        assert resp.status == 401
    # bob's own workspace cookie, shown to alice's host, opens nothing there.
    bob_cookie = bob.cookie(served.router.cookies.workspace, served.ws("bob"))
    assert bob_cookie is not None
    stranger = await served.client()
    stranger.session.cookie_jar.update_cookies(
        {served.router.cookies.workspace: bob_cookie}, URL(served.ws("alice"))
    )
    assert (await stranger.get(served.ws("alice", "/healthz"))).status == 401
    for host in ("ALICE.localhost", "alice.localhost.", "%61lice.localhost", "x.alice.localhost"):
        url = served.ws("alice", "/healthz").replace("alice.localhost", host)
        with contextlib.suppress(aiohttp.ClientError):
            resp = await bob.get(url, allow_redirects=False)
            assert resp.status in (302, 401, 404, 421), (host, resp.status)


async def test_another_origin_reaches_nothing_in_a_workspace(served: Served) -> None:
    """Sibling workspace origins are same-site, so alice's cookie rides along on requests
    that another origin's page makes: they are refused before proxying, whatever the
    method; a page load gets a page that opens her workspace's start from her origin."""
    alice = await served.client("alice")
    await dispatched(alice, "alice", served)
    bob_origin = served.ws("bob")[:-1]
    box_log = await alice.get(served.ws("alice", "/files/.requests"))
    before = await box_log.text()
    sibling = {"Origin": bob_origin, "Sec-Fetch-Site": "same-site"}
    for method in ("GET", "POST", "PUT", "DELETE"):
        resp = await alice.request(method, served.ws("alice", "/upload"), headers=sibling)
        assert resp.status == 403 and (await resp.json())["error"] == "cross-origin", method
    no_origin = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}
    assert (await alice.get(served.ws("alice", "/gzip.js"), headers=no_origin)).status == 403
    navigate = {
        "Sec-Fetch-Site": "same-site",
        "Sec-Fetch-Mode": "navigate",
        "Sec-Fetch-Dest": "document",
        "Accept": "text/html",
    }
    resp = await alice.get(served.ws("alice", "/files/x?delete=all"), headers=navigate)
    page = await resp.text()
    assert resp.status == 200 and 'http-equiv="refresh" content="0; url=/"' in page
    framed = {**navigate, "Sec-Fetch-Dest": "iframe"}
    assert (await alice.get(served.ws("alice", "/"), headers=framed)).status == 403
    after = await (await alice.get(served.ws("alice", "/files/.requests"))).text()
    reached = after[len(before) :].splitlines()
    assert reached == ["GET /files/.requests"], reached  # only this probe of ours


async def test_other_users_workspaces_are_refused_in_path_mode(
    make_served: Callable[..., Any],
) -> None:
    served: Served = await make_served(router={"origin_mode": "path"})
    alice = await served.client("alice")
    await dispatched(alice, "alice", served)
    bob = await served.client("bob")
    root = await served.client("root")
    for c in (bob, root):
        assert (await c.get("/w/alice/", allow_redirects=False)).status == 403
        resp = await c.get(
            "/w/alice/ws",
            headers={"Origin": served.origin, "Upgrade": "websocket", "Connection": "Upgrade"},
        )
        assert resp.status == 403
    for path in ("/w/%61lice/", "/w/alice%2F/", "/w/Alice/"):
        assert (await bob.get(path, allow_redirects=False)).status in (403, 404), path


async def test_admins_enter_workspaces_only_when_configured(
    make_served: Callable[..., Any],
) -> None:
    served: Served = await make_served(router={"admins_enter_workspaces": True})
    alice = await served.client("alice")
    await dispatched(alice, "alice", served)
    root = await served.client("root")
    await served.enter(root, "alice")
    assert (await root.get(served.ws("alice", "/healthz"))).status == 200
    page = await (await root.get("/admin")).text()
    assert f'href="{served.ws("alice")}"' in page  # the pool page links to it


async def test_a_stopped_workspace_offers_to_resume(moded: Served, alice: Client) -> None:
    await moded.pool.release("alice")
    moded.router.proxy.forget("alice")
    resp = await alice.get(moded.ws("alice"), headers={"Accept": "text/html"})
    assert resp.status == 409 and "Resume my workspace" in await resp.text()
    assert (await alice.get(moded.ws("alice", "/gzip.js"))).status == 409
    await dispatched(alice, "alice", moded)
    assert (await alice.get(moded.ws("alice", "/healthz"))).status == 200


async def test_a_workspace_resumed_meanwhile_is_reached_at_once(
    moded: Served, alice: Client
) -> None:
    """The proxy keeps an address for 2 s; a resumed local workspace listens on the same
    socket path but is another process, which the proxy's check of who answers refuses:
    it asks the store again at once instead of answering 502."""
    assert (await alice.get(moded.ws("alice", "/healthz"))).status == 200  # cached
    await moded.pool.release("alice")
    await moded.pool.assign("alice")
    assert (await alice.get(moded.ws("alice", "/healthz"))).status == 200


# -- ping --------------------------------------------------------------------------------------


async def test_ping_moves_last_seen(moded: Served, alice: Client) -> None:
    ws = await moded.pool.store.get_workspace("alice")
    assert ws is not None
    await asyncio.sleep(0.01)
    resp = await alice.post(moded.ping_url("alice"), json={"instanceId": ws.instance_id})
    assert resp.status == 204
    after = await moded.pool.store.get_workspace("alice")
    assert after is not None and after.last_seen_ms > ws.last_seen_ms
    resp = await alice.post(
        moded.ping_url("alice"), json={"instanceId": ws.instance_id, "user": "alice"}
    )
    assert resp.status == 204


@pytest.mark.parametrize(
    ("body", "headers", "status", "kind"),
    [
        ("{not json", {"Content-Type": "application/json"}, 400, "bad-json"),
        ("[1, 2]", {"Content-Type": "application/json"}, 400, "bad-fields"),
        ('{"instanceId": 5}', {"Content-Type": "application/json"}, 400, "bad-fields"),
        ('{"instanceId": ""}', {"Content-Type": "application/json"}, 400, "bad-fields"),
        ('{"instanceId": "x", "evil": 1}', {"Content-Type": "application/json"}, 400, "bad-fields"),
        (
            '{"instanceId": "i", "user": "bob"}',
            {"Content-Type": "application/json"},
            403,
            "forbidden",
        ),
        (
            '{"instanceId": "i-someone-else"}',
            {"Content-Type": "application/json"},
            409,
            "stale-instance",
        ),
        (
            '{"instanceId": "' + "x" * 1100 + '"}',
            {"Content-Type": "application/json"},
            413,
            "too-large",
        ),
        ('{"instanceId": "x"}', {"Content-Type": "text/plain"}, 415, "unsupported-media-type"),
        (
            '{"instanceId": "x"}',
            {"Content-Type": "application/x-www-form-urlencoded"},
            415,
            "unsupported-media-type",
        ),
        (
            '{"instanceId": "x"}',
            {"Content-Type": "application/json", "Origin": "https://evil.example"},
            403,
            "forbidden",
        ),
    ],
)
async def test_bad_pings_are_refused_and_write_nothing(
    moded: Served,
    alice: Client,
    body: str,
    headers: dict[str, str],
    status: int,
    kind: str,
) -> None:
    before = await moded.pool.store.get_workspace("alice")
    resp = await alice.post(moded.ping_url("alice"), data=body.encode(), headers=headers)
    assert resp.status == status
    assert (await resp.json())["error"] == kind
    assert await moded.pool.store.get_workspace("alice") == before


async def test_ping_after_stop_is_409(moded: Served, alice: Client) -> None:
    ws = await moded.pool.store.get_workspace("alice")
    assert ws is not None
    await moded.pool.release("alice")
    resp = await alice.post(moded.ping_url("alice"), json={"instanceId": ws.instance_id})
    assert resp.status == 409 and (await resp.json())["error"] == "stopped"


# -- admin -------------------------------------------------------------------------------------


async def test_admin_page_and_actions(moded: Served, alice: Client) -> None:
    root = await moded.client("root")
    bob = await moded.client("bob")
    assert (await bob.get("/admin")).status == 403
    page = await (await root.get("/admin")).text()
    assert "alice" in page and "running" in page
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None
    token = csrf.group(1)
    resp = await root.post(
        "/admin/extend", data={"user": "alice", "for": "2h"}, allow_redirects=False
    )
    assert resp.status == 403  # no CSRF token
    resp = await root.post(
        "/admin/extend", data={"csrf": token, "user": "alice", "for": "2h"}, allow_redirects=False
    )
    assert resp.status == 303
    ws = await moded.pool.store.get_workspace("alice")
    assert ws is not None and ws.hold_until_ms > ws.last_seen_ms + 7000 * 1000
    resp = await root.post(
        "/admin/stop",
        data={"csrf": token, "user": "../x"},
        allow_redirects=False,
        headers={"Accept": "application/json"},
    )
    assert resp.status == 400
    resp = await root.post(
        "/admin/stop", data={"csrf": token, "user": "alice"}, allow_redirects=False
    )
    assert resp.status == 200 and "Stop alice&#x27;s workspace?" in await resp.text()
    ws = await moded.pool.store.get_workspace("alice")  # a question first, nothing stopped
    assert ws is not None and ws.state is WorkspaceState.RUNNING
    resp = await root.post(
        "/admin/stop",
        data={"csrf": token, "user": "alice", "confirm": "yes"},
        allow_redirects=False,
    )
    assert resp.status == 303 and resp.headers["Location"] == "/admin?done=stopped&user=alice"
    page = await (await root.get(resp.headers["Location"])).text()
    assert "Stopped alice&#x27;s workspace." in page
    ws = await moded.pool.store.get_workspace("alice")
    assert ws is not None and ws.state is WorkspaceState.STOPPED
    # bob holds no admin rights, with or without a token
    assert (await bob.post("/admin/stop", data={"csrf": token, "user": "alice"})).status == 403


# -- loops -------------------------------------------------------------------------------------


async def test_one_leader_runs_the_cycle_and_reaps(make_served: Callable[..., Any]) -> None:
    moded: Served = await make_served(pool={"idle_timeout_s": 1})
    alice = await moded.client("alice")
    await dispatched(alice, "alice")
    other: Served = await make_served(pool={"idle_timeout_s": 1})
    await asyncio.sleep(1.2)
    assert await moded.router.loops.cycle()
    assert not await other.router.loops.cycle()  # the lease is taken
    ws = await moded.pool.store.get_workspace("alice")
    assert ws is not None and ws.state is WorkspaceState.STOPPED
    metrics = await (await alice.get("/metrics")).text()
    assert 'codepool_reaps_total{action="stop"} 1.0' in metrics
    assert "codepool_leader 1.0" in metrics
    # The gauges are counted on the cycle's reconcile walk, before its reap...
    assert 'codepool_workspaces{state="running"} 1.0' in metrics
    assert await moded.router.loops.cycle()  # ... so the stop shows in the next cycle
    metrics = await (await alice.get("/metrics")).text()
    assert 'codepool_workspaces{state="running"} 0.0' in metrics
    assert 'codepool_workspaces{state="stopped"} 1.0' in metrics
    await moded.router.loops.stop()  # gives the lease back
    assert await other.router.loops.cycle()


async def _failed_logins(c: Client, user: str, xff: str, n: int) -> int:
    """Fail n logins as `user` coming through a proxy that says the client is xff;
    return the status of one more attempt."""
    status = 0
    for _ in range(n + 1):
        page = await (await c.get("/login")).text()
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token is not None
        resp = await c.post(
            "/login",
            data={"csrf": token.group(1), "user": user, "password": "wrong-password"},
            headers={"X-Forwarded-For": xff},
            allow_redirects=False,
        )
        status = resp.status
        await resp.release()
    return status


async def test_rate_limit_counts_clients_behind_a_trusted_proxy(
    make_served: Callable[..., Any],
) -> None:
    served: Served = await make_served(
        router={"trusted_proxies": ["127.0.0.1/32"], "login_attempts_per_client_per_minute": 4}
    )
    c = await served.client()
    limit = 4  # the client's (the account's is 10)
    for n in range(limit):  # one client tries four names
        await _failed_logins(c, f"guess{n}", "203.0.113.5", 0)
    assert await _failed_logins(c, "alice", "203.0.113.5", 0) == 429
    # Another client behind the same load balancer, trying another name, is not locked out.
    assert await _failed_logins(c, "bob", "198.51.100.7", 0) == 401
    # A client cannot escape its count by prepending addresses of its own choosing.
    assert await _failed_logins(c, "carol", "1.2.3.4, 203.0.113.5", 0) == 429


async def test_forwarded_for_is_ignored_from_untrusted_peers(
    make_served: Callable[..., Any],
) -> None:
    served: Served = await make_served(router={"login_attempts_per_client_per_minute": 4})
    c = await served.client()
    limit = 4
    for n in range(limit):  # each "client" claims another address: all count as the peer
        await _failed_logins(c, f"user{n}", f"192.0.2.{n}", 0)
    assert await _failed_logins(c, "bob", "192.0.2.200", 0) == 429


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("a=1; codepool_session=x.y; b=2", "a=1; b=2"),
        ("codepool_session=x; codepool_login_csrf=t", ""),
        ("codepool_oidc=sealed.mac; a=1", "a=1"),  # a login in progress at the provider
        ("theirs=1", "theirs=1"),
        ("xcodepool_session=1;  a=b=c", "xcodepool_session=1; a=b=c"),  # kept
        ("a=1;codepool_session=x;;b", "a=1; b"),
    ],
)
def test_strip_cookies_keeps_every_cookie_but_the_routers(header: str, expected: str) -> None:
    private = CookieNames.for_scheme(secure=False).all()
    assert strip_cookies(header, private) == expected


async def test_the_fronts_question_is_answered_for_boxes_on_the_network_only(
    make_served: Callable[..., Any], request: pytest.FixtureRequest
) -> None:
    """`/_codepool/auth` (nginx/front.conf's question): a yes names a box on the network;
    a local workspace's socket is carried by the router itself, which checks who answers."""
    served: Served = await make_served(router={"trusted_proxies": ["127.0.0.1"]})
    alice = await served.client("alice")
    await dispatched(alice, "alice", served)
    asked = {"X-Original-URI": "/gzip.js"}
    resp = await alice.get(served.ws("alice", "/_codepool/auth"), headers=asked)
    on_network = "aws" in request.node.callspec.id
    assert resp.status == (200 if on_network else 403)
    assert ("X-Codepool-Upstream" in resp.headers) is on_network
    for uri in ("/_codepool/ping", "nope", "/x y"):
        refused = await alice.get(
            served.ws("alice", "/_codepool/auth"), headers={"X-Original-URI": uri}
        )
        assert refused.status == 403, uri
    html = {**asked, "Accept": "text/html"}
    assert (await alice.get(served.ws("alice", "/_codepool/auth"), headers=html)).status == 403
