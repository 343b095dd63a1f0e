"""/ping through the full router (session check, validation, the atomic store step) vs
the issue's minimal aiohttp app doing one HSET per POST, and vs the same app with no
store write (the HTTP floor); on Redis and on SQLite; one process and two.

    python -m bench.ping [--seconds 5] [--rounds 3] [--connections 64]

Every server runs for the whole benchmark; the rounds are interleaved. The router's
workspaces are real store records, and the benchmark holds the leader lease itself so
that no router's reconcile clears records whose boxes do not exist. Each router's store
step is checked afterwards: one ping per user, sent in turn, must move that user's
lastSeen. (The load itself cannot prove it: a run slower than one pass over the 200 users
per wrk thread never pings some of them.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import _lib
from bench._lib import Proc, RedisServer, Request, Sample

USERS = 200


async def _seed(url: str, prefix: str, users: list[str]) -> None:
    await _seed_records(url, prefix, dict.fromkeys(users, "http://127.0.0.1:9"))


async def _seed_records(url: str, prefix: str, addresses: dict[str, str]) -> None:
    """A running workspace per user at its address, and the leader lease held by the
    benchmark (no router's reconcile may clear records whose boxes do not exist)."""
    from codepool.core.models import Workspace, WorkspaceState
    from codepool.core.store import create_store

    store = create_store(url, key_prefix=prefix)
    for user, address in addresses.items():
        await store.put_workspace(
            Workspace(user, f"i-{user}", address, WorkspaceState.RUNNING, 1, 1)
        )
    assert await store.acquire_lease("leader", "bench", 24 * 3_600_000)
    await store.close()


async def _oldest_seen(url: str, prefix: str, users: list[str]) -> int:
    from codepool.core.store import create_store

    store = create_store(url, key_prefix=prefix)
    seen = []
    for u in users:
        ws = await store.get_workspace(u)
        assert ws is not None
        seen.append(ws.last_seen_ms)
    await store.close()
    return min(seen)


def _check_each_ping_lands(
    name: str, url: str, prefix: str, base: str, reqs: list[Request], users: list[str]
) -> None:
    """One ping per user, in turn: each must be answered 2xx and move its lastSeen."""
    before = int(time.time() * 1000)
    for req in reqs:
        http = urllib.request.Request(
            base + req.path, data=req.body.encode(), headers=dict(req.headers), method=req.method
        )
        try:
            with urllib.request.urlopen(http, timeout=10) as answer:
                answer.read()
        except (urllib.error.URLError, OSError) as exc:
            raise _lib.BenchError(f"{name}: a ping after the load failed: {exc}") from None
    if asyncio.run(_oldest_seen(url, prefix, users)) < before:
        raise _lib.BenchError(f"{name}: a ping was answered but some user's lastSeen never moved")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--seconds", type=_lib.positive_float, default=5, help="length of one run (default 5)"
    )
    ap.add_argument(
        "--rounds", type=_lib.positive_int, default=3, help="interleaved rounds (default 3)"
    )
    ap.add_argument(
        "--connections", type=_lib.positive_int, default=64, help="wrk connections (default 64)"
    )
    a = ap.parse_args()
    _lib.command(lambda: run(a.seconds, a.rounds, a.connections))


def run(seconds: float, rounds: int, connections: int) -> dict[str, Any]:
    users = [f"u{i}" for i in range(USERS)]
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="codepool-bench-") as tmp:
        work = Path(tmp)
        redis = RedisServer(work)
        procs.append(redis)
        try:
            variants, stores, pings_per_trip = _start(
                work, redis, users, procs, seconds, connections
            )
            _lib.say(f"ping: {len(variants)} variants x {rounds} rounds x {seconds:.0f} s")
            samples = _lib.interleave(variants, rounds, _lib.say)
            for name, (url, prefix, base, reqs) in stores.items():
                _check_each_ping_lands(name, url, prefix, base, reqs, users)
        finally:
            for p in reversed(procs):
                p.stop()
    result = _report(samples, pings_per_trip)
    path = _lib.save("ping", result)
    _lib.say(f"wrote {path}")
    return result


def _start(
    work: Path,
    redis: RedisServer,
    users: list[str],
    procs: list[Proc],
    seconds: float,
    connections: int,
) -> tuple[
    dict[str, Callable[[], Sample]],
    dict[str, tuple[str, str, str, list[Request]]],
    dict[str, list[float]],
]:
    variants: dict[str, Callable[[], Sample]] = {}
    stores: dict[str, tuple[str, str, str, list[Request]]] = {}
    pings_per_trip: dict[str, list[float]] = {}

    def load(port: int, reqs: list[Request], trips: str | None = None) -> Callable[[], Sample]:
        def go() -> Sample:
            if trips:
                redis.reset_stats()
            s = _lib.wrk(f"http://127.0.0.1:{port}", reqs, seconds=seconds, connections=connections)
            if trips:
                calls = redis.command_calls("evalsha") or 1
                pings_per_trip.setdefault(trips, []).append(s.requests / calls)
            return s

        return go

    peer_reqs = [
        Request(
            "POST",
            "/ping",
            {"Content-Type": "application/json"},
            json.dumps({"instanceId": f"i-{u}", "user": u}),
        )
        for u in users
    ]
    for name, store, workers in (
        ("floor", "none", 1),
        ("minimal", redis.url, 1),
        ("minimal x2", redis.url, 2),
    ):
        port = _lib.free_port()
        p = Proc(
            f"peer-{name.replace(' ', '')}",
            [
                sys.executable,
                "-m",
                "bench.peers.ping_app",
                "--port",
                str(port),
                "--store",
                store,
                "--workers",
                str(workers),
            ],
            cwd=_lib.ROOT,
        )
        procs.append(p)
        p.wait_http(f"http://127.0.0.1:{port}/none")
        variants[name] = load(port, peer_reqs)

    for name, kind, workers in (
        ("router redis", "redis", 1),
        ("router redis x2", "redis", 2),
        ("router sqlite", "sqlite", 1),
        ("router sqlite x2", "sqlite", 2),
    ):
        state = work / name.replace(" ", "-")
        port = _lib.free_port()
        prefix = f"bench-{port}:"
        url = redis.url if kind == "redis" else f"sqlite:///{state / 'codepool.db'}"
        key_prefix = prefix if kind == "redis" else ""
        asyncio.run(_seed(url, key_prefix, users))
        cookies = _lib.session_cookies(url, key_prefix, users)
        env = _lib.router_env(state, port, CODEPOOL_STORE_URL=url, CODEPOOL_STORE_KEY_PREFIX=prefix)
        procs.append(_lib.start_router(name.replace(" ", "-"), env, port, workers))
        reqs = [
            Request(
                "POST",
                "/ping",
                {"Content-Type": "application/json", "Cookie": f"codepool_session={cookies[u][0]}"},
                json.dumps({"instanceId": f"i-{u}"}),
            )
            for u in users
        ]
        variants[name] = load(port, reqs, trips=name if kind == "redis" else None)
        stores[name] = (url, key_prefix, f"http://127.0.0.1:{port}", reqs)
    return variants, stores, pings_per_trip


def _report(
    samples: dict[str, list[Sample]], pings_per_trip: dict[str, list[float]]
) -> dict[str, Any]:
    s = {name: _lib.summarize(v) for name, v in samples.items()}

    def ratio(a: str, b: str) -> float:
        return _lib.paired(samples[a], samples[b])

    rows = []
    for name, v in s.items():
        trips = pings_per_trip.get(name)
        rows.append(
            [
                name,
                v["rps"],
                f"{v['rps_min']:,.0f}-{v['rps_max']:,.0f}",
                v["p50_ms"],
                v["p99_ms"],
                ratio(name, "floor"),
                ratio(name, "minimal"),
                f"{sorted(trips)[len(trips) // 2]:.1f}" if trips else "",
            ]
        )
    print(
        _lib.table(
            "/ping (wrk, 200 users round-robin; x: median of the ratios round by round)",
            [
                "variant",
                "req/s",
                "spread",
                "p50 ms",
                "p99 ms",
                "x floor",
                "x minimal",
                "pings/trip",
            ],
            rows,
        )
    )
    targets = [
        ("router redis >= 0.8x floor (one process)", ratio("router redis", "floor"), 0.8),
        ("router redis x2 >= 1.3x minimal x2", ratio("router redis x2", "minimal x2"), 1.3),
        (
            "router redis p99 <= minimal p99",
            s["minimal"]["p99_ms"] / s["router redis"]["p99_ms"],
            1.0,
        ),
    ]
    print(
        _lib.table(
            "/ping targets",
            ["target", "measured", "needed", "met"],
            [[t, v, need, "yes" if v >= need else "NO"] for t, v, need in targets],
        )
    )
    return {
        "summary": s,
        "ratios": {n: {"x floor": ratio(n, "floor"), "x minimal": ratio(n, "minimal")} for n in s},
        "pings_per_trip": pings_per_trip,
        "targets": [
            {"target": t, "measured": v, "needed": n, "met": v >= n} for t, v, n in targets
        ],
    }


if __name__ == "__main__":
    main()
