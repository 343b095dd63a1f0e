"""The local workspaces' isolation, for the tests that try it from inside: the checkout
every account can read, the stand-in run as a workspace, commands run in its terminal,
per-person accounts (the router as root) and `codepool serve` as an ordinary user with
bubblewrap sandboxes."""

from __future__ import annotations

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
from codepool.core.pool import CodePool, build_pool
from codepool.core.settings import settings_from_mapping
from codepool.core.sockets import parse
from tests.conftest import ROOT, STANDIN, need
from tests.helpers import kill_slots
from tests.ports import free_port, worker_index

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
        "CODEPOOL_ROUTER_PORT": str(port),
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
