"""The admin's pages, on the main origin: the pool, and stop and hold for anyone."""

from __future__ import annotations

import logging
import time
from urllib.parse import urlencode

from aiohttp import web

from codepool.core import policy
from codepool.core.errors import CodepoolError
from codepool.core.models import WHY_ADMIN
from codepool.core.report import Report
from codepool.daemon import home, pages
from codepool.daemon.context import ROUTER, Router
from codepool.daemon.http import check_form, require_session
from codepool.daemon.sessions import Session

log = logging.getLogger("codepool.router")

DONE = {  # what the pool page says after an action (fixed texts; the user name is checked)
    "stopped": "Stopped {user}'s workspace.",
    "held": "{user}'s workspace keeps running for the time you chose.",
    "unheld": "{user}'s workspace stops when idle again.",
}


async def require_admin(request: web.Request) -> Session:
    """The caller's session if they are an admin now: a local account's rights are read
    again at least every second (the session cache), so taking them back is at once."""
    session = await require_session(request)
    if not session.admin:
        raise web.HTTPForbidden(text="This page is for administrators.")
    return session


REPORT_DAYS = 30
REPORT_FOR_S = 300.0  # the admin page's usage figures are made at most this often


async def recent_usage(router: Router) -> Report | None:
    """The last REPORT_DAYS' usage: read from the whole event log, so kept a few minutes
    (the page refreshes its pool table every few seconds, not this)."""
    now = time.monotonic()
    if router.usage is None or router.usage[0] < now - REPORT_FOR_S:
        until = router.pool.clock()
        try:
            found = await router.pool.report(until - REPORT_DAYS * 86_400_000, until)
        except CodepoolError as exc:  # the page without its figures, not no page
            log.warning("admin page: no usage figures: %s", exc)
            return router.usage[1] if router.usage is not None else None
        router.usage = (now, found)
    return router.usage[1]


async def admin_page(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    session = await require_admin(request)
    status = await router.pool.status()
    done, user = request.query.get("done", ""), request.query.get("user", "")
    notice = DONE[done].format(user=user) if done in DONE and policy.is_user(user) else ""
    enter = router.settings.router.admins_enter_workspaces
    text = pages.admin(
        status,
        home.who(session),
        notice,
        router.origins.workspace if enter else None,
        policy.hold_choices(router.settings.pool.max_hold_s),
        await recent_usage(router),
    )
    return web.Response(text=text, content_type="text/html", headers={"Cache-Control": "no-store"})


async def admin_action(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    session = await require_admin(request)
    form = await request.post()
    check_form(request, form, session.csrf)
    user = policy.check_user(str(form.get("user", "")))
    if request.path.endswith("/stop"):
        if form.get("confirm") != "yes":
            text = pages.confirm_stop(home.who(session), user, "/admin/stop", "/admin")
            return web.Response(text=text, content_type="text/html")
        await home.stop_workspace(router, user, session.user, WHY_ADMIN)
        done = "stopped"
    else:
        seconds = policy.parse_duration(str(form.get("for", "")))
        await router.pool.extend(user, seconds, session.user)
        done = "held" if seconds else "unheld"
    log.info("admin %s: %s %s", session.user, done, user)
    raise web.HTTPSeeOther("/admin?" + urlencode({"done": done, "user": user}))
