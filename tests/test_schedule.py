"""[[pool.schedule]]: warm spares by time of week, each entry in its own time zone, first
entry in force wins, pool.warm_spares otherwise; `scale` (and its dry run) follows it and
says which entry is in force; bad entries are refused with what is allowed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from codepool.core.errors import ConfigError
from codepool.core.policy import schedule_entry
from codepool.core.pool import CodePool
from codepool.core.settings import settings_from_mapping
from codepool.core.stores.sqlite import SQLiteStore
from tests.fakes import MemoryBackend
from tests.helpers import codepool_env
from tests.test_pool import Clock

OFFICE = {
    "days": ["mon", "tue", "wed", "thu", "fri"],
    "from": "08:00",
    "to": "18:00",
    "timezone": "Europe/Berlin",
    "warm_spares": 3,
}
MORNING = {**OFFICE, "from": "08:00", "to": "10:00", "warm_spares": 6}


def at(text: str, zone: str = "Europe/Berlin") -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp() * 1000)


def test_the_first_entry_in_force_wins_in_its_own_time_zone() -> None:
    s = settings_from_mapping({"pool": {"schedule": [MORNING, OFFICE], "warm_spares": 0}})
    entries = s.pool.schedule
    assert schedule_entry(entries, at("2026-12-07T09:30")) == entries[0]  # Monday morning
    assert schedule_entry(entries, at("2026-12-07T10:00")) == entries[1]  # 'to' is not in
    assert schedule_entry(entries, at("2026-12-07T17:59")) == entries[1]
    assert schedule_entry(entries, at("2026-12-07T18:00")) is None
    assert schedule_entry(entries, at("2026-12-05T09:30")) is None  # Saturday
    # 08:30 in Berlin is 07:30 UTC in winter, 06:30 UTC in summer
    assert schedule_entry(entries, at("2026-12-07T07:30", "UTC")) == entries[0]
    assert schedule_entry(entries, at("2026-07-06T06:30", "UTC")) == entries[0]
    assert schedule_entry(entries, at("2026-07-06T07:30", "UTC")) == entries[0]
    assert schedule_entry(entries, at("2026-07-06T05:30", "UTC")) is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({**OFFICE, "days": ["monday"]}, "days = ['monday']: a non-empty list of mon, tue"),
        ({**OFFICE, "days": []}, "a non-empty list"),
        ({**OFFICE, "from": "8:00"}, "from = '8:00': a time of day, HH:MM"),
        ({**OFFICE, "to": "24:01"}, "to = '24:01'"),
        ({**OFFICE, "from": "18:00", "to": "08:00"}, "must be before to '08:00' (for a night"),
        ({**OFFICE, "timezone": "Mars/Olympus"}, "timezone = 'Mars/Olympus': an IANA time zone"),
        ({**OFFICE, "timezone": "../../etc/passwd"}, "an IANA time zone"),
        ({**OFFICE, "warm_spares": -1}, "warm_spares = -1: from 0 to 1000"),
        ({k: v for k, v in OFFICE.items() if k != "timezone"}, "missing timezone"),
        ({**OFFICE, "spares": 2}, "unknown spares"),
        ("weekdays", "each entry must be a table"),
    ],
)
def test_a_bad_entry_says_what_is_wrong_and_what_is_allowed(entry: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"pool": {"schedule": [entry]}}, "f.toml")
    assert message in str(info.value)


def test_the_environment_may_give_the_schedule_as_json() -> None:
    s = settings_from_mapping({}, environ={"CODEPOOL_POOL_SCHEDULE": json.dumps([OFFICE])})
    assert s.pool.schedule[0].warm_spares == 3
    with pytest.raises(ConfigError, match="a JSON list of schedule entries"):
        settings_from_mapping({}, environ={"CODEPOOL_POOL_SCHEDULE": "mon-fri"})


async def test_scale_follows_the_schedule_and_says_which_entry(
    make_pool: Callable[..., CodePool], tmp_path: Path, ready_address: str
) -> None:
    clock = Clock(at("2026-12-07T07:00"))  # Monday, before the office opens
    backend = MemoryBackend(ready_address, max_size=10)
    pool = make_pool(
        SQLiteStore(str(tmp_path / "s.db")),
        backend,
        clock,
        pool={"warm_spares": 1, "schedule": [MORNING, OFFICE]},
    )
    night = await pool.scale()
    assert night.desired_after == 1 and "pool.warm_spares: 1" in night.spares
    clock.now = at("2026-12-07T08:00")
    planned = await pool.scale(dry_run=True)
    assert planned.desired_after == 6 and backend.desired == 1  # a dry run changes nothing
    assert planned.spares.startswith("mon,tue,wed,thu,fri 08:00-10:00 Europe/Berlin: 6")
    assert (await pool.scale()).desired_after == 6
    clock.now = at("2026-12-07T12:00")
    # Excess spares go once older than a start could be waiting for them (these are).
    for iid, box in list(backend.boxes.items()):
        backend.boxes[iid] = replace(box, launched_at_ms=0)
    noon = await pool.scale()
    assert noon.desired_after == 3 and len(noon.terminated_spares) == 3


def test_scale_dry_run_on_the_command_line_names_the_entry(state_dir: Path) -> None:
    everyday = {**OFFICE, "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]}
    whole_day = {**everyday, "from": "00:00", "to": "24:00", "timezone": "UTC", "warm_spares": 2}
    env = codepool_env(state_dir, CODEPOOL_POOL_SCHEDULE=json.dumps([whole_day]))
    out = subprocess.run(
        [sys.executable, "-m", "codepool", "scale", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "warm spares now: mon,tue,wed,thu,fri,sat,sun 00:00-24:00 UTC: 2" in out.stdout
    assert "-> 2 (would set)" in out.stdout
