"""`codepool serve` as a real process: first start, clean shutdown, and two routers on one
real Redis sharing the work (one leader; one workspace per user across both)."""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
import sys
from pathlib import Path

from codepool.daemon.auth import Users
from tests.helpers import drop_redis_keys
from tests.router_fixtures import free_port
from tests.serving import Server, is_leader, login_and_dispatch, serve_env


def test_first_start_prints_the_admin_password_once(state_dir: Path, servers: list[Server]) -> None:
    env = serve_env(state_dir)
    first = Server(env, free_port())
    servers.append(first)
    first.wait_up()
    out = first.stop()
    assert first.proc.returncode == 0, out
    match = re.search(r"user admin\s+password (\S+)", out)
    assert match is not None, out
    account = Users(state_dir / "users.json").verify("admin", match.group(1))
    assert account is not None and account.admin
    second = Server(env, free_port())
    servers.append(second)
    second.wait_up()
    out = second.stop()
    assert "password" not in out and second.proc.returncode == 0


def test_port_in_use_is_a_clear_error(state_dir: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "codepool", "serve", "--port", str(port)],
            env=serve_env(state_dir),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


async def test_two_routers_on_one_redis(
    state_dir: Path, servers: list[Server], redis_url: str
) -> None:
    prefix = f"codepool-serve-{secrets.token_hex(4)}:"
    env = serve_env(
        state_dir,
        CODEPOOL_STORE_URL=redis_url,
        CODEPOOL_STORE_KEY_PREFIX=prefix,
        CODEPOOL_LOCAL_MAX_SIZE="20",
    )
    users = Users(state_dir / "users.json")
    state_dir.mkdir(parents=True, exist_ok=True)
    names = [f"dev{n}" for n in range(6)]
    for name in names:
        users.add(name, f"{name}-password")
    a, b = Server(env, free_port()), Server(env, free_port())
    servers.extend([a, b])
    a.wait_up()
    b.wait_up()
    try:
        await asyncio.sleep(1.5)  # a loop cycle on each
        leaders = [await is_leader(s) for s in (a, b)]
        assert sorted(leaders) == [False, True]
        # Every user logs in on both routers at once, twice: still one workspace each.
        tasks = [
            login_and_dispatch(s.url, name, f"{name}-password")
            for name in names
            for s in (a, b, a, b)
        ]
        locations = await asyncio.gather(*tasks)
        assert sorted(set(locations)) == sorted(f"/w/{n}/" for n in names)
        slots = [m.read_text() for m in (state_dir / "slots").glob("*/meta.json")]
        for name in names:
            assert sum(f'"owner": "{name}"' in s for s in slots) == 1, name
        out_a = a.stop()
        assert a.proc.returncode == 0, out_a
        # The survivor takes over the loops once the lease is free.
        for _ in range(50):
            if await is_leader(b):
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("the second router never became leader")
    finally:
        drop_redis_keys(redis_url, prefix)
