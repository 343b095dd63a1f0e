"""Local workspaces kept apart, tried from inside: commands run in a real workspace as its
own terminal would (the stand-in's /exec), and try to read the router's store and config,
another person's slot, the router's environment, and to signal the router. Both ways:
per-person Unix accounts (the router as root), and the bubblewrap sandbox (the router as
an ordinary user). Without either, the machine serves one person only."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from codepool.core.errors import BackendError
from codepool.core.sockets import proc_start
from tests.conftest import need
from tests.isolation_fixtures import (
    SECRET,
    Sandboxed,
    account,
    accounts_pool,
    assign_as,
    run_in,
    slot_of,
)
from tests.router_fixtures import PASSWORDS, dispatched, login


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


async def test_a_sandbox_path_under_tmp_is_readable_by_the_persons_account(
    root_state: Path, test_accounts: str, checkout: Path
) -> None:
    """local.sandbox_paths under /tmp: the folders above it are made in the sandbox's own
    /tmp, open to the person's account (made before that /tmp was mounted, bubblewrap made
    them again, closed: the workspace could not start)."""
    shared = Path(tempfile.mkdtemp(prefix="codepool-paths-"))
    try:
        (shared / "deep").mkdir()
        (shared / "deep" / "tool.txt").write_text("shared tool")
        for folder in (shared, shared / "deep"):
            folder.chmod(0o755)
        (shared / "deep" / "tool.txt").chmod(0o644)
        pool = accounts_pool(
            root_state, test_accounts, checkout, sandbox_paths=[str(checkout), str(shared / "deep")]
        )
        try:
            alice = (await pool.assign("alice")).workspace.address
            found = await run_in(alice, f"cat {shared / 'deep' / 'tool.txt'}")
            assert found["out"] == "shared tool", found
        finally:
            await pool.close()
    finally:
        shutil.rmtree(shared, ignore_errors=True)
