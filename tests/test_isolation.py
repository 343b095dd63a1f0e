"""Local workspaces kept apart, tried from inside: commands run in a real workspace as its
own terminal would (the stand-in's /exec), and try to read the router's store and config,
another person's slot, the router's environment, and to signal the router. Both ways:
per-person Unix accounts (the router as root), and the bubblewrap sandbox (the router as
an ordinary user). Without either, the machine serves one person only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from codepool.core.backends.isolation import bwrap_works, kill_account
from codepool.core.errors import BackendError
from codepool.core.pool import CodePool, build_pool
from codepool.core.settings import settings_from_mapping
from codepool.core.sockets import parse, proc_start
from tests.conftest import ROOT, STANDIN, need
from tests.helpers import kill_slots
from tests.ports import free_port, worker_index
from tests.router_fixtures import PASSWORDS, dispatched, login

SYSTEM_PYTHON = "/usr/bin/python3.11"  # an ordinary account cannot run root's pyenv Python
SECRET = "s3cret-" + secrets.token_hex(8)  # planted in the router's environment


def open_to_all(path: Path) -> bool:
    """Whether every account can reach path (each folder above it lets others pass)."""
    return all(p.stat().st_mode & 0o001 for p in (path, *path.parents))


@pytest.fixture(scope="module")
def checkout() -> Iterator[Path]:
    """This checkout's code, the stand-in and the .venv's packages where every account
    can read them: the checkout itself if it may, else a copy made of hard links (a
    checkout under /root is closed to other accounts)."""
    if not Path(SYSTEM_PYTHON).exists():
        need("a system Python 3.11", f"{SYSTEM_PYTHON} is missing")
    site = ROOT / ".venv" / "lib" / "python3.11" / "site-packages"
    if open_to_all(site):
        yield ROOT
        return
    copy = Path(tempfile.mkdtemp(prefix="codepool-checkout-"))
    copy.chmod(0o755)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    for part in ("codepool", "tests"):
        shutil.copytree(ROOT / part, copy / part, copy_function=link)
    shutil.copytree(site, copy / ".venv/lib/python3.11/site-packages", copy_function=link)
    for folder in [copy, *copy.rglob("*")]:
        if folder.is_dir():
            folder.chmod(0o755)
    yield copy
    shutil.rmtree(copy, ignore_errors=True)


def site_of(root: Path) -> Path:
    return root / ".venv" / "lib" / "python3.11" / "site-packages"


def standin(root: Path) -> list[str]:
    """The stand-in workspace with the system's Python (every account may run it), its
    packages from the .venv of root (a checkout every account can read)."""
    return [
        "/usr/bin/env",
        f"PYTHONPATH={site_of(root)}",
        SYSTEM_PYTHON,
        str(root / STANDIN.relative_to(ROOT)),
        "--socket",
        "{socket}",
        "--home",
        "{home}",
    ]


async def run_in(address: str, command: str) -> dict[str, Any]:
    """Run a shell command in the workspace at address, as its terminal would."""
    unix = parse(address)
    assert unix is not None, address
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(unix.path)) as http,
        http.post("http://localhost/exec", data=command) as resp,
    ):
        assert resp.status == 200
        result: dict[str, Any] = await resp.json()
        return result


def slot_of(state: Path, address: str) -> Path:
    unix = parse(address)
    assert unix is not None
    return Path(unix.path).parents[1]


async def attempts(state: Path, alice: str, bob: str, router_pid: int) -> dict[str, Any]:
    """What alice's terminal can do; each value is the command's exit code (0: it worked)."""
    bob_home = slot_of(state, bob) / "home"
    tries = {
        "read the store": f"cat {state}/codepool.db",
        "read the config": f"cat {state}/codepool.toml",
        "see bob's slot": f"ls {state}/slots | grep -q {slot_of(state, bob).name}",
        "read bob's files": f"cat {bob_home}/secret.txt",
        "list bob's home": f"ls {bob_home}",
        "write into bob's home": f"echo x > {bob_home}/planted",
        "signal the router": f"kill -0 {router_pid}",
        "read the router's environment": f"cat /proc/{router_pid}/environ",
        "write its own home": "echo mine > ~/mine.txt && cat ~/mine.txt",
    }
    found: dict[str, Any] = {}
    for what, command in tries.items():
        found[what] = (await run_in(alice, command))["code"]
    env = (await run_in(alice, "env"))["out"]
    found["environment"] = env
    return found


def check(found: dict[str, Any]) -> None:
    refused = [k for k in found if k not in ("write its own home", "environment")]
    assert all(found[k] != 0 for k in refused), found
    assert found["write its own home"] == 0, found
    env = found["environment"]
    assert SECRET not in env and "CODEPOOL_" not in env and "AWS_" not in env, env


# -- per-person accounts (the router as root) -------------------------------------------------


@pytest.fixture
def root_state() -> Iterator[Path]:
    """A state folder every account may pass through (/tmp is; the tests' own is not)."""
    if os.geteuid() != 0:
        need("root", "per-person accounts need `codepool serve` as root")
    folder = Path(tempfile.mkdtemp(prefix="codepool-accounts-"))
    folder.chmod(0o711)
    yield folder
    kill_slots(folder)
    shutil.rmtree(folder, ignore_errors=True)


# The test accounts' names: each parallel worker of the suite has its own.
ACCOUNT = f"cpt{worker_index()}-{{name}}"


def account(name: str) -> str:
    return ACCOUNT.format(name=name)


def remove_account(name: str, *, home: bool = False) -> None:
    """Delete a test account (and its home folder, given home), ending its processes
    first: userdel refuses an account that still runs one, and it would be left behind."""
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    kill_account(uid, wait_s=30)
    done = subprocess.run(
        ["userdel", *(["--remove"] if home else []), name], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture
def test_accounts() -> Iterator[str]:
    """The pattern of the test's accounts; they are deleted afterwards."""
    yield ACCOUNT
    for name in ("alice", "bob", "mallory"):
        remove_account(account(name))


def accounts_pool(state: Path, pattern: str, root: Path, **local: Any) -> CodePool:
    state.mkdir(mode=0o711, exist_ok=True)
    (state / "codepool.toml").write_text("[store]\nurl = 'redis://:password@10.0.0.1/0'\n")
    (state / "codepool.toml").chmod(0o600)
    settings = settings_from_mapping(
        {
            "local": {
                "state_dir": str(state),
                "command": standin(root),
                "isolation": "accounts",
                "sandbox_paths": [str(root)],
                "unix_user": pattern,
                **local,
            },
            "pool": {"warm_spares": 0, "assign_timeout_s": 30},
        }
    )
    return build_pool(settings)


async def test_per_person_accounts_keep_workspaces_apart(
    root_state: Path, test_accounts: str, checkout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODEPOOL_TEST_SECRET", SECRET)  # the router's own environment
    pool = accounts_pool(root_state, test_accounts, checkout)
    try:
        alice = (await pool.assign("alice")).workspace
        bob = (await pool.assign("bob")).workspace
        (slot_of(root_state, bob.address) / "home" / "secret.txt").write_text("bob's")
        assert (await run_in(alice.address, "id -un"))["out"].strip() == account("alice")
        owner = slot_of(root_state, alice.address) / "home"
        assert owner.stat().st_uid == pwd.getpwnam(account("alice")).pw_uid
        assert owner.stat().st_mode & 0o777 == 0o700
        found = await attempts(root_state, alice.address, bob.address, os.getpid())
        check(found)

        # A stop ends every process of the account, jobs left in the background too.
        await run_in(alice.address, "setsid sleep 1000 >/dev/null 2>&1 < /dev/null &")
        uid = pwd.getpwnam(account("alice")).pw_uid
        assert any(p.stat().st_uid == uid for p in Path("/proc").glob("[0-9]*"))
        await pool.release("alice")
        leftover = [p.name for p in Path("/proc").glob("[0-9]*") if _running_as(p, uid)]
        assert leftover == [], leftover
    finally:
        await pool.close()


def _running_as(proc: Path, uid: int) -> bool:
    """Whether /proc/<pid> is a live process (not a zombie awaiting its parent) of uid."""
    with contextlib.suppress(OSError, IndexError):
        return proc.stat().st_uid == uid and bool(proc_start(int(proc.name)))
    return False


async def test_an_account_codepool_did_not_make_is_never_used(
    root_state: Path, test_accounts: str, checkout: Path
) -> None:
    await asyncio.to_thread(
        subprocess.run, ["useradd", "--no-create-home", account("mallory")], check=True
    )
    pool = accounts_pool(root_state, test_accounts, checkout)
    try:
        with pytest.raises(BackendError, match="is not codepool's account for mallory"):
            await pool.assign("mallory")
    finally:
        await pool.close()


async def test_accounts_need_a_state_folder_the_accounts_can_reach(
    test_accounts: str, checkout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without bubblewrap (which mounts the folders where the account sees them), the
    accounts reach their folders through the state folder's own path."""
    if os.geteuid() != 0:
        need("root", "per-person accounts need root")
    monkeypatch.setattr(
        "codepool.core.backends.isolation.bwrap_works", lambda: "bubblewrap is not installed"
    )
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    pool = accounts_pool(closed / "state", test_accounts, checkout)
    try:
        with pytest.raises(BackendError, match="closed to other accounts"):
            await pool.assign("alice")
    finally:
        await pool.close()


# -- the sandbox (the router as an ordinary user) ----------------------------------------------


@pytest.fixture
def ordinary_user() -> Iterator[pwd.struct_passwd]:
    """An ordinary account to run the router as (made for the test when run as root)."""
    if os.geteuid() != 0:
        yield pwd.getpwuid(os.geteuid())
        return
    name = account("router")
    subprocess.run(["useradd", "--create-home", name], capture_output=True)
    yield pwd.getpwnam(name)
    remove_account(name, home=True)


Sandboxed = tuple[Path, Any, dict[str, str]]


@pytest.fixture
def sandboxed(ordinary_user: pwd.struct_passwd, checkout: Path) -> Iterator[Sandboxed]:
    """`codepool serve` as an ordinary user, with workspaces in bubblewrap sandboxes."""
    if why := bwrap_works():
        need("bubblewrap", why)
    state = Path(tempfile.mkdtemp(prefix="codepool-sandbox-"))
    os.chown(state, ordinary_user.pw_uid, ordinary_user.pw_gid)
    (state / "codepool.toml").write_text("[store]\nurl = ''\n")
    os.chown(state / "codepool.toml", ordinary_user.pw_uid, ordinary_user.pw_gid)
    port = free_port()
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": ordinary_user.pw_dir,
        "PYTHONPATH": f"{checkout}:{site_of(checkout)}",
        "CODEPOOL_CONFIG": str(state / "codepool.toml"),
        "CODEPOOL_LOCAL_STATE_DIR": str(state),
        "CODEPOOL_LOCAL_ISOLATION": "sandbox",
        "CODEPOOL_LOCAL_SANDBOX_PATHS": str(checkout),
        "CODEPOOL_LOCAL_COMMAND": " ".join(standin(checkout)),
        "CODEPOOL_POOL_WARM_SPARES": "0",
        "CODEPOOL_TEST_SECRET": SECRET,
        "AWS_SECRET_ACCESS_KEY": SECRET,
    }
    as_user = []
    if os.geteuid() == 0:
        uid, gid = ordinary_user.pw_uid, ordinary_user.pw_gid
        as_user = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    serve = subprocess.Popen(
        [*as_user, SYSTEM_PYTHON, "-m", "codepool", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), _connect(port):
                break
            time.sleep(0.1)
        yield state, (serve, as_user), env
    finally:
        serve.terminate()
        out, _ = serve.communicate(timeout=30)
        kill_slots(state)
        shutil.rmtree(state, ignore_errors=True)
        print(out[-3000:])


@contextlib.contextmanager
def _connect(port: int) -> Iterator[None]:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1):
        yield


def assign_as(as_user: list[str], env: dict[str, str], user: str) -> str:
    result = subprocess.run(
        [*as_user, SYSTEM_PYTHON, "-m", "codepool", "assign", user, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return str(json.loads(result.stdout)["address"])


async def test_sandboxes_keep_workspaces_apart(sandboxed: Sandboxed) -> None:
    state, (serve, as_user), env = sandboxed
    alice = await asyncio.to_thread(assign_as, as_user, env, "alice")
    bob = await asyncio.to_thread(assign_as, as_user, env, "bob")
    (slot_of(state, bob) / "home" / "secret.txt").write_text("bob's")
    found = await attempts(state, alice, bob, serve.pid)
    check(found)
    seen = (await run_in(alice, "ls /proc | grep -c '^[0-9]'"))["out"].strip()
    assert int(seen) < 10, seen  # its own few processes, none of the machine's


# -- neither: one person only -----------------------------------------------------------------


local_only = pytest.mark.parametrize("make_served", ["local"], indirect=True)


@local_only
async def test_without_isolation_the_machine_serves_one_person(
    make_served: Any, state_dir: Path
) -> None:
    served = await make_served(local={"isolation": "none"})
    alice = await served.client("alice")
    await dispatched(alice, "alice", served)
    with pytest.raises(BackendError, match="serves one person only, and alice has"):
        await served.pool.assign("bob")
    resp = await login(await served.client(), "bob", PASSWORDS["bob"])
    text = await resp.text()
    assert resp.status == 403 and "install bubblewrap" in text, text
    checks = {c.name: c for c in await served.pool.doctor()}
    assert not checks["isolation"].ok and "one person only" in checks["isolation"].detail
    await served.pool.release("alice", terminate=True)  # alice gone: bob may come
    assert (await login(await served.client(), "bob", PASSWORDS["bob"])).status == 302


@local_only
async def test_doctor_says_which_isolation_is_in_force(make_served: Any) -> None:
    served = await make_served()
    checks = {c.name: c for c in await served.pool.doctor()}
    assert checks["isolation"].ok and "bubblewrap sandbox" in checks["isolation"].detail


@local_only
async def test_doctor_says_when_workspaces_could_reach_the_store(
    redis_prefix: str, make_served: Any, redis_url: str
) -> None:
    if not redis_url.startswith("redis://"):
        need("a Redis on a loopback port", f"{redis_url} is another kind")
    served = await make_served(store={"url": redis_url, "key_prefix": redis_prefix})
    checks = {c.name: c for c in await served.pool.doctor()}
    assert not checks["store from workspaces"].ok
    assert "set a password" in checks["store from workspaces"].detail
