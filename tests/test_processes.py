"""Concurrency across real processes: many `codepool assign` commands at once, sharing one
store (SQLite on disk, or a real Redis) and one local backend with real workspace processes."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import standin_command
from tests.helpers import codepool_env, drop_redis_keys
from tests.ports import free_port
from tests.serving import Server, add_accounts, client, log_in, log_in_and_dispatch, serve_env


@pytest.mark.parametrize("store_kind", ["sqlite", "redis"])
def test_concurrent_cli_assigns_give_each_user_one_workspace(
    state_dir: Path, store_kind: str, request: pytest.FixtureRequest
) -> None:
    env = codepool_env(state_dir, CODEPOOL_LOCAL_MAX_SIZE="20", CODEPOOL_POOL_ASSIGN_TIMEOUT_S="60")
    if store_kind == "redis":
        env["CODEPOOL_STORE_URL"] = request.getfixturevalue("redis_url")
        env["CODEPOOL_STORE_KEY_PREFIX"] = f"codepool-proc-{secrets.token_hex(4)}:"
        request.addfinalizer(
            lambda: drop_redis_keys(env["CODEPOOL_STORE_URL"], env["CODEPOOL_STORE_KEY_PREFIX"])
        )
    users = [f"user{n}" for n in range(8)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "codepool", "assign", users[n % len(users)], "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(24)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    by_user: dict[str, set[str]] = {}
    for r in results:
        by_user.setdefault(r["user"], set()).add(r["instance_id"])
    assert sorted(by_user) == sorted(users)
    assert all(len(ids) == 1 for ids in by_user.values()), by_user
    assert len({next(iter(ids)) for ids in by_user.values()}) == len(users)
    owners = [json.loads(m.read_text())["owner"] for m in (state_dir / "slots").glob("*/meta.json")]
    assert sorted(o for o in owners if o) == sorted(users)  # no box owned twice, none lost
    status = subprocess.run(
        [sys.executable, "-m", "codepool", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(status.stdout)["workspaces"]
    assert sorted(r["user"] for r in rows) == sorted(users)
    assert all(r["state"] == "running" for r in rows)


def test_a_killed_assign_is_finished_by_the_next_one(state_dir: Path) -> None:
    """SIGKILL `codepool assign` while the box it claimed is still booting: the next assign
    gives the user that same box, and nobody ends up with two."""
    env = codepool_env(
        state_dir,
        CODEPOOL_LOCAL_COMMAND=" ".join(standin_command(delay_s=3.0)),
        CODEPOOL_POOL_WARM_SPARES="0",
    )
    codepool = [sys.executable, "-m", "codepool"]
    first = subprocess.Popen(
        [*codepool, "assign", "alice"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 30
    claimed = None
    while claimed is None and time.monotonic() < deadline:
        for meta in (state_dir / "slots").glob("*/meta.json"):
            with contextlib.suppress(ValueError, OSError):
                if json.loads(meta.read_text())["owner"] == "alice":
                    claimed = meta.parent.name
        time.sleep(0.05)
    assert claimed is not None, "the first assign never claimed a box"
    first.kill()  # mid-assign: tagged, store says starting, box not yet answering
    first.communicate(timeout=10)

    again = subprocess.run(
        [*codepool, "assign", "alice", "--json"], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["instance_id"] == claimed
    owners = [json.loads(m.read_text())["owner"] for m in (state_dir / "slots").glob("*/meta.json")]
    assert owners.count("alice") == 1
    check = subprocess.run(
        [*codepool, "reconcile", "--dry-run", "--json"], env=env, capture_output=True, text=True
    )
    assert json.loads(check.stdout)["actions"] == []


@pytest.mark.timeout(180)
async def test_a_spare_taken_by_a_router_killed_before_tagging_it_goes_back_to_the_pool(
    state_dir: Path, servers: list[Server]
) -> None:
    """A router takes the only spare from the pool for alice and is SIGKILLed before it
    tags the box as hers (here: held at the backend's lock, where the tag is written).
    The box, running and owned by nobody, goes back to the pool at the leader's first
    cycle once the dead router's claim has lapsed (not ten minutes later), and serves the
    next person who comes."""
    env = serve_env(state_dir, CODEPOOL_POOL_WARM_SPARES="1", CODEPOOL_LOCAL_MAX_SIZE="1")
    await add_accounts(state_dir, ["alice"])
    leader = Server(env, free_port())
    servers.append(leader)
    await asyncio.to_thread(leader.wait_up)
    db = state_dir / "codepool.db"
    spare = await until(lambda: one(db, "SELECT instance_id FROM spares"), "the warm spare")
    victim = Server(env, free_port())
    servers.append(victim)
    await asyncio.to_thread(victim.wait_up)

    with (state_dir / "backend.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # no box is tagged while the test holds this
        async with client() as http:
            await log_in(http, victim.url, "alice")
            async with http.get(victim.url + "/dispatch", allow_redirects=False) as resp:
                assert resp.status == 200, await resp.text()
        claimed = "SELECT instance_id FROM claims WHERE user = 'alice'"
        assert await until(lambda: one(db, claimed), "the victim's claim") == spare
        assert one(db, "SELECT instance_id FROM spares") is None
        victim.proc.kill()
        victim.proc.wait()
    assert json.loads((state_dir / "slots" / spare / "meta.json").read_text())["owner"] is None

    back = await until(lambda: one(db, "SELECT instance_id FROM spares"), "the spare back", 60)
    assert back == spare
    async with client() as http:
        location = await log_in_and_dispatch(http, leader.url, "alice")
    assert location.startswith("http://alice.localhost:")
    assert json.loads((state_dir / "slots" / spare / "meta.json").read_text())["owner"] == "alice"


def one(db: Path, query: str) -> str | None:
    """The first column of the first row of a query on a router's SQLite store."""
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        row = conn.execute(query).fetchone()
    return str(row[0]) if row else None


async def until(check: Callable[[], str | None], what: str, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while (found := await asyncio.to_thread(check)) is None:
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)
    return found
