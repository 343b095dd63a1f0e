"""Time to workspace on the local backend with real code-server, from the first GET of
/dispatch to the first byte of the workbench page (following the 'starting' page's
polls as the browser does): a warm spare, a resume of a stopped workspace, and a cold
start. The floor, measured in the same run: code-server started by hand, from launch to
its first byte.

    python -m bench.workspace [--rounds 3]

Two routers, each on its own pool: one keeps a warm spare (warm_spares = 1), the other
none (so its first assignment is a cold start). Between rounds the stopped workspace is
released with `codepool release`, as an idle reap would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import _lib
from bench._lib import Proc
from codepool.core.accounts import Accounts
from codepool.core.backends.local import resolve_executable
from codepool.core.store import create_store

PASSWORD = "bench-password-1"


async def _first_byte(http: aiohttp.ClientSession, url: str) -> None:
    async with http.get(url, headers={"Accept": "text/html"}) as r:
        if r.status != 200:
            raise _lib.BenchError(f"{url}: {r.status} {await r.text()}")
        await r.content.read(1)


async def _add_accounts(state: Path, names: list[str]) -> None:
    store = create_store(f"sqlite:///{state / 'codepool.db'}")
    try:
        for name in names:
            await Accounts(store).add(name, PASSWORD)
    finally:
        await store.close()


async def _visit(base: str, user: str) -> float:
    """Log in, then time /dispatch -> the workbench's first byte, on the workspace's own
    origin (the first visit there includes its entry pass, as a browser's does)."""
    from tests.helpers import LoopbackNames

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(resolver=LoopbackNames()),
        cookie_jar=aiohttp.CookieJar(unsafe=True),
    ) as http:
        import re

        page = await (await http.get(base + "/login")).text()
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        form = {"csrf": csrf.group(1), "user": user, "password": PASSWORD}
        async with http.post(base + "/login", data=form, allow_redirects=False) as r:
            if r.status != 302:
                raise _lib.BenchError(f"login of {user}: {r.status}")
        t = time.perf_counter()
        async with http.get(base + "/dispatch", allow_redirects=False) as r:
            location = r.headers.get("Location") if r.status == 302 else None
            if r.status not in (200, 302):
                raise _lib.BenchError(f"/dispatch for {user}: {r.status} {await r.text()}")
        seen = 0
        while location is None:  # as the starting page does (starting.js): a long poll
            async with http.get(base + f"/dispatch/status?seen={seen}") as r:
                body = await r.json()
            seen = len(body["messages"])
            if body["state"] == "error":
                raise _lib.BenchError(f"{user}: {body}")
            if body["state"] == "ready":
                location = body["url"]
            else:
                await asyncio.sleep(0.1)
        await _first_byte(http, location)  # the entry pass's page...
        await _first_byte(http, location)  # ... goes on to the workbench
        return time.perf_counter() - t


async def _code_server_alone(work: Path, n: int) -> float:
    port = _lib.free_port()
    data, home = work / f"alone-{n}" / "data", work / f"alone-{n}" / "home"
    home.mkdir(parents=True)
    t = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        resolve_executable("code-server"), "--bind-addr", f"127.0.0.1:{port}", "--auth", "none",
        "--disable-telemetry", "--disable-update-check", "--user-data-dir", str(data), str(home),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    try:
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    await _first_byte(http, url)
                    return time.perf_counter() - t
                # Not listening yet, or listening before its routes are (a 404 for a moment).
                except (aiohttp.ClientConnectionError, _lib.BenchError):
                    if time.monotonic() > deadline:
                        raise _lib.BenchError(f"code-server did not serve {url} in 60 s") from None
                    await asyncio.sleep(0.05)
    finally:
        proc.terminate()
        await proc.wait()


def _wait_for_spare(env: dict[str, str], timeout_s: float = 120) -> None:
    import json

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = subprocess.run(
            [sys.executable, "-m", "codepool", "status", "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        if json.loads(out.stdout)["spares"] >= 1:
            return
        time.sleep(0.5)
    raise _lib.BenchError("the warm spare never came up")


def run(rounds: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {
        "code-server alone": [],
        "warm spare": [],
        "resume": [],
        "cold start": [],
    }
    with tempfile.TemporaryDirectory(prefix="codepool-bench-") as tmp:
        work = Path(tmp)
        routers: dict[str, tuple[Proc, str, dict[str, str]]] = {}
        try:
            for name, spares in (("warm", "1"), ("cold", "0")):
                state, port = work / name, _lib.free_port()
                env = _lib.router_env(
                    state,
                    port,
                    CODEPOOL_POOL_WARM_SPARES=spares,
                    CODEPOOL_LOCAL_MAX_SIZE="20",
                    CODEPOOL_ROUTER_REAP_INTERVAL_S="2",
                )
                state.mkdir(parents=True)
                asyncio.run(_add_accounts(state, [f"{name}{r}" for r in range(rounds)]))
                routers[name] = (
                    _lib.start_router(f"router-{name}", env, port),
                    f"http://127.0.0.1:{port}",
                    env,
                )
            for r in range(rounds):
                _lib.say(f"workspace: round {r + 1}/{rounds}")
                times["code-server alone"].append(asyncio.run(_code_server_alone(work, r)))
                _, base, env = routers["warm"]
                _wait_for_spare(env)
                times["warm spare"].append(asyncio.run(_visit(base, f"warm{r}")))
                _, base, env = routers["cold"]
                times["cold start"].append(asyncio.run(_visit(base, f"cold{r}")))
                subprocess.run(
                    [sys.executable, "-m", "codepool", "release", f"cold{r}"],
                    env=env,
                    check=True,
                    capture_output=True,
                )
                times["resume"].append(asyncio.run(_visit(base, f"cold{r}")))
        finally:
            for proc, _, _ in routers.values():
                proc.stop()
            _stop_slots(work)
    summary = {
        k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "runs": len(v)}
        for k, v in times.items()
    }
    floor = summary["code-server alone"]["median_s"]
    print(
        _lib.table(
            "Time to workspace: /dispatch to the workbench's first byte (local backend)",
            ["path", "median s", "min s", "max s", "x code-server alone"],
            [
                [k, v["median_s"], v["min_s"], v["max_s"], v["median_s"] / floor]
                for k, v in summary.items()
            ],
        )
    )
    result = {"summary": summary, "runs": times}
    _lib.say(f"wrote {_lib.save('workspace', result)}")
    return result


def _stop_slots(work: Path) -> None:
    """The routers leave their code-servers running (they outlive a router, by design):
    stop every workspace process the benchmark started."""
    import json
    import os
    import signal

    for meta in work.glob("*/slots/*/meta.json"):
        pid = json.loads(meta.read_text()).get("pid") or 0
        if pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=_lib.positive_int, default=3, help="rounds (default 3)")
    rounds = ap.parse_args().rounds
    _lib.command(lambda: run(rounds))


if __name__ == "__main__":
    main()
