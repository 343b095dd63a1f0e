"""The CLI through Typer's CliRunner, on the local backend with the stand-in workspace."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import shlex
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import codepool
from codepool.cli import render
from codepool.cli.app import app
from codepool.cli.render import EXIT_CODES
from codepool.core.accounts import Accounts
from codepool.core.errors import NoWorkspace
from codepool.core.store import create_store
from tests.conftest import SANDBOX_PATHS, standin_command

runner = CliRunner()


@pytest.fixture
def config(state_dir: Path, tmp_path: Path) -> Path:
    path = tmp_path / "codepool.toml"
    command = ", ".join(json.dumps(part) for part in standin_command())
    paths = ", ".join(json.dumps(p) for p in SANDBOX_PATHS)
    path.write_text(
        f'[local]\nstate_dir = "{state_dir}"\nmax_size = 3\ncommand = [{command}]\n'
        f'isolation = "sandbox"\nsandbox_paths = [{paths}]\n'
        "[pool]\nassign_timeout_s = 20\n"
    )
    return path


def cli(config: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["--config", str(config), *args])
    return result.exit_code, result.output


def cli_json(config: Path, *args: str) -> dict[str, Any]:
    code, output = cli(config, *args, "--json")
    assert code == 0, output
    body: dict[str, Any] = json.loads(output)
    return body


def test_assign_status_reap_release_assign(config: Path, state_dir: Path) -> None:
    a = cli_json(config, "assign", "alice")
    assert a["user"] == "alice" and a["state"] == "running" and a["how"] == "launched"
    assert a["url"] == "http://alice.localhost:8000/"  # her own origin, through the router
    assert str(a["address"]).startswith(f"unix:{state_dir}/slots/")  # a socket, not a port
    (state_dir / "slots" / str(a["instance_id"]) / "home" / "f.txt").write_text("kept")

    status = cli_json(config, "status")
    rows = status["workspaces"]
    assert isinstance(rows, list) and [r["user"] for r in rows] == ["alice"]
    # Each time twice: epoch ms for arithmetic, RFC 3339 (UTC) beside it; 0 is null.
    seen = datetime.fromisoformat(rows[0]["last_seen"])
    assert rows[0]["last_seen"].endswith("Z") and seen.utcoffset() == timedelta(0)
    assert int(seen.timestamp() * 1000) == rows[0]["last_seen_ms"]
    assert rows[0]["hold_until_ms"] == 0 and rows[0]["hold_until"] is None
    assert status["spares"] == 1

    # Piped (as here), the table is a header and plain tab-separated rows, nothing wrapped
    # or boxed, so `codepool status | grep alice` finds her whole line; the capacity line
    # goes to stderr.
    result = runner.invoke(app, ["--config", str(config), "status"])
    assert result.exit_code == 0 and "desired" in result.stderr
    header, *lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert header == ["user", "instance", "state", "idle", "held", "assigned"]
    [alice] = [line for line in lines if line[0] == "alice"]
    assert alice[1:3] == [a["instance_id"], "running"]
    # -o wide adds where each runs (whole, never wrapped) and for how long.
    result = runner.invoke(app, ["--config", str(config), "status", "-o", "wide"])
    header, *lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert header[6:] == ["address", "running"]
    [alice] = [line for line in lines if line[0] == "alice"]
    assert alice[6] == f"unix:{state_dir}/slots/{a['instance_id']}/run/ws.sock"
    code, out = cli(config, "status", "-o", "yaml")
    assert code == 2 and "the one format is wide" in out

    reap = cli_json(config, "reap", "--dry-run", "--idle-timeout", "1")
    assert reap["dry_run"] is True and reap["decisions"] == []
    code, out = cli(config, "reap", "--dry-run")
    assert code == 0 and "nothing idle" in out
    # Through a real pipe, as an operator types it.
    piped = subprocess.run(
        f"{shlex.quote(sys.executable)} -m codepool --config {shlex.quote(str(config))} "
        "status | grep alice | cut -f2",
        shell=True, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert piped.stdout == f"{a['instance_id']}\n"

    released = cli_json(config, "release", "alice")
    assert released == {"user": "alice", "instance_id": a["instance_id"], "terminated": False}

    again = cli_json(config, "assign", "alice")
    assert again["instance_id"] == a["instance_id"] and again["how"] == "resumed"
    assert (state_dir / "slots" / str(a["instance_id"]) / "home" / "f.txt").read_text() == "kept"

    code, out = cli(config, "extend", "alice", "--for", "2h")
    assert code == 0 and "held open for" in out
    code, out = cli(config, "reconcile", "--dry-run")
    assert code == 0 and "agree" in out
    code, out = cli(config, "scale", "--dry-run")
    assert code == 0 and "no change" in out


def test_reap_dry_run_says_what_would_stop_and_why(config: Path) -> None:
    cli_json(config, "assign", "alice")
    time.sleep(1.2)
    code, out = cli(config, "reap", "--dry-run", "--idle-timeout", "1")
    assert code == 0
    assert "would stop" in out and "alice" in out and "> 1s" in out
    status = cli_json(config, "status")
    assert [r["state"] for r in status["workspaces"]] == ["running"]


@pytest.mark.parametrize("bad", ["Alice", "../x", "a b", "x;reboot", "", "-x"])
def test_bad_user_names_are_refused_and_nothing_is_written(
    config: Path, state_dir: Path, bad: str
) -> None:
    for command in (["assign", bad], ["release", bad], ["extend", bad, "--for", "1h"]):
        code, out = cli(config, *command)
        assert code == 2, out
        assert "invalid user name" in out or "No such option" in out or "Usage" in out
    assert not state_dir.exists()


def test_bad_user_with_json_gives_a_json_error(config: Path) -> None:
    result = runner.invoke(app, ["--config", str(config), "assign", "Bad Name", "--json"])
    assert result.exit_code == 2 and result.stdout == ""  # errors go to stderr only
    body = json.loads(result.stderr)
    assert body["error"]["kind"] == "invalid-input"
    assert "invalid user name" in body["error"]["message"]


def test_bad_duration(config: Path) -> None:
    code, out = cli(config, "extend", "alice", "--for", "soon")
    assert code == 2 and "invalid duration 'soon'" in out


def test_bad_config_value_names_file_key_value_and_what_is_allowed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[pool]\non_idle = "explode"\n')
    code, out = cli(bad, "status")
    assert code == 2
    assert str(bad) in out and "pool.on_idle = 'explode'" in out
    assert "allowed: stop, terminate" in out


def test_unknown_key_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[pool]\nidle_timout_s = 30\n")
    code, out = cli(bad, "status")
    assert code == 2 and "unknown key pool.idle_timout_s" in out
    code, out = cli(tmp_path / "missing.toml", "status")
    assert code == 2 and "no such file" in out


def test_release_without_workspace(config: Path) -> None:
    code, out = cli(config, "release", "nobody")
    assert code == EXIT_CODES[NoWorkspace][0] == 3
    assert "nobody has no workspace" in out


def test_watch_and_json_conflict(config: Path) -> None:
    code, out = cli(config, "status", "--watch", "--json")
    assert code == 2 and "cannot be combined" in out


def test_help_has_examples_and_version() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "codepool assign alice" in result.output
    for command in ("assign", "release", "reap", "scale", "status", "extend", "reconcile"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Example" in result.output, command
    result = runner.invoke(app, ["version", "--json"])
    # One version: the package's metadata is made from codepool/__init__.py.
    assert json.loads(result.output) == {"version": importlib.metadata.version("codepool")}
    assert json.loads(result.output) == {"version": codepool.__version__}
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"codepool {codepool.__version__}\n"


def test_destroying_asks_first(
    config: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """release --terminate asks on a terminal; "no" changes nothing (exit 1), "yes" goes
    on; without a terminal it needs --yes (exit 2, nothing changed)."""
    a = cli_json(config, "assign", "alice")
    code, out = cli(config, "release", "alice", "--terminate", "--json")
    assert code == 2 and "Add --yes" in out
    monkeypatch.setattr(render, "interactive", lambda: True)
    result = runner.invoke(app, ["--config", str(config), "release", "alice", "--terminate"],
                           input="n\n")  # fmt: skip
    assert result.exit_code == 1 and "Delete alice's workspace" in result.output
    assert "nothing done" in result.output
    assert cli_json(config, "status")["workspaces"][0]["instance_id"] == a["instance_id"]
    result = runner.invoke(app, ["--config", str(config), "release", "alice", "--terminate"],
                           input="y\n")  # fmt: skip
    assert result.exit_code == 0 and "terminated" in result.stdout
    assert cli_json(config, "status")["workspaces"] == []


async def password_works(state_dir: Path, user: str, password: str) -> bool:
    store = create_store(f"sqlite:///{state_dir / 'codepool.db'}")
    try:
        return await Accounts(store).verify(user, password) is not None
    finally:
        await store.close()


def test_users_commands(config: Path, state_dir: Path) -> None:
    def users(*args: str, stdin: str = "") -> tuple[int, str]:
        result = runner.invoke(app, ["--config", str(config), "users", *args], input=stdin)
        return result.exit_code, result.output

    assert users("add", "alice", "--password-stdin", stdin="a-good-password\n")[0] == 0
    code, out = users("add", "alice", "--password-stdin", stdin="another-password\n")
    assert code == 2 and "already exists" in out
    code, out = users("add", "bob", "--password-stdin", stdin="short\n")
    assert code == 2 and "at least 8 characters" in out
    code, out = users("add", "Bad Name", "--password-stdin", stdin="a-good-password\n")
    assert code == 2 and "invalid user name" in out
    assert users("add", "root", "--admin", "--password-stdin", stdin="root-password\n")[0] == 0
    code, out = users("list", "--json")
    assert code == 0
    assert [(u["name"], u["admin"]) for u in json.loads(out)] == [("alice", False), ("root", True)]
    assert "hash" not in out and "argon2" not in out
    assert users("passwd", "alice", "--password-stdin", stdin="new-password\n")[0] == 0
    assert asyncio.run(password_works(state_dir, "alice", "new-password"))
    code, out = users("admin", "root", "--revoke", "--json")
    assert code == 0 and json.loads(out)["admin"] is False
    code, out = users("logout", "alice", "--json")
    assert code == 0 and json.loads(out) == {"name": "alice", "sessions_ended": 0}
    backup = state_dir.parent / "accounts.json"
    code, out = users("export", str(backup), "--json")
    assert code == 0 and json.loads(out)["accounts"] == 2
    assert backup.stat().st_mode & 0o777 == 0o600
    code, out = users("export", str(backup))
    assert code == 2 and "exists" in out
    code, out = users("remove", "alice")  # not on a terminal, and no --yes: refused
    assert code == 2 and "Add --yes to confirm" in out
    assert users("remove", "alice", "--yes")[0] == 0
    code, out = users("import", str(backup), "--json")
    assert code == 0 and json.loads(out)["imported"] == ["alice"]  # root is still there
    assert asyncio.run(password_works(state_dir, "alice", "new-password"))
    assert users("remove", "alice", "-y")[0] == 0
    code, out = users("import", str(state_dir / "nope.json"))
    assert code == 2 and "no such file" in out
    code, out = users("remove", "alice", "--yes")
    assert code == 2 and "no user 'alice'" in out
    code, out = users("logout", "Not A Name")
    assert code == 2 and "invalid user name" in out
    assert (state_dir / "codepool.db").stat().st_mode & 0o777 == 0o600
