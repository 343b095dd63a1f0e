"""Logging in and out, on the main origin."""

from __future__ import annotations

import logging
import secrets

from aiohttp import web

from codepool.core.models import EventKind
from codepool.daemon import pages
from codepool.daemon.context import ROUTER
from codepool.daemon.http import (
    check_form,
    clear_cookie,
    client_address,
    cookie,
    require_session,
    safe_next,
    session_of,
    set_cookie,
)

log = logging.getLogger("codepool.router")

LOGIN_CSRF_MAX_AGE_S = 3600


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
    if router.jwt is not None:
        raise web.HTTPNotFound(text="local login is off (router.auth = jwt)")
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
        text = pages.login(csrf, next_path, f"Too many failed logins. Try again in {wait} s.", user)
        return web.Response(
            text=text, status=429, content_type="text/html", headers={"Retry-After": str(wait)}
        )
    account = await router.accounts.verify(user, password)
    if account is None:
        log.info("login failed user=%r client=%s", user[:64], client)
        await router.record(EventKind.LOGIN, user[:64], user[:64], f"failed from {client}")
        text = pages.login(csrf, next_path, "Wrong user name or password.", user)
        return web.Response(text=text, status=401, content_type="text/html")
    await router.limiter.succeeded(keys, attempt)
    if why := await router.pool.backend.refuses(account.name):  # one person per machine
        log.warning("login refused user=%s: %s", account.name, why)
        text = pages.problem("This machine serves someone else", why[:1].upper() + why[1:])
        return web.Response(text=text, status=403, content_type="text/html")
    value, _ = await router.sessions.open(account.name, client)  # a new id: no fixation
    response = web.HTTPFound(next_path)
    set_cookie(
        router, response, router.cookies.session, value, router.settings.router.session_lifetime_s
    )
    clear_cookie(router, response, router.cookies.login_csrf, path="/login")
    log.info("login user=%s client=%s", account.name, client)
    await router.record(EventKind.LOGIN, account.name, account.name, f"password from {client}")
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    """End the session in the store (with every workspace session opened from it, on every
    router), and have the browser forget what this site left in it."""
    router = request.app[ROUTER]
    session = await require_session(request)
    check_form(request, await request.post(), session.csrf)
    await router.sessions.end(session)
    response = web.HTTPFound("/login")
    clear_cookie(router, response, router.cookies.session)
    if router.jwt is not None:
        clear_cookie(router, response, router.settings.jwt.cookie)
    # Cookies of the whole site (workspace origins included), and this origin's storage,
    # caches and service workers.
    response.headers["Clear-Site-Data"] = '"cache", "cookies", "storage"'
    log.info("logout user=%s", session.user)
    await router.record(EventKind.LOGOUT, session.user, session.user, "")
    raise response
