"""Fixtures for router tests: a `codepool serve` app in process on a real port (so Origin
checks see a real public URL), with accounts, a pool on the local backend running the
stand-in workspace, and helpers to log in and dispatch."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from codepool.core.accounts import hash_password
from codepool.core.models import Account
from codepool.core.pool import CodePool, build_pool
from codepool.core.settings import Settings
from codepool.core.store import Store, create_store
from codepool.daemon.app import create_app
from codepool.daemon.context import ROUTER, Router
from tests.conftest import make_settings
from tests.helpers import LoopbackNames, RouterServer, serve_app
from tests.ports import free_port

PASSWORDS = {"alice": "alice-password", "bob": "bob-password", "root": "root-password"}


@functools.cache
def password_hash(user: str) -> str:
    """The test accounts' hashes, made once per run (argon2id costs 50 ms or more)."""
    return hash_password(PASSWORDS[user])


async def add_test_accounts(store: Store) -> None:
    """alice, bob and the admin root, with the passwords of PASSWORDS."""
    for name in PASSWORDS:
        await store.add_account(Account(name, name == "root", password_hash(name), 1))


class Client:
    """A browser's view for the tests: one cookie jar over the main origin and every
    workspace origin (host-only cookies stay with their host), paths relative to the main
    origin or whole URLs. Every response is released when the client closes."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=LoopbackNames()),
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=60),
        )
        self._responses: list[aiohttp.ClientResponse] = []

    def url(self, path: str) -> str:
        return path if "://" in path else self.origin + path

    async def request(self, method: str, path: str, **kw: Any) -> aiohttp.ClientResponse:
        resp = await self.session.request(method, self.url(path), **kw)
        self._responses.append(resp)
        return resp

    async def get(self, path: str, **kw: Any) -> aiohttp.ClientResponse:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> aiohttp.ClientResponse:
        return await self.request("POST", path, **kw)

    def ws_connect(self, path: str, **kw: Any) -> Any:
        return self.session.ws_connect(self.url(path), **kw)

    def cookie(self, name: str, url: str = "") -> str | None:
        """The value of a cookie the browser would send to url (the main origin by default)."""
        found = self.session.cookie_jar.filter_cookies(URL(self.url(url or "/")))
        return found[name].value if name in found else None

    async def close(self) -> None:
        for resp in self._responses:
            resp.release()
        await self.session.close()


@dataclass
class Served:
    settings: Settings
    pool: CodePool
    router: Router
    origin: str
    make_client: Callable[[], Any]
    app: web.Application | None = None  # the router's application (its route table)

    async def client(self, user: str | None = None) -> Client:
        c: Client = await self.make_client()
        if user is not None:
            resp = await login(c, user, PASSWORDS[user])
            assert resp.status == 302, await resp.text()
        return c

    def ws(self, user: str, path: str = "/") -> str:
        """The URL of path in user's workspace (its own origin, or /w/<user> in path mode)."""
        return self.router.origins.workspace_url(user, path)

    def ping_url(self, user: str) -> str:
        """Where user's workspace page sends its heartbeat."""
        return self.ws(user, "/_codepool/ping") if self.router.origins.per_user else "/ping"

    async def enter(self, c: Client, user: str) -> None:
        """Open user's workspace origin as a browser does the first time: through the main
        origin's one-time pass, which leaves the workspace origin's own cookie."""
        name = self.router.cookies.workspace
        if not self.router.origins.per_user or c.cookie(name, self.ws(user)) is not None:
            return  # path mode, or entered already
        resp = await c.get(self.ws(user), headers={"Accept": "text/html"})
        assert resp.status == 200, await resp.text()
        assert resp.url.path == "/_codepool/enter", resp.url
        assert c.cookie(name, self.ws(user)) is not None


async def login(
    c: Client, user: str, password: str, next_path: str = "/dispatch"
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
    clients: list[Client] = []
    servers: list[RouterServer] = []
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
        LoopbackAwsBackend,
        aws_session,
        aws_settings,
        create_group,
        record,
    )
    from tests.standin_workspace import make_app

    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        stack.enter_context(_env(var, value))
    stack.enter_context(mock_aws())
    session = aws_session()
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
    clients: list[Client],
    servers: list[RouterServer],
    pools: list[CodePool],
) -> Callable[..., Any]:

    async def build(**sections: dict[str, Any]) -> Served:
        port = free_port()
        origin = f"http://127.0.0.1:{port}"
        sections.setdefault("pool", {}).setdefault("warm_spares", 0)
        sections.setdefault("router", {})["public_url"] = origin
        settings = make_settings(state_dir, **sections)
        pool = aws(settings) if aws is not None else build_pool(settings)
        pools.append(pool)
        await add_test_accounts(pool.store)
        app = create_app(pool, settings, run_loops=False)
        server = RouterServer(app, host="127.0.0.1", port=port)

        async def make_client() -> Client:
            c = Client(origin)
            clients.append(c)
            return c

        await server.start_server()
        servers.append(server)
        return Served(settings, pool, app[ROUTER], origin, make_client, app)

    return build


@pytest.fixture
async def served(make_served: Callable[..., Any]) -> Served:
    result: Served = await make_served()
    return result


async def dispatched(c: Client, user: str, served: Served | None = None) -> None:
    """Follow /dispatch until it sends the user to their workspace (and, given served,
    enter that workspace's origin)."""
    for _ in range(100):
        resp = await c.get("/dispatch", allow_redirects=False)
        if resp.status == 302:
            location = resp.headers["Location"]
            port = URL(c.origin).port
            assert location in (f"/w/{user}/", f"http://{user}.localhost:{port}/"), location
            if served is not None:
                await served.enter(c, user)
            return
        assert resp.status == 200, await resp.text()
        status = await (await c.get("/dispatch/status")).json()
        assert status["state"] in ("starting", "ready"), status
        await asyncio.sleep(0.2)
    raise AssertionError("never dispatched")
