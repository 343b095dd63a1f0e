"""The person's own page and actions on the main origin: the home page (`/`), holding
their workspace open (`/hold`), stopping it (`/stop`), and the state of their workspace
as JSON, which the heartbeat of a hidden tab reads to warn before an idle stop
(`/api/me` here, `/_codepool/status` on a workspace origin).

A hold keeps a running workspace from the idle reaper until a time at most
pool.max_hold_s from now. Each hold replaces the last, so no number of holds keeps a
workspace beyond that: the person must come back to hold it again."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from codepool.core import policy
from codepool.core.logs import fields
from codepool.core.models import WHY_RELEASED, Workspace, WorkspaceState
from codepool.daemon import pages
from codepool.daemon.context import ROUTER, Router
from codepool.daemon.http import (
    check_form,
    json_error,
    require_session,
    same_origin,
    session_of,
)
from codepool.daemon.sessions import Session

log = logging.getLogger("codepool.router")

NOTIFY_HOLD_S = 3600  # what one click on the idle warning holds (at most pool.max_hold_s)
MAX_WAIT_S = 50  # the longest a status read waits (under the 60 s idle timeout of most LBs)
WARNING_READ_S = 5  # how long a read waits within the warning: the countdown moves that often
MAX_HOLD_BODY = 256

DONE = {  # what the home page says after an action: fixed texts, never words from a URL
    "held": "Your workspace keeps running for the time you chose.",
    "unheld": "Your workspace stops when idle again.",
    "stopped": "Your workspace is stopped. Your files are kept.",
}


def who(session: Session) -> pages.Who:
    return pages.Who(session.user, session.admin, session.csrf)


def view(router: Router, ws: Workspace | None) -> pages.HomeView:
    p = router.settings.pool
    return pages.HomeView(
        workspace=ws,
        now_ms=router.pool.clock(),
        stoppable_at_ms=policy.stoppable_at_ms(ws, p.idle_timeout_s, p.max_age_s) if ws else 0,
        idle_timeout_s=p.idle_timeout_s,
        hold_choices_s=policy.hold_choices(p.max_hold_s),
        max_age_s=p.max_age_s,
    )


async def home_page(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    session = await session_of(request)
    if session is None:
        raise web.HTTPFound("/login")
    ws = await router.pool.store.get_workspace(session.user)
    notice = DONE.get(request.query.get("done", ""), "")
    text = pages.home(who(session), view(router, ws), notice)
    return web.Response(text=text, content_type="text/html", headers={"Cache-Control": "no-store"})


# -- the workspace's state as JSON ------------------------------------------------------------


def status_body(router: Router, ws: Workspace | None) -> dict[str, Any]:
    """The state of a workspace for scripts: "left_s" is how long until the reaper may
    stop it (running only; it stops then or up to router.reap_interval_s later), "ends"
    why: "idle" or "max-age"."""
    p = router.settings.pool
    now = router.pool.clock()
    body: dict[str, Any] = {
        "state": ws.state.value if ws is not None else "none",
        "warn_s": p.idle_warning_s,
        "hold_choices_s": list(policy.hold_choices(p.max_hold_s)),
        "notify_hold_s": min(NOTIFY_HOLD_S, p.max_hold_s),
    }
    if ws is not None and ws.state is WorkspaceState.RUNNING:
        at = policy.stoppable_at_ms(ws, p.idle_timeout_s, p.max_age_s)
        body["left_s"] = max(0, (at - now) // 1000)
        # Why it will stop then: idle (a hold or a tab in view keeps it), or its age
        # (nothing keeps it: the person should save their work).
        body["ends"] = "max-age" if at == policy.aged_at_ms(ws, p.max_age_s) else "idle"
        body["held_s"] = max(0, (ws.hold_until_ms - now) // 1000)
        body["last_active_s"] = max(0, (now - ws.last_seen_ms) // 1000)
    return body


async def workspace_status(request: web.Request, router: Router, owner: str) -> web.StreamResponse:
    """GET, with ?wait=N (seconds, at most MAX_WAIT_S): answer once the idle warning is
    due, or after N seconds. A hidden tab's timers may run once a minute (browsers
    throttle them); a waiting request is answered on time, so the warning comes on
    time. Within the warning (or while the workspace starts or stops) a read waits
    WARNING_READ_S: the tab asks again as soon as it is answered, and an answer at once
    would have it ask hundreds of times a second. Reading this is not activity: it never
    keeps a workspace from being stopped."""
    wait = request.query.get("wait", "")
    ws = await router.pool.store.get_workspace(owner)
    if wait.isdigit() and len(wait) < 4 and ws is not None:
        body = status_body(router, ws)
        until_warning = body.get("left_s", 0) - body["warn_s"]
        if ws.state is WorkspaceState.STOPPED:
            pause = 0  # the tab stops reading once it is told
        elif ws.state is WorkspaceState.RUNNING and until_warning > 0:
            pause = min(int(wait), MAX_WAIT_S, until_warning)
        else:
            pause = min(int(wait), WARNING_READ_S)
        if pause > 0:
            await asyncio.sleep(pause)
            ws = await router.pool.store.get_workspace(owner)
    return web.json_response(status_body(router, ws), headers={"Cache-Control": "no-store"})


async def api_me(request: web.Request) -> web.StreamResponse:
    """GET /api/me: who is signed in and the state of their workspace (path mode's
    heartbeat reads it; scripts may)."""
    router = request.app[ROUTER]
    session = await require_session(request)
    if not same_origin(request, router.origins.main):
        return json_error(403, "cross-origin", "requests from other origins are refused")
    return await workspace_status(request, router, session.user)


# -- holding ------------------------------------------------------------------------------------


async def hold_json(
    request: web.Request, router: Router, owner: str, actor: str
) -> web.StreamResponse:
    """POST {"for_s": N} from the workspace's own page (the banner, a warning's click):
    hold owner's workspace for N seconds from now (0 ends the hold); actor asked."""
    if request.content_type != "application/json":
        return json_error(415, "unsupported-media-type", "send Content-Type: application/json")
    raw = await request.content.read(MAX_HOLD_BODY + 1)
    try:
        body = json.loads(raw) if len(raw) <= MAX_HOLD_BODY else None
    except (ValueError, UnicodeDecodeError):
        body = None
    seconds = body.get("for_s") if isinstance(body, dict) and len(body) == 1 else None
    if not isinstance(seconds, int) or isinstance(seconds, bool):
        return json_error(400, "bad-fields", 'expected {"for_s": <whole seconds>}')
    ws = await router.pool.extend(owner, seconds, actor)
    log.info("hold", **fields(user=owner, for_s=seconds, actor=actor))
    return web.json_response(status_body(router, ws), headers={"Cache-Control": "no-store"})


async def hold(request: web.Request) -> web.StreamResponse:
    """POST /hold: the home page's form (for=<duration>, CSRF token), or JSON from the
    router's own pages (path mode's banner)."""
    router = request.app[ROUTER]
    session = await require_session(request)
    if request.content_type == "application/json":
        if not same_origin(request, router.origins.main):
            return json_error(403, "cross-origin", "requests from other origins are refused")
        return await hold_json(request, router, session.user, session.user)
    form = await request.post()
    check_form(request, form, session.csrf)
    seconds = policy.parse_duration(str(form.get("for", "")))
    await router.pool.extend(session.user, seconds, session.user)
    log.info("hold", **fields(user=session.user, for_s=seconds, actor=session.user))
    raise web.HTTPSeeOther("/?done=" + ("held" if seconds else "unheld"))


# -- stopping -----------------------------------------------------------------------------------


async def stop(request: web.Request) -> web.StreamResponse:
    """POST /stop: the person's own workspace, once they said yes (confirm=yes)."""
    router = request.app[ROUTER]
    session = await require_session(request)
    form = await request.post()
    check_form(request, form, session.csrf)
    if form.get("confirm") != "yes":
        text = pages.confirm_stop(who(session), session.user, "/stop", "/")
        return web.Response(text=text, content_type="text/html")
    await stop_workspace(router, session.user, session.user, WHY_RELEASED)
    raise web.HTTPSeeOther("/?done=stopped")


async def stop_workspace(router: Router, user: str, actor: str, why: str) -> None:
    """Release user's workspace now, and forget where it was."""
    await router.pool.release(user, actor=actor, why=why)
    router.proxy.forget(user)
