"""The local backend with the real code-server: the embedded default's command line."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from codepool.core.backends.local import LocalBackend
from codepool.core.pool import CodePool
from codepool.core.ready import http_ok
from codepool.core.settings import DEFAULT_COMMAND
from codepool.core.sockets import parse
from codepool.core.store import create_store
from tests.conftest import make_settings

pytestmark = pytest.mark.code_server


async def get(address: str, path: str) -> tuple[int, bytes]:
    """A plain HTTP GET (status, body) on a workspace's socket, without a client library."""
    unix = parse(address)
    assert unix is not None, address  # the default command listens on a socket, not a port
    reader, writer = await asyncio.open_unix_connection(unix.path)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_real_code_server_assign_stop_resume_keeps_files(
    code_server: str, state_dir: Path
) -> None:
    # The default command, exactly as shipped, with only the program's path resolved.
    settings = make_settings(
        state_dir,
        local={"command": [code_server, *DEFAULT_COMMAND[1:]]},
        pool={"assign_timeout_s": 90, "warm_spares": 0},
    )
    pool = CodePool(
        settings, create_store(settings.store_url), LocalBackend(settings.local, settings.state_dir)
    )
    try:
        a = await pool.assign("alice")
        status, body = await get(a.workspace.address, "/healthz")
        assert status == 200 and b"status" in body
        # The workbench page: code-server redirects / to its folder, then serves VS Code.
        status, _ = await get(a.workspace.address, "/")
        assert status in (200, 302)
        home = state_dir / "slots" / a.workspace.instance_id / "home"
        status, body = await get(a.workspace.address, f"/?folder={home}")
        assert status == 200 and b"<html" in body.lower() and b"vscode" in body.lower()
        (home / "main.py").write_text("print('hello')\n")

        await pool.release("alice")
        assert not await http_ok(a.workspace.address, "/healthz")
        b = await pool.assign("alice")
        assert b.how == "resumed" and b.workspace.instance_id == a.workspace.instance_id
        assert await http_ok(b.workspace.address, "/healthz")
        assert (home / "main.py").read_text() == "print('hello')\n"
    finally:
        await pool.close()
