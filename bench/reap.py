"""The leader's store work over 1k, 10k and 100k workspaces, in a real Redis and in SQLite:
a reap cycle with 1 % of the workspaces idle, the same with nobody idle (the steady
state), and reconcile's full walk. Wall time, store round trips (Redis: commands the
server counted; SQLite: transactions) and the peak of Python memory (tracemalloc).

    python -m bench.reap [--sizes 1000,10000,100000]

The backend is the tests' in-memory group (tests/fakes.py), so what is measured is the
store and the pool; what the cloud costs is bench/aws.py's part. Workspaces are seeded
in bulk (not through the pool) to keep the setup short.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import _lib
from bench._lib import RedisServer
from codepool.core.models import Instance, InstanceState, Lifecycle, Workspace, WorkspaceState
from codepool.core.pool import CodePool
from codepool.core.settings import settings_from_mapping
from codepool.core.store import Store, create_store
from tests.fakes import MemoryBackend

IDLE_SHARE = 0.01
MIN_MS = 60_000


def _workspaces(n: int, now: int) -> list[Workspace]:
    idle = int(n * IDLE_SHARE)
    return [
        Workspace(
            f"user{i:06d}",
            f"i-{i:06d}",
            "http://127.0.0.1:9",
            WorkspaceState.RUNNING,
            now - 30 * MIN_MS if i < idle else now - MIN_MS,
            now - 60 * MIN_MS,
        )
        for i in range(n)
    ]


async def _seed(url: str, prefix: str, rows: list[Workspace]) -> None:
    """Through the store's own batched write, 5,000 records a call."""
    store = create_store(url, key_prefix=prefix)
    for start in range(0, len(rows), 5000):
        await store.put_workspaces(rows[start : start + 5000])
    await store.close()


async def _warm(store: Store) -> None:
    """Connect, and have Redis load each script the reap uses, as a leader's first cycle
    does: the measured cycle is a steady-state one."""
    spare = Workspace("~warm", "i-warm", "", WorkspaceState.STOPPED, 0, 0)
    await store.put_workspaces([spare])
    await store.delete_workspace(spare.user, spare.instance_id)
    await store.mark_stopping_many([(spare.user, spare.instance_id, 0)])
    await store.acquire_leases(["~warm"], "bench", 1000)
    await store.release_leases(["~warm"], "bench")
    await store.idle_workspaces(0, 1)


def _backend(rows: list[Workspace]) -> MemoryBackend:
    backend = MemoryBackend("http://127.0.0.1:9", max_size=len(rows) + 10)
    for w in rows:
        backend.boxes[w.instance_id] = Instance(
            w.instance_id, InstanceState.RUNNING, Lifecycle.IN_SERVICE, w.user, w.address, 0
        )
    backend.desired = len(rows)
    return backend


class Trips:
    """Store operations: the commands the Redis server ran (those inside scripts too), or
    SQLite transactions."""

    def __init__(self, store: Store, redis: RedisServer | None) -> None:
        self.redis = redis
        self.sqlite = 0
        if redis is None:
            inner = store._call  # type: ignore[attr-defined]

            def counted(*a: Any) -> Any:
                self.sqlite += 1
                return inner(*a)

            store._call = counted  # type: ignore[attr-defined]

    def start(self) -> None:
        self.sqlite = 0
        if self.redis:
            self.redis.reset_stats()

    def count(self) -> int:
        if self.redis:
            import redis

            with redis.Redis.from_url(self.redis.url) as r:
                stats: dict[str, Any] = r.info("commandstats")
            return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")
        return self.sqlite


async def _measure(
    trips: Trips, step: Callable[[], Awaitable[Any]], memory: bool
) -> dict[str, float]:
    gc.collect()  # not the garbage of the seeding and of earlier steps
    if memory:
        tracemalloc.start()
    trips.start()
    t = time.perf_counter()
    result = await step()
    wall = time.perf_counter() - t
    out = {"seconds": wall, "round_trips": trips.count(), "items": len(result)}
    if memory:
        out["peak_mb"] = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
    return out


async def _one(kind: str, n: int, work: Path, redis: RedisServer) -> dict[str, Any]:
    now = int(time.time() * 1000)
    rows = _workspaces(n, now)
    if kind == "redis":
        prefix, url = f"bench-reap-{n}:", redis.url
    else:
        prefix, url = "", f"sqlite:///{work / f'reap-{n}.db'}"
    await _seed(url, prefix, rows)
    settings = settings_from_mapping(
        {"pool": {"warm_spares": 0, "idle_timeout_s": 300}, "local": {"state_dir": str(work)}}
    )
    results: dict[str, Any] = {}
    for memory in (False, True):  # timings without tracemalloc's cost, then memory
        store = create_store(url, key_prefix=prefix)
        pool = CodePool(settings, store, _backend(rows))
        trips = Trips(store, redis if kind == "redis" else None)
        tag = "" if not memory else " (memory)"
        results["reap, 1% idle, dry run" + tag] = await _measure(
            trips, functools.partial(pool.reap, dry_run=True), memory
        )
        results["reconcile walk" + tag] = await _measure(trips, pool.reconcile, memory)
        await store.close()
    store = create_store(url, key_prefix=prefix)
    await _warm(store)
    pool = CodePool(settings, store, _backend(rows))
    trips = Trips(store, redis if kind == "redis" else None)
    results["reap, 1% idle"] = await _measure(trips, pool.reap, False)
    while await pool.reap(dry_run=True):  # a cycle stops at most store.batch_size
        await pool.reap()
    results["reap, nobody idle"] = await _measure(trips, pool.reap, False)
    await store.close()
    return results


def run(sizes: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="codepool-bench-") as tmp:
        work = Path(tmp)
        with RedisServer(work) as redis:
            for kind in ("redis", "sqlite"):
                for n in sizes:
                    _lib.say(f"reap: {kind} with {n:,} workspaces")
                    out[f"{kind} {n}"] = asyncio.run(_one(kind, n, work, redis))
    rows = []
    for key, res in out.items():
        kind, count = key.split()
        for step in ("reap, nobody idle", "reap, 1% idle", "reconcile walk"):
            m = res[step]
            mem = res.get(step + " (memory)") or res.get("reap, 1% idle, dry run (memory)")
            rows.append(
                [
                    kind,
                    f"{int(count):,}",
                    step,
                    m["seconds"],
                    m["round_trips"],
                    m["items"],
                    mem["peak_mb"] if step != "reap, nobody idle" else "",
                ]
            )
    print(
        _lib.table(
            "Leader's store work (reap: store.batch_size 500 stops per cycle at most)",
            ["store", "workspaces", "step", "seconds", "store ops", "items", "peak MB"],
            rows,
        )
    )
    big = out.get(f"redis {max(sizes)}", {})
    targets = []
    if big and max(sizes) >= 100_000:
        targets = [
            ("reap cycle, 100k, 1% idle, Redis < 0.1 s", big["reap, 1% idle"]["seconds"], 0.1),
            (
                "reap cycle, 100k, nobody idle, Redis < 0.1 s",
                big["reap, nobody idle"]["seconds"],
                0.1,
            ),
            ("reconcile walk, 100k, Redis < 3 s", big["reconcile walk"]["seconds"], 3.0),
        ]
        print(
            _lib.table(
                "reap targets",
                ["target", "measured s", "limit s", "met"],
                [[t, v, lim, "yes" if v < lim else "NO"] for t, v, lim in targets],
            )
        )
    result = {
        "results": out,
        "targets": [
            {"target": t, "measured": v, "limit": lim, "met": v < lim} for t, v, lim in targets
        ],
    }
    _lib.say(f"wrote {_lib.save('reap', result)}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--sizes",
        type=_lib.sizes,
        default=[1000, 10000, 100000],
        help="workspace counts (default 1000,10000,100000)",
    )
    a = ap.parse_args()
    _lib.command(lambda: run(a.sizes))


if __name__ == "__main__":
    main()
