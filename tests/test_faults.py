"""Faults under a serving router: a real Redis server of the test's own, stopped, emptied
and started again while people work, and a cloud that refuses every call for a while.
The background cycles are driven by hand (one call per cycle), so what each cycle sees
is fixed, not left to timing."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from codepool.core.errors import BackendError
from codepool.core.models import InstanceState, WorkspaceState
from codepool.core.pool import CodePool, build_pool
from codepool.core.stores.sqlite import SQLiteStore
from codepool.daemon.app import create_app
from codepool.daemon.context import ROUTER, Router
from tests.conftest import make_settings, need
from tests.fakes import OutageBackend
from tests.helpers import RouterServer
from tests.ports import free_port
from tests.router_fixtures import PASSWORDS, Client, add_test_accounts, login


class PrivateRedis:
    """A redis-server on a free loopback port that the test may stop and start; its data
    survives a stop (SHUTDOWN SAVE), as with a restarted or failed-over server."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary, self.folder, self.port = binary, folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self, *words: str) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(f"*{len(words)}\r\n".encode())
            for w in words:
                s.sendall(f"${len(w)}\r\n{w}\r\n".encode())
            return s.recv(1024)

    def start(self) -> None:
        options = {"port": str(self.port), "bind": "127.0.0.1", "save": "", "appendonly": "no"}
        argv = [self.binary, "--dir", str(self.folder), "--logfile", "redis.log"]
        for name, value in options.items():
            argv += [f"--{name}", value]
        self.proc = subprocess.Popen(argv)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.command("PING").startswith(b"+PONG"):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(OSError):  # it closes the connection as it exits
            self.command("SHUTDOWN", "SAVE")
        self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        need("redis-server", "it is not installed (apt-get install redis-server)")
    assert binary is not None
    server = PrivateRedis(binary, tmp_path)
    server.start()
    yield server
    if server.proc is not None:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture
async def serving(
    private_redis: PrivateRedis, state_dir: Path
) -> AsyncIterator[tuple[Router, Client]]:
    """A router on the private Redis and the local backend, loops driven by the test,
    with alice logged in and working in her workspace (its origin entered)."""
    port = free_port()
    settings = make_settings(
        state_dir,
        store={"url": private_redis.url},
        pool={"warm_spares": 0, "idle_timeout_s": 5},
        router={"public_url": f"http://127.0.0.1:{port}"},
    )
    pool = build_pool(settings)
    await add_test_accounts(pool.store)
    app = create_app(pool, settings, run_loops=False)
    server = RouterServer(app, port=port)
    await server.start_server()
    client = Client(f"http://127.0.0.1:{port}")
    await pool.assign("alice")
    await log_in_and_enter(client, app[ROUTER])
    yield app[ROUTER], client
    await client.close()
    await server.close()
    await pool.close()


async def log_in_and_enter(client: Client, router: Router) -> None:
    assert (await login(client, "alice", PASSWORDS["alice"])).status == 302
    resp = await client.get(router.origins.workspace_url("alice"), headers={"Accept": "text/html"})
    assert resp.status == 200 and resp.url.path == "/_codepool/enter"


async def ping(client: Client, instance_id: str) -> tuple[int, Any]:
    url = client.origin.replace("127.0.0.1", "alice.localhost") + "/_codepool/ping"
    resp = await client.post(url, json={"instanceId": instance_id})
    body = await resp.json() if resp.content_type == "application/json" else None
    return resp.status, body


async def test_a_redis_restart_answers_503_then_recovers_and_stops_nobody_who_was_working(
    serving: tuple[Router, Client], private_redis: PrivateRedis
) -> None:
    router, client = serving
    ws = await router.pool.store.get_workspace("alice")
    assert ws is not None
    assert (await ping(client, ws.instance_id))[0] == 204
    assert await router.loops.cycle()  # leader, nothing to do

    private_redis.stop()
    started = time.monotonic()
    status, body = await ping(client, ws.instance_id)
    assert (status, body["error"]) == (503, "store-unavailable")
    resp = await client.get("/dispatch", headers={"Accept": "application/json"})
    assert resp.status == 503 and (await resp.json())["error"] == "store-unavailable"
    resp = await client.get("/health")
    health = await resp.json()
    assert resp.status == 503 and health["checks"]["store"].startswith("error")
    assert not await router.loops.cycle()  # no lease, no reaping on missing data
    assert time.monotonic() - started < 30  # answers, not hangs

    # Alice keeps working; her pings are lost until the store is back, long enough that
    # her last recorded ping is older than the idle timeout.
    await asyncio.sleep(router.pool.settings.pool.idle_timeout_s + 1)
    private_redis.start()
    assert await router.loops.cycle()  # the first cycle after the outage: she is kept
    after = await router.pool.store.get_workspace("alice")
    assert after is not None and after.state is WorkspaceState.RUNNING
    boxes = {i.instance_id: i for i in await router.pool.backend.list_instances()}
    assert boxes[ws.instance_id].state is InstanceState.RUNNING
    assert (await ping(client, ws.instance_id))[0] == 204  # service resumed by itself
    resp = await client.get("/health")
    assert resp.status == 200


async def test_after_the_grace_an_idle_workspace_is_stopped_again(
    serving: tuple[Router, Client], private_redis: PrivateRedis
) -> None:
    """The grace is one idle timeout, not forever: without pings, the reaper acts after it."""
    router, _ = serving
    private_redis.stop()
    assert not await router.loops.cycle()
    private_redis.start()
    assert await router.loops.cycle()
    router.loops.no_idle_stops_until = time.monotonic()  # the grace has run out
    await asyncio.sleep(router.pool.settings.pool.idle_timeout_s + 0.5)
    assert await router.loops.cycle()
    after = await router.pool.store.get_workspace("alice")
    assert after is not None and after.state is WorkspaceState.STOPPED


async def test_an_emptied_redis_is_rebuilt_by_the_next_cycle_with_a_grace_period(
    serving: tuple[Router, Client], private_redis: PrivateRedis
) -> None:
    """A Redis that comes back empty (no persistence, a failover to a blank replica):
    the boxes are the truth, so one cycle puts every assignment back, fresh. Accounts and
    sessions are not on the boxes: everyone is logged out, and the accounts come back
    from a backup (`codepool users export`, then `users import`)."""
    router, client = serving
    ws = await router.pool.store.get_workspace("alice")
    assert ws is not None
    await asyncio.sleep(1.1)  # so that "fresh" below is told apart from her old lastSeen
    assert private_redis.command("FLUSHALL").startswith(b"+OK")
    await asyncio.sleep(1.1)  # the router's session cache
    assert (await ping(client, ws.instance_id))[0] == 401  # logged out with the store
    await add_test_accounts(router.pool.store)  # the operator restores the accounts
    client.session.cookie_jar.clear()
    await log_in_and_enter(client, router)
    status, _ = await ping(client, ws.instance_id)
    assert status == 409  # the store does not know her workspace: refused, not invented
    assert await router.loops.cycle()  # reconcile rebuilds from the backend
    back = await router.pool.store.get_workspace("alice")
    assert back is not None and back.instance_id == ws.instance_id
    assert back.state is WorkspaceState.RUNNING and back.last_seen_ms > ws.last_seen_ms + 1000
    assert (await ping(client, ws.instance_id))[0] == 204
    boxes = await router.pool.backend.list_instances()
    assert [b.instance_id for b in boxes if b.owner == "alice"] == [ws.instance_id]


async def test_a_failing_backend_is_counted_and_the_loop_carries_on(
    make_pool: Callable[..., CodePool], ready_address: str, tmp_path: Path
) -> None:
    """The cloud refuses every call for a while (throttling past botocore's retries): each
    cycle reports its failed steps in the metrics and the next cycle runs; a dispatch
    says "backend unavailable"; once the cloud answers, the idle workspace is reaped."""
    backend = OutageBackend(ready_address)
    pool = make_pool(SQLiteStore(str(tmp_path / "pool.db")), backend, pool={"warm_spares": 0})
    await pool.assign("alice")
    app = create_app(pool, pool.settings, run_loops=False)
    router = app[ROUTER]

    def failures(step: str) -> float:
        value = router.metrics.registry.get_sample_value(
            "codepool_backend_errors_total", {"step": step}
        )
        return value or 0.0

    backend.down = True
    for _ in range(3):
        assert await router.loops.cycle()  # it led, and it will lead again
    assert failures("reconcile") == 3 and failures("scale") == 3
    with pytest.raises(BackendError, match="ThrottlingException"):
        await pool.assign("bob")
    backend.down = False
    pool.clock = lambda: int(time.time() * 1000) + 3_600_000  # alice left an hour ago
    assert await router.loops.cycle()
    ws = await pool.store.get_workspace("alice")
    assert ws is not None and ws.state is WorkspaceState.STOPPED
    assert failures("reap") == 0
    await pool.close()
