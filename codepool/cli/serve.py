"""`codepool serve`: build the pool, make the first admin account if there is none, and
run the router (datasette's shape: `serve` ends with one line that runs the app)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import signal
import time
from typing import Annotated

import typer
from aiohttp import web

from codepool.cli import render
from codepool.core.errors import InvalidInput
from codepool.core.pool import build_pool
from codepool.core.settings import Settings, load_settings
from codepool.daemon.app import create_app
from codepool.daemon.auth import Users


class JsonLogs(logging.Formatter):
    """One JSON object per line: time, level, logger, message (for log shippers)."""

    def format(self, record: logging.LogRecord) -> str:
        body = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body)


def configure_logging(fmt: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonLogs()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def first_admin(settings: Settings) -> None:
    """On the very first start, make an admin account and show its password once."""
    password = Users(settings.users_file).ensure_admin()
    if password is None:
        return
    render.err.print(
        "\n[bold]codepool: first start.[/] Created the admin account:\n"
        f"    user [bold]admin[/]   password [bold]{password}[/]\n"
        "  It is shown this once. Change it with `codepool users passwd admin`;\n"
        "  add people with `codepool users add NAME`.\n"
    )


def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Listen address (router.host).")] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Listen port (router.port).")
    ] = None,
    log_format: Annotated[
        str, typer.Option("--log-format", help="Log lines as text or json.")
    ] = "text",
) -> None:
    """Run the router: login, dispatch, heartbeat, the workspace proxy and the idle reaper.

    With no config it serves on http://127.0.0.1:8000 with local accounts. Example:
    codepool serve --port 8080
    """
    with render.exits_on_error(False):
        if log_format not in ("text", "json"):
            raise InvalidInput(f"--log-format {log_format!r}: use text or json")
        settings = load_settings(ctx.obj)
        router = dataclasses.replace(
            settings.router,
            host=host or settings.router.host,
            port=port or settings.router.port,
        )
        settings = dataclasses.replace(settings, router=router)
        configure_logging(log_format)
        first_admin(settings)
        pool = build_pool(settings)
        app = create_app(pool, settings)

    async def close_pool(_: web.Application) -> None:
        await pool.close()

    async def dump_tasks_on_sigusr1(_: web.Application) -> None:
        # `kill -USR1 <pid>` logs where every task of the router is waiting: for an
        # operator (or a test) looking at a router that seems stuck.
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)

    app.on_startup.append(dump_tasks_on_sigusr1)
    app.on_cleanup.append(close_pool)
    render.err.print(f"codepool: serving on [bold]{settings.public_url}/[/]  (Ctrl-C stops)")
    try:
        web.run_app(app, host=router.host, port=router.port, print=None, access_log=None)
    except OSError as exc:
        render.err.print(f"error: cannot listen on {router.host}:{router.port}: {exc.strerror}")
        raise typer.Exit(1) from None


def _dump_tasks() -> None:
    out = io.StringIO()
    tasks = asyncio.all_tasks()
    for task in tasks:
        task.print_stack(limit=12, file=out)
    logging.getLogger("codepool.router").warning("%d tasks:\n%s", len(tasks), out.getvalue())
