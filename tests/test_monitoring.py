"""deploy/monitoring: the alert rules are valid Prometheus (promtool check rules), fire on
the series they are meant for and stay quiet on a healthy pool (promtool test rules); the
rules and the Grafana dashboard's queries name only metrics the router exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from prometheus_client import generate_latest

from codepool.daemon.metrics import Metrics
from tests.conftest import need

MONITORING = Path(__file__).resolve().parents[1] / "deploy" / "monitoring"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        need("promtool", "it is not installed (apt-get install prometheus)")
    assert found is not None
    return found


def test_the_rules_are_valid_and_fire_when_they_should() -> None:
    tool = promtool()
    check = subprocess.run(
        [tool, "check", "rules", "codepool-alerts.yml"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 7 rules found" in check.stdout
    test = subprocess.run(
        [tool, "test", "rules", "codepool-alerts.test.yml"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
    )
    assert test.returncode == 0, test.stdout + test.stderr


def test_the_rules_name_only_what_the_router_exports() -> None:
    metrics = Metrics()
    metrics.assign_seconds.labels("spare").observe(1)
    for counter in (metrics.reaps, metrics.backend_errors, metrics.cycles):
        counter.labels("x").inc()
    exported = set(
        re.findall(r"^(codepool_[a-z_]+)", generate_latest(metrics.registry).decode(), re.M)
    )
    rules = (MONITORING / "codepool-alerts.yml").read_text()
    named = set(re.findall(r"\b(codepool_[a-z_]+)\b", rules))
    assert named and named <= exported, named - exported


def dashboard_queries() -> list[str]:
    board = json.loads((MONITORING / "codepool-dashboard.json").read_text())
    panels = [p for p in board["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    assert all(p["targets"] and p["datasource"]["uid"] == "${datasource}" for p in panels)
    return [t["expr"] for p in panels for t in p["targets"]]


def test_the_dashboard_queries_are_valid_and_name_only_exported_metrics(tmp_path: Path) -> None:
    """Every query of the Grafana dashboard parses as PromQL (promtool, fed them as
    recording rules) and names only metrics the router exports, as docs/operations.md's
    table lists them (tests/test_logs.py checks that table against a real router), or
    Prometheus's own `up`."""
    from tests.test_logs import documented_metrics

    queries = dashboard_queries()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(queries)
    ]}]}  # fmt: skip
    (tmp_path / "queries.yml").write_text(json.dumps(rules))  # JSON is YAML
    check = subprocess.run(
        [promtool(), "check", "rules", "queries.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    named = set()
    for query in queries:
        for name in re.findall(r"\b((?:codepool|process|python)_[a-z_]+|up)\b", query):
            named.add(re.sub(r"_(bucket|sum|count)$", "", name))
    exported = documented_metrics() | {"up"}
    assert named <= exported, named - exported
    assert {"codepool_workspaces", "codepool_assign_seconds", "codepool_logins_total"} <= named
