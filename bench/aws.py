"""AWS calls of a spare assign and a resume, and AWS calls and wall time to reap 100 and
1,000 idle workspaces, on moto's HTTP server, vs one call per workspace.

    python -m bench.aws [--sizes 100,1000]

A spare assign and a resume run on a group with one warm spare; their boxes answer on
loopback (moto's addresses lead nowhere). Each is counted from its call to its return;
the scale it asks for runs after it returns and is counted on its own line. A read is
"repeated" when the same call with the same parameters was made earlier in the same
operation with no change since: the count should be 0 outside polling.

Each workspace is a box of a real (moto) Auto Scaling group, tagged with its owner and
recorded running and idle in the store. One reap stops them all (store.batch_size is
set to the count, so it is one cycle): EnterStandby 20 ids per call, one StopInstances
per 500, then one scale. Every AWS call the backend makes is counted through botocore's
event hooks. moto answers in microseconds, so the wall time is codepool's own work and
the HTTP round trips on loopback; on real AWS each call takes tens to hundreds of ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from bench import _lib

os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")  # seconds of AMI catalogue


ASSIGN_LIMIT = 4  # a spare assign: one look at the group, protect, tag
RESUME_LIMIT = 6  # a resume: one look, start, status, ExitStandby, the box's address
CYCLE_LIMIT = 2  # one look at the group (DescribeAutoScalingGroups, DescribeInstances)
BEFORE = {"spare assign": 11, "resume": 15}  # measured before issue 16 (docs/performance.md)


class Calls:
    """Every AWS call, and the reads that repeat one made since the last change."""

    def __init__(self) -> None:
        self.by_operation: Counter[str] = Counter()
        self.repeated = 0
        self._reads: set[str] = set()

    def __call__(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        name = model.name
        self.by_operation[name] += 1
        if name.startswith(("Describe", "Get", "List")):
            key = name + repr(sorted(params.items()))
            self.repeated += key in self._reads
            self._reads.add(key)
        else:
            self._reads.clear()

    def take(self) -> dict[str, Any]:
        out = {
            "calls": sum(self.by_operation.values()),
            "repeated_reads": self.repeated,
            "by_operation": dict(self.by_operation),
        }
        self.by_operation, self.repeated, self._reads = Counter(), 0, set()
        return out


async def _lifecycle(endpoint: str, work: Path) -> dict[str, dict[str, Any]]:
    """A spare assign, the scale after it, a resume: AWS calls of each."""
    import boto3
    from aiohttp import web

    from codepool.core.pool import CodePool
    from codepool.core.settings import settings_from_mapping
    from codepool.core.store import create_store
    from codepool.daemon.loops import Loops
    from codepool.daemon.metrics import Metrics
    from tests.aws_fixtures import REGION, LoopbackAwsBackend, aws_settings, create_group

    async def ready(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", ready)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _lib.free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    session = boto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
    create_group(session, endpoint_url=endpoint)
    aws = aws_settings(endpoint_url=endpoint, ready_path="/healthz")
    backend = LoopbackAwsBackend(aws, f"http://127.0.0.1:{port}", session=session)
    count = Calls()
    for client in (backend.asg, backend.ec2):
        client.meta.events.register("before-call.*.*", count)
    settings = settings_from_mapping(
        {"pool": {"warm_spares": 1}, "local": {"state_dir": str(work / "lifecycle")}}
    )
    pool = CodePool(settings, create_store("memory://"), backend)
    out: dict[str, dict[str, Any]] = {}
    try:
        await pool.scale()
        await pool.assign("warmup")  # a box of someone else's: the group is not empty
        await pool.scaled()
        count.take()
        if (await pool.assign("alice")).how != "spare":
            raise _lib.BenchError("alice did not get the warm spare")
        out["spare assign"] = count.take()
        await pool.scaled()
        out["scale after it"] = count.take()
        await pool.release("alice")
        count.take()
        if (await pool.assign("alice")).how != "resumed":
            raise _lib.BenchError("alice's workspace was not resumed")
        out["resume"] = count.take()
        await pool.scaled()
        out["scale after the resume"] = count.take()
        # The leader's cycle with nothing to do: reconcile, reap, scale and status share
        # one look at the group.
        if not await Loops(pool, Metrics(), 30).cycle():
            raise _lib.BenchError("the cycle did not run as leader")
        out["leader cycle, nothing to do"] = count.take()
    finally:
        await pool.close()
        await runner.cleanup()
    out["spare assign"]["limit"] = ASSIGN_LIMIT
    out["resume"]["limit"] = RESUME_LIMIT
    out["leader cycle, nothing to do"]["limit"] = CYCLE_LIMIT
    return out


async def _one(endpoint: str, n: int, work: Path) -> dict[str, Any]:
    import boto3

    from codepool.core.backends.aws import AwsBackend
    from codepool.core.models import Workspace, WorkspaceState
    from codepool.core.pool import CodePool
    from codepool.core.settings import AwsSettings, settings_from_mapping
    from codepool.core.store import create_store
    from tests.aws_fixtures import GROUP, REGION, create_group

    session = boto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
    create_group(session, max_size=n + 10, endpoint_url=endpoint)
    aws = AwsSettings(group_name=GROUP, region=REGION, endpoint_url=endpoint, wait_timeout_s=30)
    backend = AwsBackend(aws, session=session)
    await backend.set_desired(n)
    boxes = await backend.list_instances()
    ec2 = session.client("ec2", endpoint_url=endpoint)
    settings = settings_from_mapping(
        {
            "pool": {"warm_spares": 0, "idle_timeout_s": 300},
            "store": {"batch_size": n},
            "local": {"state_dir": str(work)},
        }
    )
    store = create_store("memory://", batch_size=n)
    long_ago = int(time.time() * 1000) - 3_600_000
    for i, box in enumerate(boxes):
        user = f"user{i:04d}"
        ec2.create_tags(Resources=[box.instance_id], Tags=[{"Key": "Owner", "Value": user}])
        await store.put_workspace(
            Workspace(
                user, box.instance_id, box.address, WorkspaceState.RUNNING, long_ago, long_ago
            )
        )
    calls: Counter[str] = Counter()

    def count(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    for client in (backend.asg, backend.ec2):
        client.meta.events.register("before-call.*.*", count)
    pool = CodePool(settings, store, backend)
    t = time.perf_counter()
    decisions = await pool.reap()
    wall = time.perf_counter() - t
    stopped = sum(1 for d in decisions if d.done)
    if stopped != n:
        raise _lib.BenchError(f"reap stopped {stopped} of {n}: {decisions[:3]}")
    await pool.close()
    total = sum(calls.values())
    return {
        "workspaces": n,
        "calls": total,
        "by_operation": dict(calls),
        "seconds": wall,
        "limit": 3 * math.ceil(n / 20) + 5,
        "per_workspace_baseline": n,
    }


def run(sizes: list[int]) -> dict[str, Any]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every call
    port = _lib.free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    with contextlib.redirect_stdout(sys.stderr):  # its greeting is not a result
        server.start()
    endpoint = f"http://127.0.0.1:{port}"

    def reset() -> None:  # a fresh AWS for each measurement
        req = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req):
            pass

    out = {}
    try:
        with tempfile.TemporaryDirectory(prefix="codepool-bench-") as tmp:
            _lib.say("aws: a spare assign and a resume on moto")
            reset()
            ops = asyncio.run(_lifecycle(endpoint, Path(tmp)))
            for n in sizes:
                _lib.say(f"aws: reap of {n} idle workspaces on moto")
                reset()
                out[str(n)] = asyncio.run(_one(endpoint, n, Path(tmp)))
    finally:
        server.stop()
    print(
        _lib.table(
            "AWS calls of one operation on moto (from its call to its return)",
            ["operation", "AWS calls", "before", "limit", "met", "repeated reads", "by operation"],
            [
                [
                    name,
                    r["calls"],
                    BEFORE.get(name, ""),
                    r.get("limit", ""),
                    ("yes" if r["calls"] <= r["limit"] else "NO") if "limit" in r else "",
                    r["repeated_reads"],
                    ", ".join(f"{k} {v}" for k, v in r["by_operation"].items()),
                ]
                for name, r in ops.items()
            ],
        )
    )
    rows = [
        [
            f"{r['workspaces']:,}",
            r["calls"],
            r["per_workspace_baseline"],
            r["per_workspace_baseline"] / r["calls"],
            r["limit"],
            "yes" if r["calls"] <= r["limit"] else "NO",
            r["seconds"],
            ", ".join(f"{k} {v}" for k, v in sorted(r["by_operation"].items())),
        ]
        for r in out.values()
    ]
    print(
        _lib.table(
            "Reaping idle workspaces on moto (one cycle)",
            [
                "idle",
                "AWS calls",
                "1 per workspace",
                "x fewer",
                "limit",
                "met",
                "seconds",
                "calls by operation",
            ],
            rows,
        )
    )
    targets = [
        {
            "target": f"{name}: calls <= {r['limit']}",
            "measured": r["calls"],
            "limit": r["limit"],
            "met": r["calls"] <= r["limit"],
        }
        for name, r in ops.items()
        if "limit" in r
    ] + [
        {
            "target": f"reap {r['workspaces']} idle: calls <= {r['limit']}",
            "measured": r["calls"],
            "limit": r["limit"],
            "met": r["calls"] <= r["limit"],
        }
        for r in out.values()
    ]
    result = {"results": out, "operations": ops, "targets": targets}
    _lib.say(f"wrote {_lib.save('aws', result)}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--sizes",
        type=_lib.sizes,
        default=[100, 1000],
        help="idle workspace counts (default 100,1000)",
    )
    a = ap.parse_args()
    _lib.command(lambda: run(a.sizes))


if __name__ == "__main__":
    main()
