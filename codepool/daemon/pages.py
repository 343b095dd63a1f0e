"""The router's HTML pages: small, server-rendered, no external assets (works offline and
behind strict CSPs), all in one layout (style.css): the brand, which leads home, who is
signed in, and one heading. Every value is escaped where it is put in."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from codepool.core.models import PoolStatus, Workspace, WorkspaceState
from codepool.core.policy import aged_at_ms, format_duration
from codepool.core.report import Report, Usage


@dataclass(frozen=True)
class Who:
    """The signed-in person a page is for: their name in the header, the admin link, and
    the CSRF token of their forms."""

    user: str
    admin: bool
    csrf: str


LOGO = (
    '<svg class="logo" viewBox="0 0 32 32" aria-hidden="true" focusable="false">'
    '<rect width="32" height="32" rx="7" fill="currentColor"/>'
    '<path d="M10 11l-5 5 5 5M22 11l5 5-5 5M18 8l-4 16" fill="none" stroke="Canvas" '
    'stroke-width="2.6" stroke-linecap="round" stroke-linejoin="round"/></svg>'
)


def _csrf(who: Who) -> str:
    return f'<input type="hidden" name="csrf" value="{escape(who.csrf)}">'


def _page(
    title: str,
    body: str,
    *,
    who: Who | None = None,
    scripts: Sequence[str] = (),
    head: str = "",
    assets: str = "",
) -> str:
    """assets: the router's origin, when the page is shown on a workspace origin (whose
    paths belong to the workspace): the style sheet, the icon and the way home."""
    nav = ""
    if who is not None:
        admin = '<a href="/admin">Admin</a>' if who.admin else ""
        nav = f"""<nav aria-label="account"><span class="who">{escape(who.user)}</span>{admin}
<form method="post" action="/logout">{_csrf(who)}<button type="submit" class="link">Log out\
</button></form></nav>"""
    tags = "".join(f'<script src="/assets/{escape(s)}" defer></script>' for s in scripts)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · codepool</title>
<link rel="icon" href="{escape(assets)}/assets/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="{escape(assets)}/assets/style.css">{head}{tags}
</head><body>
<header class="top"><a class="brand" href="{escape(assets)}/">{LOGO}codepool</a>{nav}</header>
<main>
<h1>{escape(title)}</h1>
{body}
</main></body></html>
"""


def login(csrf: str, next_path: str, error: str = "", user: str = "") -> str:
    message = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return _page(
        "Log in",
        f"""{message}
<form method="post" action="/login" class="card">
<input type="hidden" name="csrf" value="{escape(csrf)}">
<input type="hidden" name="next" value="{escape(next_path)}">
<label>User name <input name="user" autocomplete="username" required autofocus
  value="{escape(user)}"></label>
<label>Password <input name="password" type="password" autocomplete="current-password"
  required></label>
<button type="submit">Log in</button>
</form>""",
    )


# -- the person's pages ---------------------------------------------------------------------

STATE_WORDS = {
    WorkspaceState.RUNNING: "Running",
    WorkspaceState.STARTING: "Starting",
    WorkspaceState.STOPPING: "Stopping",
    WorkspaceState.STOPPED: "Stopped",
}


@dataclass(frozen=True)
class HomeView:
    """What the home page shows of one person's workspace."""

    workspace: Workspace | None
    now_ms: int
    stoppable_at_ms: int  # when the reaper may stop it (running only)
    idle_timeout_s: int
    hold_choices_s: tuple[int, ...]
    max_age_s: int = 0  # pool.max_age_s


def plain(seconds: float) -> str:
    """A duration as a person says it: "less than a minute", "4 minutes", "1 hour 30
    minutes" (the admin's page and the CLI use the compact format_duration)."""
    s = round(seconds)
    if s < 60:
        return "less than a minute"

    def unit(n: int, word: str) -> str:
        return f"{n} {word}" if n == 1 else f"{n} {word}s"

    if s < 3600:
        return unit(round(s / 60), "minute")
    hours, minutes = s // 3600, round(s % 3600 / 60)
    if minutes == 60:
        hours, minutes = hours + 1, 0
    return unit(hours, "hour") + (" " + unit(minutes, "minute") if minutes else "")


def _ago(now_ms: int, then_ms: int) -> str:
    seconds = (now_ms - then_ms) / 1000
    return "just now" if seconds < 60 else f"{plain(seconds)} ago"


def _when(view: HomeView) -> str:
    """The lines under the state: when it was last active, and what happens next."""
    ws, now = view.workspace, view.now_ms
    if ws is None:
        return "<p>You have no workspace yet. Start it to make one: it keeps your files.</p>"
    if ws.state is WorkspaceState.STOPPED:
        return (
            f"<p>Stopped {_ago(now, ws.stopped_at_ms or ws.last_seen_ms)}. Your files are "
            "kept: start it to carry on where you left off.</p>"
        )
    if ws.state is not WorkspaceState.RUNNING:
        return "<p>This takes a moment.</p>"
    lines = [f"<dt>Last active</dt><dd>{_ago(now, ws.last_seen_ms)}</dd>"]
    if view.max_age_s and view.stoppable_at_ms == aged_at_ms(ws, view.max_age_s):
        left = (view.stoppable_at_ms - now) / 1000
        when = f"in about {plain(left)}" if left >= 60 else "within a minute"
        lines.append(
            f"<dt>Stops</dt><dd>{when}: a workspace runs at most {plain(view.max_age_s)} "
            "at a time. Save your work; open it again to carry on.</dd>"
        )
    elif ws.hold_until_ms > now:
        held = plain((ws.hold_until_ms - now) / 1000)
        lines.append(f"<dt>Kept running</dt><dd>for another {held}, open or not</dd>")
    else:
        left = (view.stoppable_at_ms - now) / 1000
        when = f"in about {plain(left)}" if left >= 60 else "within a minute"
        lines.append(f"<dt>Stops</dt><dd>{when}, unless one of its tabs is in view</dd>")
    return f"<dl>{''.join(lines)}</dl>"


def _hold_form(who: Who, view: HomeView) -> str:
    if not view.hold_choices_s:
        return ""
    options = "".join(
        f'<option value="{s}"{" selected" if s == 3600 else ""}>{escape(plain(s))}</option>'
        for s in view.hold_choices_s
    )
    ws = view.workspace
    unhold = ""
    if ws is not None and ws.hold_until_ms > view.now_ms:
        unhold = f"""<form method="post" action="/hold">{_csrf(who)}
<input type="hidden" name="for" value="0">
<button type="submit" class="secondary">Let it stop when idle</button></form>"""
    return f"""<div class="actions hold"><form method="post" action="/hold">{_csrf(who)}
<label for="hold-for">Keep running for</label>
<select id="hold-for" name="for">{options}</select>
<button type="submit" class="secondary">Keep running</button></form>{unhold}</div>"""


def home(who: Who, view: HomeView, notice: str = "") -> str:
    ws = view.workspace
    state = ws.state if ws is not None else None
    word = STATE_WORDS[state] if state is not None else "Not started"
    css = state.value if state is not None else "none"
    running = state is WorkspaceState.RUNNING
    label = "Open VS Code" if running else "Start my workspace"
    actions = f'<a class="button" href="/dispatch">{label}</a>'
    hold = ""
    if running:
        actions += f"""<form method="post" action="/stop">{_csrf(who)}
<button type="submit" class="danger">Stop now</button></form>"""
        hold = _hold_form(who, view)
    note = f'<p class="notice" role="status">{escape(notice)}</p>' if notice else ""
    idle = escape(plain(view.idle_timeout_s))
    return _page(
        f"Hello, {who.user}",
        f"""{note}<section class="card wide" id="workspace" data-live="5"
  aria-labelledby="ws-title">
<h2 id="ws-title">Your workspace <span class="state {css}">{word}</span></h2>
{_when(view)}
<div class="actions">{actions}</div>{hold}
</section>
<p class="hint">Your workspace is VS Code in your browser, with your own files. It keeps
running while one of its tabs is in view, and stops {idle} after the last one is closed or
hidden, unless you keep it running. Your files stay either way.</p>""",
        who=who,
        scripts=("live.js",),
    )


def starting(who: Who) -> str:
    return _page(
        "Starting your workspace",
        """<div class="card" id="progress">
<div class="spinner" aria-hidden="true"></div>
<p id="status" role="status" aria-live="polite">Finding your workspace…</p>
<p id="estimate" class="hint"></p>
</div>
<p class="hint">This page goes on to VS Code by itself.</p>""",
        who=who,
        scripts=("starting.js",),
    )


def confirm_stop(who: Who, user: str, action: str, back: str) -> str:
    """The question before a stop (a form without confirm=yes gets this page): a stop
    closes every tab of the workspace, with whatever is unsaved in its editors."""
    whose = "your workspace" if user == who.user else f"{user}'s workspace"
    return _page(
        f"Stop {whose}?",
        f"""<div class="card"><p>VS Code closes in every tab of {escape(whose)}. Files saved
to disk are kept; changes not yet saved in open editors are lost.</p>
<form method="post" action="{escape(action)}" class="actions">{_csrf(who)}
<input type="hidden" name="user" value="{escape(user)}">
<input type="hidden" name="confirm" value="yes">
<button type="submit" class="danger">Stop it</button>
<a class="button secondary" href="{escape(back)}">Cancel</a></form></div>""",
        who=who,
    )


def stopped(resume: str, assets: str = "") -> str:
    """What a page load of a stopped workspace gets (on its own origin)."""
    return problem(
        "Your workspace is stopped",
        "It was stopped after being idle, or by you. Your files are kept: resume it to "
        "carry on where you left off.",
        action=resume,
        action_label="Resume my workspace",
        assets=assets,
    )


def problem(
    title: str,
    message: str,
    *,
    action: str = "/",
    action_label: str = "Go to my home page",
    assets: str = "",
    who: Who | None = None,
) -> str:
    """An error or a refusal, with a way on. assets: as for _page."""
    button = (
        f'<p><a class="button" href="{escape(action)}">{escape(action_label)}</a></p>'
        if action
        else ""
    )
    return _page(
        title,
        f'<div class="card"><p>{escape(message)}</p>{button}</div>',
        assets=assets,
        who=who,
    )


def moving_on(title: str, message: str, url: str, assets: str) -> str:
    """A page that goes on to url by itself (and offers a link for when it does not). Used
    on workspace origins where a redirect would not do: the browser's next request must
    come from this origin's own page, not from the chain of redirects that led here."""
    return _page(
        title,
        f'<div class="card"><p>{escape(message)}</p>'
        f'<p><a class="button" href="{escape(url)}">Continue</a></p></div>',
        head=f'\n<meta http-equiv="refresh" content="0; url={escape(url)}">',
        assets=assets,
    )


# -- the admin's page -----------------------------------------------------------------------


def admin(
    status: PoolStatus,
    who: Who,
    notice: str = "",
    workspace_origin: Callable[[str], str] | None = None,
    hold_choices_s: tuple[int, ...] = (),
    usage: Report | None = None,
) -> str:
    """The pool page; with workspace_origin (admins may enter workspaces) each running
    workspace gets an Open link to its origin; with usage, what the pool cost and saved."""
    c = status.capacity
    options = "".join(f'<option value="{s}">{plain(s)}</option>' for s in hold_choices_s)
    rows = []
    for w in status.workspaces:
        idle = format_duration((status.now_ms - w.last_seen_ms) / 1000)
        held = (
            format_duration((w.hold_until_ms - status.now_ms) / 1000)
            if w.hold_until_ms > status.now_ms
            else ""
        )
        actions = ""
        user = escape(w.user)
        if w.state is WorkspaceState.RUNNING and workspace_origin is not None:
            actions = f'<a href="{escape(workspace_origin(w.user))}/">Open</a>'
        if w.state is WorkspaceState.RUNNING and options:
            actions += f"""<form method="post" action="/admin/extend">{_csrf(who)}
<input type="hidden" name="user" value="{user}">
<select name="for" aria-label="keep {user}'s workspace running for">{options}</select>
<button type="submit" class="secondary">Keep running</button></form>"""
        if w.state is WorkspaceState.RUNNING:
            actions += f"""<form method="post" action="/admin/stop">{_csrf(who)}
<input type="hidden" name="user" value="{user}">
<button type="submit" class="danger">Stop</button></form>"""
        state = w.state.value
        rows.append(
            f"<tr><td>{user}</td><td><code>{escape(w.instance_id)}</code></td>"
            f'<td><span class="state {state}">{STATE_WORDS[w.state]}</span></td>'
            f'<td>{idle}</td><td>{held}</td><td class="actions">{actions}</td></tr>'
        )
    warnings = "".join(f'<p class="warning">{escape(w)}</p>' for w in status.warnings)
    note = f'<p class="notice" role="status">{escape(notice)}</p>' if notice else ""
    table = (
        '<div class="scroll" tabindex="0" role="region" aria-label="workspaces">'
        "<table><thead><tr><th>User</th><th>Instance</th><th>State</th><th>Idle</th>"
        '<th>Held</th><th><span class="sr-only">Actions</span></th></tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table></div>"
        if rows
        else "<p>No workspaces.</p>"
    )
    return _page(
        "Pool",
        f"""{note}<section id="pool" data-live="10" aria-label="the pool">
<p class="numbers">desired <b>{c.desired}</b> (min {c.min_size}, max {c.max_size}) ·
in service <b>{status.in_service}</b> · standby <b>{status.standby}</b> ·
spares <b>{status.spares}</b></p>
{warnings}{table}</section>{_usage(usage) if usage is not None else ""}""",
        who=who,
        scripts=("live.js",),
    )


USAGE_ROWS = 10  # people shown on the admin page; `codepool report` has everyone


def _usage(r: Report) -> str:
    """The last days' hours and money: the total, and the people who ran the most."""
    days = round((r.until_ms - r.since_ms) / 86_400_000)
    money = r.prices.currency

    def row(u: Usage, total: bool = False) -> str:
        cells = [f"{u.running_h:.1f} h", f"{u.stopped_h:.1f} h"]
        cells += [f"{v:.2f}" for v in (u.cost, u.always_on_cost, u.saved)]
        tr = '<tr class="total">' if total else "<tr>"
        return (
            f"{tr}<td>{escape(u.user)}</td>"
            + "".join(f'<td class="num">{c}</td>' for c in cells)
            + "</tr>"
        )

    top = sorted(r.people, key=lambda u: -u.running_h)[:USAGE_ROWS]
    more = len(r.people) - len(top)
    rest = f'<p class="hint">and {more} more: <code>codepool report</code></p>' if more else ""
    priced = (
        ""
        if r.prices.running_hour
        else ('<p class="hint">No prices set: costs are 0 (the <code>[cost]</code> settings).</p>')
    )
    t = r.total
    return f"""<section id="usage" aria-labelledby="usage-title">
<h2 id="usage-title">The last {days} days</h2>
<p class="numbers">running <b>{t.running_h:.0f} h</b> · stopped <b>{t.stopped_h:.0f} h</b> ·
cost <b>{t.cost:.2f} {escape(money)}</b> · always on <b>{t.always_on_cost:.2f}</b> ·
saved by stopping idle workspaces <b>{t.saved:.2f} {escape(money)}</b></p>{priced}
<div class="scroll" tabindex="0" role="region" aria-label="usage by person">
<table><thead><tr><th>User</th><th class="num">Running</th><th class="num">Stopped</th>
<th class="num">Cost</th><th class="num">Always on</th><th class="num">Saved</th></tr>
</thead><tbody>{"".join(row(u) for u in top)}{row(t, total=True)}</tbody></table></div>
{rest}</section>"""
