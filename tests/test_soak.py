"""Soak: a real `codepool serve` process under a steady mixed load on loopback (pings,
proxied requests, dispatches of running workspaces) for a bounded time. It must answer
every request as expected, and its memory and open files must not grow.

The short form runs in CI (CODEPOOL_SOAK_S, default 20 s). The long form is the same
test for longer:  CODEPOOL_SOAK_S=600 scripts/test tests/test_soak.py -s
The figures go to build/soak.json (docs/reliability.md quotes them)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.ports import free_port
from tests.serving import Server, add_accounts, client, enter, log_in_and_dispatch, serve_env

ROOT = Path(__file__).resolve().parents[1]
SOAK_S = float(os.environ.get("CODEPOOL_SOAK_S", "20"))
USERS = 8
# Growth allowed between the end of the warm-up and the end of the run: caches and
# allocator arenas settle in the warm-up; a leak of one object per request would exceed
# it many times over in any run of more than a few seconds.
MAX_RSS_GROWTH_KB = 8 * 1024
MAX_FD_GROWTH = 4


def rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def instance_of(http: aiohttp.ClientSession, home: str) -> str:
    async with http.get(home + "/", headers={"Accept": "text/html"}) as resp:
        page = await resp.text()
    match = re.search(r'data-instance-id="([^"]+)"', page)
    assert match is not None, page[:500]
    return match.group(1)


async def work(
    http: aiohttp.ClientSession, base: str, user: str, until: float, seen: Counter[str]
) -> None:
    """One person's tab and editor: pings, assets, files, now and then a dispatch."""
    home = base.replace("127.0.0.1", f"{user}.localhost")  # the workspace's own origin
    await enter(http, home + "/")
    instance = await instance_of(http, home)
    origin = {"Origin": home}
    n = 0
    while time.monotonic() < until:
        n += 1
        ping = home + "/_codepool/ping"
        async with http.post(ping, json={"instanceId": instance}, headers=origin) as r:
            seen[f"ping {r.status}"] += 1
        async with http.get(home + "/gzip.js", headers={"Accept-Encoding": "gzip"}) as r:
            await r.read()
            seen[f"asset {r.status}"] += 1
        async with http.get(home + "/healthz") as r:
            await r.read()
            seen[f"health {r.status}"] += 1
        if n % 10 == 0:
            async with http.get(base + "/dispatch", allow_redirects=False) as r:
                seen[f"dispatch {r.status}"] += 1


async def test_the_router_holds_steady_under_a_mixed_load(
    state_dir: Path, servers: list[Server]
) -> None:
    names = [f"soak{n}" for n in range(USERS)]
    await add_accounts(state_dir, names)
    server = Server(serve_env(state_dir, CODEPOOL_LOCAL_MAX_SIZE=str(USERS + 2)), free_port())
    servers.append(server)
    server.wait_up()
    base, pid = server.url, server.proc.pid
    sessions = [client() for _ in names]
    try:
        await asyncio.gather(
            *(log_in_and_dispatch(h, base, n) for h, n in zip(sessions, names, strict=True))
        )
        seen: Counter[str] = Counter()
        warm_up = min(5.0, SOAK_S / 4)
        start = time.monotonic()
        load = [
            asyncio.create_task(work(http, base, name, start + SOAK_S, seen))
            for name, http in zip(names, sessions, strict=True)
        ]
        await asyncio.sleep(warm_up)
        rss_start, fds_start, counted_start = rss_kb(pid), open_fds(pid), sum(seen.values())
        await asyncio.gather(*load)
        elapsed = time.monotonic() - start - warm_up
        await asyncio.sleep(0.5)  # let the last responses' connections settle
        rss_end, fds_end = rss_kb(pid), open_fds(pid)
    finally:
        for http in sessions:
            await http.close()

    requests = sum(seen.values())
    wrong = {
        k: v for k, v in seen.items() if not re.fullmatch(r"(ping 204|\w+ 200|dispatch 302)", k)
    }
    figures: dict[str, Any] = {
        "seconds": round(SOAK_S, 1),
        "users": USERS,
        "requests": requests,
        "requests_per_s_after_warm_up": round((requests - counted_start) / elapsed, 1),
        "by_kind": dict(sorted(seen.items())),
        "unexpected": wrong,
        "rss_kb": {"after_warm_up": rss_start, "end": rss_end, "growth": rss_end - rss_start},
        "open_fds": {"after_warm_up": fds_start, "end": fds_end},
    }
    (ROOT / "build").mkdir(exist_ok=True)
    (ROOT / "build" / "soak.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    assert not wrong, figures
    assert requests > USERS * 10, figures
    assert rss_end - rss_start <= MAX_RSS_GROWTH_KB, figures
    assert fds_end <= fds_start + MAX_FD_GROWTH, figures
    out = server.stop()
    assert server.proc.returncode == 0, out
    assert "Traceback" not in out, out


pytestmark = pytest.mark.timeout(int(SOAK_S) + 120)
