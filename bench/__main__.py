"""Every benchmark, one after another: `bench/run` (or python -m bench).

    bench/run                      # all of them (about 25 minutes on 2 cores)
    bench/run --quick              # shorter runs, one round: a check that they work
    bench/run --only ping,proxy    # some of them

Each prints its tables (with its baselines and the ratios) and writes
build/bench/<name>.json; this also writes build/bench/summary.json with every target.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from bench import _lib

NAMES = ("ping", "proxy", "reap", "aws", "workspace", "capacity")


def _runners(quick: bool) -> dict[str, Callable[[], dict[str, Any]]]:
    from bench import aws, capacity, ping, proxy, reap, workspace

    seconds, rounds = (2.0, 1) if quick else (4.0, 5)
    return {
        "ping": lambda: ping.run(seconds, rounds, 64),
        "proxy": lambda: proxy.run(seconds, rounds),
        "reap": lambda: reap.run([1000, 10000] if quick else [1000, 10000, 100000]),
        "aws": lambda: aws.run([100] if quick else [100, 1000]),
        "workspace": lambda: workspace.run(1 if quick else 3),
        "capacity": lambda: capacity.run(
            [100] if quick else [250, 500, 1000, 2000, 4000], 3.0 if quick else 10.0, 1.0, 50.0
        ),
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        prog="bench/run", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="short runs, one round")
    ap.add_argument(
        "--only", default=",".join(NAMES), help=f"comma-separated, of: {', '.join(NAMES)}"
    )
    a = ap.parse_args()
    chosen = [n.strip() for n in a.only.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in NAMES]
    if unknown or not chosen:
        ap.error(
            f"--only {a.only!r}: unknown {', '.join(unknown) or 'nothing chosen'}; "
            f"allowed: {', '.join(NAMES)}"
        )
    runners = _runners(a.quick)
    targets: list[dict[str, Any]] = []
    started = time.monotonic()
    for name in chosen:
        _lib.say(f"\n==> bench: {name}")
        try:
            result = runners[name]()
        except _lib.BenchError as exc:
            print(f"error: bench {name}: {exc}", file=sys.stderr)
            return 1
        targets += [{"bench": name, **t} for t in result.get("targets", [])]
    rows = [
        [
            t["bench"],
            t["target"],
            t["measured"],
            t["limit"] if "limit" in t else t.get("needed", ""),
            "yes" if t["met"] else "NO",
        ]
        for t in targets
    ]
    print(_lib.table("All targets", ["bench", "target", "measured", "limit", "met"], rows))
    path = _lib.save(
        "summary", {"quick": a.quick, "seconds": time.monotonic() - started, "targets": targets}
    )
    _lib.say(f"\nwrote {path} ({time.monotonic() - started:.0f} s in all)")
    print(json.dumps({"met": sum(t["met"] for t in targets), "of": len(targets)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
