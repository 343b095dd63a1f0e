"""`codepool`: the operator's CLI. Each command parses, loads settings, builds the pool,
runs one core method and renders the result (STYLE: one core object, two front doors)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.live import Live

from codepool import __version__
from codepool.cli import render, serve, tokens, users
from codepool.core import events, policy
from codepool.core.errors import InvalidInput
from codepool.core.events import cli_actor
from codepool.core.models import Check, Event, EventKind
from codepool.core.origins import Origins
from codepool.core.pool import CodePool, build_pool
from codepool.core.settings import EMBEDDED, Settings, find_config, load_settings, search_paths

T = TypeVar("T")

app = typer.Typer(
    name="codepool",
    help=(
        "Run a pool of per-user VS Code workspaces (code-server) and stop what nobody uses.\n\n"
        "Examples:\n\n"
        "  codepool assign alice          # give alice her workspace, print its URL\n\n"
        "  codepool status                # what runs, who is idle, warnings\n\n"
        "  codepool reap --dry-run        # what would be stopped now, and why\n\n"
        "  codepool extend alice --for 2h # keep alice's workspace through a long build"
    ),
    no_args_is_help=True,
    add_completion=True,  # --install-completion for bash, zsh, fish; --show-completion
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

JsonOpt = render.JsonOpt
YesOpt = render.YesOpt
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Say what would happen; change nothing.")
]


def _print_version(value: bool) -> None:
    if value:
        render.out.print(f"codepool {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            "-c",
            metavar="PATH",
            help="Config file. Default: $CODEPOOL_CONFIG, ./codepool.toml, "
            "~/.config/codepool/config.toml, /etc/codepool/config.toml, else the embedded "
            "default (local backend, SQLite). `codepool config path` says which.",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each step.")] = False,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print codepool's version and exit.",
            is_eager=True,
            callback=_print_version,
        ),
    ] = False,
) -> None:
    del show_version  # handled by its callback, before any command
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    ctx.obj = config


def _run(
    ctx: typer.Context, as_json: bool, step: Callable[[CodePool], Awaitable[T]]
) -> tuple[T, Settings]:
    """Load settings, build the pool, run one core step; a CodepoolError becomes its exit code."""
    with render.exits_on_error(as_json):
        settings = load_settings(ctx.obj)

        async def go() -> T:
            pool = build_pool(settings)
            try:
                return await step(pool)
            finally:
                await pool.close()

        return asyncio.run(go()), settings


def _check_user(user: str, as_json: bool) -> None:
    """Refuse a bad name before anything is built or written."""
    with render.exits_on_error(as_json):
        policy.check_user(user)


class _Progress:
    """Show what a slow step is doing: a spinner on a terminal, plain lines otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.status: Any = None

    def __enter__(self) -> _Progress:
        if not self.quiet and render.err.is_terminal:
            self.status = render.err.status("working…")
            self.status.__enter__()
        return self

    def __call__(self, message: str) -> None:
        if self.status is not None:
            self.status.update(message + "…")
        elif not self.quiet:
            render.err.print(message + "…", style="dim")

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.__exit__(*exc)


@app.command()
def assign(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="User name (lower-case letters, digits, . _ @ -).")],
    as_json: JsonOpt = False,
) -> None:
    """Give USER their workspace and print its URL.

    Resumes USER's own stopped workspace, else takes a warm spare, else launches a box
    and waits for it. Example: codepool assign alice
    """
    _check_user(user, as_json)
    with _Progress(as_json) as progress:
        result, settings = _run(ctx, as_json, lambda pool: pool.assign(user, progress, cli_actor()))
    with render.exits_on_error(as_json):
        url = Origins.from_settings(settings).workspace_url(user)
    render.assignment(result, url, as_json)


@app.command()
def release(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="User whose workspace to stop.")],
    terminate: Annotated[
        bool, typer.Option("--terminate", help="Delete the box and its disk instead of stopping.")
    ] = False,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Stop USER's workspace now; the disk is kept for their return.

    Example: codepool release alice   (or --terminate --yes to delete it)
    """
    _check_user(user, as_json)
    if terminate:
        render.confirm(f"Delete {user}'s workspace and its disk (their files)?", yes, as_json)
    ws, settings = _run(ctx, as_json, lambda pool: pool.release(user, terminate, cli_actor()))
    render.released(ws, terminate or settings.pool.on_idle == "terminate", as_json)


@app.command()
def reap(
    ctx: typer.Context,
    dry_run: DryRunOpt = False,
    idle_timeout: Annotated[
        int | None,
        typer.Option(
            "--idle-timeout",
            metavar="SECONDS",
            min=1,
            help="Treat workspaces idle this long as idle (default: pool.idle_timeout_s).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop workspaces idle past the timeout and delete boxes stopped past retention.

    Example: codepool reap --dry-run
    """
    decisions, _ = _run(ctx, as_json, lambda pool: pool.reap(dry_run, idle_timeout))
    render.reap(decisions, dry_run, as_json)


@app.command()
def scale(ctx: typer.Context, dry_run: DryRunOpt = False, as_json: JsonOpt = False) -> None:
    """Set desired capacity to running workspaces plus warm spares, within the group's limits.

    Example: codepool scale --dry-run
    """
    result, _ = _run(ctx, as_json, lambda pool: pool.scale(dry_run))
    render.scale(result, as_json)


@app.command()
def status(
    ctx: typer.Context,
    as_json: JsonOpt = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.5, metavar="SECONDS", help="Refresh period.")
    ] = 2.0,
    output: Annotated[
        str,
        typer.Option(
            "--output", "-o", metavar="FORMAT", help="wide: also where each runs and for how long."
        ),
    ] = "",
) -> None:
    """Show the pool: capacity, every workspace with its idle time, and warnings.

    Example: codepool status --watch   (or -o wide; piped: tab-separated rows)
    """
    if output not in ("", "wide"):
        raise typer.Exit(
            render.error(InvalidInput(f"-o {output!r}: the one format is wide"), as_json)
        )
    wide = output == "wide"
    if watch and as_json:
        raise typer.Exit(render.error(InvalidInput("--watch and --json cannot be combined"), True))
    snapshot, _ = _run(ctx, as_json, lambda pool: pool.status())
    if as_json:
        render.print_json(render.status_json(snapshot))
        return
    if not watch:
        render.status(snapshot, wide)
        return
    try:
        view = render.status_view(snapshot, wide)
        with Live(view, console=render.out, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                snapshot, _ = _run(ctx, False, lambda pool: pool.status())
                live.update(render.status_view(snapshot, wide), refresh=True)
    except KeyboardInterrupt:
        pass


@app.command()
def extend(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="User whose workspace to hold open.")],
    duration: Annotated[
        str,
        typer.Option(
            "--for",
            metavar="DURATION",
            help="How long from now: 90 (seconds), 30m, 2h, 1h30m; 0 ends the hold.",
        ),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Keep USER's running workspace from being reaped for a while (up to pool.max_hold_s).

    Each hold counts from now and replaces the one before, so holds never add up.

    Examples: codepool extend alice --for 2h    codepool extend alice --for 0  (hold ends)
    """
    _check_user(user, as_json)
    with render.exits_on_error(as_json):
        seconds = policy.parse_duration(duration)
    ws, _ = _run(ctx, as_json, lambda pool: pool.extend(user, seconds, cli_actor()))
    render.extended(ws, int(time.time() * 1000), as_json)


SinceOpt = Annotated[
    str,
    typer.Option("--since", metavar="WHEN", help="From: a duration ago (7d) or an ISO date/time."),
]
UntilOpt = Annotated[
    str, typer.Option("--until", metavar="WHEN", help="Up to (default: now); as --since.")
]


def _period(since: str, until: str) -> tuple[int, int]:
    return policy.parse_period(since, until, int(time.time() * 1000), flag="--")


@app.command("events")
def events_(
    ctx: typer.Context,
    user: Annotated[
        str | None, typer.Option("--user", "-u", metavar="USER", help="Only USER's events.")
    ] = None,
    kinds: Annotated[
        str,
        typer.Option(
            "--kind",
            metavar="KINDS",
            help="Only these kinds, comma-separated: " + ", ".join(k.value for k in EventKind),
        ),
    ] = "",
    since: SinceOpt = "1d",
    until: UntilOpt = "",
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events until Ctrl-C.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per event and line (JSON Lines).")
    ] = False,
) -> None:
    """The event log: starts (and how), stops (and why), holds, logins, account changes;
    with when, whose and who did it. Kept store.events_retention_days.

    Examples: codepool events --since 7d --user alice    codepool events -f --kind stop,assign
    """
    with render.exits_on_error(as_json):
        if user is not None:
            policy.check_user(user)
        wanted = events.parse_kinds(kinds)
        if follow and until:
            raise InvalidInput("--follow and --until cannot be combined")
        start, end = _period(since, until)

    def keep(event: Event) -> bool:
        return not wanted or event.kind in wanted

    async def stream(pool: CodePool) -> None:
        found = (
            events.follow(pool.store, start, pool.clock, user)
            if follow
            else events.read(pool.store, start, end, user)
        )
        async for event in found:
            if keep(event):
                render.event_line(event, as_json)

    async def collect(pool: CodePool) -> list[Event]:
        return [e async for e in events.read(pool.store, start, end, user) if keep(e)]

    if as_json or follow:
        with contextlib.suppress(KeyboardInterrupt):
            _run(ctx, as_json, stream)
    else:
        render.events_table(_run(ctx, False, collect)[0])


@app.command()
def report(
    ctx: typer.Context,
    since: SinceOpt = "30d",
    until: UntilOpt = "",
    as_json: JsonOpt = False,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="CSV: a row per person, then the total.")
    ] = False,
) -> None:
    """Usage and savings from the event log: per person and in total, hours running and
    stopped, starts by kind, stops by reason, cost at the [cost] prices, what the same
    workspaces would have cost left running (always on), and what stopping them saved.

    Examples: codepool report    codepool report --since 2026-11-01 --until 2026-12-01 --csv
    """
    with render.exits_on_error(as_json):
        if as_json and as_csv:
            raise InvalidInput("--json and --csv cannot be combined")
        start, end = _period(since, until)
    found, _ = _run(ctx, as_json, lambda pool: pool.report(start, end))
    render.report(found, as_json, as_csv)


@app.command()
def reconcile(ctx: typer.Context, dry_run: DryRunOpt = False, as_json: JsonOpt = False) -> None:
    """Make the store agree with the backend: rebuild lost records, fix states, sync spares.

    Example: codepool reconcile --dry-run
    """
    actions, _ = _run(ctx, as_json, lambda pool: pool.reconcile(dry_run))
    render.reconcile(actions, dry_run, as_json)


@app.command()
def doctor(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Check a deployment: config, store, backend, (AWS) the group's safety settings, and
    (OIDC login) that the identity provider's discovery document and keys can be read.

    Exits 1 when a check fails. Example: codepool doctor
    """

    async def every_check(pool: CodePool) -> list[Check]:
        found = await pool.doctor()
        if pool.settings.router.auth == "oidc":
            from codepool.daemon.oidc import check_provider

            found.append(await check_provider(pool.settings))
        return found

    checks, _ = _run(ctx, as_json, every_check)
    render.checks(checks, as_json)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


@app.command("iam-policy")
def iam_policy(ctx: typer.Context) -> None:
    """Print the least-privilege IAM policy a router needs for the configured group.

    Example: codepool iam-policy > codepool-router-policy.json
    """
    with render.exits_on_error(False):
        settings = load_settings(ctx.obj)
        if settings.pool.backend != "aws":
            raise InvalidInput("iam-policy is for pool.backend = 'aws' (set aws.group_name)")
        from codepool.core.backends.aws import iam_policy as policy_for

        render.print_json(policy_for(settings.aws.group_name))


alarms_app = typer.Typer(help="CloudWatch alarms of the pool (AWS backend).", no_args_is_help=True)
app.add_typer(alarms_app, name="alarms")


@alarms_app.command("apply")
def alarms_apply(
    ctx: typer.Context,
    dry_run: DryRunOpt = False,
    topic_arn: Annotated[
        str, typer.Option("--topic-arn", metavar="ARN", help="SNS topic to notify.")
    ] = "",
    as_json: JsonOpt = False,
) -> None:
    """Create or update the two alarms: desired >= 90% of max, and desired above in service
    for 10 minutes. Example: codepool alarms apply --dry-run
    """
    alarms, _ = _run(ctx, as_json, lambda pool: pool.apply_alarms(topic_arn, dry_run))
    render.alarms(alarms, dry_run, as_json)


@app.command()
def version(as_json: JsonOpt = False) -> None:
    """Print codepool's version."""
    if as_json:
        render.print_json({"version": __version__})
    else:
        render.out.print(f"codepool {__version__}")


@app.command("install-code-server")
def install_code_server(
    directory: Annotated[
        str | None,
        typer.Option(
            "--dir",
            metavar="PATH",
            help="Where to install (default: ~/.cache/codepool/code-server-<version>; as "
            "root /opt/codepool/code-server-<version>).",
        ),
    ] = None,
) -> None:
    """Install code-server from Debian's and npm's registries (Node.js 20, a few minutes,
    once; a finished install is reused). Needs apt-get (with sudo unless root).

    Example: codepool install-code-server   (then local.command may name it)
    """
    script = installer()
    env = dict(os.environ)
    if directory:
        env["CODEPOOL_CODE_SERVER_DIR"] = str(Path(directory).expanduser().resolve())
    raise typer.Exit(subprocess.run(["bash", str(script)], env=env, check=False).returncode)


def installer() -> Path:
    """The code-server installer: inside the installed package (a wheel carries it), or in
    the checkout's scripts/ (an editable install)."""
    packaged = Path(__file__).resolve().parents[1] / "install-code-server"
    if packaged.is_file():
        return packaged
    return Path(__file__).resolve().parents[2] / "scripts" / "install-code-server"


config_app = typer.Typer(help="The configuration in use.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("path")
def config_path(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Print the config file in use (or "embedded default"), as --config, $CODEPOOL_CONFIG
    and the search order find it. Example: codepool config path
    """
    with render.exits_on_error(as_json):
        found = find_config(ctx.obj, os.environ)
        if as_json:
            render.print_json(
                {
                    "path": str(found.resolve()) if found else None,
                    "searched": [str(p) for p in search_paths(os.environ)],
                }
            )
        else:
            render.out.print(str(found.resolve()) if found else EMBEDDED)


app.command()(serve.serve)
app.add_typer(users.users_app, name="users")
app.add_typer(tokens.tokens_app, name="tokens")


def main() -> None:
    # What codepool writes (the store, slots' metadata, exports) is its own alone; people's
    # workspaces, started from here, keep their files to themselves too.
    os.umask(0o077)
    app()
