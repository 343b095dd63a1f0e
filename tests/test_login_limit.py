"""The login limit holds under a burst, across workers and routers: forty wrong passwords
sent at once get no more password checks than the limit allows, in total, whether they
reach two workers of one router or two routers sharing Redis."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path

import pytest

from tests.ports import free_port
from tests.serving import Server, add_accounts, client, serve_env

LIMIT = 5
BURST = 40


async def wrong_login(base: str) -> int:
    """One browser: the login page, then a wrong password; the answer's status."""
    async with client() as http:
        async with http.get(base + "/login") as resp:
            csrf = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
        assert csrf is not None
        form = {"csrf": csrf.group(1), "user": "alice", "password": "not-her-password"}
        async with http.post(base + "/login", data=form, allow_redirects=False) as resp:
            if resp.status == 429:
                assert int(resp.headers["Retry-After"]) >= 1
            return resp.status


async def burst(bases: list[str]) -> Counter[int]:
    statuses = await asyncio.gather(*(wrong_login(bases[i % len(bases)]) for i in range(BURST)))
    return Counter(statuses)


def limited_env(state_dir: Path, **extra: str) -> dict[str, str]:
    """The account's limit at LIMIT; the client's (60 by default) is above the burst, so
    the account's is the one the burst meets."""
    return serve_env(state_dir, CODEPOOL_ROUTER_LOGIN_ATTEMPTS_PER_MINUTE=str(LIMIT), **extra)


@pytest.mark.timeout(180)
async def test_a_burst_on_two_workers_gets_no_more_checks_than_the_limit(
    state_dir: Path, servers: list[Server]
) -> None:
    await add_accounts(state_dir, ["alice"])
    server = Server(limited_env(state_dir), free_port(), "--workers", "2")
    servers.append(server)
    await asyncio.to_thread(server.wait_up)
    seen = await burst([server.url])
    assert seen[401] <= LIMIT and seen[401] + seen[429] == BURST, seen
    out = server.stop()
    assert out.count("login failed") == seen[401], out[-3000:]  # each 401 was one check


@pytest.mark.timeout(180)
async def test_a_burst_on_two_routers_sharing_redis_gets_no_more_checks_than_the_limit(
    redis_prefix: str, state_dir: Path, servers: list[Server], redis_url: str
) -> None:
    await add_accounts(state_dir, ["alice"], redis_url, redis_prefix)
    env = limited_env(
        state_dir, CODEPOOL_STORE_URL=redis_url, CODEPOOL_STORE_KEY_PREFIX=redis_prefix
    )
    routers = [Server(env, free_port()), Server(env, free_port())]
    servers.extend(routers)
    for r in routers:
        await asyncio.to_thread(r.wait_up)
    seen = await burst([r.url for r in routers])
    assert seen[401] <= LIMIT and seen[401] + seen[429] == BURST, seen
    checked = sum(r.stop().count("login failed") for r in routers)
    assert checked == seen[401]
