"""Helpers for tests that start real workspace processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from aiohttp.test_utils import TestServer
from aiohttp.web_runner import BaseRunner

from codepool.core import sockets
from codepool.core.backends.local import _strays
from codepool.core.models import Assignment
from codepool.daemon.lane import LaneRunner

T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T]], what: str, timeout_s: float = 60) -> T:
    """Ask check until it answers something true, and return that; fail after timeout_s
    (a bound for a hang, far above what it takes on a busy machine: never a guess at how
    long something takes)."""
    deadline = time.monotonic() + timeout_s
    while not (found := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)
    return found


def kill_slots(state_dir: Path) -> None:
    """Stop every process a local pool in state_dir started (tests must not leak them)."""
    for meta_file in (state_dir / "slots").glob("*/meta.json"):
        pids = [pid for pid, _ in _strays(meta_file.parent, 0)]  # never written down
        with contextlib.suppress(OSError, ValueError, KeyError):
            pids.append(int(json.loads(meta_file.read_text())["pid"]))
        for pid in (p for p in pids if p > 0):
            for child, _ in sockets.descendants(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(child, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


class RouterServer(TestServer):
    """aiohttp's test server, serving the router's app as `codepool serve` does: with the
    lane in front of aiohttp's server, and a request's handler going on when its browser
    leaves (aiohttp's test server cancels it, which would hide what the router does then)."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return LaneRunner(self.app, **{**kwargs, "handler_cancellation": False})


@contextlib.asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[str]:
    """Run a small aiohttp app on a free loopback port; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def one_box_each(assignments: Iterable[Assignment]) -> dict[str, str]:
    """user -> instance id, checking that nobody got two boxes and no box got two users."""
    by_user: dict[str, set[str]] = {}
    for a in assignments:
        by_user.setdefault(a.workspace.user, set()).add(a.workspace.instance_id)
    assert all(len(ids) == 1 for ids in by_user.values()), by_user
    boxes = {user: next(iter(ids)) for user, ids in by_user.items()}
    assert len(set(boxes.values())) == len(boxes), boxes
    return boxes


def codepool_env(state_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for a `codepool` subprocess: a pool in state_dir running the stand-in."""
    import shlex

    from tests.conftest import SANDBOX_PATHS, standin_command

    env = dict(os.environ)
    env.update(
        # Its temporary files (a killed router's metrics folder) go with the test's own.
        TMPDIR=str(state_dir.parent),
        CODEPOOL_LOCAL_STATE_DIR=str(state_dir),
        CODEPOOL_LOCAL_COMMAND=" ".join(standin_command()),
        CODEPOOL_LOCAL_ISOLATION="sandbox",
        CODEPOOL_LOCAL_SANDBOX_PATHS=shlex.join(SANDBOX_PATHS),
    )
    env.update(extra)
    return env


def drop_redis_keys(url: str, prefix: str) -> None:
    """Remove what a test wrote under its key prefix on a real Redis."""
    import redis

    client = redis.Redis.from_url(url)
    for key in client.scan_iter(match=prefix + "*", count=500):
        client.delete(key)
    client.close()


class LoopbackNames(AbstractResolver):
    """localhost and every *.localhost name on 127.0.0.1, as browsers resolve them (this
    machine's resolver knows only localhost)."""

    def __init__(self) -> None:
        self.default = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host == "localhost" or host.endswith(".localhost"):
            return [
                ResolveResult(
                    hostname=host,
                    host="127.0.0.1",
                    port=port,
                    family=socket.AF_INET,
                    proto=0,
                    flags=socket.AI_NUMERICHOST,
                )
            ]
        return await self.default.resolve(host, port, family)

    async def close(self) -> None:
        await self.default.close()


async def post_login(port: int) -> bytes:
    """A login posted on a fresh connection to 127.0.0.1:port (a person's password on the
    wire); the first line of the answer, b"" if the connection was closed unanswered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b"user=alice&password=secret"
    writer.write(
        b"POST /login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    line = await reader.readline()
    writer.close()
    return line
