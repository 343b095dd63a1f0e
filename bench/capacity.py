"""How many people one router carries: simulated people against one router process, two
workers, and the nginx front before one process, raised step by step until the p99 of
keystroke round trips passes 50 ms or errors appear.

    python -m bench.capacity [--steps 250,500,1000,2000] [--seconds 15] [--keys 1]

Each person, on their own workspace origin with their own session:
  - loads the workbench once: every HTTP request code-server's workbench makes on a first
    load, in order, as recorded from real code-server by bench/record_workbench.py
    (bench/data/workbench.json: documents with Accept: text/html, so the router injects
    the heartbeat; assets at their recorded compressed size), six at a time as a browser;
  - opens the WebSocket and types --keys keystrokes a second into it, each echoed by the
    box: the round trip is the figure;
  - pings every router.heartbeat_interval_s (30 s), the first at a random moment.
People arrive at --arrivals a second; keystrokes are measured for --seconds, from one
second after the last person's workbench has loaded (everyone is typing then). The box
is one process serving every person's workspace (the recorded
answers and a WebSocket echo); records and sessions are written into a private Redis
as an assignment and a login would. The router's CPU (every process of it) is read
from /proc over the measured seconds: people per router core = people / cores used.
The load generator, the box and the router share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from bench import _lib
from bench._lib import Nginx, Proc, RedisServer
from bench.ping import _seed_records

P99_LIMIT_MS = 50.0
HEARTBEAT_S = 30.0
BROWSER_CONNECTIONS = 6  # a browser's connections per host
TARGET = 2000  # active people per router core, with the front
WORKBENCH = _lib.ROOT / "bench" / "data" / "workbench.json"


def _mix() -> list[dict[str, Any]]:
    """The recorded HTTP requests of a first workbench load (WebSockets apart)."""
    recorded = json.loads(WORKBENCH.read_text())["requests"]
    return [r for r in recorded if r["kind"] != "websocket" and r["status"] != 302]


def _box_app() -> Any:
    """One box for everyone: the recorded answers (bodies of the recorded size) and a
    WebSocket echo, as fast as one Python process allows."""
    from aiohttp import WSMsgType, web

    answers = {r["path"].partition("?")[0]: r for r in _mix()}
    filler = b"x" * max(r["wire_bytes"] for r in answers.values())

    async def answer(request: web.Request) -> web.StreamResponse:
        if request.path == "/ws":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await ws.send_str(msg.data)
            return ws
        r = answers.get(request.path)
        if r is None:
            return web.Response(status=404 if request.path != "/healthz" else 200)
        body = filler[: r["wire_bytes"]]
        if r["type"].startswith("text/html"):
            body = b"<html><head></head><body>" + body + b"</body></html>"
        return web.Response(
            status=r["status"], body=body, content_type=r["type"].split(";")[0] or None
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def _cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) of every process in a process group."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = (Path("/proc") / entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state ppid pgrp ...
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _rss_mb(pgid: int) -> float:
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = (Path("/proc") / entry / "stat").read_text().rpartition(")")[2].split()
            if int(stat[2]) != pgid:
                continue
            status = (Path("/proc") / entry / "status").read_text()
        except OSError:
            continue
        kb = next(
            (line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")), "0"
        )
        total += int(kb)
    return total / 1024


class Person:
    def __init__(self, user: str, base: str, host: str, cookie: str) -> None:
        self.user, self.base, self.host, self.cookie = user, base, host, cookie
        self.rtts: list[float] = []
        self.errors: Counter[str] = Counter()
        self.load_s = 0.0


async def _load_workbench(
    http: aiohttp.ClientSession, p: Person, mix: list[dict[str, Any]]
) -> None:
    limit = asyncio.Semaphore(BROWSER_CONNECTIONS)
    headers = {"Host": p.host, "Cookie": p.cookie, "Accept-Encoding": "gzip"}

    async def one(r: dict[str, Any]) -> None:
        h = dict(headers)
        if r["kind"] == "document":
            h["Accept"] = "text/html"
        async with (
            limit,
            http.request(r["method"], p.base + r["path"], headers=h, allow_redirects=False) as resp,
        ):
            async for _ in resp.content.iter_any():
                pass
            if resp.status != r["status"]:
                p.errors[f"load {resp.status}"] += 1

    t = time.perf_counter()
    await asyncio.gather(*(one(r) for r in mix))
    p.load_s = time.perf_counter() - t


class Window:
    """The measured seconds: they start once every person has loaded the workbench."""

    def __init__(self, people: int, seconds: float) -> None:
        self.waiting, self.seconds = people, seconds
        self.start = self.until = float("inf")
        self.all_loaded = asyncio.Event()

    def loaded(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.start = time.monotonic() + 1
            self.until = self.start + self.seconds
            self.all_loaded.set()


async def _live(http: aiohttp.ClientSession, p: Person, keys_per_s: float, w: Window) -> None:
    headers = {"Host": p.host, "Cookie": p.cookie}
    origin = f"http://{p.host}"
    async with http.ws_connect(p.base + "/ws", headers=headers, origin=origin) as ws:
        next_ping = time.monotonic() + random.uniform(0, HEARTBEAT_S)
        gap = 1 / keys_per_s
        next_key = time.monotonic() + random.uniform(0, gap)
        while (now := time.monotonic()) < w.until:
            if now >= next_ping:
                next_ping += HEARTBEAT_S
                ping = {"instanceId": f"i-{p.user}"}
                h = {**headers, "Origin": origin, "Content-Type": "application/json"}
                async with http.post(p.base + "/_codepool/ping", json=ping, headers=h) as resp:
                    if resp.status != 204:
                        p.errors[f"ping {resp.status}"] += 1
            await asyncio.sleep(max(0.0, min(next_key, next_ping) - time.monotonic()))
            if time.monotonic() < next_key:
                continue
            next_key += gap
            t = time.perf_counter()
            await ws.send_str("k")
            msg = await ws.receive(timeout=10)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                p.errors["websocket closed"] += 1
                return
            if w.start <= time.monotonic() < w.until:
                p.rtts.append((time.perf_counter() - t) * 1000)


async def _crowd(
    base: str,
    port: int,
    cookies: dict[str, str],
    arrivals: float,
    seconds: float,
    keys: float,
    router_pgid: int,
) -> dict[str, Any]:
    mix = _mix()
    people = [
        Person(u, base, f"{u}.localhost:{port}", f"codepool_ws={c}") for u, c in cookies.items()
    ]
    window = Window(len(people), seconds)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as http:

        async def person(i: int, p: Person) -> None:
            await asyncio.sleep(i / arrivals)
            try:
                try:
                    await _load_workbench(http, p, mix)
                finally:
                    window.loaded()
                await _live(http, p, keys, window)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                p.errors[type(exc).__name__] += 1

        async def cpu() -> tuple[float, float]:
            await window.all_loaded.wait()
            await asyncio.sleep(window.start - time.monotonic())
            first = _cpu_s(router_pgid)
            await asyncio.sleep(window.until - time.monotonic())
            return first, _cpu_s(router_pgid)

        cpu_task = asyncio.ensure_future(cpu())
        await asyncio.gather(*(person(i, p) for i, p in enumerate(people)))
        cpu_from, cpu_until = await cpu_task
    rtts = sorted(x for p in people for x in p.rtts)
    errors: Counter[str] = Counter()
    for p in people:
        errors.update(p.errors)
    loads = sorted(p.load_s for p in people if p.load_s)
    cores = (cpu_until - cpu_from) / seconds
    return {
        "people": len(people),
        "keystrokes": len(rtts),
        "p50_ms": statistics.median(rtts) if rtts else 0.0,
        "p99_ms": rtts[int(len(rtts) * 0.99)] if rtts else 0.0,
        "errors": dict(errors),
        "load_p50_s": statistics.median(loads) if loads else 0.0,
        "router_cores": cores,
        "people_per_core": len(people) / cores if cores > 0 else 0.0,
    }


PATHS = ("router", "router x2", "front + router")


def run(
    steps: list[int], seconds: float, keys: float, arrivals: float, paths: tuple[str, ...] = PATHS
) -> dict[str, Any]:
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="codepool-bench-") as tmp:
        try:
            result = _run(Path(tmp), procs, steps, seconds, keys, arrivals, paths)
        finally:
            for p in reversed(procs):
                p.stop()
    _lib.say(f"wrote {_lib.save('capacity', result)}")
    return result


def _run(
    work: Path,
    procs: list[Proc],
    steps: list[int],
    seconds: float,
    keys: float,
    arrivals: float,
    paths: tuple[str, ...],
) -> dict[str, Any]:
    box_port = _lib.free_port()
    box = Proc(
        "capacity-box",
        [sys.executable, "-m", "bench.capacity", "--box", str(box_port)],
        cwd=_lib.ROOT,
    )
    procs.append(box)
    box.wait_http(f"http://127.0.0.1:{box_port}/healthz")
    redis = RedisServer(work)
    procs.append(redis)
    users = [f"p{i:05d}" for i in range(max(steps))]
    front = _lib.free_port()
    out: dict[str, Any] = {"keys_per_s": keys, "seconds": seconds, "steps": steps}
    for name in paths:
        workers, via_front = (2 if name == "router x2" else 1), name.startswith("front")
        port = _lib.free_port()
        prefix = f"cap-{port}:"
        asyncio.run(
            _seed_records(redis.url, prefix, dict.fromkeys(users, f"http://127.0.0.1:{box_port}"))
        )
        cookies = {u: ws for u, (_, ws) in _lib.session_cookies(redis.url, prefix, users).items()}
        env = _lib.router_env(
            work / name.replace(" ", "-"),
            port,
            CODEPOOL_STORE_URL=redis.url,
            CODEPOOL_STORE_KEY_PREFIX=prefix,
            CODEPOOL_ROUTER_TRUSTED_PROXIES="127.0.0.1",
            CODEPOOL_ROUTER_PUBLIC_URL=f"http://127.0.0.1:{front if via_front else port}",
        )
        router = _lib.start_router(
            f"capacity-{name.replace(' ', '-').replace('+', '')}", env, port, workers
        )
        procs.append(router)
        entry = port
        if via_front:
            from bench.proxy import _front_site

            nginx = Nginx("capacity-front", work / "front", _front_site(front, port), front)
            procs.append(nginx)
            entry = front
        idle_rss = _rss_mb(router.proc.pid)
        rows = []
        for n in steps:
            _lib.say(f"capacity: {name}, {n} people")
            r = asyncio.run(
                _crowd(
                    f"http://127.0.0.1:{entry}",
                    front if via_front else port,
                    {u: cookies[u] for u in users[:n]},
                    arrivals,
                    seconds,
                    keys,
                    router.proc.pid,
                )
            )
            r["rss_mb"] = _rss_mb(router.proc.pid)
            rows.append(r)
            _lib.say(
                f"  p99 {r['p99_ms']:.1f} ms, errors {r['errors']}, "
                f"router cores {r['router_cores']:.2f}"
            )
            if r["p99_ms"] > P99_LIMIT_MS or r["errors"]:
                break
        out[name] = {"idle_rss_mb": idle_rss, "steps": rows}
        if via_front:
            nginx.stop()
            procs.remove(nginx)
        router.stop()
        procs.remove(router)
    return _report(out)


def _report(out: dict[str, Any]) -> dict[str, Any]:
    rows = []
    best: dict[str, dict[str, Any]] = {}
    for name in [n for n in PATHS if n in out]:
        for r in out[name]["steps"]:
            ok = r["p99_ms"] <= P99_LIMIT_MS and not r["errors"]
            rows.append(
                [
                    name,
                    r["people"],
                    r["p50_ms"],
                    r["p99_ms"],
                    ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "none",
                    r["load_p50_s"],
                    r["router_cores"],
                    r["people_per_core"],
                    out[name]["idle_rss_mb"],
                    r["rss_mb"],
                    "yes" if ok else "NO",
                ]
            )
            if ok:
                best[name] = r
    print(
        _lib.table(
            f"People on one router ({out['keys_per_s']} keystrokes/s each, "
            f"p99 limit {P99_LIMIT_MS:.0f} ms)",
            [
                "path",
                "people",
                "key p50 ms",
                "key p99 ms",
                "errors",
                "load p50 s",
                "router cores",
                "people/core",
                "idle RSS MB",
                "RSS MB",
                "within",
            ],
            rows,
        )
    )
    front = best.get("front + router", {})
    measured = front.get("people_per_core", 0.0)
    out["best"] = best
    out["targets"] = [
        {
            "target": f"front: active people per router core >= {TARGET}",
            "measured": measured,
            "limit": TARGET,
            "met": measured >= TARGET,
        }
    ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--steps", type=_lib.sizes, default=[250, 500, 1000, 2000], help="people at each step"
    )
    ap.add_argument(
        "--seconds", type=_lib.positive_float, default=15.0, help="measured seconds per step"
    )
    ap.add_argument(
        "--keys", type=_lib.positive_float, default=1.0, help="keystrokes a second per person"
    )
    ap.add_argument(
        "--arrivals", type=_lib.positive_float, default=50.0, help="people arriving per second"
    )
    ap.add_argument(
        "--paths",
        default=",".join(PATHS),
        help=f"comma-separated, of: {', '.join(PATHS)} (default: all)",
    )
    ap.add_argument("--box", type=int, help=argparse.SUPPRESS)  # run the box on this port
    a = ap.parse_args()
    if a.box:
        from aiohttp import web

        web.run_app(_box_app(), host="127.0.0.1", port=a.box, print=None, access_log=None)
        return
    paths = tuple(p.strip() for p in a.paths.split(",") if p.strip())
    if not paths or set(paths) - set(PATHS):
        ap.error(f"--paths {a.paths!r}: allowed: {', '.join(PATHS)}")
    _lib.command(lambda: run(a.steps, a.seconds, a.keys, a.arrivals, paths))


if __name__ == "__main__":
    main()
