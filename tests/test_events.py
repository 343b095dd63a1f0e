"""The event log: every lifecycle step of the core writes what happened, whose, by whom
and why (the CLI and the router through the same methods); the router adds logins and
holds with the person as actor; `codepool events` reads, filters and follows it, and
refuses bad input without a traceback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from codepool.core import events
from codepool.core.models import Event
from codepool.core.pool import CodePool
from codepool.core.stores.sqlite import SQLiteStore
from tests.fakes import MemoryBackend
from tests.helpers import codepool_env
from tests.router_fixtures import Served, dispatched, login
from tests.test_pool import Clock

DAY = 86_400_000


def seen(found: list[Event]) -> list[tuple[str, str, str, str]]:
    return [(e.kind.value, e.user, e.actor, e.detail) for e in found]


async def all_events(pool: CodePool) -> list[Event]:
    return [e async for e in events.read(pool.store, 0, pool.clock() + DAY)]


async def test_each_lifecycle_step_writes_one_event_with_its_actor_and_reason(
    make_pool: Callable[..., CodePool], tmp_path: Path, ready_address: str
) -> None:
    clock = Clock(1_800_000_000_000)
    backend = MemoryBackend(ready_address, max_size=6)
    pool = make_pool(
        SQLiteStore(str(tmp_path / "e.db")),
        backend,
        clock,
        pool={"stopped_retention_days": 1, "idle_timeout_s": 60},
    )
    alice = (await pool.assign("alice")).workspace
    for step in (
        pool.assign("bob"),
        pool.assign("alice"),  # already running: nothing happened
        pool.extend("alice", 3600, actor="root"),
        pool.release("alice", actor="cli:ops"),
        pool.assign("alice"),
    ):
        clock.advance(1000)
        await step
    clock.advance(2 * 3600_000)  # both idle now
    await pool.reap()
    clock.advance(2 * DAY)  # stopped past retention
    await pool.reap()
    carol = (await pool.assign("carol")).workspace
    backend.boxes.pop(carol.instance_id)  # the box vanishes behind our back
    clock.advance(1000)
    await pool.reconcile()
    found = await all_events(pool)
    assert [e.at_ms for e in found] == sorted(e.at_ms for e in found)
    # (the reaper's stops of one cycle share a time: by name here)
    assert seen(sorted(found, key=lambda e: (e.at_ms, e.user))) == [
        ("assign", "alice", "alice", "launched"),
        ("assign", "bob", "bob", "spare"),
        ("hold", "alice", "root", "3600"),
        ("stop", "alice", "cli:ops", "released"),
        ("assign", "alice", "alice", "resumed"),
        ("stop", "alice", "reaper", "idle"),
        ("stop", "bob", "reaper", "idle"),
        ("terminate", "alice", "reaper", "retention"),
        ("terminate", "bob", "reaper", "retention"),
        ("assign", "carol", "carol", "spare"),
        ("terminate", "carol", "reconcile", "gone"),
    ]
    assert found[0].instance_id == alice.instance_id
    # Retention: the leader trims what is older than store.events_retention_days.
    clock.advance(401 * DAY)
    assert await pool.trim_events() == len(found)
    assert await all_events(pool) == []


async def test_a_store_that_fails_to_record_does_not_undo_the_step(
    make_pool: Callable[..., CodePool], tmp_path: Path, ready_address: str
) -> None:
    store = SQLiteStore(str(tmp_path / "e.db"))
    pool = make_pool(store, MemoryBackend(ready_address), Clock())

    async def down(events: Sequence[Event]) -> None:
        from codepool.core.errors import StoreUnavailable

        raise StoreUnavailable("store unavailable: test")

    store.append_events = down  # type: ignore[method-assign]
    a = await pool.assign("alice")
    assert a.how == "launched"
    assert (await store.get_workspace("alice")) is not None


async def test_the_router_records_logins_holds_and_stops_with_the_person_as_actor(
    served: Served,
) -> None:
    stranger = await served.client()
    await login(stranger, "alice", "wrong password")
    c = await served.client("alice")
    await dispatched(c, "alice", served)
    page = await (await c.get("/")).text()
    csrf = page.split('name="csrf" value="')[1].split('"')[0]
    same = {"Sec-Fetch-Site": "same-origin"}
    await c.post("/hold", data={"csrf": csrf, "for": "1h"}, headers=same)
    await c.post("/stop", data={"csrf": csrf, "confirm": "yes"}, headers=same)
    await c.post("/logout", data={"csrf": csrf}, headers=same)
    found = [
        (kind, user, actor, detail.split(" from ")[0])
        for kind, user, actor, detail in seen(await all_events(served.pool))
    ]
    assert found == [
        ("login", "alice", "alice", "failed"),
        ("login", "alice", "alice", "password"),
        ("assign", "alice", "alice", found[2][3]),
        ("hold", "alice", "alice", "3600"),
        ("stop", "alice", "alice", "released"),
        ("logout", "alice", "alice", ""),
    ]
    assert found[2][3] in ("launched", "spare")


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "codepool", *args], env=env, capture_output=True, text=True
    )


async def test_codepool_events_reads_filters_follows_and_refuses_bad_input(
    state_dir: Path,
) -> None:
    env = codepool_env(state_dir, CODEPOOL_POOL_WARM_SPARES="0")
    follower = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "codepool", "events", "--follow", "--json", "--kind", "assign",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        for user in ("alice", "bob"):
            assert cli(env, "assign", user).returncode == 0
        assert cli(env, "release", "alice").returncode == 0
        assert follower.stdout is not None
        lines = [await asyncio.wait_for(follower.stdout.readline(), 20) for _ in range(2)]
        followed = [json.loads(line) for line in lines]
        assert [(e["kind"], e["user"]) for e in followed] == [
            ("assign", "alice"),
            ("assign", "bob"),
        ]
        assert followed[0]["actor"].startswith("cli:") and followed[0]["detail"] == "launched"
    finally:
        follower.terminate()
        await follower.wait()
    out = cli(env, "events", "--json", "--user", "alice")
    assert out.returncode == 0, out.stderr
    mine = [json.loads(line) for line in out.stdout.splitlines()]
    assert [e["kind"] for e in mine] == ["assign", "stop"]
    table = cli(env, "events", "--since", "1h", "--kind", "stop")
    assert table.returncode == 0 and "released" in table.stdout and "launched" not in table.stdout
    for bad, says in [
        (["--kind", "nope"], "invalid event kind 'nope': allowed: assign"),
        (["--since", "yesterday"], "invalid time 'yesterday'"),
        (["--since", "2026-13-45"], "invalid time '2026-13-45'"),
        (["--since", "99999999999999999999d"], "invalid time '99999999999999999999d'"),
        (["--since", "1h", "--until", "1d"], "is before --since"),
        (["--user", "../x"], "invalid user"),
        (["--follow", "--until", "1h"], "cannot be combined"),
    ]:
        result = cli(env, "events", *bad)
        assert result.returncode == 2, (bad, result)
        assert says in result.stderr and "Traceback" not in result.stderr, (bad, result.stderr)


async def test_the_admin_page_shows_the_last_days_usage(served: Served) -> None:
    c = await served.client("alice")
    await dispatched(c, "alice", served)
    await served.pool.release("alice")
    root = await served.client("root")
    page = await (await root.get("/admin")).text()
    assert "The last 30 days" in page and "saved by stopping idle workspaces" in page
    usage = page.split('id="usage"')[1]
    assert "<td>alice</td>" in usage and "No prices set" in usage
    # kept a few minutes: the pool table refreshes every few seconds, the figures do not
    assert served.router.usage is not None
    made = served.router.usage[0]
    await root.get("/admin")
    assert served.router.usage[0] == made
