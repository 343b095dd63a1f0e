"""The route table, and dispatch and its progress, health, metrics and the router's
assets. Login is in login.py, the person's home page and actions in home.py, the admin's
pages in admin.py, the workspaces (and every request to a workspace origin) in
workspace.py; what they share in http.py."""

from __future__ import annotations

import asyncio
import functools
import os
import time
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from codepool.core import errors
from codepool.daemon import admin, api, home, login, pages, workspace
from codepool.daemon.context import ROUTER
from codepool.daemon.http import (
    Handler,
    error_pages,
    error_response,
    from_own_pages,
    http_error,
    is_trusted,
    require_session,
    session_of,
)

DISPATCH_WAIT_S = 1.0  # answer /dispatch directly when the workspace is this quick
STATUS_WAIT_S = 10.0  # the longest /dispatch/status?seen=N holds its answer
ANY_HOST = frozenset(
    {"/health", "/livez", "/readyz", "/metrics"}
)  # load balancers ask by address, not by name


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Send the person to their workspace: at once if it is running, else through the
    'starting' page while it resumes or boots."""
    router = request.app[ROUTER]
    session = await require_session(request)
    if not from_own_pages(request) and router.dispatcher.current(session.user) is None:
        # A link from elsewhere starts or resumes nothing by itself: the home page has
        # the button that does.
        raise web.HTTPSeeOther("/")
    job = router.dispatcher.start(session.user)
    assert job.task is not None
    started = time.monotonic()
    done, _ = await asyncio.wait({job.task}, timeout=DISPATCH_WAIT_S)
    if done:
        if job.error is not None:
            return error_response(request, job.error)
        assert job.result is not None
        router.metrics.assign_seconds.labels(job.result.how).observe(time.monotonic() - started)
        raise web.HTTPFound(router.origins.workspace_url(session.user))
    return web.Response(text=pages.starting(home.who(session)), content_type="text/html")


async def dispatch_status(request: web.Request) -> web.StreamResponse:
    """Progress of the person's assignment, for the 'starting' page's polls. With ?seen=N
    (the messages the page has shown) the answer waits, up to STATUS_WAIT_S, until the
    assignment finishes or says something new. A poll that reaches another router (behind
    a load balancer) starts or joins one there."""
    router = request.app[ROUTER]
    session = await require_session(request)
    job = router.dispatcher.current(session.user)
    if job is None:
        if not from_own_pages(request):
            raise web.HTTPForbidden(text="only the starting page may start a workspace")
        job = router.dispatcher.start(session.user)
    seen = request.query.get("seen", "")
    if seen.isdigit() and len(seen) < 6:  # a long poll: answer when there is news
        await job.wait_change(int(seen), STATUS_WAIT_S)
    body: dict[str, Any] = {
        "messages": job.messages,
        "elapsed_s": round(time.monotonic() - job.started_at, 1),
        "estimate_s": router.dispatcher.estimate_s(job),
    }
    if job.result is not None:
        body.update(state="ready", url=router.origins.workspace_url(session.user))
    elif job.error is not None:
        _, kind = http_error(job.error)
        body.update(state="error", error=str(job.error), kind=kind)
        if isinstance(job.error, errors.PoolFull):
            body["retry_after_s"] = job.error.retry_after_s
    else:
        body["state"] = "starting"
    return web.json_response(body, headers={"Cache-Control": "no-store"})


BACKEND_CHECK_S = 5.0  # a readiness probe every second must not cost a cloud call each


async def _checks(request: web.Request) -> dict[str, str]:
    """Each check, "ok" or why not. The backend's answer is reused for BACKEND_CHECK_S."""
    router = request.app[ROUTER]
    checks: dict[str, str] = {}
    for name, check in (("store", router.pool.store.check()), ("backend", _backend(request))):
        try:
            await asyncio.wait_for(check, 5)
            checks[name] = "ok"
        except (errors.CodepoolError, TimeoutError) as exc:
            checks[name] = f"error: {exc}" if str(exc) else "error: timed out"
    return checks


async def _backend(request: web.Request) -> None:
    router = request.app[ROUTER]
    now = time.monotonic()
    if router.backend_checked_until > now:
        return
    await router.pool.backend.capacity()
    router.backend_checked_until = now + BACKEND_CHECK_S


def _may_see_details(request: web.Request, session_admin: bool) -> bool:
    """Error texts name addresses and accounts: for admins, and for probes made on this
    machine or by a trusted proxy itself (not a browser's request it forwards)."""
    if session_admin:
        return True
    peer = request.remote or ""
    near = peer in ("127.0.0.1", "::1") or is_trusted(peer, request.app[ROUTER].trusted_proxies)
    return near and "X-Forwarded-For" not in request.headers


async def health(request: web.Request) -> web.StreamResponse:
    """Public: the status and which check failed. In detail (the error text, whether this
    router leads, which worker answered): for admins and local or trusted probes."""
    router = request.app[ROUTER]
    checks = await _checks(request)
    ok = all(v == "ok" for v in checks.values())
    body: dict[str, Any] = {"status": "ok" if ok else "unavailable"}
    session = await session_of(request) if "Cookie" in request.headers else None
    if _may_see_details(request, bool(session and session.admin)):
        body.update(checks=checks, leader=router.loops.is_leader, pid=os.getpid())
    else:
        body["checks"] = {k: "ok" if v == "ok" else "error" for k, v in checks.items()}
    return web.json_response(body, status=200 if ok else 503)


async def livez(request: web.Request) -> web.StreamResponse:
    """The process answers (a liveness probe: restart it if not)."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    """The store and the backend answer (a readiness probe: send people here or not)."""
    checks = await _checks(request)
    failed = sorted(k for k, v in checks.items() if v != "ok")
    body = {"status": "unavailable", "failed": failed} if failed else {"status": "ok"}
    return web.json_response(body, status=503 if failed else 200)


async def metrics(request: web.Request) -> web.StreamResponse:
    data = request.app[ROUTER].metrics.exposition()
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


STATIC = resources.files("codepool.daemon") / "static"
ASSET_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


async def asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if "/" in name or name.startswith(".") or not any(name.endswith(s) for s in ASSET_TYPES):
        raise web.HTTPNotFound()
    item = STATIC / name
    if not item.is_file():
        raise web.HTTPNotFound()
    return web.Response(
        body=item.read_bytes(),
        content_type=ASSET_TYPES[name[name.rfind(".") :]],
        headers={"Cache-Control": "public, max-age=300"},
    )


async def favicon(request: web.Request) -> web.StreamResponse:
    """Browsers ask for /favicon.ico whatever a page says."""
    raise web.HTTPMovedPermanently("/assets/favicon.svg")


async def not_found(request: web.Request) -> web.StreamResponse:
    raise web.HTTPNotFound()


def by_host(handler: Handler) -> Handler:
    """With per-user origins, a request is first sorted by its Host: a workspace host
    goes to workspace.py whatever its path (the box's paths are not the router's); the
    main host to the route; any other name gets the main origin, except the paths load
    balancers probe by address."""

    @functools.wraps(handler)
    async def sorted_by_host(request: web.Request) -> web.StreamResponse:
        origins = request.app[ROUTER].origins
        if origins.per_user and not origins.is_main(request.host):
            label = origins.label_in(request.host)
            if label is not None:
                return await workspace.on_workspace_host(request, label)
            if request.path not in ANY_HOST:
                if request.method in ("GET", "HEAD"):
                    raise web.HTTPFound(origins.main + request.rel_url.raw_path)
                raise web.HTTPMisdirectedRequest(text=f"this router serves {origins.main}")
        return await handler(request)

    return sorted_by_host


def add_routes(app: web.Application) -> None:
    for method, path, handler in (
        ("GET", "/", home.home_page),
        ("POST", "/hold", home.hold),
        ("POST", "/stop", home.stop),
        ("GET", "/api/me", home.api_me),
        ("GET", "/login", login.login_page),
        ("POST", "/login", login.login_submit),
        ("GET", "/login/callback", login.oidc_callback),
        ("POST", "/logout", login.logout),
        ("GET", "/dispatch", dispatch),
        ("GET", "/dispatch/status", dispatch_status),
        ("GET", "/authorize", workspace.authorize),
        ("POST", "/ping", workspace.main_ping),
        ("GET", "/admin", admin.admin_page),
        ("POST", "/admin/stop", admin.admin_action),
        ("POST", "/admin/extend", admin.admin_action),
        ("GET", "/health", health),
        ("GET", "/livez", livez),
        ("GET", "/readyz", readyz),
        ("GET", "/metrics", metrics),
        ("GET", "/assets/{name}", asset),
        ("GET", "/favicon.ico", favicon),
        *api.api_routes(),
        ("*", "/w/{user}", workspace.path_workspace),
        ("*", "/w/{user}/{tail:.*}", workspace.path_workspace),
        ("*", "/{tail:.*}", not_found),  # so that every path of a workspace host gets here
    ):
        app.router.add_route(method, path, error_pages(by_host(handler)))
