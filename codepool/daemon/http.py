"""What every route module shares: core errors as HTTP answers (one place), who is asking
(sessions from cookies or a JWT), cookies, client addresses and the same-origin checks."""

from __future__ import annotations

import functools
import json
import secrets
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web

from codepool.core import errors
from codepool.daemon import pages
from codepool.daemon.context import ROUTER, Router
from codepool.daemon.sessions import Session

# Core errors as HTTP answers: (status, short kind for JSON).
HTTP_ERRORS: dict[type[errors.CodepoolError], tuple[int, str]] = {
    errors.InvalidInput: (400, "invalid-input"),
    errors.NoWorkspace: (409, "no-workspace"),
    errors.Busy: (409, "busy"),
    errors.StartsFull: (429, "starts-full"),
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

JSON_PATHS = frozenset(
    {
        "/ping",
        "/dispatch/status",
        "/api/me",
        "/_codepool/ping",
        "/_codepool/status",
        "/_codepool/hold",
    }
)

REFUSALS = {  # a plain refusal as a page: its title, and what to say when it gave no reason
    400: ("That request was not understood", "The address or the form sent was not valid."),
    403: ("Not allowed", "You cannot open this page."),
    404: ("Page not found", "There is nothing at this address."),
    405: ("Not allowed", "This address does not take that kind of request."),
    413: ("Too large", "What was sent is larger than this router takes."),
    421: ("Wrong address", "This router does not serve that name."),
    429: ("Too many requests", "Wait a moment and try again."),
}


def http_error(exc: errors.CodepoolError) -> tuple[int, str]:
    return errors.classify(exc, HTTP_ERRORS, (500, "error"))


def json_error(status: int, kind: str, message: str, **extra: Any) -> web.Response:
    body = {"error": kind, "message": message, **extra}
    return web.json_response(body, status=status)


def wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return (
        request.path in JSON_PATHS
        or request.path.startswith("/api/")
        or ("application/json" in accept and "text/html" not in accept)
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
    main = request.app[ROUTER].origins.main
    if request.path == "/dispatch":
        page = pages.problem(title, str(exc), action=main + "/dispatch", action_label="Try again")
    else:
        page = pages.problem(title, str(exc), assets=main, action=main + "/")
    return web.Response(text=page, status=status, content_type="text/html", headers=headers)


def refusal_page(request: web.Request, exc: web.HTTPException) -> web.Response | None:
    """A plain-text refusal (403, 404, ...) as a page in the router's layout, with the way
    home, for a browser's page load; None for anything else (scripts get it as it is)."""
    if exc.status < 400 or exc.content_type != "text/plain":
        return None
    if "text/html" not in request.headers.get("Accept", "") or wants_json(request):
        return None
    title, default = REFUSALS.get(exc.status, ("Something went wrong", "Try again later."))
    text = exc.text or ""
    message = default if not text or text.startswith(f"{exc.status}:") else text
    main = request.app[ROUTER].origins.main
    page = pages.problem(title, message, assets=main, action=main + "/")
    headers = {k: v for k, v in exc.headers.items() if k.lower() not in _BODY_HEADERS}
    return web.Response(text=page, status=exc.status, content_type="text/html", headers=headers)


_BODY_HEADERS = frozenset({"content-type", "content-length", "content-encoding"})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


PROXIED = web.RequestKey("proxied", bool)  # set on requests a box answers


def error_pages(handler: Handler) -> Handler:
    """The one place where core errors become HTTP answers (JSON or a page), and where the
    router's own answers get their security headers (page_headers). A wrapper of each
    handler, not a middleware: an app with no middleware skips aiohttp's middleware
    chain, a measurable share of a ping (docs/performance.md)."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            response = await handler(request)
        except errors.CodepoolError as exc:
            if isinstance(exc, errors.BackendError | errors.StoreUnavailable):
                request.app[ROUTER].metrics.backend_errors.labels("request").inc()
            response = error_response(request, exc)
        except web.HTTPException as exc:  # redirects and refusals are answers too
            page = refusal_page(request, exc)
            if page is None:
                page_headers(request, exc)
                raise
            response = page
        if not request.get(PROXIED):
            page_headers(request, response)
        return response

    return wrapped


def page_headers(request: web.Request, response: web.StreamResponse) -> None:
    """What every answer of the router's own says to the browser: no sniffing of types,
    no referrer beyond our origin, https only once it is (HSTS), and for pages: scripts
    and styles of our own only, no inline script, never inside another site's frame."""
    if response.prepared:
        return
    router = request.app[ROUTER]
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    if router.secure_cookies:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if response.content_type == "text/html" or response.status in (301, 302, 303, 307, 308):
        headers.setdefault("Content-Security-Policy", router.page_policy)


# -- cookies and sessions -----------------------------------------------------------------


def cookie_values(request: web.Request, name: str) -> list[str]:
    """Every value the browser sent under one cookie name, in order. A plain scan of the
    header (parsing every cookie into Morsels cost a tenth of each ping). More than one
    value means cookies with different Domain or Path attributes: the callers look at
    all of them instead of trusting whichever a parser keeps."""
    return cookie_values_in(request.headers.get("Cookie", ""), name)


def cookie_values_in(header: str, name: str) -> list[str]:
    """cookie_values, from the Cookie header's text."""
    if name not in header:
        return []
    values = []
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            values.append(value.strip('"'))
    return values


def cookie(request: web.Request, name: str) -> str | None:
    values = cookie_values(request, name)
    return values[-1] if values else None


USER = web.RequestKey("codepool_user", str)  # who asked (the access log's user field)


async def session_of(request: web.Request) -> Session | None:
    """Who is asking on the main origin: the session cookie, or a verified JWT."""
    router = request.app[ROUTER]
    if router.jwt is not None:
        token = router.jwt.token_of(request.headers, cookie(request, router.settings.jwt.cookie))
        session = await router.jwt.session(token) if token else None
    else:
        session = await router.sessions.find(cookie_values(request, router.cookies.session))
    if session is not None:
        request[USER] = session.user
    return session


def login_redirect(request: web.Request) -> web.HTTPFound:
    return web.HTTPFound(f"/login?next={quote(request.path_qs, safe='')}")


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
    raise login_redirect(request)


def set_cookie(
    router: Router,
    response: web.StreamResponse,
    name: str,
    value: str,
    max_age_s: int,
    samesite: str = "Lax",
    path: str = "/",
) -> None:
    """Host-only (never a Domain attribute), HttpOnly, Secure over https."""
    response.set_cookie(
        name,
        value,
        max_age=max_age_s,
        httponly=True,
        samesite=samesite,
        secure=router.secure_cookies,
        path=path,
    )


def clear_cookie(router: Router, response: web.StreamResponse, name: str, path: str = "/") -> None:
    """Delete a cookie set by set_cookie (a __Host- cookie is only deleted by a Secure one)."""
    response.del_cookie(name, path=path, secure=router.secure_cookies, httponly=True)


def tokens_match(given: object, expected: str) -> bool:
    """A constant-time comparison that takes whatever a client sent (any type, any bytes)."""
    if not expected or not isinstance(given, str):
        return False
    return secrets.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


# -- origins ----------------------------------------------------------------------------------


def same_origin(request: web.Request, origin: str) -> bool:
    """Whether a request comes from a page of `origin` (or from the person's own action),
    judged by Origin and, where the browser sends it, Sec-Fetch-Site."""
    headers = request.headers
    return same_origin_of(headers.get("Origin"), headers.get("Sec-Fetch-Site"), origin)


def same_origin_of(sent: str | None, fetch_site: str | None, origin: str) -> bool:
    """same_origin, from the Origin and Sec-Fetch-Site headers' text."""
    if sent is not None and sent.lower() != origin:
        return False
    return fetch_site is None or fetch_site in ("same-origin", "none")


def from_own_pages(request: web.Request) -> bool:
    """Whether a GET may change something: the browser's own navigation (a typed address
    or a bookmark, or a link on our own pages), never a link or a request from elsewhere.
    Without Fetch Metadata (an old browser, a script) it cannot be told, and is allowed."""
    return request.headers.get("Sec-Fetch-Site", "none") in ("same-origin", "none")


def check_form(request: web.Request, form: Any, token: str | None) -> None:
    """A state-changing form must come from the router's own pages with the session's
    CSRF token."""
    if not same_origin(request, request.app[ROUTER].origins.main) or not tokens_match(
        form.get("csrf"), token or ""
    ):
        raise web.HTTPForbidden(
            text="This form came from another site or an expired page: reload the page and "
            "try again."
        )


def safe_next(value: str | None, fallback: str = "/") -> str:
    """Only a local path: no scheme, no host, no //evil.example, no backslash tricks."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return fallback
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return fallback
    return value


def client_address(request: web.BaseRequest, router: Router | None = None) -> str:
    """The browser's address: the peer, or, when the peer is a trusted load balancer, the
    nearest address in X-Forwarded-For that is not one of ours (an untrusted client can
    put anything at the start of that header). router: when the request has no app to ask
    (refused before routing)."""
    if router is None:
        assert isinstance(request, web.Request)
        router = request.app[ROUTER]
    forwarded = request.headers.get("X-Forwarded-For", "")
    return client_of(request.remote or "", forwarded, router.trusted_proxies)


def client_of(peer: str, forwarded: str, trusted: tuple[IPv4Network | IPv6Network, ...]) -> str:
    """client_address, from the peer's address and the X-Forwarded-For header's text."""
    if not trusted or not is_trusted(peer, trusted):
        return peer
    hops = [h.strip() for h in forwarded.split(",") if h.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def is_trusted(address: str, trusted: tuple[IPv4Network | IPv6Network, ...]) -> bool:
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)
