"""Loopback ports for the servers the tests start (routers, nginx, moto, Redis).

The suite runs in parallel (pytest-xdist): a port picked by binding port 0 and closing
again could be picked by another worker before the first binds it for good (and a
server that binds with SO_REUSEPORT, as nginx may, would then share it without an
error). So each worker takes ports from a range of its own, below the kernel's
ephemeral ports (which any outgoing connection may take), in turn, skipping any port
something holds."""

from __future__ import annotations

import itertools
import os
import socket

FIRST = 20_000  # the ranges start here, above the well-known and registered services
PER_WORKER = 1_000


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def worker_index() -> int:
    """0 for a run without workers or for gw0, n for gwN."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name.removeprefix("gw")) if name.removeprefix("gw").isdigit() else 0


def _my_range() -> range:
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    size = min(PER_WORKER, (_ephemeral_start() - FIRST) // workers)
    if size < 50:
        raise RuntimeError(f"too few ports below the ephemeral range for {workers} workers")
    start = FIRST + worker_index() * size
    return range(start, start + size)


_turn = itertools.cycle(_my_range())


def free_port() -> int:
    """A loopback port no other worker of this run hands out, and that nothing holds now
    (no listener, and no connection still closing, so whatever binds it next can)."""
    for _ in range(len(_my_range())):
        port = next(_turn)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("every port of this worker's range is taken")
