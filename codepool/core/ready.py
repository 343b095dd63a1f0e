"""Readiness by HTTP: a box serves once its ready path answers 2xx or 3xx.

Plain asyncio streams (no HTTP client dependency in the core); one short request."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from codepool.core import sockets
from codepool.core.errors import AssignTimeout, UntrustedBox
from codepool.core.tls import WorkspaceTls, connect_args


async def probe(
    address: str, path: str, tls: WorkspaceTls | None = None, timeout_s: float = 2.0
) -> str | None:
    """None if GET address+path answers 2xx/3xx within timeout_s, else why not.
    An https address is verified with tls (default: the system's CAs and its own name);
    a certificate that does not verify raises UntrustedBox. A `unix:` address is a
    socket on this machine, answered only by its workspace's own process."""
    url = urlsplit(address)
    unix = sockets.parse(address)
    host = url.hostname or "127.0.0.1"
    port = url.port or (443 if url.scheme == "https" else 80)
    secure = connect_args(tls, url.scheme)
    try:
        async with asyncio.timeout(timeout_s):
            if unix is not None:
                reader, writer = await asyncio.open_unix_connection(unix.path)
                why = sockets.peer_refusal(writer.get_extra_info("socket"), unix)
                if why:
                    writer.close()
                    return why
            else:
                reader, writer = await asyncio.open_connection(host, port, **secure)
            try:
                netloc = "localhost" if unix is not None else url.netloc
                head = f"GET {path} HTTP/1.1\r\nHost: {netloc}\r\nConnection: close\r\n\r\n"
                writer.write(head.encode())
                await writer.drain()
                status_line = await reader.readline()
            finally:
                writer.close()
                await writer.wait_closed()
    except ssl.SSLCertVerificationError as exc:
        name = secure.get("server_hostname") or host
        raise UntrustedBox(
            f"workspace at {address}: its certificate does not verify for {name!r} "
            f"({exc.verify_message}); check aws.workspace_ca_file and aws.workspace_tls_name"
        ) from None
    except TimeoutError:
        return f"no answer within {timeout_s:g}s"
    except (OSError, asyncio.IncompleteReadError) as exc:
        return str(exc) or type(exc).__name__
    parts = status_line.split()
    if len(parts) >= 2 and parts[1][:1] in (b"2", b"3"):
        return None
    return f"answered {status_line.decode(errors='replace').strip() or 'nothing'}"


async def http_ok(
    address: str, path: str, tls: WorkspaceTls | None = None, timeout_s: float = 2.0
) -> bool:
    """True if GET address+path answers 2xx/3xx within timeout_s."""
    return await probe(address, path, tls, timeout_s) is None


async def wait_ready(
    address: str,
    path: str,
    timeout_s: float,
    progress: Callable[[str], None] | None = None,
    tls: WorkspaceTls | None = None,
    poll_s: float = 0.25,
) -> None:
    """Poll until the box answers, or raise AssignTimeout naming what did not answer
    and the last reason."""
    deadline = time.monotonic() + timeout_s
    said = False
    while (why := await probe(address, path, tls)) is not None:
        if time.monotonic() >= deadline:
            raise AssignTimeout(
                f"workspace at {address} did not answer {path} within {timeout_s:.0f}s "
                f"(last: {why})"
            )
        if progress and not said:
            progress("Almost ready")
            said = True
        await asyncio.sleep(poll_s)
