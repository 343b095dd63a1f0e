"""Every route of the router. Handlers check who is asking, call one core method, and
answer; core errors become HTTP statuses in one place (`error_pages`)."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from codepool.core import errors, policy
from codepool.core.store import PingResult
from codepool.daemon import pages
from codepool.daemon.auth import LOGIN_CSRF_COOKIE, SESSION_COOKIE, Session
from codepool.daemon.context import ROUTER, Router
from codepool.daemon.proxy import Stopped

log = logging.getLogger("codepool.router")

MAX_PING_BYTES = 1024
DISPATCH_WAIT_S = 1.0  # answer /dispatch directly when the workspace is this quick
STATUS_WAIT_S = 10.0  # the longest /dispatch/status?seen=N holds its answer

# Core errors as HTTP answers: (status, short kind for JSON).
HTTP_ERRORS: dict[type[errors.CodepoolError], tuple[int, str]] = {
    errors.InvalidInput: (400, "invalid-input"),
    errors.NoWorkspace: (409, "no-workspace"),
    errors.Busy: (409, "busy"),
    errors.PoolFull: (503, "pool-full"),
    errors.AssignTimeout: (504, "timeout"),
    errors.BackendError: (503, "backend-unavailable"),
    errors.StoreUnavailable: (503, "store-unavailable"),
    errors.ConfigError: (500, "config"),
}

ERROR_TITLES = {
    "pool-full": "The pool is full",
    "backend-unavailable": "Workspaces are unavailable",
    "store-unavailable": "The router cannot reach its store",
    "timeout": "Your workspace did not start in time",
}


def http_error(exc: errors.CodepoolError) -> tuple[int, str]:
    return errors.classify(exc, HTTP_ERRORS, (500, "error"))


def json_error(status: int, kind: str, message: str, **extra: Any) -> web.Response:
    body = {"error": kind, "message": message, **extra}
    return web.json_response(body, status=status)


def wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return request.path in ("/ping", "/dispatch/status") or (
        "application/json" in accept and "text/html" not in accept
    )


def error_response(request: web.Request, exc: errors.CodepoolError) -> web.Response:
    status, kind = http_error(exc)
    headers = {}
    extra: dict[str, Any] = {}
    if isinstance(exc, errors.PoolFull):
        headers["Retry-After"] = str(exc.retry_after_s)
        extra["retry_after_s"] = exc.retry_after_s
    if wants_json(request):
        response = json_error(status, kind, str(exc), **extra)
        response.headers.update(headers)
        return response
    title = ERROR_TITLES.get(kind, "Something went wrong")
    page = pages.problem(title, str(exc), action="/dispatch", action_label="Try again")
    return web.Response(text=page, status=status, content_type="text/html", headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_pages(handler: Handler) -> Handler:
    """The one place where core errors become HTTP answers (JSON or a page). A wrapper of
    each handler, not a middleware: an app with no middleware skips aiohttp's middleware
    chain, a measurable share of a ping (docs/performance.md)."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except errors.CodepoolError as exc:
            if isinstance(exc, errors.BackendError | errors.StoreUnavailable):
                request.app[ROUTER].metrics.backend_errors.labels("request").inc()
            return error_response(request, exc)

    return wrapped


# -- sessions -------------------------------------------------------------------------------


async def session_of(request: web.Request) -> Session | None:
    """Who is asking: the signed session cookie (local accounts), or a verified JWT."""
    router = request.app[ROUTER]
    if router.jwt is not None:
        token = router.jwt.token_of(request.headers, request.cookies)
        return await router.jwt.session(token) if token else None
    return router.sessions.read(cookie(request, SESSION_COOKIE))


def cookie(request: web.Request, name: str) -> str | None:
    """One cookie's value (the last, as aiohttp's parser gives). A plain scan of the header:
    parsing every cookie into Morsels cost a tenth of each ping. The router's cookies are
    never quoted; a quoted value goes to the full parser."""
    value = None
    for part in request.headers.get("Cookie", "").split(";"):
        key, sep, found = part.strip().partition("=")
        if sep and key == name:
            value = found
    if value is not None and value.startswith('"'):
        return request.cookies.get(name)
    return value


async def require_session(request: web.Request) -> Session:
    """The caller's session; otherwise 401 (JSON) or a redirect to the login page."""
    session = await session_of(request)
    if session is not None:
        return session
    if wants_json(request) or request.method != "GET":
        raise web.HTTPUnauthorized(
            text=json.dumps({"error": "unauthenticated", "message": "log in first"}),
            content_type="application/json",
        )
    raise web.HTTPFound(f"/login?next={quote(request.path_qs, safe='')}")


def same_origin(request: web.Request) -> bool:
    """A state-changing request must come from our own pages (or say nothing of origin)."""
    origin = request.headers.get("Origin")
    return origin is None or origin.lower() == request.app[ROUTER].origin


def check_form(request: web.Request, form: Any, token: str | None) -> None:
    if (
        not same_origin(request)
        or not token
        or not secrets.compare_digest(str(form.get("csrf", "")), token)
    ):
        raise web.HTTPForbidden(text="cross-site request refused (CSRF token or Origin)")


def safe_next(value: str | None) -> str:
    """Only a local path: no scheme, no host, no //evil.example, no backslash tricks."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/dispatch"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or any(ord(c) < 32 for c in value):
        return "/dispatch"
    return value


def client_address(request: web.Request) -> str:
    """The browser's address: the peer, or, when the peer is a trusted load balancer, the
    nearest address in X-Forwarded-For that is not one of ours (an untrusted client can
    put anything at the start of that header)."""
    trusted = request.app[ROUTER].trusted_proxies
    peer = request.remote or ""
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _is_trusted(address: str, trusted: tuple[IPv4Network | IPv6Network, ...]) -> bool:
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def set_session_cookie(router: Router, response: web.StreamResponse, value: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=router.settings.router.session_lifetime_s,
        httponly=True,
        samesite="Lax",
        secure=router.secure_cookies,
        path="/",
    )


# -- login and logout -------------------------------------------------------------------------


async def login_page(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    next_path = safe_next(request.query.get("next"))
    if await session_of(request) is not None:
        raise web.HTTPFound(next_path)
    if router.jwt is not None:  # people log in at the identity provider, not here
        if router.settings.jwt.login_url:
            raise web.HTTPFound(router.settings.jwt.login_url)
        text = pages.problem(
            "Log in through your organisation",
            "This router accepts tokens from your identity provider. Open codepool from "
            "your organisation's portal, or ask an administrator for its address.",
        )
        return web.Response(text=text, status=401, content_type="text/html")
    token = secrets.token_urlsafe(16)
    response = web.Response(text=pages.login(token, next_path), content_type="text/html")
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        secure=router.secure_cookies,
        path="/login",
        max_age=3600,
    )
    return response


async def login_submit(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    if router.jwt is not None:
        raise web.HTTPNotFound(text="local login is off (router.auth = jwt)")
    form = await request.post()
    check_form(request, form, request.cookies.get(LOGIN_CSRF_COOKIE))
    user = str(form.get("user", "")).strip()
    password = str(form.get("password", ""))
    next_path = safe_next(str(form.get("next", "")))
    keys = [f"client:{client_address(request)}", f"user:{user}"]
    wait = router.limiter.retry_after(keys)
    if wait:
        text = pages.login(
            str(form.get("csrf")),
            next_path,
            f"Too many failed logins. Try again in {wait} s.",
            user,
        )
        return web.Response(
            text=text, status=429, content_type="text/html", headers={"Retry-After": str(wait)}
        )
    account = None
    if len(user) <= 64 and len(password) <= 1024:
        account = await asyncio.to_thread(router.users.verify, user, password)
    if account is None:
        router.limiter.fail(keys)
        log.info("login failed user=%r client=%s", user[:64], keys[0][7:])
        text = pages.login(str(form.get("csrf")), next_path, "Wrong user name or password.", user)
        return web.Response(text=text, status=401, content_type="text/html")
    router.limiter.forget([f"user:{user}"])
    cookie, _ = router.sessions.issue(account)  # a fresh session id: no fixation
    response = web.HTTPFound(next_path)
    set_session_cookie(router, response, cookie)
    response.del_cookie(LOGIN_CSRF_COOKIE, path="/login")
    log.info("login user=%s client=%s", account.name, keys[0][7:])
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    session = await require_session(request)
    check_form(request, await request.post(), session.csrf)
    response = web.HTTPFound("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    if request.app[ROUTER].jwt is not None:
        response.del_cookie(request.app[ROUTER].settings.jwt.cookie, path="/")
    raise response


async def index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/dispatch" if await session_of(request) else "/login")


# -- dispatch ------------------------------------------------------------------------------


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Send the user to their workspace: at once if it is running, else through the
    'starting' page while it resumes or boots."""
    router = request.app[ROUTER]
    session = await require_session(request)
    job = router.dispatcher.start(session.user)
    assert job.task is not None
    started = time.monotonic()
    done, _ = await asyncio.wait({job.task}, timeout=DISPATCH_WAIT_S)
    if done:
        if job.error is not None:
            return error_response(request, job.error)
        assert job.result is not None
        router.metrics.assign_seconds.labels(job.result.how).observe(time.monotonic() - started)
        raise web.HTTPFound(f"/w/{session.user}/")
    return web.Response(text=pages.starting(session.user), content_type="text/html")


async def dispatch_status(request: web.Request) -> web.StreamResponse:
    """Progress of the user's assignment, for the 'starting' page's polls. With ?seen=N
    (the messages the page has shown) the answer waits, up to STATUS_WAIT_S, until the
    assignment finishes or says something new. A poll that reaches another router (behind
    a load balancer) starts or joins one there."""
    router = request.app[ROUTER]
    session = await require_session(request)
    job = router.dispatcher.current(session.user) or router.dispatcher.start(session.user)
    seen = request.query.get("seen", "")
    if seen.isdigit() and len(seen) < 6:  # a long poll: answer when there is news
        await job.wait_change(int(seen), STATUS_WAIT_S)
    body: dict[str, Any] = {"messages": job.messages}
    if job.result is not None:
        body.update(state="ready", url=f"/w/{session.user}/")
    elif job.error is not None:
        _, kind = http_error(job.error)
        body.update(state="error", error=str(job.error), kind=kind)
        if isinstance(job.error, errors.PoolFull):
            body["retry_after_s"] = job.error.retry_after_s
    else:
        body["state"] = "starting"
    return web.json_response(body, headers={"Cache-Control": "no-store"})


# -- heartbeat -----------------------------------------------------------------------------


async def ping(request: web.Request) -> web.StreamResponse:
    """POST /ping {instanceId, user?}: the visible tab says the workspace is in use."""
    router = request.app[ROUTER]
    if request.content_type != "application/json":
        return json_error(415, "unsupported-media-type", "send Content-Type: application/json")
    if (request.content_length or 0) > MAX_PING_BYTES:
        return json_error(413, "too-large", f"a ping is at most {MAX_PING_BYTES} bytes")
    if not same_origin(request):
        return json_error(403, "forbidden", "cross-site ping refused")
    session = await session_of(request)
    if session is None:
        return json_error(401, "unauthenticated", "log in first")
    raw = await request.content.read(MAX_PING_BYTES + 1)
    if len(raw) > MAX_PING_BYTES:
        return json_error(413, "too-large", f"a ping is at most {MAX_PING_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return json_error(400, "bad-json", "the body is not valid JSON")
    if not isinstance(body, dict) or set(body) - {"instanceId", "user"}:
        return json_error(400, "bad-fields", 'expected {"instanceId": "..."}')
    instance_id = body.get("instanceId")
    if not isinstance(instance_id, str) or not 0 < len(instance_id) <= 128:
        return json_error(400, "bad-fields", "instanceId must be a string of 1 to 128 characters")
    if "user" in body and body["user"] != session.user:
        return json_error(403, "forbidden", "a ping may only name your own user")
    result = await router.pool.ping(session.user, instance_id)
    router.metrics.ping_results[result].inc()
    if result is PingResult.OK:
        return web.Response(status=204)
    if result is PingResult.STALE_INSTANCE:
        return json_error(409, "stale-instance", "that is not your workspace's instance now")
    return json_error(409, "stopped", "your workspace is stopped; open /dispatch to resume it")


# -- the workspace proxy ---------------------------------------------------------------------


def may_enter(router: Router, session: Session, owner: str) -> bool:
    """The owner, or an admin where router.admins_enter_workspaces allows it."""
    return session.user == owner or (
        session.admin and router.settings.router.admins_enter_workspaces
    )


async def workspace(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    owner = request.match_info["user"]
    raw = request.rel_url.raw_path
    prefix = f"/w/{owner}"
    if not raw.startswith(prefix + "/") and raw != prefix:
        raise web.HTTPNotFound()
    session = await require_session(request)
    if not may_enter(router, session, owner):
        raise web.HTTPForbidden(text="this workspace belongs to someone else")
    if raw == prefix:
        raise web.HTTPFound(prefix + "/")
    path = raw[len(prefix) :]
    if request.rel_url.raw_query_string:
        path += "?" + request.rel_url.raw_query_string
    is_ws = request.headers.get("Upgrade", "").lower() == "websocket"
    if is_ws and request.headers.get("Origin", "").lower() != router.origin:
        raise web.HTTPForbidden(text="WebSocket from a foreign Origin refused")
    try:
        if is_ws:
            return await router.proxy.websocket(request, owner, path)
        return await router.proxy.http(request, owner, path)
    except Stopped:
        if is_ws or request.method != "GET" or "text/html" not in request.headers.get("Accept", ""):
            return json_error(409, "stopped", "the workspace is stopped")
        text = pages.problem(
            "Your workspace is stopped",
            "It was stopped after being idle. Your files are kept: resume it to carry on.",
            action="/dispatch",
            action_label="Resume my workspace",
        )
        return web.Response(text=text, status=409, content_type="text/html")


# -- the nginx front's authorization ---------------------------------------------------------

_WORKSPACE_URI = re.compile(r"^/w/([^/?#]+)/")
AUTH_CACHE_S = 2  # how long nginx may reuse a "yes" (as long as the proxy trusts its cache)


async def authorize(request: web.Request) -> web.StreamResponse:
    """`auth_request` of nginx/front.conf: may nginx carry this workspace request straight
    to the box? 200 with the box's address if so (nginx caches it AUTH_CACHE_S). Anything
    else gets 403, and the front hands the request to the router's own proxy, which gives
    the right answer: a login redirect, the stopped page, a refusal, or an HTML document
    with the heartbeat injected. Only peers in router.trusted_proxies are answered: the
    box's address is not for browsers."""
    router = request.app[ROUTER]
    if not _is_trusted(request.remote or "", router.trusted_proxies):
        raise web.HTTPNotFound()
    no = web.Response(status=403, headers={"Cache-Control": "no-store"})
    match = _WORKSPACE_URI.match(request.headers.get("X-Original-URI", ""))
    if match is None or "text/html" in request.headers.get("Accept", ""):
        return no
    owner = match.group(1)
    session = await session_of(request)
    if session is None or not may_enter(router, session, owner):
        return no
    is_ws = request.headers.get("X-Original-Upgrade", "").lower() == "websocket"
    if is_ws and request.headers.get("Origin", "").lower() != router.origin:
        return no
    try:
        ws = await router.proxy.workspace(owner)
    except Stopped:
        return no
    box = urlsplit(ws.address)
    return web.Response(
        status=200,
        headers={
            "X-Codepool-Upstream": box.netloc,
            "X-Codepool-Scheme": box.scheme,
            "Cache-Control": f"private, max-age={AUTH_CACHE_S}",
        },
    )


# -- admin ----------------------------------------------------------------------------------


async def require_admin(request: web.Request) -> Session:
    router = request.app[ROUTER]
    session = await require_session(request)
    if router.jwt is not None:
        admin = session.admin  # from jwt.admin_users, checked when the token was verified
    else:  # re-read: an admin whose rights were revoked loses them at once
        account = router.users.get(session.user)
        admin = account is not None and account.admin
    if not admin:
        raise web.HTTPForbidden(text="admins only")
    return session


async def admin_page(request: web.Request) -> web.StreamResponse:
    session = await require_admin(request)
    status = await request.app[ROUTER].pool.status()
    notice = request.query.get("notice", "")[:200]
    return web.Response(text=pages.admin(status, session.csrf, notice), content_type="text/html")


async def admin_action(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    session = await require_admin(request)
    form = await request.post()
    check_form(request, form, session.csrf)
    user = policy.check_user(str(form.get("user", "")))
    if request.path.endswith("/stop"):
        await router.pool.release(user)
        router.proxy.forget(user)
        notice = f"stopped {user}'s workspace"
    else:
        ws = await router.pool.extend(user, policy.parse_duration(str(form.get("for", ""))))
        until = time.strftime("%H:%M", time.localtime(ws.hold_until_ms / 1000))
        notice = f"{user}'s workspace is held until {until}"
    log.info("admin %s: %s", session.user, notice)
    raise web.HTTPSeeOther(f"/admin?notice={quote(notice)}")


# -- health, metrics, assets ------------------------------------------------------------------


async def health(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    checks: dict[str, str] = {}
    for name, check in (
        ("store", router.pool.store.check),
        ("backend", router.pool.backend.capacity),
    ):
        try:
            await asyncio.wait_for(check(), 5)
            checks[name] = "ok"
        except (errors.CodepoolError, TimeoutError) as exc:
            checks[name] = f"error: {exc}" if str(exc) else "error: timed out"
    ok = all(v == "ok" for v in checks.values())
    body = {
        "status": "ok" if ok else "unavailable",
        "checks": checks,
        "leader": router.loops.is_leader,
        "pid": os.getpid(),  # which worker answered (codepool serve --workers N)
    }
    return web.json_response(body, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.StreamResponse:
    data = generate_latest(request.app[ROUTER].metrics.registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


STATIC = resources.files("codepool.daemon") / "static"
ASSET_TYPES = {".js": "text/javascript", ".css": "text/css"}


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


def add_routes(app: web.Application) -> None:
    for method, path, handler in (
        ("GET", "/", index),
        ("GET", "/login", login_page),
        ("POST", "/login", login_submit),
        ("POST", "/logout", logout),
        ("GET", "/dispatch", dispatch),
        ("GET", "/dispatch/status", dispatch_status),
        ("POST", "/ping", ping),
        ("GET", "/admin", admin_page),
        ("POST", "/admin/stop", admin_action),
        ("POST", "/admin/extend", admin_action),
        ("GET", "/health", health),
        ("GET", "/auth/workspace", authorize),
        ("GET", "/metrics", metrics),
        ("GET", "/assets/{name}", asset),
        ("*", "/w/{user}", workspace),
        ("*", "/w/{user}/{tail:.*}", workspace),
    ):
        app.router.add_route(method, path, error_pages(handler))
