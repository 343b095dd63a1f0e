"""Everything the CLI shows: rich tables for people, stable JSON for scripts, and the one
place where core errors become exit codes."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import enum
import json
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from codepool.core import errors, sockets
from codepool.core.models import (
    Assignment,
    Check,
    Event,
    EventKind,
    PoolStatus,
    ReapAction,
    ReapDecision,
    ReconcileAction,
    ScaleResult,
    Workspace,
    WorkspaceState,
)
from codepool.core.policy import format_duration
from codepool.core.report import Report, Usage

# The options every command that prints, or destroys, shares.
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
YesOpt = Annotated[
    bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (for scripts).")
]

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

# Exit codes, documented in docs/cli.md. Typer's own usage errors also exit 2.
EXIT_CODES: dict[type[errors.CodepoolError], tuple[int, str]] = {
    errors.ConfigError: (2, "config"),
    errors.InvalidInput: (2, "invalid-input"),
    errors.NoWorkspace: (3, "no-workspace"),
    errors.PoolFull: (4, "pool-full"),
    errors.Busy: (5, "busy"),
    errors.AssignTimeout: (6, "timeout"),
    errors.BackendError: (7, "backend"),
    errors.StoreUnavailable: (8, "store"),
}


def error(exc: errors.CodepoolError, as_json: bool) -> int:
    """Say what went wrong on stderr (a line, or JSON), never on stdout: a script piping
    stdout into the next tool gets nothing rather than an error it would read as data.
    Returns the exit code."""
    code, kind = errors.classify(exc, EXIT_CODES, (1, "error"))
    if as_json:
        body: dict[str, Any] = {"error": {"kind": kind, "message": str(exc), "exit_code": code}}
        if isinstance(exc, errors.PoolFull):
            body["error"]["retry_after_s"] = exc.retry_after_s
        print(json.dumps(body, indent=2, sort_keys=True), file=sys.stderr)
    else:
        err.print(Text(f"error: {exc}", style="bold red"))
    return code


def confirm(question: str, yes: bool, as_json: bool) -> None:
    """Ask before something that destroys data or access; --yes answers for scripts. With
    no terminal to ask on, refuse (exit 2) rather than guess; a "no" exits 1."""
    if yes:
        return
    if not interactive():
        why = f"{question} Add --yes to confirm: there is no terminal to ask on."
        raise typer.Exit(error(errors.InvalidInput(why), as_json))
    if not typer.confirm(question, default=False, err=True):
        err.print("nothing done")
        raise typer.Exit(1)


def interactive() -> bool:
    return sys.stdin.isatty()


@contextlib.contextmanager
def exits_on_error(as_json: bool) -> Iterator[None]:
    """Turn a CodepoolError raised inside into its message and exit code."""
    try:
        yield
    except errors.CodepoolError as exc:
        raise typer.Exit(error(exc, as_json)) from None


def jsonable(obj: Any) -> Any:
    """Dataclasses, enums, tuples and sets as plain JSON values (snake_case keys)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [jsonable(v) for v in obj]
    return obj


def print_json(obj: Any) -> None:
    print(json.dumps(with_times(jsonable(obj)), indent=2, sort_keys=True))


def with_times(obj: Any) -> Any:
    """Beside every `<name>_ms` time (epoch milliseconds, for arithmetic), `<name>`: the
    same time in RFC 3339, UTC, for people and for tools that parse dates (null for 0,
    "never")."""
    if isinstance(obj, list):
        return [with_times(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    out = {k: with_times(v) for k, v in obj.items()}
    for key, value in obj.items():
        name = key.removesuffix("_ms")
        if name != key and name not in obj and isinstance(value, int) and value >= 0:
            out[name] = rfc3339(value) if value else None
    return out


def rfc3339(at_ms: int) -> str:
    moment = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Rows(Table):
    """A table that also keeps its rows as plain text, for show() to print when stdout is
    not a terminal."""

    def __init__(self, title: str | None) -> None:
        super().__init__(title=title, title_justify="left")
        self.plain: list[list[str]] = []

    def add_row(self, *cells: RenderableType | None, **options: Any) -> None:
        self.plain.append([_plain(c) for c in cells])
        super().add_row(*cells, **options)


def _plain(cell: RenderableType | None) -> str:
    text = cell.plain if isinstance(cell, Text) else str(cell or "")
    return " ".join(text.split())  # no tab or newline inside a field


def make_table(title: str | None, *columns: str) -> Rows:
    """A table whose cells wrap instead of being cut (URLs and ids must stay whole)."""
    table = Rows(title)
    for col in columns:
        table.add_column(col, overflow="fold")
    return table


def show(table: Rows) -> None:
    """A boxed table on a terminal. Piped or redirected: a header row and one line per row,
    tab-separated, never wrapped (for grep, cut and awk); the title goes to stderr."""
    if out.is_terminal:
        out.print(table)
        return
    if table.title:
        err.print(str(table.title), style="dim")
    sys.stdout.write("\t".join(str(c.header) for c in table.columns) + "\n")
    sys.stdout.writelines("\t".join(row) + "\n" for row in table.plain)
    sys.stdout.flush()


def address_of(ws: Workspace) -> str:
    """Where the router reaches a workspace: a box's URL, or a local socket's path."""
    unix = sockets.parse(ws.address)
    return f"unix:{unix.path}" if unix is not None else ws.address.rstrip("/") + "/"


# -- one renderer per command -------------------------------------------------------------


def assignment(a: Assignment, url: str, as_json: bool) -> None:
    """url: where the person opens it (through the router)."""
    if as_json:
        print_json({**jsonable(a.workspace), "how": a.how, "url": url})
        return
    words = {
        "running": "already running",
        "resumed": "resumed",
        "spare": "warm spare",
        "launched": "new box",
    }
    out.print(f"[bold]{a.workspace.user}[/]: {url}")
    out.print(f"  instance {a.workspace.instance_id} ({words.get(a.how, a.how)})", style="dim")


def released(ws: Workspace, terminated: bool, as_json: bool) -> None:
    if as_json:
        print_json({"user": ws.user, "instance_id": ws.instance_id, "terminated": terminated})
        return
    what = "terminated (disk deleted)" if terminated else "stopped (disk kept)"
    out.print(f"[bold]{ws.user}[/]: {ws.instance_id} {what}")


def reap(decisions: Sequence[ReapDecision], dry_run: bool, as_json: bool) -> None:
    if as_json:
        print_json({"dry_run": dry_run, "decisions": decisions})
        return
    if not decisions:
        out.print("nothing idle: no workspace would be stopped" if dry_run else "nothing idle")
        return
    title = "reap (dry run: nothing changed)" if dry_run else "reap"
    table = make_table(title, "user", "instance", "action", "idle", "reason")
    for d in decisions:
        action = d.action.value
        if d.action is not ReapAction.KEEP:
            action = f"would {action}" if dry_run else (action if d.done else f"{action} FAILED")
        style = "red" if d.error else ("yellow" if d.action is not ReapAction.KEEP else "")
        reason = d.reason + (f" ({d.error})" if d.error else "")
        table.add_row(d.user, d.instance_id, action, format_duration(d.idle_s), reason, style=style)
    show(table)


def scale(r: ScaleResult, as_json: bool) -> None:
    if as_json:
        print_json({**jsonable(r), "changed": r.changed})
        return
    verb = "would set" if r.dry_run else "set"
    if r.spares:
        out.print(f"warm spares now: {r.spares}")
    if not r.changed:
        out.print(f"desired capacity {r.desired_before}: no change")
        return
    out.print(f"desired capacity {r.desired_before} -> {r.desired_after} ({verb})")
    if r.terminated_spares:
        verb = "would terminate" if r.dry_run else "terminated"
        out.print(f"{verb} excess spares: {', '.join(r.terminated_spares)}")


def extended(ws: Workspace, now_ms: int, as_json: bool) -> None:
    if as_json:
        print_json(ws)
        return
    if not ws.hold_until_ms:
        out.print(f"[bold]{ws.user}[/]: {ws.instance_id} no longer held: idle rules apply")
        return
    held = format_duration((ws.hold_until_ms - now_ms) / 1000)
    out.print(f"[bold]{ws.user}[/]: {ws.instance_id} held open for {held}")


def reconcile(actions: Sequence[ReconcileAction], dry_run: bool, as_json: bool) -> None:
    if as_json:
        print_json({"dry_run": dry_run, "actions": actions})
        return
    if not actions:
        out.print("store and backend agree: nothing to do")
        return
    title = "reconcile (dry run: nothing changed)" if dry_run else "reconcile"
    table = make_table(title, "action", "subject", "detail", "done")
    for a in actions:
        table.add_row(a.kind, a.subject, a.detail, "yes" if a.done else "no")
    show(table)


def status_json(s: PoolStatus) -> dict[str, Any]:
    body: dict[str, Any] = jsonable(s)
    for row in body["workspaces"]:
        row["idle_s"] = round(max(0, s.now_ms - row["last_seen_ms"]) / 1000, 1)
    return body


def status(s: PoolStatus, wide: bool = False) -> None:
    """The pool on a terminal; piped, the workspaces as plain rows (the capacity line and
    the warnings on stderr)."""
    if out.is_terminal:
        out.print(status_view(s, wide))
        return
    err.print(_capacity_line(s))
    show(_workspace_table(s, wide))
    for w in s.warnings:
        err.print(f"warning: {w}")


def status_view(s: PoolStatus, wide: bool = False) -> Group:
    parts: list[RenderableType] = [_capacity_line(s)]
    parts.append(_workspace_table(s, wide) if s.workspaces else Text("no workspaces", style="dim"))
    parts.extend(Text(f"warning: {w}", style="yellow") for w in s.warnings)
    return Group(*parts)


def _capacity_line(s: PoolStatus) -> Text:
    c = s.capacity
    return Text.assemble(
        ("desired ", "dim"),
        (str(c.desired), "bold"),
        (f" (min {c.min_size}, max {c.max_size})", "dim"),
        ("  in service ", "dim"),
        (str(s.in_service), "bold"),
        ("  pending ", "dim"),
        (str(s.pending), "bold"),
        ("  standby ", "dim"),
        (str(s.standby), "bold"),
        ("  stopped ", "dim"),
        (str(s.stopped), "bold"),
        ("  spares ", "dim"),
        (str(s.spares), "bold"),
    )


def _workspace_table(s: PoolStatus, wide: bool) -> Rows:
    """user, instance, state, idle, held, assigned; wide adds where the router reaches it
    and how long it has run since it last started."""
    columns = ["user", "instance", "state", "idle", "held", "assigned"]
    table = make_table(None, *columns, *(["address", "running"] if wide else []))

    def ago(at_ms: int) -> str:
        return format_duration((s.now_ms - at_ms) / 1000) if at_ms else ""

    for w in s.workspaces:
        held = (
            format_duration((w.hold_until_ms - s.now_ms) / 1000)
            if w.hold_until_ms > s.now_ms
            else ""
        )
        row = [w.user, w.instance_id, w.state.value, ago(w.last_seen_ms), held]
        row.append(ago(w.assigned_at_ms) + " ago")
        if wide:
            running = ago(w.started_at_ms) if w.state is WorkspaceState.RUNNING else ""
            row += [address_of(w), running]
        table.add_row(*row)
    return table


def checks(found: Sequence[Check], as_json: bool) -> None:
    if as_json:
        print_json({"ok": all(c.ok for c in found), "checks": found})
        return
    for c in found:
        mark = "[green]ok[/]  " if c.ok else "[red]FAIL[/]"
        out.print(f"{mark} [bold]{c.name}[/]: {c.detail}")


def alarms(defined: Sequence[dict[str, Any]], dry_run: bool, as_json: bool) -> None:
    if as_json:
        print_json({"dry_run": dry_run, "alarms": list(defined)})
        return
    verb = "would create or update" if dry_run else "created or updated"
    for a in defined:
        if "Budget" in a:
            b = a["Budget"]
            limit = f"{b['BudgetLimit']['Amount']} {b['BudgetLimit']['Unit']}"
            out.print(f"{verb} the budget [bold]{b['BudgetName']}[/]: {limit} a day")
        else:
            out.print(f"{verb} [bold]{a['AlarmName']}[/]: {a['AlarmDescription']}")


def _when(at_ms: int) -> str:
    """An event's time in the machine's zone, to the second, with its offset."""
    moment = datetime.fromtimestamp(at_ms / 1000).astimezone()
    return moment.isoformat(timespec="seconds")


def event_json(e: Event) -> dict[str, Any]:
    return {
        "at": _when(e.at_ms),
        "at_ms": e.at_ms,
        "kind": e.kind.value,
        "user": e.user,
        "actor": e.actor,
        "detail": e.detail,
        "instance_id": e.instance_id,
        "id": e.id,
    }


def _detail(e: Event) -> str:
    """An event's detail for people: a hold's seconds as a duration."""
    if e.kind is EventKind.HOLD and e.detail.isdigit():
        return f"for {format_duration(int(e.detail))}" if int(e.detail) else "hold ended"
    return e.detail


def event_line(e: Event, as_json: bool) -> None:
    """One event as it comes (--follow, --json): a line each, flushed at once."""
    if as_json:
        print(json.dumps(event_json(e), sort_keys=True), flush=True)
        return
    line = Text.assemble((_when(e.at_ms), "dim"), "  ", (f"{e.kind.value:<9}", "bold"))
    line.append(f"  {e.user}  by {e.actor}  {_detail(e)}")
    if e.instance_id:
        line.append(f"  {e.instance_id}", "dim")
    out.print(line)


def events_table(found: Sequence[Event]) -> None:
    if not found:
        err.print("no events in that time (see --since)", style="dim")
        return
    zone = datetime.now().astimezone().strftime("%Z")
    table = make_table(None, f"time ({zone})", "kind", "user", "by", "detail", "instance")
    table.columns[0].no_wrap = True
    for e in found:
        when = datetime.fromtimestamp(e.at_ms / 1000).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(when, e.kind.value, e.user, e.actor, _detail(e), e.instance_id)
    show(table)


def report_json(r: Report) -> dict[str, Any]:
    def person(u: Usage) -> dict[str, Any]:
        return {
            "user": u.user,
            "running_h": round(u.running_h, 4),
            "stopped_h": round(u.stopped_h, 4),
            "starts": u.starts,
            "stops": u.stops,
            "cost": round(u.cost, 4),
            "always_on_cost": round(u.always_on_cost, 4),
            "saved": round(u.saved, 4),
        }

    return {
        "since_ms": r.since_ms,
        "until_ms": r.until_ms,
        "prices": jsonable(r.prices),
        "people": [person(u) for u in r.people],
        "total": person(r.total),
    }


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def report(r: Report, as_json: bool, as_csv: bool) -> None:
    body = report_json(r)
    if as_json:
        print_json(body)
        return
    rows = [*body["people"], body["total"]]
    if as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["user", "running_h", "stopped_h", "starts", "stops", "cost",
                         "always_on_cost", "saved", "currency"])  # fmt: skip
        for row in rows:
            writer.writerow([
                row["user"], row["running_h"], row["stopped_h"], _counts(row["starts"]),
                _counts(row["stops"]), row["cost"], row["always_on_cost"], row["saved"],
                r.prices.currency,
            ])  # fmt: skip
        return
    p = r.prices
    start = datetime.fromtimestamp(r.since_ms / 1000).strftime("%Y-%m-%d %H:%M")
    end = datetime.fromtimestamp(r.until_ms / 1000).strftime("%Y-%m-%d %H:%M")
    box = f"{p.instance_type or 'a box'}, {p.disk_gb} GB disk" if p.disk_gb else p.instance_type
    title = f"{start} to {end} · {p.running_hour:g} {p.currency}/h running ({box})"
    table = make_table(title, "user", "running", "stopped", "starts", "stops", "cost",
                   "always on", "saved")  # fmt: skip
    for row in rows:
        money = [f"{row[k]:.2f}" for k in ("cost", "always_on_cost", "saved")]
        table.add_row(
            row["user"], f"{row['running_h']:.1f} h", f"{row['stopped_h']:.1f} h",
            _counts(row["starts"]), _counts(row["stops"]), *money,
            end_section=row is rows[-2],
        )  # fmt: skip
    show(table)
    if not p.running_hour:
        err.print("no prices set: costs are 0 (see [cost] in the configuration)", style="dim")
