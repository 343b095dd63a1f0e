"""The admin's pages, on the main origin: the pool, and stop and extend for anyone."""

from __future__ import annotations

import logging
import time
from urllib.parse import quote

from aiohttp import web

from codepool.core import policy
from codepool.daemon import pages
from codepool.daemon.context import ROUTER
from codepool.daemon.http import check_form, require_session
from codepool.daemon.sessions import Session

log = logging.getLogger("codepool.router")


async def require_admin(request: web.Request) -> Session:
    """The caller's session if they are an admin now: a local account's rights are read
    again at least every second (the session cache), so taking them back is at once."""
    session = await require_session(request)
    if not session.admin:
        raise web.HTTPForbidden(text="admins only")
    return session


async def admin_page(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    session = await require_admin(request)
    status = await router.pool.status()
    notice = request.query.get("notice", "")[:200]
    enter = router.settings.router.admins_enter_workspaces
    text = pages.admin(status, session.csrf, notice, router.origins.workspace if enter else None)
    return web.Response(text=text, content_type="text/html")


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
