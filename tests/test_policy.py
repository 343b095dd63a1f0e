"""Pure policy functions: names, durations, reap and retention decisions, capacity."""

from __future__ import annotations

import pytest

from codepool.core.errors import InvalidInput
from codepool.core.models import Capacity, ReapAction, Workspace, WorkspaceState
from codepool.core.policy import (
    capacity_warnings,
    check_user,
    desired_capacity,
    format_duration,
    parse_duration,
    reap_decision,
    retention_decision,
)


@pytest.mark.parametrize("name", ["alice", "bob.smith", "a", "x_1-2", "dev@example.com", "9lives"])
def test_good_user_names(name: str) -> None:
    assert check_user(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "Alice", "-a", ".a", "a..b", "a/b", "a b", "a\nb", "a;b", "$(x)", "x" * 65, "ü", "a:b"],
)
def test_bad_user_names(name: str) -> None:
    with pytest.raises(InvalidInput, match="lower-case letters"):
        check_user(name)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("45s", 45),
        ("30m", 1800),
        ("2h", 7200),
        ("1d", 86400),
        ("1h30m", 5400),
        (" 2H ", 7200),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "2x", "-5", "1.5h", "m30", "2h 30m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(InvalidInput, match="invalid duration"):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 59, 60, 372, 3600, 7500, 86400 * 3 + 3600 * 4)] == [
        "0s",
        "59s",
        "1m00s",
        "6m12s",
        "1h00m",
        "2h05m",
        "3d04h",
    ]
    assert format_duration(-5) == "0s"


def ws(state: WorkspaceState = WorkspaceState.RUNNING, seen: int = 0, **kw: int) -> Workspace:
    return Workspace("alice", "i-1", "http://x", state, seen, 0, **kw)


def test_reap_decision() -> None:
    assert reap_decision(ws(seen=0), 300_000, 300, "stop").action is ReapAction.KEEP  # exactly 5m
    d = reap_decision(ws(seen=0), 300_001, 300, "stop")
    assert d.action is ReapAction.STOP and d.reason == "idle 5m00s > 5m00s"
    assert reap_decision(ws(seen=0), 400_000, 300, "terminate").action is ReapAction.TERMINATE
    held = reap_decision(ws(seen=0, hold_until_ms=500_000), 400_000, 300, "stop")
    assert held.action is ReapAction.KEEP and held.reason == "held for another 1m40s"
    stopping = reap_decision(ws(WorkspaceState.STOPPING), 10**9, 300, "stop")
    assert stopping.action is ReapAction.KEEP


def test_retention_decision() -> None:
    day = 86_400_000
    stopped = ws(WorkspaceState.STOPPED, stopped_at_ms=0)
    assert retention_decision(stopped, 30 * day, 30).action is ReapAction.KEEP
    d = retention_decision(stopped, 30 * day + 1000, 30)
    assert d.action is ReapAction.TERMINATE and "retention 30d" in d.reason
    assert retention_decision(stopped, 999 * day, 0).action is ReapAction.KEEP  # 0: forever
    assert retention_decision(ws(), 999 * day, 30).action is ReapAction.KEEP


@pytest.mark.parametrize(
    ("assigned", "spares", "lo", "hi", "want"),
    [
        (0, 1, 0, 20, 1),  # an empty pool keeps one warm spare
        (3, 1, 0, 20, 4),  # active users + 1 warm spare
        (20, 1, 0, 20, 20),  # clamped to max
        (0, 0, 0, 20, 0),  # no spares wanted: may reach zero
        (0, 0, 2, 20, 2),  # but never below min
        (0, 1, 0, 0, 0),  # a group of max 0 stays empty
        (5, 3, 0, 6, 6),
    ],
)
def test_desired_capacity(assigned: int, spares: int, lo: int, hi: int, want: int) -> None:
    assert desired_capacity(assigned, spares, lo, hi) == want


def test_capacity_warnings() -> None:
    assert capacity_warnings(Capacity(0, 10, 8), 8) == ()
    [w] = capacity_warnings(Capacity(0, 10, 9), 9)
    assert "90% of max 10" in w
    [w] = capacity_warnings(Capacity(0, 10, 5), 4)
    assert "exceeds in service 4" in w
    assert len(capacity_warnings(Capacity(0, 10, 10), 8)) == 2
