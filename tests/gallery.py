"""Every page of the router, made by the router's own page functions from fixed data and
served with the router's own assets: what scripts/screenshots.py photographs for the
docs and tests/test_a11y.py checks with axe-core. Fixed data keeps the pictures the same
from run to run; the pages and assets are the real ones."""

from __future__ import annotations

import contextlib
import hashlib
from importlib import resources
from pathlib import Path

from aiohttp import web

from codepool.core.models import Capacity, PoolStatus, Workspace, WorkspaceState
from codepool.core.policy import hold_choices
from codepool.core.report import Prices, Report, Usage, total_of
from codepool.daemon import pages
from codepool.daemon.proxy import Heartbeat, inject
from tests.helpers import serve_app

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
# What the pictures are made from: when one of these changes, the pictures may be out of
# date, and tests/test_docs.py asks for scripts/screenshots.py to be run again.
INPUTS = (
    "codepool/daemon/pages.py",
    "codepool/daemon/proxy.py",
    "tests/gallery.py",
    "scripts/screenshots.py",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "codepool" / "daemon" / "static").iterdir()),
)


def digests() -> dict[str, str]:
    """sha256 of every input, by its path in the repository."""
    return {path: hashlib.sha256((ROOT / path).read_bytes()).hexdigest() for path in INPUTS}


NOW = 1_790_000_000_000
IDLE_S = 300
ALICE = pages.Who("alice", False, "token")
ADMIN = pages.Who("root", True, "token")


def _ws(user: str, state: WorkspaceState, seen_s_ago: int, held_s: int = 0) -> Workspace:
    return Workspace(
        user=user,
        instance_id="i-0" + user.encode().hex().ljust(16, "7")[:16],
        address="http://10.0.3.17:8080",
        state=state,
        last_seen_ms=NOW - seen_s_ago * 1000,
        assigned_at_ms=NOW - 3600_000,
        hold_until_ms=NOW + held_s * 1000 if held_s else 0,
        stopped_at_ms=NOW - seen_s_ago * 1000 if state is WorkspaceState.STOPPED else 0,
    )


def _home(ws: Workspace | None) -> pages.HomeView:
    due = max(ws.last_seen_ms + IDLE_S * 1000, ws.hold_until_ms) if ws else 0
    return pages.HomeView(ws, NOW, due, IDLE_S, hold_choices(28800))


def _pool() -> PoolStatus:
    rows = (
        _ws("alice", WorkspaceState.RUNNING, 42),
        _ws("bob", WorkspaceState.RUNNING, 250, held_s=5400),
        _ws("carol", WorkspaceState.STARTING, 3),
        _ws("dan", WorkspaceState.STOPPED, 7200),
    )
    return PoolStatus(
        capacity=Capacity(min_size=0, max_size=20, desired=4),
        in_service=4,
        pending=1,
        standby=1,
        running=2,
        stopped=1,
        spares=1,
        workspaces=rows,
        warnings=(),
        now_ms=NOW,
    )


def _usage() -> Report:
    prices = Prices(0.096, 0.08, 20, "USD", "m6i.large")
    hours = {"alice": (176.0, 535.0), "bob": (77.0, 634.0), "carol": (16.0, 33.0)}
    people = [
        Usage(
            user,
            run,
            stopped,
            {"resumed": 40},
            {"idle": 40},
            prices.cost(run, run + stopped),
            prices.cost(run + stopped, run + stopped),
        )
        for user, (run, stopped) in hours.items()
    ]
    return Report(NOW - 30 * 86_400_000, NOW, prices, tuple(people), total_of(people))


PAGES = {  # name -> the page (the names of the pictures in docs/images)
    "login": lambda: pages.login("token", "/"),
    "home": lambda: pages.home(ALICE, _home(_ws("alice", WorkspaceState.RUNNING, 95))),
    "home-held": lambda: pages.home(
        ALICE, _home(_ws("alice", WorkspaceState.RUNNING, 600, held_s=3300))
    ),
    "home-stopped": lambda: pages.home(
        ALICE,
        _home(_ws("alice", WorkspaceState.STOPPED, 5400)),
        "Your workspace is stopped. Your files are kept.",
    ),
    "starting": lambda: pages.starting(ALICE),
    "confirm-stop": lambda: pages.confirm_stop(ALICE, "alice", "/stop", "/"),
    "stopped": lambda: pages.stopped("/dispatch"),
    "refused": lambda: pages.problem(
        "This workspace belongs to someone else",
        "You can only open your own workspace.",
        who=ALICE,
    ),
    "admin": lambda: pages.admin(
        _pool(),
        ADMIN,
        "Stopped dan's workspace.",
        hold_choices_s=hold_choices(28800),
        usage=_usage(),
    ),
}

# The workspace's side: an empty page in VS Code's colours with the real heartbeat tag, as
# the proxy puts it into every page of a workspace, talking to the gallery's stand-ins.
HEARTBEAT = Heartbeat(
    script="/assets/heartbeat.js",
    ping="/ping",
    status="/api/me",
    hold="/hold",
    resume="/dispatch",
    login="/login",
    home="/home",
    interval_s=30,
)
WORKSPACE_PAGE = (
    "<!doctype html><html lang=en><head><meta charset=utf-8><title>alice - VS Code</title>"
    "</head><body style='margin:0;height:100vh;background:#1f1f1f;color:#ccc'>"
    "<main><h1 style='font:16px sans-serif;padding:40px'>A workspace</h1></main></body></html>"
)


def workspace_status(held_s: int) -> dict[str, object]:
    """/api/me for a running workspace 90 s from an idle stop (so a hidden tab warns)."""
    return {
        "state": "running",
        "warn_s": 120,
        "hold_choices_s": list(hold_choices(28800)),
        "notify_hold_s": 3600,
        "left_s": max(90, held_s),
        "held_s": held_s,
        "last_active_s": 210,
    }


STARTING_STATUS = {
    "state": "starting",
    "messages": ["Preparing a new workspace"],
    "elapsed_s": 12.0,
    "estimate_s": 41.0,
}


def app() -> web.Application:
    static = resources.files("codepool.daemon") / "static"

    async def page(request: web.Request) -> web.Response:
        name = request.match_info["name"] or "home"
        if name not in PAGES:
            raise web.HTTPNotFound()
        return web.Response(text=PAGES[name](), content_type="text/html")

    async def asset(request: web.Request) -> web.Response:
        item = static / request.match_info["file"]
        if not item.is_file():
            raise web.HTTPNotFound()
        kind = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
        return web.Response(
            body=item.read_bytes(), content_type=kind[request.match_info["file"].split(".")[-1]]
        )

    async def status(request: web.Request) -> web.Response:
        return web.json_response(STARTING_STATUS)

    async def workspace(request: web.Request) -> web.Response:
        html = inject(WORKSPACE_PAGE.encode(), HEARTBEAT.tag("i-0gallery"))
        return web.Response(body=html, content_type="text/html")

    async def me(request: web.Request) -> web.Response:
        return web.json_response(workspace_status(0))

    async def hold(request: web.Request) -> web.Response:
        for_s = int((await request.json())["for_s"])
        return web.json_response(workspace_status(for_s))

    async def ping(request: web.Request) -> web.Response:
        return web.Response(status=204)

    application = web.Application()
    application.router.add_get("/assets/{file}", asset)
    application.router.add_get("/dispatch/status", status)
    application.router.add_get("/workspace/", workspace)
    application.router.add_get("/api/me", me)
    application.router.add_post("/hold", hold)
    application.router.add_post("/ping", ping)
    application.router.add_get("/{name:[a-z-]*}", page)
    return application


def serving() -> contextlib.AbstractAsyncContextManager[str]:
    """The gallery on a free loopback port; its base URL."""
    return serve_app(app())
