"""The systemd notify protocol (`Type=notify` units): a datagram to $NOTIFY_SOCKET saying
READY=1 once the router listens, RELOADING=1 and READY=1 around a reload, STOPPING=1 as
it drains, and WATCHDOG=1 every half $WATCHDOG_USEC while its event loop runs (a loop
stuck for longer gets the router restarted). Outside systemd (no $NOTIFY_SOCKET) every
call is a no-op. And socket activation ($LISTEN_FDS): the listening sockets systemd
holds for the router across its restarts. A few lines of each protocol rather than a
dependency."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time

log = logging.getLogger("codepool.router")
LISTEN_FDS_START = 3  # systemd passes its sockets from this descriptor on


def listen_fds() -> list[socket.socket]:
    """The listening sockets systemd passed this process (socket activation), else [].
    The variables are removed, so that nothing this process starts takes them as its own."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        count = 0
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    found = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + count):
        sock = socket.socket(fileno=fd)
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            raise OSError(f"systemd passed descriptor {fd}, which is not a listening TCP socket")
        os.set_inheritable(fd, False)  # not for the workspaces this router starts
        sock.setblocking(False)
        found.append(sock)
    return found


def notify(*lines: str) -> bool:
    """Send lines ("READY=1", "STATUS=...") to systemd; whether a socket took them."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path or path[0] not in "@/":
        return False
    address = "\0" + path[1:] if path[0] == "@" else path  # @: the abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            # Never blocking: a listener that stopped reading (its queue holds a few
            # datagrams) must not stall the router's event loop; the message is dropped.
            s.setblocking(False)
            s.connect(address)
            s.sendall("\n".join(lines).encode())
    except BlockingIOError:
        log.debug("systemd notify: the socket's queue is full; dropped %r", lines[0])
        return False
    except OSError as exc:
        log.warning("systemd notify failed: %s", exc)
        return False
    return True


def reloading() -> bool:
    """RELOADING=1 with the monotonic time systemd (253+) asks for."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")


def watchdog_interval_s() -> float:
    """Half the watchdog's timeout when systemd set one (every process of the unit may
    send: with workers, NotifyAccess=all), else 0."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return 0.0
    return usec / 2e6 if usec > 0 else 0.0


async def keep_watchdog_fed() -> None:
    """WATCHDOG=1 while this event loop runs; returns at once when there is no watchdog."""
    every = watchdog_interval_s()
    if not every:
        return
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(every)
