"""pool.max_age_s: a workspace that has run that long is stopped by the reaper, in use or
held, after a warning; the record keeps when it started, resumes start the count again,
and the home page and a tab's status say why it will stop."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from codepool.core import events
from codepool.core.models import ReapAction, WorkspaceState
from codepool.core.pool import CodePool
from codepool.core.stores.sqlite import SQLiteStore
from tests.fakes import MemoryBackend
from tests.router_fixtures import Served, dispatched
from tests.test_pool import Clock

H = 3_600_000


async def test_a_workspace_past_its_age_stops_though_in_use_and_held(
    make_pool: Callable[..., CodePool], tmp_path: Path, ready_address: str
) -> None:
    clock = Clock(1_800_000_000_000)
    pool = make_pool(
        SQLiteStore(str(tmp_path / "a.db")),
        MemoryBackend(ready_address),
        clock,
        pool={"max_age_s": 8 * 3600, "max_hold_s": 8 * 3600, "warm_spares": 0},
    )
    ws = (await pool.assign("alice")).workspace
    assert ws.started_at_ms == clock.now
    await pool.assign("bob")

    async def work() -> None:  # both tabs in view; alice also holds hers
        for user in ("alice", "bob"):
            record = await pool.store.get_workspace(user)
            assert record is not None and record.state is WorkspaceState.RUNNING
            await pool.ping(user, record.instance_id)
        await pool.extend("alice", 8 * 3600)

    for _ in range(48):  # a working day, in ten-minute steps
        clock.advance(10 * 60_000)
        await work()
        assert all(d.action is ReapAction.KEEP for d in await pool.reap())
    clock.advance(60_000)  # 8 h 1 min after the start, still at work
    await work()
    decisions = {d.user: d for d in await pool.reap()}
    assert decisions["alice"].action is ReapAction.STOP and decisions["alice"].done
    assert decisions["alice"].reason == "ran 8h01m > max age 8h00m"
    assert decisions["bob"].action is ReapAction.STOP
    stopped = await pool.store.get_workspace("alice")
    assert stopped is not None and stopped.state is WorkspaceState.STOPPED
    log = [e async for e in events.read(pool.store, 0, clock.now)]
    stops = sorted((e.user, e.actor, e.detail) for e in log if e.kind.value == "stop")
    assert stops == [("alice", "reaper", "max-age"), ("bob", "reaper", "max-age")]
    # A resume starts the count again.
    clock.advance(60_000)
    again = (await pool.assign("alice")).workspace
    assert again.started_at_ms == clock.now
    clock.advance(H)
    await pool.ping("alice", again.instance_id)
    assert all(d.user != "alice" for d in await pool.reap())  # an hour in: not too old


async def test_the_page_and_the_tab_say_the_age_ends_it(make_served: Callable[..., Any]) -> None:
    served: Served = await make_served(
        pool={"max_age_s": 3600, "idle_timeout_s": 7200, "idle_warning_s": 3000}
    )
    c = await served.client("alice")
    await dispatched(c, "alice", served)
    ws = await served.pool.store.get_workspace("alice")
    assert ws is not None and ws.started_at_ms > 0
    same = {"Sec-Fetch-Site": "same-origin"}
    body = await (await c.get("/api/me", headers=same)).json()
    assert body["ends"] == "max-age" and 3500 <= body["left_s"] <= 3600
    page = await (await c.get("/")).text()
    assert "a workspace runs at most 1 hour at a time" in page
    html = served.router.proxy.heartbeat.tag("i-x").decode()
    assert 'data-max-age="3600"' in html
