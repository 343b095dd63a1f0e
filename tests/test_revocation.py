"""Ending sessions: two routers on one real Redis, and the operator's `codepool users`
commands run as a separate process, as on a real deployment. After `users passwd`,
`users logout` and `users remove`, every session of the person stops working on both
routers within 2 s, on the main origin and on their workspace's origin; after
`users admin --revoke`, the admin page and the workspaces the admin had entered close
just as fast."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.router_fixtures import Client, Served, dispatched

local_only = pytest.mark.parametrize("make_served", ["local"], indirect=True)
REVOKED_WITHIN_S = 2.0


@pytest.fixture
async def two_routers(
    redis_prefix: str, make_served: Callable[..., Any], redis_url: str, state_dir: Path
) -> tuple[Served, Served, dict[str, str]]:
    prefix = redis_prefix
    store = {"url": redis_url, "key_prefix": prefix}
    router = {"admins_enter_workspaces": True}
    a: Served = await make_served(store=store, router=router)
    b: Served = await make_served(store=store, router=router)
    env = {
        **os.environ,
        "CODEPOOL_STORE_URL": redis_url,
        "CODEPOOL_STORE_KEY_PREFIX": prefix,
        "CODEPOOL_LOCAL_STATE_DIR": str(state_dir),
    }
    return a, b, env


def codepool(env: dict[str, str], *args: str, stdin: str = "") -> None:
    result = subprocess.run(
        [sys.executable, "-m", "codepool", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def ends_within(limit_s: float, *checks: Callable[[], Awaitable[bool]]) -> float:
    """Seconds until every check says "refused" (at most limit_s)."""
    started = time.monotonic()
    while True:
        results = [await check() for check in checks]
        elapsed = time.monotonic() - started
        if all(results):
            return elapsed
        assert elapsed < limit_s, f"still open after {elapsed:.1f} s: {results}"
        await asyncio.sleep(0.1)


def main_refused(c: Client) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        resp = await c.get("/dispatch", allow_redirects=False)
        return resp.status == 302 and resp.headers["Location"].startswith("/login")

    return check


def workspace_refused(c: Client, url: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await c.get(url)).status == 401

    return check


async def working(a: Served, b: Served) -> tuple[Client, Client]:
    """alice in her workspace through router a, and logged in on router b too."""
    on_a = await a.client("alice")
    await dispatched(on_a, "alice", a)
    assert (await on_a.get(a.ws("alice", "/healthz"))).status == 200
    on_b = await b.client("alice")
    assert (await on_b.get("/dispatch", allow_redirects=False)).status == 302
    return on_a, on_b


@local_only
@pytest.mark.parametrize(
    "command",
    [
        ("users", "passwd", "alice", "--password-stdin"),
        ("users", "logout", "alice"),
        ("users", "remove", "alice", "--yes"),
    ],
)
async def test_an_operator_command_ends_every_session_on_every_router(
    two_routers: tuple[Served, Served, dict[str, str]], command: tuple[str, ...]
) -> None:
    a, b, env = two_routers
    on_a, on_b = await working(a, b)
    codepool(env, *command, stdin="a-brand-new-password\n")
    elapsed = await ends_within(
        REVOKED_WITHIN_S,
        main_refused(on_a),
        main_refused(on_b),
        workspace_refused(on_a, a.ws("alice", "/healthz")),
        workspace_refused(on_a, b.ws("alice", "/healthz")),  # the same origin, on router b
    )
    print(f"{command[1]}: every session refused after {elapsed:.2f} s")


@local_only
async def test_revoked_admin_rights_end_at_once_in_open_sessions(
    two_routers: tuple[Served, Served, dict[str, str]],
) -> None:
    a, b, env = two_routers
    await working(a, b)
    root_a, root_b = await a.client("root"), await b.client("root")
    await a.enter(root_a, "alice")  # an admin in alice's workspace
    assert (await root_a.get(a.ws("alice", "/healthz"))).status == 200
    assert (await root_a.get("/admin")).status == 200
    assert (await root_b.get("/admin")).status == 200
    codepool(env, "users", "admin", "root", "--revoke")

    def admin_refused(c: Client) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return (await c.get("/admin")).status == 403

        return check

    await ends_within(
        REVOKED_WITHIN_S,
        admin_refused(root_a),
        admin_refused(root_b),
        workspace_refused(root_a, a.ws("alice", "/healthz")),
    )
    assert (await root_a.get("/dispatch", allow_redirects=False)).status in (200, 302)  # still in
