"""Workspaces on one machine listen on Unix sockets, not loopback ports: a port on
127.0.0.1 is open to every process of the machine, other people's terminals included,
while a socket file is reached only through directories one may enter.

A socket lives in a directory its workspace can write (code-server creates it there), so
the workspace could also replace it with a link to someone else's socket. The router
therefore checks, on every connection it opens, who answers: the process on the other
end (SO_PEERCRED) must be the workspace's own process or one of its descendants. The
address says which: `unix:<path>#pid=<pid>&start=<start time>`; the start time guards
against a pid the kernel has given to another process since.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

MAX_PATH = 107  # sun_path holds 108 bytes, the last a NUL
MAX_DEPTH = 64  # ancestors walked before giving up


@dataclass(frozen=True, slots=True)
class UnixAddress:
    path: str
    pid: int  # 0: anyone may answer (one person only on this machine)
    start: str

    def __str__(self) -> str:
        if not self.pid:
            return f"unix:{self.path}"
        return f"unix:{self.path}#pid={self.pid}&start={self.start}"


def parse(address: str) -> UnixAddress | None:
    """The socket an address names, or None for a network address."""
    if not address.startswith("unix:"):
        return None
    path, _, fragment = address[5:].partition("#")
    fields = parse_qs(fragment)
    pid = fields.get("pid", ["0"])[0]
    return UnixAddress(path, int(pid) if pid.isdigit() else 0, fields.get("start", [""])[0])


def proc_start(pid: int) -> str:
    """The kernel's start time of pid ('' if gone); zombies count as gone."""
    fields = _stat(pid)
    if not fields or fields[0] in ("Z", "X"):
        return ""
    return fields[19]


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name ([] if gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return stat.rsplit(")", 1)[1].split()


def descends(pid: int, ancestor: int) -> bool:
    """Whether pid is ancestor or one of its descendants (by /proc's parent links)."""
    for _ in range(MAX_DEPTH):
        if pid == ancestor:
            return True
        fields = _stat(pid)
        if not fields or pid <= 1:
            return False
        pid = int(fields[1])
    return False


def descendants(*pids: int, group: int = 0) -> list[tuple[int, str]]:
    """The descendants of pids now (and, given a group, the members of that process group
    and theirs), each with its start time (to tell it later from a process given the same
    pid since), found by /proc's parent links; zombies left out."""
    children: dict[int, list[int]] = {}
    todo = list(pids)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            if group and int(fields[2]) == group and fields[0] not in ("Z", "X"):
                todo.append(int(entry.name))
    found: list[tuple[int, str]] = []
    seen = set(pids)
    while todo and len(found) < 100_000:
        pid = todo.pop()
        if pid not in seen and (start := proc_start(pid)):
            found.append((pid, start))
        seen.add(pid)
        todo.extend(c for c in children.get(pid, []) if c not in seen)
    return found


def peer_refusal(sock: socket.socket, expected: UnixAddress) -> str:
    """Why the process at the other end of a connected Unix socket is not the workspace's
    ('' if it is)."""
    if not expected.pid:
        return ""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _, _ = struct.unpack("3i", raw)
    if proc_start(expected.pid) != expected.start:
        return f"the workspace process {expected.pid} is gone"
    if not descends(pid, expected.pid):
        return f"{expected.path} is answered by process {pid}, not by the workspace's"
    return ""
