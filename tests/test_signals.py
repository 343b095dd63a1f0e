"""`codepool serve` under a service manager, as a real process: the systemd notify
protocol played by the test (READY once listening, WATCHDOG while running, RELOADING and
READY around a reload, STOPPING as it drains, in that order); SIGHUP re-reads the config,
refuses a bad one and keeps serving, and never fails a request, neither one in flight nor
one arriving meanwhile; SIGTERM lets requests in flight finish; with --workers too."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import eventually
from tests.ports import free_port
from tests.serving import Server, add_accounts, client, enter, log_in_and_dispatch, serve_env

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def notify_socket(tmp_path: Path) -> AsyncIterator[list[str]]:
    """A stand-in for systemd's notify socket, read as systemd does, all along: the
    messages received, in order (each a datagram; its first line names it)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.setblocking(False)
    seen: list[str] = []

    async def read() -> None:
        while True:
            seen.append((await asyncio.get_running_loop().sock_recv(sock, 4096)).decode())

    reader = asyncio.create_task(read())
    yield seen
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    sock.close()


async def wait_for_message(seen: list[str], wanted: Callable[[str], bool]) -> str:
    async def hit() -> str:
        hits = [m for m in seen if wanted(m)]
        return hits[-1] if hits else ""

    return await eventually(hit, f"a message; received: {seen}")


async def hammer(url: str, stop: asyncio.Event) -> list[int]:
    """GET url over and over, each on a new connection, until stop: every status."""
    statuses = []
    while not stop.is_set():
        async with aiohttp.ClientSession() as http, http.get(url) as r:
            statuses.append(r.status)
    return statuses


async def reload_without_failing(server: Server, config: Path, idle_s: int) -> None:
    """Change the idle timeout and SIGHUP, with a long poll in flight and requests
    arriving all along: none fails, and the new timeout is in force after."""
    async with client() as http:
        await log_in_and_dispatch(http, server.url, "alice")
        slow = asyncio.create_task(http.get(server.url + "/api/me?wait=3"))
        stop = asyncio.Event()
        steady = asyncio.create_task(hammer(server.url + "/health", stop))
        await asyncio.sleep(0.5)
        config.write_text(f"[pool]\nidle_timeout_s = {idle_s}\n")
        server.proc.send_signal(signal.SIGHUP)
        resp = await slow
        assert resp.status == 200 and (await resp.json())["state"] == "running"

        async def reloaded() -> bool:  # the new configuration answers once the old app is gone
            async with http.get(server.url + "/api/me") as r:
                return bool((await r.json())["left_s"] <= idle_s)

        await eventually(reloaded, "the reloaded idle timeout")
        stop.set()
        statuses = await steady
        assert statuses and set(statuses) == {200}, statuses


async def start(state_dir: Path, tmp_path: Path, *args: str, **env: str) -> tuple[Server, Path]:
    """A router for alice, on a config file the test rewrites, telling the notify socket."""
    config = tmp_path / "codepool.toml"
    config.write_text("[pool]\nidle_timeout_s = 300\n")
    await add_accounts(state_dir, ["alice"])
    notify = str(tmp_path / "notify.sock")
    environ = serve_env(state_dir, CODEPOOL_CONFIG=str(config), NOTIFY_SOCKET=notify, **env)
    return Server(environ, free_port(), *args), config


async def test_notify_reload_refusal_and_drain(
    state_dir: Path, tmp_path: Path, notify_socket: list[str]
) -> None:
    server, config = await start(state_dir, tmp_path, WATCHDOG_USEC="400000")  # every 0.2 s
    seen = notify_socket
    try:
        server.wait_up()
        ready = await wait_for_message(seen, lambda m: m.startswith("READY=1"))
        assert f"STATUS=serving on {server.url}" in ready

        async def watched() -> bool:
            return sum(m == "WATCHDOG=1" for m in seen) >= 3

        await eventually(watched, f"three watchdog pings; received: {seen}")

        await reload_without_failing(server, config, idle_s=200)
        reloading = await wait_for_message(seen, lambda m: m.startswith("RELOADING=1"))
        assert "MONOTONIC_USEC=" in reloading

        # A bad config is refused: the router says so and serves on with the old one.
        config.write_text('[pool]\nidle_timeout_s = "soon"\n')
        server.proc.send_signal(signal.SIGHUP)
        refused = await wait_for_message(seen, lambda m: "STATUS=reload refused" in m)
        assert refused.startswith("READY=1") and "idle_timeout_s" in refused, seen
        async with client() as http:
            location = await log_in_and_dispatch(http, server.url, "alice")
            async with http.get(server.url + "/api/me") as r:
                assert r.status == 200 and (await r.json())["left_s"] <= 200
            await enter(http, location)
            origin = location.rstrip("/")
            ws = await http.ws_connect(
                origin + "/ws", headers={"Origin": origin}, protocols=("echo",)
            )
            await ws.send_str("before")
            assert await ws.receive_str() == "before"

            # SIGTERM: a request in flight finishes, the WebSocket is closed with 1001
            # (going away), then the router exits 0.
            slow = asyncio.create_task(http.get(server.url + "/api/me?wait=3"))
            await asyncio.sleep(0.5)
            server.proc.send_signal(signal.SIGTERM)
            closing = await asyncio.wait_for(ws.receive(), 10)
            assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1001, closing
            await ws.close()
            resp = await slow
            assert resp.status == 200 and (await resp.json())["state"] == "running"
            server.proc.wait(timeout=30)
            out = server.output()
    finally:
        if server.proc.poll() is None:
            out = server.stop()
    assert server.proc.returncode == 0, out[-3000:]
    await asyncio.sleep(0.2)  # the last datagram read
    order = [m.split("\n")[0] for m in seen if m != "WATCHDOG=1"]
    assert order == ["READY=1", "RELOADING=1", "READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]
    assert "reload refused" in out and "reloaded" in out


async def test_workers_reload_one_config_without_failing_a_request(
    state_dir: Path, tmp_path: Path, notify_socket: list[str]
) -> None:
    server, config = await start(state_dir, tmp_path, "--workers", "2", "--log-format", "json")
    try:
        server.wait_up()
        await wait_for_message(notify_socket, lambda m: m.startswith("READY=1"))
        await reload_without_failing(server, config, idle_s=200)
        config.write_text("[nope]\n")
        server.proc.send_signal(signal.SIGHUP)  # refused by the supervisor: nothing changes

        async def refusal_logged() -> bool:
            return "reload refused" in server.output()

        await eventually(refusal_logged, "the reload to be refused")
        async with aiohttp.ClientSession() as http, http.get(server.url + "/health") as r:
            assert r.status == 200
    finally:
        out = server.stop()
    assert server.proc.returncode == 0, out[-3000:]
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert sum(x["message"] == "reloaded" for x in lines) == 2, out[-3000:]  # each worker
    refused = [x for x in lines if x["message"].startswith("reload refused")]
    assert len(refused) == 1 and "unknown section [nope]" in refused[0]["reason"]


def test_notify_never_blocks_and_speaks_the_abstract_namespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A listener that stops reading fills its queue: later messages are dropped, the
    caller (the router's event loop) never waits. '@name' is the abstract namespace."""
    from codepool.daemon import systemd

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        name = f"codepool-test-{free_port()}"
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        sent = [systemd.notify("WATCHDOG=1") for _ in range(2000)]
        assert sent[0] and not sent[-1]  # the first arrive, the rest are dropped
        assert sock.recv(100) == b"WATCHDOG=1"
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")  # not a socket systemd names
    assert not systemd.notify("READY=1")
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not systemd.notify("READY=1")  # outside systemd: nothing, quietly
