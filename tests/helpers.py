"""Helpers for tests that start real workspace processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web


def kill_slots(state_dir: Path) -> None:
    """Stop every process a local pool in state_dir started (tests must not leak them)."""
    for meta_file in (state_dir / "slots").glob("*/meta.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            pid = int(json.loads(meta_file.read_text())["pid"])
            if pid > 0:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)


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
