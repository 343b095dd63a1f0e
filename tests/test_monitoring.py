"""The alert rules in deploy/monitoring are valid Prometheus (promtool check rules), fire
on the series they are meant for and stay quiet on a healthy pool (promtool test rules),
and name only metrics the router exports."""

from __future__ import annotations

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
