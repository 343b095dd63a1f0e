"""Logging in and out, on the main origin."""

from __future__ import annotations

import logging
import secrets

from aiohttp import web

from codepool.core.logs import fields
from codepool.core.models import EventKind
from codepool.daemon import oidc, pages
from codepool.daemon.auth import user_from_claims
from codepool.daemon.context import ROUTER, Router
from codepool.daemon.http import (
    check_form,
    clear_cookie,
    client_address,
    cookie,
    require_session,
    safe_next,
    session_of,
    set_cookie,
    tokens_match,
)
from codepool.daemon.oidc import OidcUnavailable

log = logging.getLogger("codepool.router")

LOGIN_CSRF_MAX_AGE_S = 3600


async def login_page(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    next_path = safe_next(request.query.get("next"))
    if await session_of(request) is not None:
        raise web.HTTPFound(next_path)
    if router.oidc is not None:
        return await _oidc_begin(request, next_path)
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
    set_cookie(
        router,
        response,
        router.cookies.login_csrf,
        token,
        LOGIN_CSRF_MAX_AGE_S,
        samesite="Strict",
        path="/login",
    )
    return response


async def login_submit(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    if router.settings.router.auth != "local":
        raise web.HTTPNotFound(
            text=f"local login is off (router.auth = {router.settings.router.auth})"
        )
    form = await request.post()
    check_form(request, form, cookie(request, router.cookies.login_csrf))
    user = str(form.get("user", "")).strip()
    password = str(form.get("password", ""))
    next_path = safe_next(str(form.get("next", "")))
    client = client_address(request)
    keys = router.limiter.keys(client, user)
    csrf = str(form.get("csrf"))
    attempt, wait = await router.limiter.reserve(keys)  # counted before the password check
    if wait:
        _count(router, "password", "limited")
        text = pages.login(csrf, next_path, f"Too many failed logins. Try again in {wait} s.", user)
        return web.Response(
            text=text, status=429, content_type="text/html", headers={"Retry-After": str(wait)}
        )
    account = await router.accounts.verify(user, password)
    if account is None:
        _count(router, "password", "failed")
        log.info("login failed", **fields(user=user[:64], client=client, how="password"))
        await router.record(EventKind.LOGIN, user[:64], user[:64], f"failed from {client}")
        text = pages.login(csrf, next_path, "Wrong user name or password.", user)
        return web.Response(text=text, status=401, content_type="text/html")
    await router.limiter.succeeded(keys, attempt)
    response = await _logged_in(request, account.name, next_path, "password")
    clear_cookie(router, response, router.cookies.login_csrf, path="/login")
    return response


async def _logged_in(
    request: web.Request, user: str, next_path: str, how: str
) -> web.StreamResponse:
    """The one way a login ends, whatever proved who it is: a new session (a new id: no
    fixation) and on to where the person was going; or a refusal if this machine serves
    someone else."""
    router = request.app[ROUTER]
    client = client_address(request)
    if why := await router.pool.backend.refuses(user):  # one person per machine
        log.warning("login refused", **fields(user=user, reason=why))
        _count(router, how, "refused")
        text = pages.problem("This machine serves someone else", why[:1].upper() + why[1:])
        return web.Response(text=text, status=403, content_type="text/html")
    value, _ = await router.sessions.open(user, client)
    response = _redirect(next_path)
    set_cookie(
        router, response, router.cookies.session, value, router.settings.router.session_lifetime_s
    )
    log.info("login", **fields(user=user, client=client, how=how))
    _count(router, how, "ok")
    await router.record(EventKind.LOGIN, user, user, f"{how} from {client}")
    return response


async def _oidc_begin(request: web.Request, next_path: str) -> web.StreamResponse:
    """Off to the identity provider, with the login's state sealed in a cookie."""
    router = request.app[ROUTER]
    assert router.oidc is not None
    try:
        url, sealed = await router.oidc.begin(next_path, router.pool.clock())
    except OidcUnavailable as exc:
        log.warning("oidc: the identity provider cannot be reached: %s", exc)
        _count(router, "oidc", "error")
        return _provider_down()
    response = _redirect(url)
    # Lax, not Strict: the provider's redirect back is a cross-site navigation.
    set_cookie(router, response, router.cookies.oidc, sealed, oidc.PENDING_S, path="/login")
    return response


async def oidc_callback(request: web.Request) -> web.StreamResponse:
    """The identity provider sends the browser back here with a code (or an error)."""
    router = request.app[ROUTER]
    if router.oidc is None:
        raise web.HTTPNotFound(text="OpenID Connect login is off (router.auth is not oidc)")
    sealed = cookie(request, router.cookies.oidc)
    pending = oidc.Pending.unseal(sealed, router.oidc.key, router.pool.clock()) if sealed else None
    state = request.query.get("state", "")
    client = client_address(request)
    response: web.StreamResponse
    if pending is None or not tokens_match(state, pending.state):
        if await session_of(request) is not None:  # another tab's login finished first
            raise web.HTTPFound(pending.next if pending else "/")
        log.info("oidc: callback with no matching login in progress", **fields(client=client))
        _count(router, "oidc", "failed")
        response = _refused(
            "This login did not start here",
            "It may have expired, been finished already, or come from another browser.",
            status=400,
        )
    elif "error" in request.query:
        error = request.query.get("error", "")[:100]
        log.info("oidc: the provider refused", **fields(client=client, reason=error))
        _count(router, "oidc", "failed")
        await router.record(EventKind.LOGIN, "", "", f"failed (oidc: {error}) from {client}")
        response = _refused(
            "Your organisation's login did not log you in",
            f"The identity provider answered: {error}.",
            status=401,
        )
    else:
        response = await _oidc_finish(request, request.query.get("code", ""), pending)
    clear_cookie(router, response, router.cookies.oidc, path="/login")
    return response


async def _oidc_finish(
    request: web.Request, code: str, pending: oidc.Pending
) -> web.StreamResponse:
    router = request.app[ROUTER]
    assert router.oidc is not None
    client = client_address(request)
    try:
        claims = await router.oidc.finish(code, pending)
    except oidc.OidcRefused as exc:
        log.warning("oidc: login refused", **fields(client=client, reason=str(exc)))
        _count(router, "oidc", "failed")
        await router.record(EventKind.LOGIN, "", "", f"failed (oidc: {exc}) from {client}")
        return _refused("You are not logged in", exc.message, status=401)
    except OidcUnavailable as exc:
        log.warning("oidc: the identity provider cannot be reached: %s", exc)
        _count(router, "oidc", "error")
        return _provider_down()
    user = user_from_claims(claims, router.settings.oidc.user_claim)
    if user is None:
        _count(router, "oidc", "refused")
        claim = router.settings.oidc.user_claim
        await router.record(
            EventKind.LOGIN, "", "", f"failed (oidc: no usable {claim}) from {client}"
        )
        return _refused(
            "Your account cannot be used here",
            f"Your organisation's login does not give a usable name ({claim}): "
            "ask an administrator.",
            status=403,
        )
    return await _logged_in(request, user, pending.next, "oidc")


def _count(router: Router, how: str, outcome: str) -> None:
    """codepool_logins_total: ok, failed (wrong password, refused by the provider or its
    answer), limited (rate limit), refused (no usable name, or this machine serves
    someone else), error (the provider cannot be reached)."""
    router.metrics.logins.labels(how, outcome).inc()


def _redirect(url: str) -> web.Response:
    return web.Response(status=302, headers={"Location": url})


def _refused(title: str, message: str, *, status: int) -> web.Response:
    text = pages.problem(title, message, action="/login", action_label="Log in again")
    return web.Response(text=text, status=status, content_type="text/html")


def _provider_down() -> web.Response:
    text = pages.problem(
        "Your organisation's login cannot be reached",
        "The identity provider does not answer. Try again in a minute; if it lasts, tell "
        "an administrator.",
        action="/login",
        action_label="Try again",
    )
    return web.Response(text=text, status=502, content_type="text/html")


async def logout(request: web.Request) -> web.StreamResponse:
    """End the session in the store (with every workspace session opened from it, on every
    router), and have the browser forget what this site left in it."""
    router = request.app[ROUTER]
    session = await require_session(request)
    check_form(request, await request.post(), session.csrf)
    await router.sessions.end(session)
    response: web.Response = _redirect("/login")
    if router.oidc is not None:
        # Not straight back to /login: that would go to the provider, which would log the
        # person in again at once while its own session lasts.
        text = pages.problem(
            "You are logged out",
            "You are logged out of codepool. Your organisation's login may still know you: "
            "log out there too on a shared computer.",
            action="/login",
            action_label="Log in again",
        )
        response = web.Response(text=text, content_type="text/html")
    clear_cookie(router, response, router.cookies.session)
    if router.jwt is not None:
        clear_cookie(router, response, router.settings.jwt.cookie)
    # Cookies of the whole site (workspace origins included), and this origin's storage,
    # caches and service workers.
    response.headers["Clear-Site-Data"] = '"cache", "cookies", "storage"'
    log.info("logout", **fields(user=session.user))
    await router.record(EventKind.LOGOUT, session.user, session.user, "")
    return response
