"""The router's HTML pages: small, server-rendered, no external assets (works offline and
behind strict CSPs). Every value is escaped where it is put in."""

from __future__ import annotations

from collections.abc import Callable
from html import escape

from codepool.core.models import PoolStatus
from codepool.core.policy import format_duration


def _page(title: str, body: str, *, scripts: str = "", head: str = "", assets: str = "") -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · codepool</title>
<link rel="stylesheet" href="{escape(assets)}/assets/style.css">{head}
</head><body><main>
<h1 class="brand">codepool</h1>
{body}
</main>{scripts}</body></html>
"""


def login(csrf: str, next_path: str, error: str = "", user: str = "") -> str:
    message = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return _page(
        "Log in",
        f"""<h2>Log in to your workspace</h2>
{message}
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


def starting(user: str) -> str:
    return _page(
        "Starting your workspace",
        f"""<h2>Starting your workspace, {escape(user)}</h2>
<div class="card" id="progress" aria-live="polite">
<div class="spinner" aria-hidden="true"></div>
<p id="status">Finding your workspace…</p>
<ol id="steps"></ol>
</div>
<p class="hint">This page continues by itself. A resumed workspace takes a few seconds;
a new one up to a few minutes.</p>""",
        scripts='<script src="/assets/starting.js" defer></script>',
    )


def open_workspace(user: str) -> str:
    """What a link from elsewhere to /dispatch gets: a button, not a started workspace."""
    return _page(
        "Open your workspace",
        f"""<h2>Open your workspace, {escape(user)}</h2>
<div class="card"><p>A link brought you here. Your workspace starts when you ask for it.</p>
<p><a class="button" href="/dispatch">Open my workspace</a></p></div>""",
    )


def problem(
    title: str, message: str, *, action: str = "", action_label: str = "", assets: str = ""
) -> str:
    """An error page. assets: the origin of the router's stylesheet, when the page is shown
    on a workspace origin (whose /assets/ belong to the workspace)."""
    button = (
        f'<p><a class="button" href="{escape(action)}">{escape(action_label)}</a></p>'
        if action
        else ""
    )
    return _page(
        title,
        f'<h2>{escape(title)}</h2><div class="card"><p>{escape(message)}</p>{button}</div>',
        assets=assets,
    )


def moving_on(title: str, message: str, url: str, assets: str) -> str:
    """A page that goes on to url by itself (and offers a link for when it does not). Used
    on workspace origins where a redirect would not do: the browser's next request must
    come from this origin's own page, not from the chain of redirects that led here."""
    return _page(
        title,
        f'<h2>{escape(title)}</h2><div class="card"><p>{escape(message)}</p>'
        f'<p><a class="button" href="{escape(url)}">Continue</a></p></div>',
        head=f'\n<meta http-equiv="refresh" content="0; url={escape(url)}">',
        assets=assets,
    )


def admin(
    status: PoolStatus,
    csrf: str,
    notice: str = "",
    workspace_origin: Callable[[str], str] | None = None,
) -> str:
    """The pool page; with workspace_origin (admins may enter workspaces) each running
    workspace gets an Open link to its origin."""
    c = status.capacity
    rows = []
    for w in status.workspaces:
        idle = format_duration((status.now_ms - w.last_seen_ms) / 1000)
        held = (
            format_duration((w.hold_until_ms - status.now_ms) / 1000)
            if w.hold_until_ms > status.now_ms
            else ""
        )
        actions = ""
        if w.state.value == "running" and workspace_origin is not None:
            actions = f'<a href="{escape(workspace_origin(w.user))}/">Open</a>'
        if w.state.value == "running":
            actions += f"""<form method="post" action="/admin/stop">
<input type="hidden" name="csrf" value="{escape(csrf)}">
<input type="hidden" name="user" value="{escape(w.user)}">
<button type="submit">Stop</button></form>
<form method="post" action="/admin/extend">
<input type="hidden" name="csrf" value="{escape(csrf)}">
<input type="hidden" name="user" value="{escape(w.user)}">
<select name="for" aria-label="extend by"><option>1h</option><option>2h</option>
<option>4h</option><option>8h</option></select>
<button type="submit">Extend</button></form>"""
        rows.append(
            f"<tr><td>{escape(w.user)}</td><td><code>{escape(w.instance_id)}</code></td>"
            f'<td><span class="state {escape(w.state.value)}">{escape(w.state.value)}</span>'
            f'</td><td>{idle}</td><td>{held}</td><td class="actions">{actions}</td></tr>'
        )
    warnings = "".join(f'<p class="warning">{escape(w)}</p>' for w in status.warnings)
    note = f'<p class="notice" role="status">{escape(notice)}</p>' if notice else ""
    table = (
        "<table><thead><tr><th>user</th><th>instance</th><th>state</th><th>idle</th>"
        "<th>held</th><th></th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        if rows
        else "<p>No workspaces.</p>"
    )
    nav = f"""<nav class="nav"><a href="/dispatch">My workspace</a>
<form method="post" action="/logout"><input type="hidden" name="csrf" value="{escape(csrf)}">
<button type="submit" class="link">Log out</button></form></nav>"""
    return _page(
        "Pool",
        f"""{nav}<h2>Pool</h2>{note}
<p class="numbers">desired <b>{c.desired}</b> (min {c.min_size}, max {c.max_size}) ·
in service <b>{status.in_service}</b> · standby <b>{status.standby}</b> ·
spares <b>{status.spares}</b></p>
{warnings}{table}""",
    )
