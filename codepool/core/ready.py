"""Readiness by HTTP: a box serves once its ready path answers 2xx or 3xx.

Plain asyncio streams (no HTTP client dependency in the core); one short request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from codepool.core.errors import AssignTimeout


async def http_ok(address: str, path: str, timeout_s: float = 2.0) -> bool:
    """True if GET address+path answers 2xx/3xx within timeout_s."""
    url = urlsplit(address)
    host = url.hostname or "127.0.0.1"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=url.scheme == "https" or None
            )
            try:
                head = f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n\r\n"
                writer.write(head.encode())
                await writer.drain()
                status_line = await reader.readline()
            finally:
                writer.close()
                await writer.wait_closed()
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    parts = status_line.split()
    return len(parts) >= 2 and parts[1][:1] in (b"2", b"3")


async def wait_ready(
    address: str,
    path: str,
    timeout_s: float,
    progress: Callable[[str], None] | None = None,
    poll_s: float = 0.25,
) -> None:
    """Poll until the box answers, or raise AssignTimeout naming what did not answer."""
    deadline = time.monotonic() + timeout_s
    said = False
    while not await http_ok(address, path):
        if time.monotonic() >= deadline:
            raise AssignTimeout(
                f"workspace at {address} did not answer {path} within {timeout_s:.0f}s"
            )
        if progress and not said:
            progress("waiting for the workspace to answer")
            said = True
        await asyncio.sleep(poll_s)
