"""bench/ keeps working: each benchmark, run as a user runs it but short, ends with exit 0,
its table, and a JSON file whose every variant served requests (wrk refuses a run with a
single error, so a number here means every request was answered as expected). The
figures themselves are not judged here (timing in tests is flaky on a shared machine):
that is bench/run's job, recorded in docs/performance.md."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from codepool.core.backends.isolation import bwrap_works
from tests.conftest import need

ROOT = Path(__file__).resolve().parents[1]


def run_bench(tmp_path: Path, name: str, *args: str) -> dict[str, Any]:
    for tool, package in (("wrk", "wrk"), ("redis-server", "redis-server")):
        if shutil.which(tool) is None:
            need(tool, f"it is not installed (apt-get install {package})")
    if why := bwrap_works():  # the benchmarks' routers sandbox their workspaces
        need("bubblewrap", why)
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", *args],
        cwd=ROOT,
        env={**os.environ, "CODEPOOL_BENCH_OUT": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    data: dict[str, Any] = json.loads((tmp_path / f"{name}.json").read_text())
    assert data["machine"]["cpus"] >= 1
    return data


@pytest.mark.timeout(300)
def test_ping_bench(tmp_path: Path) -> None:
    data = run_bench(tmp_path, "ping", "--seconds", "1", "--rounds", "1", "--connections", "16")
    variants = data["summary"]
    assert set(variants) == {
        "floor",
        "minimal",
        "minimal x2",
        "router redis",
        "router redis x2",
        "router sqlite",
        "router sqlite x2",
    }
    assert all(v["rps"] > 0 and v["p99_ms"] > 0 for v in variants.values())
    assert all(r > 1 for r in data["pings_per_trip"]["router redis"])  # group commit at work
    assert len(data["targets"]) == 3


@pytest.mark.timeout(300)
def test_proxy_bench(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if shutil.which("npm") is None or not Path(nginx).exists():
        need("npm and nginx", "the proxy bench installs configurable-http-proxy, runs nginx")
    data = run_bench(tmp_path, "proxy", "--seconds", "1", "--rounds", "1")
    for label in ("2 KB page", "2 KB asset", "1 MB asset"):
        assert set(data[label]) == {
            "direct",
            "nginx",
            "nginx, no keepalive",
            "chp",
            "minimal",
            "codepool",
            "codepool x2",
            "front",
        }
        assert all(v["rps"] > 0 for v in data[label].values())
    assert all(v["messages"] == 2000 for v in data["websocket"].values())


def test_reap_bench(tmp_path: Path) -> None:
    data = run_bench(tmp_path, "reap", "--sizes", "1000")
    for kind in ("redis 1000", "sqlite 1000"):
        res = data["results"][kind]
        assert res["reap, 1% idle"]["items"] == 10  # 1 % of 1,000 stopped
        assert res["reap, nobody idle"]["items"] == 0
        assert res["reconcile walk (memory)"]["peak_mb"] > 0


def test_aws_bench(tmp_path: Path) -> None:
    data = run_bench(tmp_path, "aws", "--sizes", "40")
    [res] = data["results"].values()
    assert res["by_operation"]["EnterStandby"] == 2  # 20 per call
    assert res["calls"] <= res["limit"]


@pytest.mark.code_server
@pytest.mark.timeout(300)
def test_workspace_bench(tmp_path: Path, code_server: str) -> None:
    data = run_bench(tmp_path, "workspace", "--rounds", "1")
    assert set(data["summary"]) == {"code-server alone", "warm spare", "resume", "cold start"}
    assert all(v["median_s"] > 0 for v in data["summary"].values())


@pytest.mark.timeout(300)
def test_capacity_bench(tmp_path: Path) -> None:
    data = run_bench(tmp_path, "capacity", "--steps", "20", "--seconds", "1")
    for name in ("router", "router x2", "front + router"):
        steps = data[name]["steps"]
        assert [s["people"] for s in steps] == [20]
        assert all(s["keystrokes"] > 0 and s["router_cores"] >= 0 for s in steps)
        assert data[name]["idle_rss_mb"] > 0
    assert data["targets"][0]["target"].startswith("front: active people per router core")
