"""Entering and using a workspace.

Per-user origins (router.origin_mode = "host", the default). Every request whose Host is
`<label>.<workspace_domain>` comes here. Only paths under /_codepool/ are the router's;
everything else goes to the box, once three things hold:
  1. it comes from this workspace's own origin (Origin and Sec-Fetch-Site): a page of
     another workspace, which is same-site, reaches nothing here, not even with GET;
  2. it carries this host's own session cookie (host-only, made for this host alone);
  3. that session's person may enter this workspace (the owner, or an admin where
     router.admins_enter_workspaces allows it), checked again every second.

The session cookie of a workspace origin comes from the main origin by a one-time pass,
as a JupyterHub single-user server gets its login from the hub:
  a. a request without it gets a state cookie on this host and goes to the main origin's
     /authorize?host=<label>&state=<state>;
  b. there, the person's main session is checked and a pass is made: one use, 60 s, for
     this host, bound to the state (only its hash is kept);
  c. back here, /_codepool/enter?token=<pass> takes the pass with the state cookie,
     opens the workspace session and goes on to the page first asked for.
A pass cannot be replayed (the store deletes it as it hands it out), nor used on
another host, nor pressed on someone else's browser (it lacks the state cookie).

Path mode (`/w/<user>/…` on the main origin) is the explicit opt-in where a wildcard name
cannot be had. The nginx front (nginx/front.conf) asks `authorize_front` before it
carries a request to a box itself; it serves per-user origins only.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from importlib import resources
from urllib.parse import urlsplit

from aiohttp import web

from codepool.core import sockets
from codepool.core.logs import fields
from codepool.core.origins import is_label, label_of, user_of_label
from codepool.core.store import PingResult
from codepool.daemon import home, pages
from codepool.daemon.context import ROUTER, Router
from codepool.daemon.http import (
    PROXIED,
    USER,
    clear_cookie,
    client_address,
    cookie,
    cookie_values,
    from_own_pages,
    is_trusted,
    json_error,
    require_session,
    safe_next,
    same_origin,
    session_of,
    set_cookie,
)
from codepool.daemon.proxy import Stopped
from codepool.daemon.sessions import Session, is_token, new_token

log = logging.getLogger("codepool.router")

ENTER = "/_codepool/enter"
PING = "/_codepool/ping"
SCRIPT = "/_codepool/heartbeat.js"
RESUME = "/_codepool/resume"
STATUS = "/_codepool/status"
HOLD = "/_codepool/hold"
FRONT_AUTH = "/_codepool/auth"
STATE_MAX_AGE_S = 600  # time to log in between leaving a workspace origin and coming back
MAX_PING_BYTES = 1024
HEARTBEAT_JS = (resources.files("codepool.daemon") / "static" / "heartbeat.js").read_bytes()


def may_enter(router: Router, session: Session, owner: str) -> bool:
    """The owner, or an admin where router.admins_enter_workspaces allows it."""
    return session.user == owner or (
        session.admin and router.settings.router.admins_enter_workspaces
    )


def is_navigation(request: web.Request) -> bool:
    """A top-level page load (by Fetch Metadata, or by method and Accept without it)."""
    mode = request.headers.get("Sec-Fetch-Mode")
    if mode is not None:  # not a frame: a workspace is never shown inside another site
        return mode == "navigate" and request.headers.get("Sec-Fetch-Dest") == "document"
    return request.method in ("GET", "HEAD") and "text/html" in request.headers.get("Accept", "")


def stopped_page(router: Router) -> web.Response:
    resume = RESUME if router.origins.per_user else "/dispatch"
    text = pages.stopped(resume, assets=router.origins.main)
    return web.Response(text=text, status=409, content_type="text/html")


async def proxy(
    request: web.Request, router: Router, owner: str, path: str, origin: str
) -> web.StreamResponse:
    """Carry the request to owner's box; the caller has checked who may."""
    is_ws = request.headers.get("Upgrade", "").lower() == "websocket"
    if is_ws and request.headers.get("Origin", "").lower() != origin:
        raise web.HTTPForbidden(text="WebSocket from a foreign Origin refused")
    request[PROXIED] = True  # the box's answer: its own headers, not the router's
    try:
        if is_ws:
            return await router.proxy.websocket(request, owner, path)
        return await router.proxy.http(request, owner, path)
    except Stopped:
        request[PROXIED] = False
        if is_ws or request.method != "GET" or "text/html" not in request.headers.get("Accept", ""):
            return json_error(409, "stopped", "the workspace is stopped")
        return stopped_page(router)


# -- pings (both modes) -------------------------------------------------------------------------


async def record_ping(request: web.Request, user: str) -> web.StreamResponse:
    """POST {instanceId, user?}: the visible tab says user's workspace is in use."""
    status, body = await ping_answer(
        request.app[ROUTER], user, await request.content.read(MAX_PING_BYTES + 1)
    )
    return web.Response(status=204) if body is None else web.json_response(body, status=status)


async def ping_answer(router: Router, user: str, raw: bytes) -> tuple[int, dict[str, str] | None]:
    """A ping's body taken and recorded: the status and JSON to answer (None: 204). The
    user comes from the session, never from the body: a body naming another is refused.
    (aiohttp's route and the lane, lane.py, both answer pings here.)"""
    if len(raw) > MAX_PING_BYTES:
        return _refused(413, "too-large", f"a ping is at most {MAX_PING_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _refused(400, "bad-json", "the body is not valid JSON")
    if not isinstance(body, dict) or set(body) - {"instanceId", "user"}:
        return _refused(400, "bad-fields", 'expected {"instanceId": "..."}')
    instance_id = body.get("instanceId")
    if not isinstance(instance_id, str) or not 0 < len(instance_id) <= 128:
        return _refused(400, "bad-fields", "instanceId must be a string of 1 to 128 characters")
    if "user" in body and body["user"] != user:
        return _refused(403, "forbidden", "a ping may only name your own workspace")
    result = await router.pool.ping(user, instance_id)
    router.metrics.ping_results[result].inc()
    if result is PingResult.OK:
        return 204, None
    if result is PingResult.STALE_INSTANCE:
        return _refused(409, "stale-instance", "that is not your workspace's instance now")
    return _refused(409, "stopped", "your workspace is stopped; open /dispatch to resume it")


def _refused(status: int, kind: str, message: str) -> tuple[int, dict[str, str]]:
    return status, {"error": kind, "message": message}  # as json_error says it


def ping_refusal(request: web.Request, origin: str) -> web.Response | None:
    """What every ping must be before anything else is read: JSON, small, same-origin."""
    if request.content_type != "application/json":
        return json_error(415, "unsupported-media-type", "send Content-Type: application/json")
    if (request.content_length or 0) > MAX_PING_BYTES:
        return json_error(413, "too-large", f"a ping is at most {MAX_PING_BYTES} bytes")
    if not same_origin(request, origin):
        return json_error(403, "forbidden", "cross-site ping refused")
    return None


async def main_ping(request: web.Request) -> web.StreamResponse:
    """/ping on the main origin (path mode's heartbeat): the session's own workspace."""
    refusal = ping_refusal(request, request.app[ROUTER].origins.main)
    if refusal is not None:
        return refusal
    session = await session_of(request)
    if session is None:
        return json_error(401, "unauthenticated", "log in first")
    return await record_ping(request, session.user)


# -- path mode: /w/<user>/… on the main origin ------------------------------------------------


async def path_workspace(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    owner = request.match_info["user"]
    raw = request.rel_url.raw_path
    prefix = f"/w/{owner}"
    if not raw.startswith(prefix + "/") and raw != prefix:
        raise web.HTTPNotFound()
    if router.origins.per_user:
        return moved_to_workspace_origin(request, router, owner, raw[len(prefix) :])
    session = await require_session(request)
    if not may_enter(router, session, owner):
        raise web.HTTPForbidden(text="This workspace belongs to someone else.")
    if raw == prefix:
        raise web.HTTPFound(prefix + "/")
    path = raw[len(prefix) :]
    if request.rel_url.raw_query_string:
        path += "?" + request.rel_url.raw_query_string
    return await proxy(request, router, owner, path, router.origins.main)


def moved_to_workspace_origin(
    request: web.Request, router: Router, owner: str, rest: str
) -> web.StreamResponse:
    """An old /w/<user>/ link, with per-user origins on: to the workspace's own origin. The
    path is kept only when the person followed it from here or typed it (a link on
    another site lands at the workspace's start)."""
    if request.method not in ("GET", "HEAD") or not is_label(label_of(owner)):
        raise web.HTTPNotFound()
    keep = rest.startswith("/") and same_origin(request, router.origins.main)
    path = rest if keep else "/"
    if keep and request.rel_url.raw_query_string:
        path += "?" + request.rel_url.raw_query_string
    raise web.HTTPFound(router.origins.workspace_url(owner, path))


# -- main origin: the pass to a workspace origin ------------------------------------------------


async def authorize(request: web.Request) -> web.StreamResponse:
    """GET /authorize?host=<label>&state=<state>: the person's main session is checked, and
    a one-time pass into that workspace origin is made (step b above)."""
    router = request.app[ROUTER]
    label, state = request.query.get("host", ""), request.query.get("state", "")
    if not router.origins.per_user or not is_label(label) or not is_token(state):
        raise web.HTTPBadRequest(text="expected /authorize?host=<workspace>&state=<token>")
    session = await require_session(request)
    owner = session.user if label_of(session.user) == label else user_of_label(label)
    if owner is None or not may_enter(router, session, owner):
        text = pages.problem(
            "This workspace belongs to someone else",
            "You can only open your own workspace.",
            who=home.who(session),
        )
        return web.Response(text=text, status=403, content_type="text/html")
    lifetime_ms = router.settings.router.session_lifetime_s * 1000
    token = await router.sessions.grant(session, owner, label, state, lifetime_ms)
    response = web.HTTPFound(router.origins.workspace(owner) + ENTER + "?token=" + token)
    response.headers["Referrer-Policy"] = "no-referrer"
    raise response


# -- workspace origins ------------------------------------------------------------------------


async def on_workspace_host(request: web.Request, label: str) -> web.StreamResponse:
    """Every request to `<label>.<workspace_domain>` (see the module's docstring)."""
    router = request.app[ROUTER]
    origin = router.origins.origin_of(label)
    path = request.rel_url.raw_path
    if path.startswith("/_codepool/"):
        return await _router_path(request, router, label, origin, path)
    same = same_origin(request, origin)
    session = await workspace_session(request, router, label) if same else None
    # To log in: a page load with no session here (or from elsewhere, with no cookie at
    # all); the page asked for is kept only when this origin asked for it.
    logging_in = same or not cookie_values(request, router.cookies.workspace)
    if session is None and logging_in and is_navigation(request) and request.method == "GET":
        return _to_main_origin(request, router, label, keep_path=same)
    if not same:
        return _cross_origin(request, router)
    if session is None:
        return json_error(401, "unauthenticated", "reload the page to log in again")
    target = path
    if request.rel_url.raw_query_string:
        target += "?" + request.rel_url.raw_query_string
    return await proxy(request, router, session.owner, target, origin)


async def workspace_session(request: web.Request, router: Router, label: str) -> Session | None:
    """This host's session, if its person may (still) enter the workspace."""
    values = cookie_values(request, router.cookies.workspace)
    session = await router.sessions.find(values, host=label) if values else None
    if session is None or not may_enter(router, session, session.owner):
        return None
    request[USER] = session.user
    return session


async def _router_path(
    request: web.Request, router: Router, label: str, origin: str, path: str
) -> web.StreamResponse:
    if path == ENTER and request.method == "GET":
        return await _enter(request, router, label)
    if path == PING and request.method == "POST":
        refusal = ping_refusal(request, origin)
        if refusal is not None:
            return refusal
        session = await workspace_session(request, router, label)
        if session is None:
            return json_error(401, "unauthenticated", "reload the page to log in again")
        return await record_ping(request, session.owner)
    if path == SCRIPT and request.method == "GET":
        return web.Response(
            body=HEARTBEAT_JS,
            content_type="text/javascript",
            headers={"Cache-Control": "public, max-age=300"},
        )
    if path in (STATUS, HOLD):
        if not same_origin(request, origin):
            return json_error(403, "cross-origin", "requests from other origins are refused")
        session = await workspace_session(request, router, label)
        if session is None:
            return json_error(401, "unauthenticated", "reload the page to log in again")
        if path == STATUS and request.method == "GET":
            return await home.workspace_status(request, router, session.owner)
        if path == HOLD and request.method == "POST":
            return await home.hold_json(request, router, session.owner, session.user)
    if path == FRONT_AUTH and request.method == "GET":
        return await authorize_front(request, label)
    if path == RESUME and request.method == "GET":
        return await _resume(request, router, label, origin)
    raise web.HTTPNotFound()


async def _resume(
    request: web.Request, router: Router, label: str, origin: str
) -> web.StreamResponse:
    """The "Resume my workspace" of a stopped workspace's page: the main origin's /dispatch
    starts nothing for a link from another origin, and this page is one; here, on the
    workspace's own origin, a click of its own starts the resume, and /dispatch then
    follows it. An admin looking at someone's workspace comes back to it here."""
    if not (same_origin(request, origin) and from_own_pages(request)):
        return _cross_origin(request, router)
    session = await workspace_session(request, router, label)
    if session is None:
        return _to_main_origin(request, router, label, keep_path=False)
    router.dispatcher.start(session.owner)
    if session.user != session.owner:
        raise web.HTTPFound("/")
    raise web.HTTPFound(router.origins.main + "/dispatch")


def _cross_origin(request: web.Request, router: Router) -> web.StreamResponse:
    """Refuse what another origin asked. A page load (someone followed a link, or a page
    of another workspace sent the tab here) gets a page that opens the workspace's start
    by itself: the next request then comes from this origin, and nothing the other page
    chose (path, query, method, body) reaches the box."""
    log.info(
        "refused a cross-origin request to %s from %s (%s)",
        request.host,
        request.headers.get("Origin", "-"),
        request.headers.get("Sec-Fetch-Site", "-"),
    )
    if is_navigation(request) and request.method == "GET":
        text = pages.moving_on(
            "Opening your workspace", "Opening the workspace…", "/", router.origins.main
        )
        return web.Response(
            text=text,
            content_type="text/html",
            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
        )
    return json_error(403, "cross-origin", "requests from other origins are refused")


def _to_main_origin(
    request: web.Request, router: Router, label: str, keep_path: bool
) -> web.StreamResponse:
    """Step a: no session here yet. The page asked for is kept in the state cookie (only
    the router sets it), never in the URL, so a link cannot choose where one lands."""
    state = new_token()
    wanted = request.rel_url.raw_path if keep_path else "/"
    if keep_path and request.rel_url.raw_query_string:
        wanted += "?" + request.rel_url.raw_query_string
    packed = base64.urlsafe_b64encode(wanted[:2048].encode()).decode().rstrip("=")
    url = f"{router.origins.main}/authorize?host={label}&state={state}"
    response = web.HTTPFound(url)
    set_cookie(
        router,
        response,
        router.cookies.state,
        f"{state}.{packed}",
        STATE_MAX_AGE_S,
        samesite="Lax",
    )
    response.headers["Cache-Control"] = "no-store"
    raise response


def _unpack_state(value: str | None) -> tuple[str, str]:
    """(state, the page to go on to) from the state cookie; ("", "/") if it is not ours."""
    state, _, packed = (value or "").partition(".")
    try:
        wanted = base64.urlsafe_b64decode(packed + "=" * (-len(packed) % 4)).decode()
    except (binascii.Error, ValueError):
        return state, "/"
    return state, safe_next(wanted, fallback="/")


async def _enter(request: web.Request, router: Router, label: str) -> web.StreamResponse:
    """Step c: take the pass, open this host's session, go on to the page asked for."""
    mode = request.headers.get("Sec-Fetch-Mode")
    if mode is not None and mode != "navigate":
        return json_error(403, "not-a-navigation", "an entry pass is taken by a page load only")
    state, next_path = _unpack_state(cookie(request, router.cookies.state))
    grant = await router.sessions.take(request.query.get("token", ""), label, state)
    if grant is None:
        text = pages.problem(
            "This link has expired",
            "Links into a workspace work once, for a minute, in the browser that asked for "
            "them. Open the workspace again to get a fresh one.",
            action="/",
            action_label="Open the workspace",
            assets=router.origins.main,
        )
        response = web.Response(text=text, status=403, content_type="text/html")
        response.headers["Referrer-Policy"] = "no-referrer"
        return response
    value, session = await router.sessions.open(
        grant.user,
        client_address(request),
        owner=grant.owner,
        host=label,
        parent=grant.parent,
        expires_ms=grant.session_expires_ms,
    )
    text = pages.moving_on(
        "Opening your workspace", "Opening the workspace…", next_path, router.origins.main
    )
    response = web.Response(text=text, content_type="text/html")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    max_age = max(1, (session.expires_ms - int(time.time() * 1000)) // 1000)
    set_cookie(router, response, router.cookies.workspace, value, max_age, samesite="Strict")
    clear_cookie(router, response, router.cookies.state)
    log.info("workspace entered", **fields(user=grant.user, owner=grant.owner))
    return response


# -- the nginx front's question ------------------------------------------------------------------

AUTH_CACHE_S = 2  # how long nginx may reuse a "yes" (as long as the proxy trusts its cache)


async def authorize_front(request: web.Request, label: str) -> web.StreamResponse:
    """The question of nginx/front.conf: may nginx carry this request to the box of the
    workspace origin it was sent to? 200 with the box's address if so (nginx keeps it
    AUTH_CACHE_S). Anything else gets 403, and the front hands the request to the router,
    which gives the right answer: a login, the stopped page, a refusal, or an HTML
    document with the heartbeat injected. Only peers in router.trusted_proxies are
    answered: a box's address is not for browsers. The front sends the browser's own
    headers, and the request line in X-Original-URI; every check the router's own proxy
    makes is made here too."""
    router = request.app[ROUTER]
    if not is_trusted(request.remote or "", router.trusted_proxies):
        raise web.HTTPNotFound()
    no = web.Response(status=403, headers={"Cache-Control": "no-store"})
    uri = request.headers.get("X-Original-URI", "")
    if not uri.startswith("/") or uri.startswith("/_codepool/"):
        return no
    if any(ord(c) < 33 or ord(c) > 126 for c in uri):
        return no
    if "text/html" in request.headers.get("Accept", ""):
        return no  # documents get the heartbeat from the router
    origin = router.origins.origin_of(label)
    if not same_origin(request, origin):
        return no
    session = await workspace_session(request, router, label)
    if session is None:
        return no
    is_ws = request.headers.get("X-Original-Upgrade", "").lower() == "websocket"
    if is_ws and request.headers.get("Origin", "").lower() != origin:
        return no
    try:
        ws = await router.proxy.workspace(session.owner)
    except Stopped:
        return no
    if sockets.parse(ws.address) is not None:
        return no  # a local workspace's socket: the router carries it (and checks who answers)
    box = urlsplit(ws.address)
    return web.Response(
        status=200,
        headers={
            "X-Codepool-Upstream": box.netloc,
            "X-Codepool-Scheme": box.scheme,
            "Cache-Control": f"private, max-age={AUTH_CACHE_S}",
        },
    )
