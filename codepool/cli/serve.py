"""`codepool serve`: build the pool, make the first admin account if there is none, and
run the router (datasette's shape: `serve` ends with one line that runs the app).

The listening socket is made once, by this process, without SO_REUSEPORT (which would let
any process of the same user join the port and be handed a share of its connections:
other people's logins), or taken from systemd (socket activation: `codepool.socket`
holds the port across restarts and upgrades). With `--workers N` the process forks N
routers that accept from that one socket and share the store, and supervises them: a
signal is passed on to every worker, and a worker that dies is replaced (on the same
socket), unless it died right after starting (a configuration problem), which stops them
all. Workers are ordinary routers: one of them wins the leader lease and runs the
background loops."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import io
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from aiohttp import web

from codepool.cli import render
from codepool.cli.users import with_accounts
from codepool.core import logs
from codepool.core.accounts import Accounts, ImportResult
from codepool.core.backends.local import LocalBackend
from codepool.core.errors import CodepoolError, InvalidInput
from codepool.core.pool import CodePool, build_pool
from codepool.core.settings import RouterSettings, Settings, load_settings
from codepool.daemon import metrics, systemd
from codepool.daemon.access import access_log
from codepool.daemon.app import create_app
from codepool.daemon.context import ROUTER
from codepool.daemon.lane import LaneRunner

BACKLOG = 2048  # connections waiting for the router to accept them


def first_admin(settings: Settings) -> None:
    """On the very first start (no account in the store), take the accounts of a users
    file left by codepool 0.1, if there is one; else make an admin account. Its password
    goes to a file only the router's account can read (initial_password_file), never to
    the log, which may end up in journald: the log says where it is. On a terminal it is
    shown too."""
    if settings.router.auth != "local":
        return

    async def prepare(accounts: Accounts) -> tuple[ImportResult | None, str | None]:
        imported = None
        if settings.users_file.is_file() and not await accounts.list():
            imported = await accounts.import_file(settings.users_file)
        return imported, await accounts.ensure_admin()

    imported, password = with_accounts(settings, prepare)
    if imported is not None and imported.imported:
        render.err.print(
            f"codepool: imported {len(imported.imported)} account(s) from "
            f"{settings.users_file} into the store; the file is no longer read."
        )
    if password is None:
        return
    where = initial_password_file(settings)
    write_private(where, password + "\n")
    if render.err.is_terminal:
        shown = f"password [bold]{password}[/]\n  (also in {where}, readable by this account only)"
    else:
        shown = f"password in {where} (readable by this account only)"
    render.err.print(
        "\n[bold]codepool: first start.[/] Created the admin account:\n"
        f"    user [bold]admin[/]   {shown}\n"
        "  Change it with `codepool users passwd admin` (which deletes that file); add\n"
        "  people with `codepool users add NAME`.\n"
    )


def initial_password_file(settings: Settings) -> Path:
    return settings.state_dir / "initial-admin-password"


def write_private(path: Path, text: str) -> None:
    """Write a file only this account may read (0600), whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Listen address (router.host).")] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Listen port (router.port).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, max=64, help="Router processes sharing the port and store (router.workers)."
        ),
    ] = None,
    log_format: Annotated[
        str, typer.Option("--log-format", help="Log lines as text or json.")
    ] = "text",
    log_level: Annotated[
        str, typer.Option("--log-level", help="Least level logged: debug, info, warning, error.")
    ] = "info",
    access_log: Annotated[
        bool,
        typer.Option(
            "--access-log",
            help="Log every request: method, route, status, duration, user, client "
            "(router.access_log).",
        ),
    ] = False,
) -> None:
    """Run the router: login, dispatch, heartbeat, the workspace proxy and the idle reaper.

    With no config it serves on http://127.0.0.1:8000 with local accounts.

    Example: codepool serve --port 8080 --workers 2   (one router process per core)
    """
    with render.exits_on_error(False):
        if log_format not in ("text", "json"):
            raise InvalidInput(f"--log-format {log_format!r}: use text or json")
        if log_level.lower() not in logs.LEVELS:
            raise InvalidInput(f"--log-level {log_level!r}: use {', '.join(logs.LEVELS)}")

        def configured() -> Settings:
            """The config file (read again at each reload), under the command's options."""
            settings = load_settings(ctx.obj)
            router = dataclasses.replace(
                settings.router,
                host=host or settings.router.host,
                port=port or settings.router.port,
                workers=workers or settings.router.workers,
                access_log=access_log or settings.router.access_log,
            )
            return dataclasses.replace(settings, router=router)

        settings = configured()
        router = settings.router
        if router.workers > 1 and settings.store_url.startswith("memory:"):
            raise InvalidInput(
                f"--workers {router.workers}: the workers must share a store, and memory:// "
                "is one process's own; use sqlite:///PATH or redis://"
            )
        logs.configure(log_format, log_level, with_pid=router.workers > 1)
        first_admin(settings)
        pool = build_pool(settings)
        app = create_app(pool, settings)  # also checks the settings before anything forks
    try:
        from_systemd = systemd.listen_fds()
        listeners = from_systemd or listen(router.host, router.port)
    except OSError as exc:
        asyncio.run(pool.close())
        raise typer.Exit(cannot_listen(router, exc.strerror or str(exc))) from None
    if log_format == "json":  # every line a JSON object, for the log shipper
        logging.getLogger("codepool.router").info(
            "serving", **logs.fields(url=settings.public_url + "/", workers=router.workers)
        )
    else:
        render.err.print(
            f"codepool: serving on [bold]{settings.public_url}/[/]"
            + (f" with {router.workers} workers" if router.workers > 1 else "")
            + "  (Ctrl-C stops)"
        )
    if router.workers == 1:
        raise typer.Exit(
            run_router(settings, pool, app, configured, listeners, fixed=bool(from_systemd))
        )
    asyncio.run(pool.close())  # each worker opens its own connections after the fork
    raise typer.Exit(supervise(settings, router.workers, configured, listeners))


def cannot_listen(router: RouterSettings, reason: str) -> int:
    render.err.print(f"error: cannot listen on {router.host}:{router.port}: {reason}")
    return 1


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (a third more requests per core), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


DRAIN_S = 15.0  # how long a stopping router lets requests in flight finish


def listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for host and port, made as asyncio's create_server makes them
    (one per address the name has), but without SO_REUSEPORT: nobody may join them."""
    made: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        ):
            sock = socket.socket(family, kind, proto)
            made.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT only
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            # A crowd arriving at nine, or a front opening connections in a burst, must
            # not find the listen queue full (aiohttp's default is 128; Linux allows 4096).
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in made:
            sock.close()
        raise
    return made


def run_router(
    settings: Settings,
    pool: CodePool,
    app: web.Application,
    configured: Callable[[], Settings],
    listeners: list[socket.socket],
    fixed: bool = False,
) -> int:
    """Serve on listeners until SIGTERM or SIGINT (then drain); SIGHUP reloads. The exit
    code. fixed: the sockets are not this process's to change (a worker's, systemd's)."""
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        serving = Serving(settings, configured, fixed=fixed)
        return loop.run_until_complete(serving.run(pool, app, listeners))
    finally:
        _cancel_remaining(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


class Serving:
    """One router process: its app on the port, swapped for a new one on SIGHUP.

    A reload reads the config again and builds a new pool and app from it; a bad config,
    or one that cannot be served, is refused with a log line and the old app serves on.
    The new app accepts from the same listening sockets as the old one before the old one
    stops accepting and finishes its requests in flight: no moment without a listener,
    no accepted request cut off, and no connection lost from the queue (each app gets
    its own copy of the process's sockets, so the old one's closing closes only its
    copy; with a new socket per app, Linux reset the connections still waiting in the
    closed one's queue). Open WebSockets are closed with 1001 (going away); VS Code
    reconnects by itself."""

    def __init__(
        self, settings: Settings, configured: Callable[[], Settings], fixed: bool = False
    ) -> None:
        self.settings = settings
        self.configured = configured
        self.log = logging.getLogger("codepool.router")
        self.lock = asyncio.Lock()  # one reload at a time
        self.listeners: list[socket.socket] = []  # this process's, for router.host:port
        self.fixed = fixed  # the sockets are shared with other workers, or systemd's

    async def run(
        self, pool: CodePool, app: web.Application, listeners: list[socket.socket]
    ) -> int:
        loop = asyncio.get_running_loop()
        self.listeners = listeners
        try:
            self.runner = await self.start(pool, app, self.settings, self.listeners)
        except OSError as exc:
            return cannot_listen(self.settings.router, exc.strerror or str(exc))
        if isinstance(pool.backend, LocalBackend):
            for warning in pool.backend.start_warnings():
                self.log.warning(warning)
        systemd.notify("READY=1", f"STATUS=serving on {self.settings.public_url}")
        stop = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        def reload() -> None:
            task = loop.create_task(self.reload())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        loop.add_signal_handler(signal.SIGHUP, reload)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        # `kill -USR1 <pid>` logs where every task of the router is waiting: for an
        # operator (or a test) looking at a router that seems stuck.
        loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
        watchdog = loop.create_task(systemd.keep_watchdog_fed())
        await stop.wait()
        systemd.notify("STOPPING=1")
        self.log.info("stopping: requests in flight may finish", **logs.fields(within_s=DRAIN_S))
        async with self.lock:  # a reload under way ends first
            await self.runner.cleanup()
            for sock in self.listeners:
                sock.close()
        watchdog.cancel()
        return 0

    async def start(
        self,
        pool: CodePool,
        app: web.Application,
        settings: Settings,
        listeners: list[socket.socket],
    ) -> web.AppRunner:
        async def close_pool(_: web.Application) -> None:
            await pool.close()

        async def freeze_startup_objects(_: web.Application) -> None:
            # Everything imported and built so far lives as long as the process: move it
            # out of the collector's sight, so that the collections that request garbage
            # triggers do not walk the whole heap again and again (docs/performance.md).
            gc.freeze()

        app.on_startup.append(freeze_startup_objects)
        app.on_cleanup.append(close_pool)
        runner = LaneRunner(
            app,
            handle_signals=False,
            shutdown_timeout=DRAIN_S,
            access_log=logging.getLogger("codepool.access"),  # metrics, and the log if on
            access_log_class=access_log(app[ROUTER]),
        )
        await runner.setup()
        try:  # each site closes its own copy of a socket when it stops
            for sock in listeners:
                await web.SockSite(runner, sock.dup(), backlog=BACKLOG).start()
        except BaseException:
            await runner.cleanup()
            raise
        return runner

    async def reload(self) -> None:
        async with self.lock:
            systemd.reloading()
            self.log.info("reloading the configuration")
            try:
                runner, settings, listeners = await self.next_runner()
            except Exception as exc:  # whatever it is, the old app serves on
                self.log.error(
                    "reload refused: still serving with the configuration from before",
                    **logs.fields(reason=str(exc) or exc.__class__.__name__),
                    exc_info=not isinstance(exc, CodepoolError | OSError),
                )
                systemd.notify("READY=1", f"STATUS=reload refused: {str(exc)[:200]}")
                return
            old, self.runner, self.settings = self.runner, runner, settings
            await old.cleanup()  # stops accepting, then lets requests in flight finish
            if listeners is not self.listeners:  # moved: the old port is given up
                for sock in self.listeners:
                    sock.close()
                self.listeners = listeners
            self.log.info("reloaded", **logs.fields(config=settings.source))
            systemd.notify("READY=1", f"STATUS=serving on {settings.public_url}")

    async def next_runner(self) -> tuple[web.AppRunner, Settings, list[socket.socket]]:
        settings = self.configured()
        if settings.store_url.startswith("memory:"):
            raise InvalidInput("store memory:// lives in this process: restart to change it")
        old, new = self.settings.router, settings.router
        listeners = self.listeners
        if (new.host, new.port) != (old.host, old.port):
            if self.fixed:  # other workers share these sockets, or systemd holds them
                raise InvalidInput(
                    f"router.host and router.port moved to {new.host}:{new.port}: with "
                    "workers or systemd's sockets, restart to change them"
                )
            try:
                listeners = listen(new.host, new.port)
            except OSError as exc:
                raise InvalidInput(
                    f"cannot listen on {new.host}:{new.port}: {exc.strerror or exc}"
                ) from None
        pool = build_pool(settings)
        try:
            app = create_app(pool, settings, metrics=self.runner.app[ROUTER].metrics)
            return await self.start(pool, app, settings, listeners), settings, listeners
        except BaseException:
            await pool.close()
            if listeners is not self.listeners:
                for sock in listeners:
                    sock.close()
            raise


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


RESTART_AFTER_S = 5.0  # a worker that dies sooner after starting is not restarted


def supervise(
    settings: Settings,
    count: int,
    configured: Callable[[], Settings],
    listeners: list[socket.socket],
) -> int:
    """Fork `count` workers, each accepting from listeners (made here once: a worker
    started to replace one that died takes the same sockets), and keep them running
    until a signal; the exit code. SIGHUP: the config is read again; a bad one is
    refused here, a good one is passed on to each worker, which reloads itself without
    dropping a request (Serving.reload), and workers started later get it."""
    log = logging.getLogger("codepool.router")
    parent = os.getpid()
    # The workers' metrics live in files here, so that any worker's /metrics tells all.
    shared = tempfile.mkdtemp(prefix="codepool-metrics-")
    os.environ[metrics.SHARED] = shared
    children: dict[int, float] = {}  # pid -> when it started
    stopping = False

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:  # the worker: its own pool, connections and event loop
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            _die_with(parent)
            metrics.share_values(shared)
            code = 1
            try:
                pool = build_pool(settings)
                app = create_app(pool, settings)
                code = run_router(settings, pool, app, configured, listeners, fixed=True)
            except BaseException:
                log.exception("worker failed")
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = time.monotonic()

    def signal_all(sig: int) -> None:
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def on_stop(sig: int, _: object) -> None:
        nonlocal stopping
        stopping = True
        signal_all(signal.SIGTERM)

    def on_reload(sig: int, _: object) -> None:
        nonlocal settings
        try:
            settings = configured()
        except CodepoolError as exc:
            log.error(
                "reload refused: the workers keep the configuration from before",
                **logs.fields(reason=str(exc)),
            )
            return
        signal_all(signal.SIGHUP)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_reload)
    signal.signal(signal.SIGUSR1, lambda sig, _: signal_all(sig))
    for _ in range(count):
        spawn()
    code = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        started = children.pop(pid, None)
        metrics.worker_died(pid)
        if started is None or stopping:
            continue
        exit_code = os.waitstatus_to_exitcode(status)
        if time.monotonic() - started < RESTART_AFTER_S:
            log.error("worker %d exited (%d) right after starting: stopping", pid, exit_code)
            stopping, code = True, 1
            signal_all(signal.SIGTERM)
        else:
            log.error("worker %d exited (%d): starting another", pid, exit_code)
            spawn()
    shutil.rmtree(shared, ignore_errors=True)
    return code


def _die_with(parent: int) -> None:
    """Have the kernel send this worker SIGTERM when the supervisor dies, even by SIGKILL:
    an orphaned worker would go on serving the old code on the shared port. (Linux; the
    workspaces a worker starts run in their own session and are not affected.)"""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor's signals still reach it
        return
    if os.getppid() != parent:  # it died before the line above: nobody would tell us
        os._exit(1)


PR_SET_PDEATHSIG = 1


def _dump_tasks() -> None:
    out = io.StringIO()
    tasks = asyncio.all_tasks()
    for task in tasks:
        task.print_stack(limit=12, file=out)
    logging.getLogger("codepool.router").warning("%d tasks:\n%s", len(tasks), out.getvalue())
