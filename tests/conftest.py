"""Shared fixtures: the stores (SQLite, fakeredis, a real Redis), settings for a temporary
pool, the stand-in workspace, and a tiny ready-answering server for the fake backend.

CODEPOOL_TEST_REDIS_URL points the real-Redis tests at a server; with
CODEPOOL_REQUIRE_REAL=1 (set by .ci/run) a missing Redis or code-server fails the
run instead of skipping."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import sys
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from aiohttp import web

import codepool
from codepool.core.backends.local import code_server_candidates
from codepool.core.pool import CodePool
from codepool.core.settings import Settings, settings_from_mapping
from codepool.core.store import Store
from codepool.core.stores.redis import RedisStore
from codepool.core.stores.sqlite import SQLiteStore
from tests.fakes import MemoryBackend
from tests.helpers import serve_app

pytest_plugins = [
    "tests.leftovers",
    "tests.router_fixtures",
    "tests.aws_fixtures",
    "tests.browsing",
    "tests.nginx_fixtures",
    "tests.isolation_fixtures",
]

# moto loads a catalogue of real AMIs into every fresh EC2 backend (about 2 s each); the
# tests launch from a made-up AMI and need none of them.
os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")

STANDIN = Path(__file__).with_name("standin_workspace.py")
REQUIRE_REAL = os.environ.get("CODEPOOL_REQUIRE_REAL") == "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest tests first: those that ask for a longer time limit, and those driving
    a real browser or a real code-server. In a parallel run, a long test taken last keeps
    one worker busy after the others are done."""

    def weight(item: pytest.Item) -> float:
        limit = item.get_closest_marker("timeout")
        seconds = float(limit.args[0]) if limit is not None and limit.args else 0.0
        heavy = ("code_server", "browser")
        return -seconds - 100 * sum(item.get_closest_marker(m) is not None for m in heavy)

    items.sort(key=weight)  # stable: the rest keep their order


def need(what: str, why: str) -> None:
    """Skip for lack of a real dependency, or fail when CI requires it."""
    if REQUIRE_REAL:
        pytest.fail(f"{what} is required (CODEPOOL_REQUIRE_REAL=1) but {why}")
    pytest.skip(f"{what}: {why}")


def standin_command(delay_s: float = 0.0) -> list[str]:
    cmd = [sys.executable, str(STANDIN), "--socket", "{socket}", "--home", "{home}"]
    return [*cmd, "--delay", str(delay_s)] if delay_s else cmd


# Local workspaces run in a bubblewrap sandbox in the tests (as any ordinary user's would;
# the per-person accounts of root are tested on their own), and must see the stand-in's
# Python and code: the interpreter's installation and this checkout (which holds .venv).
ROOT = Path(__file__).resolve().parents[1]
SANDBOX_PATHS = [str(ROOT), sys.base_prefix]
TEST_LOCAL = {"isolation": "sandbox", "sandbox_paths": SANDBOX_PATHS}


def make_settings(state_dir: Path, **sections: dict[str, Any]) -> Settings:
    """Settings for a pool in state_dir running the stand-in workspace, plus overrides."""
    data: dict[str, dict[str, Any]] = {
        "local": {"state_dir": str(state_dir), "command": standin_command(), **TEST_LOCAL},
        "pool": {"assign_timeout_s": 20},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return settings_from_mapping(data)


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("CODEPOOL_TEST_REDIS_URL")
    if not url:
        need("a real Redis", "CODEPOOL_TEST_REDIS_URL is not set")
    assert url is not None
    return url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of the test's own on the real Redis; its keys are removed afterwards,
    once the routers started since are stopped (one still running would write again).
    Listed before the fixtures that start routers on it, so that it ends after them."""
    from tests.helpers import drop_redis_keys
    from tests.serving import Server

    prefix = f"codepool-test-{secrets.token_hex(4)}:"
    yield prefix
    Server.close_all()
    drop_redis_keys(redis_url, prefix)


async def _cleanup_redis(store: RedisStore) -> None:
    async for key in store.r.scan_iter(match=store.prefix + "*", count=500):
        await store.r.delete(key)


@pytest.fixture(params=["sqlite", "memory", "fakeredis", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """The store contract runs on every implementation: SQLite (on disk and memory://),
    fakeredis, and a real Redis server."""
    if request.param in ("sqlite", "memory"):
        url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'store.db'}"
        s: Store = SQLiteStore.from_url(url, batch_size=10)
        yield s
        await s.close()
    elif request.param == "fakeredis":
        import fakeredis

        client = fakeredis.FakeAsyncRedis(decode_responses=True)
        s = RedisStore(client, key_prefix="t:", batch_size=10)
        yield s
        await s.close()
    else:
        url = request.getfixturevalue("redis_url")
        rs = RedisStore.from_url(
            url, key_prefix=f"codepool-test-{secrets.token_hex(4)}:", batch_size=10
        )
        try:
            await rs.check()
        except Exception as exc:
            need("a real Redis", f"{url} does not answer: {exc}")
        yield rs
        await _cleanup_redis(rs)
        await rs.close()


@pytest.fixture
async def ready_address() -> AsyncIterator[str]:
    """A live HTTP server answering /healthz: where MemoryBackend's boxes 'run'."""

    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    app = web.Application()
    app.router.add_get("/healthz", ok)
    async with serve_app(app) as url:
        yield url


@pytest.fixture
def make_pool(tmp_path: Path, ready_address: str) -> Callable[..., CodePool]:
    """Build a CodePool on a given store and backend (MemoryBackend by default)."""

    def build(
        store: Store,
        backend: MemoryBackend | None = None,
        clock: Callable[[], int] | None = None,
        **sections: dict[str, Any],
    ) -> CodePool:
        settings = make_settings(tmp_path / "state", **sections)
        be = backend if backend is not None else MemoryBackend(ready_address)
        if clock is None:
            return CodePool(settings, store, be)
        return CodePool(settings, store, be, clock=clock)

    return build


@pytest.fixture
def code_server() -> str:
    """Path to a real code-server, or skip (fail under CODEPOOL_REQUIRE_REAL)."""
    found = shutil.which("code-server") or next(
        (str(p) for p in code_server_candidates() if p.is_file()), None
    )
    if not found:
        need("code-server", "it is not installed (scripts/install-code-server)")
    assert found is not None
    return found


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    """A pool's state dir; every workspace process started in it is stopped afterwards.
    Its workspaces run in bubblewrap sandboxes (TEST_LOCAL): without bubblewrap, skip."""
    from codepool.core.backends.isolation import bwrap_works

    if why := bwrap_works():
        need("bubblewrap", why)
    path = tmp_path / "state"
    yield path
    from tests.helpers import kill_slots
    from tests.serving import Server

    Server.close_all()  # first: a router still running would start workspaces again
    kill_slots(path)


@pytest.fixture
def servers() -> list[Any]:
    """Where a test lists the `codepool serve` processes it started (each is stopped after
    the test whether listed or not: tests.serving.Server)."""
    return []


# -- no traceback in any router's log ------------------------------------------------------------


class Tracebacks(logging.Handler):
    """Keeps every log record with a traceback that the router made: logged by codepool,
    or by aiohttp's server or asyncio about code of codepool's ("Error handling request",
    an exception no task retrieved). The tests' own stand-in servers are not judged."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        ours = record.name.startswith("codepool") and (record.exc_info or record.stack_info)
        if ours or (record.exc_info and _through_codepool(record.exc_info[2])):
            self.records.append(record)


CODEPOOL = str(Path(codepool.__file__).parent) + os.sep


def _through_codepool(tb: TracebackType | None) -> bool:
    return any(f.f_code.co_filename.startswith(CODEPOOL) for f, _ in traceback.walk_tb(tb))


@pytest.fixture(autouse=True)
def no_tracebacks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails a test whose routers logged a traceback: in this process (routers served in
    process) or in a `codepool serve` it started. Nothing a browser, a client or a box
    does may end in one; a test that provokes one on purpose says so with
    @pytest.mark.traceback_expected("why")."""
    from tests.serving import Server

    handler = Tracebacks()
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
    found = [
        f"in this process: {r.name}: {r.getMessage()}\n{_formatted(r)}" for r in handler.records
    ]
    found += [
        f"in the router on {url}:\n{out[out.index(TRACEBACK) :][:4000]}"
        for url, out in Server.take_outputs()
        if TRACEBACK in out
    ]
    if found and request.node.get_closest_marker("traceback_expected") is None:
        pytest.fail("a router logged a traceback:\n" + "\n\n".join(found), pytrace=False)


TRACEBACK = "Traceback (most recent call last)"


def _formatted(record: logging.LogRecord) -> str:
    return logging.Formatter().formatException(record.exc_info) if record.exc_info else ""
