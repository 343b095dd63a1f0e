"""The usage report from a month of simulated use, on a controlled clock: people start
their workspaces in the morning, work (their tabs ping), leave for lunch and at night
(the reaper stops them), come back (they resume); one workspace was left running with a
hold before the month began, one is deleted by an admin. Every figure the report gives
is checked against hours worked out by hand from that schedule, and against the event
log itself; then `codepool report` prints the same figures as a table, JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from codepool.core import events
from codepool.core.models import EventKind
from codepool.core.pool import CodePool
from codepool.core.report import usage
from codepool.core.store import Store
from tests.fakes import MemoryBackend
from tests.helpers import codepool_env
from tests.test_pool import Clock

H = 3_600_000
MIN = 60_000
T0 = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp() * 1000)  # a Monday
DAYS = 30
PRICE_H, PRICE_GB_MONTH, DISK_GB = 0.10, 0.08, 10
IDLE_MIN = 30
# Who works when (hours of the day, weekdays only): their tab is in view then.
SCHEDULE = {
    "alice": [(9, 12), (13, 17)],
    "bob": [(9, 12)],
    "carol": [(9, 12), (13, 17)],  # days 1 and 2 only: an admin deletes hers on day 3
}


def workdays() -> list[int]:
    start = datetime.fromtimestamp(T0 / 1000, UTC)
    return [d for d in range(DAYS) if (start + timedelta(days=d)).weekday() < 5]


def at_work(user: str, day: int, minute_of_day: int) -> bool:
    if user == "carol" and day >= 2:
        return False
    return any(a * 60 <= minute_of_day < b * 60 for a, b in SCHEDULE[user])


async def simulate(pool: CodePool, clock: Clock) -> None:
    """The month, in five-minute steps wherever anything can happen."""

    async def step() -> None:
        await pool.reap()
        clock.advance(5 * MIN)

    # dave, an hour before the month: started and held for three hours, then forgotten.
    clock.now = T0 - H
    await pool.assign("dave")
    await pool.extend("dave", 3 * 3600)
    while clock.now < T0 + 4 * H:
        await step()
    for day in workdays():
        clock.now = T0 + day * 24 * H + 8 * H
        while clock.now < T0 + day * 24 * H + 18 * H:
            minute = (clock.now - T0) // MIN % (24 * 60)
            for user in SCHEDULE:
                if at_work(user, day, minute):
                    ws = await pool.store.get_workspace(user)
                    if ws is None or ws.state.value != "running":
                        await pool.assign(user)
                    else:
                        await pool.ping(user, ws.instance_id)
            if day == 2 and minute == 10 * 60:
                await pool.release("carol", terminate=True, actor="root", why="admin")
            await step()


@pytest.fixture
def month_pool(
    make_pool: Callable[..., CodePool], store: Store, ready_address: str
) -> tuple[CodePool, Clock]:
    clock = Clock(T0)
    pool = make_pool(
        store,
        MemoryBackend(ready_address, max_size=10),
        clock,
        pool={"warm_spares": 0, "idle_timeout_s": IDLE_MIN * 60, "max_hold_s": 8 * 3600},
        cost={
            "running_hour_price": PRICE_H,
            "storage_gb_month_price": PRICE_GB_MONTH,
            "disk_gb": DISK_GB,
        },
    )
    return pool, clock


@pytest.mark.timeout(300)
@pytest.mark.parametrize("store", ["sqlite", "redis"], indirect=True)
async def test_a_month_of_use_gives_the_hours_and_costs_worked_out_by_hand(
    month_pool: tuple[CodePool, Clock], store: Store
) -> None:
    pool, clock = month_pool
    await simulate(pool, clock)
    until = T0 + DAYS * 24 * H
    report = await pool.report(T0, until)
    days = len(workdays())
    assert days == 22
    # By hand. A morning: started at 9:00, last ping 11:55, stopped by the first reap
    # more than 30 minutes later: 12:30; 3.5 h. An afternoon: 13:00 to 17:30, 4.5 h.
    # A workspace exists (its disk is paid for) from its first start to its deletion.
    expected = {
        # user: (running h, existing h, starts by how, stops by why)
        "alice": (
            8 * days,
            DAYS * 24 - 9,
            {"launched": 1, "resumed": 2 * days - 1},
            {"idle": 2 * days},
        ),
        "bob": (3.5 * days, DAYS * 24 - 9, {"launched": 1, "resumed": days - 1}, {"idle": days}),
        # carol: two full days, then deleted (stopped) on day 3 at 10:00: 49 h existed.
        "carol": (16, 49, {"launched": 1, "resumed": 3}, {"idle": 4}),
        # dave: started before the month, held until 2:00 on day 1, stopped by the reap
        # then (idle for three hours, the hold over); kept, stopped, the whole month.
        "dave": (2, DAYS * 24, {}, {"idle": 1}),
    }
    got = {u.user: u for u in report.people}
    assert sorted(got) == sorted(expected)
    for user, (running, existing, starts, stops) in expected.items():
        u = got[user]
        assert u.running_h == pytest.approx(running), user
        assert u.stopped_h == pytest.approx(existing - running), user
        assert u.starts == starts and u.stops == stops, user
        storage = existing * DISK_GB * PRICE_GB_MONTH / 730
        assert u.cost == pytest.approx(running * PRICE_H + storage), user
        assert u.always_on_cost == pytest.approx(existing * PRICE_H + storage), user
        assert u.saved == pytest.approx((existing - running) * PRICE_H), user
    total = report.total
    assert total.running_h == pytest.approx(sum(e[0] for e in expected.values()))
    assert total.saved == pytest.approx(sum(u.saved for u in report.people))
    # The report's starts and stops are the event log's, counted another way.
    logged = [e async for e in events.read(store, T0, until)]
    assert sum(total.starts.values()) == sum(e.kind is EventKind.ASSIGN for e in logged)
    # (carol's deletion came when she was stopped: a deletion, not a stop)
    assert sum(total.stops.values()) == sum(e.kind is EventKind.STOP for e in logged)
    # A shorter period cuts intervals at its edges: day 1 alone.
    one_day = usage(logged, T0, T0 + 24 * H, report.prices)
    day1 = {u.user: u for u in one_day.people}
    assert day1["alice"].running_h == pytest.approx(8)
    assert day1["alice"].stopped_h == pytest.approx(24 - 9 - 8)
    assert day1["dave"].running_h == pytest.approx(0)  # the events before the day are not read
    before = [e async for e in events.read(store, 0, T0 + 24 * H)]
    day1 = {u.user: u for u in usage(before, T0, T0 + 24 * H, report.prices).people}
    assert day1["dave"].running_h == pytest.approx(2)


async def test_codepool_report_as_a_table_json_and_csv(state_dir: Path) -> None:
    env = codepool_env(
        state_dir,
        CODEPOOL_POOL_WARM_SPARES="0",
        CODEPOOL_COST_RUNNING_HOUR_PRICE="0.5",
        CODEPOOL_COST_CURRENCY="EUR",
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "codepool", *args], env=env, capture_output=True, text=True
        )

    assert cli("assign", "alice").returncode == 0
    assert cli("release", "alice").returncode == 0
    as_json = cli("report", "--since", "1h", "--json")
    assert as_json.returncode == 0, as_json.stderr
    body = json.loads(as_json.stdout)
    assert body["prices"]["currency"] == "EUR" and body["prices"]["running_hour"] == 0.5
    [alice] = body["people"]
    assert alice["user"] == "alice" and alice["starts"] == {"launched": 1}
    assert alice["stops"] == {"released": 1} and 0 < alice["running_h"] < 0.1
    assert body["total"]["saved"] == pytest.approx(alice["saved"])
    rows = list(csv.DictReader(io.StringIO(cli("report", "--since", "1h", "--csv").stdout)))
    assert [r["user"] for r in rows] == ["alice", "total"]
    assert float(rows[0]["running_h"]) == pytest.approx(alice["running_h"], abs=1e-3)
    table = cli("report", "--since", "1h")
    # Piped, the table is plain rows: a header, then one tab-separated line each; the
    # title (period and prices) goes to stderr.
    assert table.returncode == 0 and "EUR" in table.stderr
    lines = [line.split("\t") for line in table.stdout.splitlines()]
    assert lines[0] == ["user", "running", "stopped", "starts", "stops", "cost", "always on",
                        "saved"]  # fmt: skip
    assert [line[0] for line in lines[1:]] == ["alice", "total"]
    assert all(len(line) == len(lines[0]) for line in lines)
    for bad, says in [
        (["--since", "soon"], "invalid time 'soon'"),
        (["--json", "--csv"], "cannot be combined"),
        (["--since", "1h", "--until", "2h"], "is before --since"),
    ]:
        result = cli("report", *bad)
        assert result.returncode == 2 and says in result.stderr + result.stdout, result
        assert "Traceback" not in result.stderr
