"""`codepool serve` as a real process: first start, clean shutdown, and two routers on one
real Redis sharing the work: 400 concurrent logins and dispatches of 80 people over both,
one leader, one workspace per person."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from codepool.core.accounts import Accounts
from codepool.core.store import create_store
from tests.helpers import eventually, post_login
from tests.ports import free_port
from tests.serving import (
    Server,
    add_accounts,
    client,
    is_leader,
    login_and_dispatch,
    serve_env,
    session_cookies,
)


async def verify(state_dir: Path, user: str, password: str) -> Any:
    store = create_store(f"sqlite:///{state_dir / 'codepool.db'}")
    try:
        return await Accounts(store).verify(user, password)
    finally:
        await store.close()


def test_first_start_prints_the_admin_password_once(state_dir: Path, servers: list[Server]) -> None:
    env = serve_env(state_dir)
    first = Server(env, free_port())
    servers.append(first)
    first.wait_up()
    out = first.stop()
    assert first.proc.returncode == 0, out
    secret = state_dir / "initial-admin-password"
    password = secret.read_text().strip()
    assert password not in out and out.count(str(secret)) == 1  # says where (once), not what
    assert secret.stat().st_mode & 0o777 == 0o600
    account = asyncio.run(verify(state_dir, "admin", password))
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


PEOPLE, VISITS = 60, 5  # 120 concurrent logins, then 300 concurrent dispatches


@pytest.mark.timeout(300)
async def test_two_routers_on_one_redis(
    redis_prefix: str, state_dir: Path, servers: list[Server], redis_url: str
) -> None:
    env = serve_env(
        state_dir,
        CODEPOOL_STORE_URL=redis_url,
        CODEPOOL_STORE_KEY_PREFIX=redis_prefix,
        CODEPOOL_LOCAL_MAX_SIZE=str(PEOPLE + 10),
        # Everyone comes from one address here, like an office behind one NAT, and their
        # attempts count while their passwords are checked: the operator raises the limit.
        CODEPOOL_ROUTER_LOGIN_ATTEMPTS_PER_CLIENT_PER_MINUTE=str(PEOPLE * 2),
    )
    names = [f"dev{n}" for n in range(PEOPLE)]
    await add_accounts(state_dir, names, redis_url, redis_prefix)
    a, b = Server(env, free_port()), Server(env, free_port())
    servers.extend([a, b])
    a.wait_up()
    b.wait_up()

    async def leaders() -> list[bool]:  # once either has run a cycle
        found = [await is_leader(s) for s in (a, b)]
        return found if any(found) else []

    assert sorted(await eventually(leaders, "a leader", timeout_s=120)) == [False, True]
    # Everyone logs in on both routers at once, then dispatches VISITS times at once
    # from as many browsers, spread over both: still one workspace each, and no box
    # given to two people. (A login per visit would measure argon2id on two cores.)
    routers = (a, b)
    logins = await asyncio.gather(
        *(session_cookies(r.url, name) for r in routers for name in names)
    )
    cookies = dict(zip([(r, n) for r in routers for n in names], logins, strict=True))
    tasks = [
        login_and_dispatch(routers[visit % 2].url, name, cookies[routers[visit % 2], name])
        for visit in range(VISITS)
        for name in names
    ]
    try:
        locations = await asyncio.gather(*tasks)
    except AssertionError:  # the routers' logs say why someone was not dispatched
        print("ROUTER A", a.stop()[-20000:])
        print("ROUTER B", b.stop()[-20000:])
        raise
    assert sorted(set(locations)) == sorted(f"{n}.localhost" for n in names)
    owners = [
        json.loads(m.read_text()).get("owner") for m in (state_dir / "slots").glob("*/meta.json")
    ]
    owned = [o for o in owners if o]
    assert sorted(owned) == sorted(names)  # one box each, none shared
    out_a = a.stop()
    assert a.proc.returncode == 0, out_a
    # The survivor takes over the loops once the lease is free.
    await eventually(lambda: is_leader(b), "the second router to lead")


async def test_a_router_and_the_cli_share_one_sqlite_store(
    state_dir: Path, servers: list[Server]
) -> None:
    """The embedded default: one router, and an operator's `codepool assign` runs at the
    same moment as people's dispatches, for the same people, on one SQLite file."""
    env = serve_env(state_dir, CODEPOOL_LOCAL_MAX_SIZE="30", CODEPOOL_POOL_ASSIGN_TIMEOUT_S="90")
    names = [f"ops{n}" for n in range(10)]
    await add_accounts(state_dir, names)
    server = Server(env, free_port())
    servers.append(server)
    server.wait_up()

    async def cli_assign(name: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "codepool", "assign", name, "--json",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        return str(json.loads(out)["instance_id"])

    web = [login_and_dispatch(server.url, n) for n in names for _ in range(2)]
    cli = [cli_assign(n) for n in names for _ in range(2)]
    results = await asyncio.gather(*web, *cli)
    assert sorted(set(results[: len(web)])) == sorted(f"{n}.localhost" for n in names)
    by_user: dict[str, set[str]] = {}
    cli_of = [n for n in names for _ in range(2)]
    for name, instance in zip(cli_of, results[len(web) :], strict=True):
        by_user.setdefault(name, set()).add(instance)
    assert all(len(ids) == 1 for ids in by_user.values()), by_user
    owners = [json.loads(m.read_text())["owner"] for m in (state_dir / "slots").glob("*/meta.json")]
    assert sorted(o for o in owners if o) == sorted(names)  # one box each, none shared
    out = server.stop()
    assert server.proc.returncode == 0, out


async def _health(url: str) -> dict[str, object]:
    async with client() as http, http.get(url + "/health") as resp:  # a fresh connection
        assert resp.status == 200
        return dict(await resp.json())


async def test_workers_share_the_port_and_the_store(
    redis_prefix: str, state_dir: Path, servers: list[Server], redis_url: str
) -> None:
    """`--workers 2`: two routers behind one port, one leader between them, people served
    whichever worker their connections reach; a worker that dies is replaced, and a
    SIGTERM stops them all."""
    env = serve_env(state_dir, CODEPOOL_STORE_URL=redis_url, CODEPOOL_STORE_KEY_PREFIX=redis_prefix)
    names = [f"w{n}" for n in range(8)]
    await add_accounts(state_dir, names, redis_url, redis_prefix)
    server = Server(env, free_port(), "--workers", "2")
    servers.append(server)
    server.wait_up()
    started = time.monotonic()  # the workers were forked before this: older than it

    async def both_after_a_cycle() -> list[dict[str, object]]:
        seen = [await _health(server.url) for _ in range(40)]
        return seen if any(h["leader"] for h in seen) else []

    seen = await eventually(both_after_a_cycle, "a loop cycle")
    pids = {int(str(h["pid"])) for h in seen}
    assert len(pids) == 2 and server.proc.pid not in pids, pids
    assert len({h["pid"] for h in seen if h["leader"]}) == 1  # one leader of the two
    # A login made on one worker holds on the other (one key), and dispatch works
    # whichever worker each request reaches (one store).
    locations = await asyncio.gather(*(login_and_dispatch(server.url, n) for n in names))
    assert sorted(locations) == sorted(f"{n}.localhost" for n in names)

    victim = min(pids)
    await asyncio.sleep(max(0.0, 5.5 - (time.monotonic() - started)))
    os.kill(victim, signal.SIGKILL)

    async def replaced() -> set[int]:
        try:
            now = {int(str((await _health(server.url))["pid"])) for _ in range(10)}
        except aiohttp.ClientConnectionError:
            # A connection the killed worker had accepted and not answered is reset.
            return set()
        return now if victim not in now and len(now) == 2 else set()

    now = await eventually(replaced, "a worker to replace the killed one")
    out = server.stop()
    assert server.proc.returncode == 0, out
    assert "starting another" in out
    for pid in pids | now:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_workers_die_with_their_supervisor(
    redis_prefix: str, state_dir: Path, servers: list[Server], redis_url: str
) -> None:
    """A supervisor killed outright (SIGKILL, as systemd does after its stop timeout) takes
    its workers along: none is left serving old code on the port."""
    env = serve_env(state_dir, CODEPOOL_STORE_URL=redis_url, CODEPOOL_STORE_KEY_PREFIX=redis_prefix)
    server = Server(env, free_port(), "--workers", "2")
    servers.append(server)
    server.wait_up()
    pids: set[int] = set()
    for _ in range(40):
        pids.add(int(str((await _health(server.url))["pid"])))
        if len(pids) == 2:
            break
    assert len(pids) == 2
    server.proc.kill()
    server.proc.wait(10)
    for _ in range(50):
        alive = [p for p in pids if _alive(p)]
        if not alive:
            break
        await asyncio.sleep(0.1)
    assert not alive, f"workers outlived their supervisor: {alive}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (its parent is gone, nobody reaped it) is not serving.
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(") ")[-1][:1] != "Z"
    return False


def test_workers_refuse_a_port_another_router_serves(
    state_dir: Path, servers: list[Server]
) -> None:
    """A second `--workers` router on the port the first serves is refused, as on any
    busy port."""
    env = serve_env(state_dir)
    port = free_port()
    first = Server(env, port, "--workers", "2")
    servers.append(first)
    first.wait_up()
    result = subprocess.run(
        [sys.executable, "-m", "codepool", "serve", "--workers", "2", "--port", str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    out = first.stop()
    assert first.proc.returncode == 0, out


def test_workers_need_a_shared_store(state_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "codepool", "serve", "--workers", "2", "--port", "1"],
        env=serve_env(state_dir, CODEPOOL_STORE_URL="memory://"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert "memory:// is one process's own" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigusr1_logs_every_task_and_keeps_serving(state_dir: Path, servers: list[Server]) -> None:
    import signal
    import urllib.request

    server = Server(serve_env(state_dir), free_port())
    servers.append(server)
    server.wait_up()
    server.proc.send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    with urllib.request.urlopen(server.url + "/health", timeout=5) as resp:
        assert resp.status == 200  # still serving
    out = server.stop()
    assert server.proc.returncode == 0, out
    assert re.search(r"WARNING codepool.router: \d+ tasks:", out), out
    assert "name='codepool loops'" in out


async def test_a_reload_to_another_port_serves_there_and_gives_the_old_one_up(
    state_dir: Path,
) -> None:
    """router.port changed by a reload: the new app listens on sockets of its own, and
    once the old app has drained the old port is given up (nothing listens there)."""
    from codepool.cli.serve import Serving, listen
    from codepool.core.pool import build_pool
    from codepool.daemon.app import create_app
    from tests.conftest import make_settings

    first, second = free_port(), free_port()
    store = {"url": f"sqlite:///{state_dir / 'codepool.db'}"}
    before = make_settings(state_dir, router={"port": first}, store=store)
    after = make_settings(state_dir, router={"port": second}, store=store)
    serving = Serving(before, lambda: after)
    pool = build_pool(before)
    serving.listeners = listen("127.0.0.1", first)
    serving.runner = await serving.start(
        pool, create_app(pool, before, run_loops=False), before, serving.listeners
    )
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{first}/livez") as r:
                assert r.status == 200
            await serving.reload()
            async with http.get(f"http://127.0.0.1:{second}/livez") as r:
                assert r.status == 200
            with pytest.raises(aiohttp.ClientConnectionError):  # refused, not left waiting
                await http.get(
                    f"http://127.0.0.1:{first}/livez", timeout=aiohttp.ClientTimeout(total=5)
                )
        assert [s.getsockname()[1] for s in serving.listeners] == [second]
    finally:
        await serving.runner.cleanup()
        for sock in serving.listeners:
            sock.close()


def _join(port: int) -> str:
    """What a process of the router's own user gets trying to share its port (as a
    workspace sharing the machine's network could): '' if it could bind, else why not."""
    import socket

    with socket.socket() as thief:
        thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            thief.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return ""


def test_nobody_can_join_the_routers_port(state_dir: Path, servers: list[Server]) -> None:
    """The workers accept from one socket made by the supervisor, without SO_REUSEPORT:
    another process of the same user cannot join the port and be handed connections."""
    port = free_port()
    server = Server(serve_env(state_dir), port, "--workers", "2")
    servers.append(server)
    server.wait_up()
    assert _join(port) == "Address already in use"
    out = server.stop()
    assert server.proc.returncode == 0, out


LAUNCH_AS_SYSTEMD = """
import os, sys
os.dup2(int(sys.argv[1]), 3)  # systemd passes its sockets from descriptor 3 on
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="codepool.socket")
os.execv(sys.executable, [sys.executable, "-m", "codepool", "serve", *sys.argv[2:]])
"""


async def test_systemds_socket_holds_the_port_across_a_restart(state_dir: Path) -> None:
    """Socket activation: systemd (played by the test) holds the listening socket; the
    router, with workers, serves on it; while the router restarts the port stays taken
    (nobody else can bind it) and a login sent meanwhile waits in the queue and is
    answered by the next router."""
    import socket

    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(64)
    port = held.getsockname()[1]
    env = serve_env(state_dir)

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", LAUNCH_AS_SYSTEMD, str(held.fileno()), "--workers", "2"],
            env=env,
            pass_fds=(held.fileno(),),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    async def up() -> bool:
        with contextlib.suppress(aiohttp.ClientError):
            async with client() as http, http.get(f"http://127.0.0.1:{port}/livez") as r:
                return r.status == 200
        return False

    router = start()
    try:
        await eventually(up, "the router on systemd's socket")
        answers = await asyncio.gather(*(post_login(port) for _ in range(50)))
        assert all(a.startswith(b"HTTP/1.1 ") for a in answers), answers
        assert _join(port) == "Address already in use"
        router.send_signal(signal.SIGTERM)
        out, _ = router.communicate(timeout=60)
        assert router.returncode == 0 and "Traceback" not in out, out

        assert _join(port) == "Address already in use"  # held while no router runs
        waiting = asyncio.ensure_future(post_login(port))  # queued by the kernel
        await asyncio.sleep(0.5)
        assert not waiting.done()
        router = start()
        assert (await asyncio.wait_for(waiting, 60)).startswith(b"HTTP/1.1 ")
    finally:
        router.terminate()
        out, _ = router.communicate(timeout=60)
        held.close()
    assert "Traceback" not in out, out
