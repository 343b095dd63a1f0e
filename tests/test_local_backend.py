"""The local backend with real processes (the stand-in workspace) and its files on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from codepool.core import sockets
from codepool.core.backends.local import LocalBackend, SlotMeta, _alive
from codepool.core.errors import BackendError
from codepool.core.models import InstanceState, Lifecycle
from codepool.core.pool import CodePool
from codepool.core.ready import http_ok, wait_ready
from codepool.core.store import create_store
from tests.conftest import make_settings, standin_command


def backend_for(state_dir: Path, **local: object) -> LocalBackend:
    settings = make_settings(state_dir, local=dict(local))
    return LocalBackend(settings.local, settings.state_dir)


def meta(state_dir: Path, iid: str) -> SlotMeta:
    return SlotMeta(**json.loads((state_dir / "slots" / iid / "meta.json").read_text()))


async def test_launch_claim_stop_start_terminate(state_dir: Path) -> None:
    be = backend_for(state_dir)
    await be.set_desired(1)
    [spare] = await be.list_instances()
    assert spare.is_spare and spare.state is InstanceState.RUNNING
    await wait_ready(spare.address, be.ready_path, 10)
    assert (await be.capacity()).desired == 1

    box = await be.claim(spare.instance_id, "alice")
    assert box.owner == "alice"
    with pytest.raises(BackendError, match="not an unowned running spare"):
        await be.claim(spare.instance_id, "bob")

    home = state_dir / "slots" / box.instance_id / "home"
    (home / "notes.txt").write_text("my work")
    pid = meta(state_dir, box.instance_id).pid
    family = sockets.descendants(pid)  # the sandbox and the workspace in it
    assert family, "the workspace runs under its slot's process"

    result = await be.stop([box.instance_id])
    assert result.succeeded == (box.instance_id,)
    [stopped] = await be.list_instances()
    assert stopped.state is InstanceState.STOPPED and stopped.lifecycle is Lifecycle.STANDBY
    assert stopped.owner == "alice"  # owner kept: the disk is hers
    assert (await be.capacity()).desired == 0  # EnterStandby decrements desired
    assert not await http_ok(box.address, be.ready_path)
    assert not Path(f"/proc/{pid}").exists() or not _alive(meta(state_dir, box.instance_id))
    left = [p for p, start in family if sockets.proc_start(p) == start]
    assert not left, f"processes of the stopped workspace still run: {left}"

    resumed = await be.start(box.instance_id)
    assert resumed.lifecycle is Lifecycle.IN_SERVICE and (await be.capacity()).desired == 1
    await wait_ready(resumed.address, be.ready_path, 10)
    assert (home / "notes.txt").read_text() == "my work"  # same disk

    await be.terminate([box.instance_id])
    assert await be.list_instances() == []
    assert not (state_dir / "slots" / box.instance_id).exists()
    assert (await be.capacity()).desired == 0


async def test_processes_outlive_the_backend_object(state_dir: Path) -> None:
    await backend_for(state_dir).set_desired(2)
    # A new backend object (a new CLI run, a restarted daemon) finds the same boxes.
    again = backend_for(state_dir)
    found = await again.list_instances()
    assert len(found) == 2 and all(i.state is InstanceState.RUNNING for i in found)
    for inst in found:
        await wait_ready(inst.address, again.ready_path, 10)


async def test_a_dead_process_reads_as_stopped(state_dir: Path) -> None:
    be = backend_for(state_dir)
    await be.set_desired(1)
    [inst] = await be.list_instances()
    os.killpg(meta(state_dir, inst.instance_id).pid, 9)
    for _ in range(100):
        [inst] = await be.list_instances()
        if inst.state is InstanceState.STOPPED:
            break
    assert inst.state is InstanceState.STOPPED and inst.lifecycle is Lifecycle.IN_SERVICE
    assert not inst.in_service


async def test_a_process_no_record_names_is_stopped_with_its_slot(state_dir: Path) -> None:
    """A `codepool assign` killed between starting a slot's process and writing its pid
    down leaves a process that no record names (the test starts one, as that command
    would have, and writes nothing): starting the slot again stops it, and so does
    ending the slot; its sandbox and workspace with it."""
    be = backend_for(state_dir)
    await be.set_desired(1)
    [inst] = await be.list_instances()
    iid = inst.instance_id
    await be.stop([iid])
    stray = be._spawn(meta(state_dir, iid))  # started, never written down
    await wait_ready(be._address(stray), be.ready_path, 10)
    family = [(stray.pid, stray.pid_start), *sockets.descendants(stray.pid)]
    assert len(family) > 1 and _alive(stray)
    await be.start(iid)
    assert not [p for p, start in family if sockets.proc_start(p) == start]
    assert _alive(meta(state_dir, iid))  # the slot's own, recorded process runs

    await be.stop([iid])  # a stray is only possible beside a record whose process is gone
    stray = be._spawn(meta(state_dir, iid))
    await wait_ready(be._address(stray), be.ready_path, 10)  # a crash's leftover is not new
    await be.terminate([iid])
    assert not _alive(stray)


async def test_desired_must_stay_within_limits(state_dir: Path) -> None:
    be = backend_for(state_dir, max_size=2)
    with pytest.raises(BackendError, match=r"outside the group's limits \[0, 2\]"):
        await be.set_desired(3)
    assert await be.list_instances() == []


async def test_missing_code_server_says_how_to_install(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "nocache"))
    monkeypatch.delenv("CODEPOOL_CODE_SERVER_DIR", raising=False)
    monkeypatch.setattr("codepool.core.backends.local.SHARED_INSTALL", tmp_path / "noopt")
    be = backend_for(state_dir, command=["code-server", "--socket", "{socket}"])
    with pytest.raises(BackendError, match="code-server not found: install it with"):
        await be.set_desired(1)
    assert await be.list_instances() == []  # nothing half-made
    assert (await be.capacity()).desired == 0


async def test_a_bad_placeholder_is_named(state_dir: Path) -> None:
    be = backend_for(state_dir, command=[*standin_command(), "{nope}"])
    with pytest.raises(BackendError, match="bad placeholder 'nope'"):
        await be.set_desired(1)


async def test_assign_stop_assign_keeps_files_through_the_core(state_dir: Path) -> None:
    settings = make_settings(state_dir)
    pool = CodePool(
        settings, create_store(settings.store_url), LocalBackend(settings.local, settings.state_dir)
    )
    try:
        a = await pool.assign("alice")
        home = state_dir / "slots" / a.workspace.instance_id / "home"
        (home / "todo.md").write_text("finish the reaper")
        await pool.release("alice")
        assert not await http_ok(a.workspace.address, "/healthz")
        b = await pool.assign("alice")
        assert b.how == "resumed" and b.workspace.instance_id == a.workspace.instance_id
        assert await http_ok(b.workspace.address, "/files/todo.md")
    finally:
        await pool.close()


async def test_slow_start_is_waited_for(state_dir: Path) -> None:
    settings = make_settings(state_dir, local={"command": standin_command(delay_s=1.0)})
    pool = CodePool(
        settings, create_store(settings.store_url), LocalBackend(settings.local, settings.state_dir)
    )
    progress: list[str] = []
    try:
        a = await pool.assign("alice", progress.append)
        assert await http_ok(a.workspace.address, "/healthz")
        assert any("Almost ready" in p for p in progress)
    finally:
        await pool.close()
