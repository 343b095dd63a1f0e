"""AWS calls and wall time to reap 100 and 1,000 idle workspaces, on moto's HTTP server,
vs one call per workspace.

    python -m bench.aws [--sizes 100,1000]

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
    out = {}
    try:
        with tempfile.TemporaryDirectory(prefix="codepool-bench-") as tmp:
            for n in sizes:
                _lib.say(f"aws: reap of {n} idle workspaces on moto")
                reset = f"http://127.0.0.1:{port}/moto-api/reset"  # a fresh AWS for each size
                with urllib.request.urlopen(urllib.request.Request(reset, method="POST")):
                    pass
                out[str(n)] = asyncio.run(_one(f"http://127.0.0.1:{port}", n, Path(tmp)))
    finally:
        server.stop()
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
    _lib.say(f"wrote {_lib.save('aws', {'results': out})}")
    return out


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
