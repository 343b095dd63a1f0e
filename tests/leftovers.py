"""The suite leaves nothing behind: after the run (all workers done), no process it
started still runs, and no Unix account, listening port, folder in the temporary
directory or Redis key it made is left. What is left fails the run, is listed, and (for
processes) is killed so the machine is clean for the next.

How a process is known as the run's: the main pytest process is made the "subreaper" of
everything it starts (a process whose parent dies is handed to it, not to init), and
every process inherits CODEPOOL_TEST_RUN in its environment; one found either way at the
end was left by a test."""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import secrets
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

RUN_MARK = "CODEPOOL_TEST_RUN"
PR_SET_CHILD_SUBREAPER = 36
SETTLE_S = 10.0  # how long processes killed by the last tests' teardown get to exit


def _listening() -> set[str]:
    """Every listening TCP address, as "address:port" in /proc's hex."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) > 3 and cols[3] == "0A":  # TCP_LISTEN
                    found.add(cols[1])
    return found


def _port(hex_address: str) -> str:
    return str(int(hex_address.rsplit(":", 1)[1], 16))


def _redis_keys() -> set[str] | None:
    url = os.environ.get("CODEPOOL_TEST_REDIS_URL")
    if not url:
        return None
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=10)
        if client.dbsize() > 200_000:  # not a test server's: not ours to read through
            return None
        return {k.decode(errors="replace") for k in client.scan_iter(count=1000)}
    except redis.RedisError:
        return None


def _children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (proc / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(proc.name))
    return found


def _marked(token: str) -> list[int]:
    """Processes whose environment carries this run's mark (those we may read)."""
    mark = f"{RUN_MARK}={token}".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        if int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if mark in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
    return found


def _describe(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        cmd = "?"
    return f"pid {pid}: {cmd.strip()[:200]}"


def _reap() -> None:
    """Collect the exit status of children that have ended (orphans handed to us)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


@dataclass
class Before:
    token: str
    accounts: set[str]
    ports: set[str]
    temp: set[str]
    keys: set[str] | None
    leftovers: list[str] = field(default_factory=list)


def _temp_entries() -> set[str]:
    return set(os.listdir(tempfile.gettempdir()))


def _is_main(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    """A short temporary folder for the run (pytest's own, with a folder per worker under
    it, makes the paths of workspaces' sockets too long for Unix sockets' 108 bytes):
    removed at the end of a run that passed, kept for a look at one that failed."""
    if _is_main(config) and config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="cpt-")
        config.stash[_MADE_BASETEMP] = Path(config.option.basetemp)


_MADE_BASETEMP = pytest.StashKey[Path]()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    if not _is_main(session.config):
        return
    token = os.environ.get(RUN_MARK) or secrets.token_hex(8)
    os.environ[RUN_MARK] = token  # before the workers start: they and theirs inherit it
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    session.config.stash[_BEFORE] = Before(
        token,
        {p.pw_name for p in pwd.getpwall()},
        _listening(),
        _temp_entries(),
        _redis_keys(),
    )


_BEFORE = pytest.StashKey[Before]()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_BEFORE, None)
    if before is None:
        return
    left = before.leftovers
    deadline = time.monotonic() + SETTLE_S
    while True:  # processes killed in the last teardowns may take a moment to exit
        _reap()
        pids = sorted(set(_children(os.getpid())) | set(_marked(before.token)))
        if not pids or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for pid in pids:
        left.append("a process: " + _describe(pid))
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    _reap()
    accounts = {p.pw_name for p in pwd.getpwall()} - before.accounts
    left += [f"a Unix account: {name}" for name in sorted(accounts)]
    ports = _listening() - before.ports
    left += [f"a listening port: {_port(a)}" for a in sorted(ports)]
    base = session.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    ours = {p.name for p in (base, *base.parents)}
    temp = {e for e in _temp_entries() - before.temp if e not in ours}
    left += [f"a folder or file in {tempfile.gettempdir()}: {e}" for e in sorted(temp)]
    keys = _redis_keys()
    if keys is not None and before.keys is not None:
        left += [f"a Redis key: {k}" for k in sorted(keys - before.keys)[:20]]
    if left:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    made = session.config.stash.get(_MADE_BASETEMP, None)
    passed = (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
    if made is not None and session.exitstatus in passed:
        shutil.rmtree(made, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    before = config.stash.get(_BEFORE, None)
    if before is not None and before.leftovers:
        terminalreporter.section("left behind by the tests", sep="=", red=True, bold=True)
        for line in before.leftovers:
            terminalreporter.line(line, red=True)
        terminalreporter.line("The run fails: a test must stop and remove what it starts.")
