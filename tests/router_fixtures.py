"""Fixtures for router tests: a `codepool serve` app in process on a real port (so Origin
checks see a real public URL), with accounts, a pool on the local backend running the
stand-in workspace, and helpers to log in and dispatch."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from aiohttp.test_utils import TestClient, TestServer

from codepool.core.pool import CodePool, build_pool
from codepool.core.settings import Settings
from codepool.core.store import create_store
from codepool.daemon.app import create_app
from codepool.daemon.auth import Users
from codepool.daemon.context import ROUTER, Router
from tests.conftest import make_settings
from tests.helpers import serve_app

PASSWORDS = {"alice": "alice-password", "bob": "bob-password", "root": "root-password"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    settings: Settings
    pool: CodePool
    router: Router
    origin: str
    make_client: Callable[[], Any]

    async def client(self, user: str | None = None) -> TestClient[Any, Any]:
        c: TestClient[Any, Any] = await self.make_client()
        if user is not None:
            resp = await login(c, user, PASSWORDS[user])
            assert resp.status == 302, await resp.text()
        return c


async def login(
    c: TestClient[Any, Any], user: str, password: str, next_path: str = "/dispatch"
) -> aiohttp.ClientResponse:
    page = await (await c.get("/login")).text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None
    return await c.post(
        "/login",
        data={"csrf": csrf.group(1), "user": user, "password": password, "next": next_path},
        allow_redirects=False,
    )


@pytest.fixture(params=["local", "aws"])
async def make_served(
    state_dir: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., Any]]:
    """Build routers on the local backend, or on the AWS backend (moto) whose boxes all
    answer at one in-process stand-in workspace: every router test runs on both."""
    clients: list[TestClient[Any, Any]] = []
    servers: list[TestServer] = []
    pools: list[CodePool] = []
    async with contextlib.AsyncExitStack() as stack:
        aws = await _aws_pool_maker(stack, state_dir) if request.param == "aws" else None
        yield await _builder(state_dir, aws, clients, servers, pools)
        for c in clients:
            await c.close()
        for server in servers:
            await server.close()  # runs the app's cleanup: loops, dispatcher, proxy client
        for p in pools:
            await p.close()


async def _aws_pool_maker(
    stack: contextlib.AsyncExitStack, state_dir: Path
) -> Callable[[Settings], CodePool]:
    from moto import mock_aws

    from tests.aws_fixtures import (
        GROUP,
        REGION,
        LoopbackAwsBackend,
        aws_settings,
        create_group,
        record,
    )
    from tests.standin_workspace import make_app

    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        stack.enter_context(_env(var, value))
    stack.enter_context(mock_aws())
    session = boto3.Session(region_name=REGION)
    create_group(session)
    home = state_dir / "aws-home"
    home.mkdir(parents=True, exist_ok=True)
    box_url = await stack.enter_async_context(serve_app(make_app(home)))

    def build(settings: Settings) -> CodePool:
        session.client("autoscaling").update_auto_scaling_group(
            AutoScalingGroupName=GROUP, MaxSize=settings.local.max_size
        )
        backend = LoopbackAwsBackend(aws_settings(), box_url, session=session)
        record(backend, session)  # every call the router makes is checked against AWS's rules
        return CodePool(settings, create_store(settings.store_url), backend)

    return build


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


async def _builder(
    state_dir: Path,
    aws: Callable[[Settings], CodePool] | None,
    clients: list[TestClient[Any, Any]],
    servers: list[TestServer],
    pools: list[CodePool],
) -> Callable[..., Any]:

    async def build(**sections: dict[str, Any]) -> Served:
        port = free_port()
        origin = f"http://127.0.0.1:{port}"
        sections.setdefault("pool", {}).setdefault("warm_spares", 0)
        sections.setdefault("router", {})["public_url"] = origin
        settings = make_settings(state_dir, **sections)
        users = Users(settings.users_file)
        for name, password in PASSWORDS.items():
            if users.get(name) is None:
                users.add(name, password, admin=name == "root")
        pool = aws(settings) if aws is not None else build_pool(settings)
        pools.append(pool)
        app = create_app(pool, settings, run_loops=False)
        server = TestServer(app, host="127.0.0.1", port=port)

        async def make_client() -> TestClient[Any, Any]:
            c: TestClient[Any, Any] = TestClient(server, auto_decompress=False)
            await c.start_server()
            clients.append(c)
            return c

        await server.start_server()
        servers.append(server)
        return Served(settings, pool, app[ROUTER], origin, make_client)

    return build


@pytest.fixture
async def served(make_served: Callable[..., Any]) -> Served:
    result: Served = await make_served()
    return result


async def dispatched(c: TestClient[Any, Any], user: str) -> None:
    """Follow /dispatch until it sends the user to their workspace."""
    for _ in range(100):
        resp = await c.get("/dispatch", allow_redirects=False)
        if resp.status == 302:
            assert resp.headers["Location"] == f"/w/{user}/"
            return
        assert resp.status == 200, await resp.text()
        status = await (await c.get("/dispatch/status")).json()
        assert status["state"] in ("starting", "ready"), status
        await asyncio.sleep(0.2)
    raise AssertionError("never dispatched")
