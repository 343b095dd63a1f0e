"""Keeping local workspaces apart from the router and from each other.

A workspace is a shell for its person. On one machine it must not read the router's
state (the store, with accounts and sessions; the config), another person's slot, nor
signal or trace the router or another workspace, nor inherit the router's environment.
Three ways, chosen by `local.isolation`:

- `accounts` (the default as root): each person has a Unix account of their own
  (`local.unix_user`, created at their first launch, marked as codepool's by its comment
  field) that owns their slot; code-server runs under it (setpriv), inside a bubblewrap
  sandbox too when bubblewrap is installed. A stop ends every process of the account.
- `sandbox` (the default otherwise, when bubblewrap works): each workspace runs in a
  bubblewrap sandbox with its own PID namespace, that sees the system read-only and, of
  the rest, only its own slot's folders.

In a sandbox the person's folder is `/home/<name>` (what VS Code shows, and the
terminal's `~`), code-server's data `/run/workspace/data` and its socket in
`/run/workspace/run`. A warm spare runs for nobody in particular (as `nobody`, or as
`workspace` in its sandbox), and starts again as its person's when one is handed out.
- `none` (the fallback when neither can be had): workspaces run as the router, so only
  one person may use the machine; a second is refused, with what to install.

Every way starts code-server with a clean environment: the router's variables (a store
URL with a password, AWS credentials) never reach a workspace.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from codepool.core import sockets
from codepool.core.errors import BackendError, ConfigError

MARK = "codepool workspace of "  # the comment (GECOS) of an account codepool made
NOBODY = "nobody"
SANDBOX_NAME = "codepool-workspace"  # $0 of the shell that holds a sandbox
_UNIX_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# Where system tools are looked for besides PATH (which may lack the sbin folders).
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def system_tool(name: str) -> str:
    """The full path of a system program ('' if it is not installed), on PATH or in the
    system's folders (an ordinary account's PATH often lacks /usr/sbin, where Debian puts
    ip; a router's may be anything). Looked up each time it is asked."""
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:{SYSTEM_PATH}") or ""


INSTALL_HINT = (
    "install bubblewrap (apt-get install bubblewrap) so that each workspace runs in a "
    "sandbox, or run `codepool serve` as root so that each person gets a Unix account"
)


@functools.cache
def bwrap_works() -> str:
    """'' if bubblewrap can make a sandbox here (a user namespace), else why not."""
    bwrap = system_tool("bwrap")
    if not bwrap:
        return "bubblewrap is not installed"
    probe = [bwrap, "--unshare-all", "--ro-bind", "/", "/", "--", "/bin/true"]
    try:
        result = subprocess.run(probe, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap does not run: {exc}"
    if result.returncode != 0:
        why = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "it failed"
        return f"bubblewrap cannot make a sandbox here ({why}; are user namespaces off?)"
    return ""


def choose(setting: str) -> tuple[str, str]:
    """The isolation in force for local.isolation, and why (for doctor and the logs)."""
    root = os.geteuid() == 0
    if setting == "accounts" and not root:
        raise ConfigError(
            "config error: local.isolation = 'accounts' needs `codepool serve` to run as "
            "root (it creates and switches to each person's account)"
        )
    if setting == "sandbox" and (why := bwrap_works()):
        raise ConfigError(f"config error: local.isolation = 'sandbox': {why}")
    if setting == "accounts" or (setting == "auto" and root):
        return "accounts", "a Unix account for each person (running as root)"
    if setting == "sandbox":
        return "sandbox", "a bubblewrap sandbox for each workspace"
    if setting == "auto" and not (why := bwrap_works()):
        return "sandbox", "a bubblewrap sandbox for each workspace"
    reason = "local.isolation = 'none'" if setting == "none" else why
    return "none", f"none ({reason}): one person only; {INSTALL_HINT}"


def clean_env(home: Path, user: str) -> dict[str, str]:
    """A login's environment, and nothing of the router's."""
    return {
        "HOME": str(home),
        "USER": user,
        "LOGNAME": user,
        "SHELL": "/bin/bash" if Path("/bin/bash").exists() else "/bin/sh",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": os.environ.get("LANG", "C.UTF-8") or "C.UTF-8",
    }


# -- accounts -------------------------------------------------------------------------------


def account_name(pattern: str, user: str) -> str:
    """The Unix account of a person: local.unix_user with {name} (the user name with '.'
    and '@' as '_') and {hash} (10 hex digits of its SHA-256). A result that is not a valid
    Unix name (too long, say) falls back to cp-{hash}."""
    digest = hashlib.sha256(user.encode()).hexdigest()[:10]
    try:
        name = pattern.format(name=re.sub(r"[.@]", "_", user), hash=digest)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"config error: local.unix_user = {pattern!r}: bad placeholder {exc}; "
            "allowed: {name} {hash}"
        ) from None
    return name if _UNIX_NAME.fullmatch(name) else f"cp-{digest}"


def ensure_account(name: str, user: str, home: Path) -> pwd.struct_passwd:
    """The person's account, created if need be. An account of that name that codepool
    did not make for this person is never used: that would hand someone's files, or a
    system account, to a workspace."""
    try:
        found = pwd.getpwnam(name)
    except KeyError:
        command = [
            "useradd",
            "--no-create-home",
            "--home-dir",
            str(home),
            "--shell",
            "/bin/bash" if Path("/bin/bash").exists() else "/bin/sh",
            "--comment",
            MARK + user,
            "--user-group",
            name,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if result.returncode not in (0, 9):  # 9: made meanwhile by another process
            raise BackendError(
                f"cannot create the Unix account {name} for {user}: "
                f"{result.stderr.strip() or result.returncode}"
            ) from None
        found = pwd.getpwnam(name)
    if found.pw_gecos != MARK + user or found.pw_uid == 0:
        raise BackendError(
            f"the Unix account {name} exists and is not codepool's account for {user}; "
            "choose another local.unix_user pattern (for example cp-{hash})"
        )
    return found


def own(path: Path, uid: int, gid: int) -> None:
    """Make path and everything under it uid's, never following a link (a link planted
    in someone's home must not make root change a file elsewhere)."""
    os.chown(path, uid, gid, follow_symlinks=False)
    for top, dirs, files in os.walk(path, followlinks=False):
        for entry in (*dirs, *files):
            with contextlib.suppress(FileNotFoundError):
                os.chown(Path(top) / entry, uid, gid, follow_symlinks=False)


def kill_account(uid: int, wait_s: float = 5.0) -> None:
    """End every process of a person's account (a stop means stop: a job left running
    in the background would run on after the workspace), and wait until they are gone."""
    if uid == 0:
        return
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        found = [p for p in _processes() if _owner(p) == uid and sockets.proc_start(p)]
        if not found:
            return
        for pid in found:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _processes() -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]


def _owner(pid: int) -> int:
    try:
        return Path(f"/proc/{pid}").stat().st_uid
    except OSError:
        return -1


# -- the sandbox ------------------------------------------------------------------------------

SYSTEM_DIRS = ("/usr", "/etc", "/opt", "/bin", "/sbin", "/lib", "/lib32", "/lib64")


def sandbox_argv(
    command: Sequence[str],
    binds: Sequence[tuple[Path, str]],
    readable: Sequence[str],
    home: str,
    account: pwd.struct_passwd | None = None,
    net: Sequence[str] = ("--share-net",),
    resolv_conf: str = "",
) -> list[str]:
    """bubblewrap around a workspace command: the system's directories read-only (without
    /etc/codepool), the slot's own folders read-write where the workspace sees them
    (binds: (the slot's folder, its path inside)), the extra read-only paths, fresh
    /proc, /dev and /tmp, its own PID, IPC and UTS namespaces. net: bubblewrap's network
    arguments (network.bwrap_args: a namespace of its own, or the machine's); the
    workspace listens on a socket file either way. resolv_conf: a file to read as
    /etc/resolv.conf (a namespace of its own has a resolver of its own).

    Without an account (an ordinary router) the sandbox has a user namespace of its own
    and no capability. With one (root), there is no user namespace (it would map no uid
    but root's): the sandbox keeps only the two capabilities setpriv needs to become the
    account, and drops them in doing so.

    bwrap is held by a shell, so that the router's own exit (a restart) ends no sandbox;
    stopping one ends every process under the shell (LocalBackend._kill): bwrap's
    --die-with-parent does not reliably take the sandbox's first process along."""
    bwrap = system_tool("bwrap") or "bwrap"
    if account is None:
        argv = ["--unshare-all", *net, "--cap-drop", "ALL"]
    else:
        argv = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", *net]
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        # Into the home only as the account: root without its other capabilities may not
        # enter a folder of the account's (mode 0700).
        wrapped = in_home(command[0], command[1:])
        command = setpriv_argv(account, wrapped[0], wrapped[1:])
        home = "/"
    argv.append("--die-with-parent")
    for system in SYSTEM_DIRS:
        path = Path(system)
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), system]
        elif path.is_dir():
            argv += ["--ro-bind", system, system]
    if Path("/etc/codepool").is_dir():
        argv += ["--tmpfs", "/etc/codepool"]  # the router's config: not for workspaces
    # Fresh /proc, /dev and temporary folders first: the folders made below for a mount
    # under /tmp must be made in the sandbox's own /tmp, not covered by it afterwards.
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/var/tmp"]
    # The folders above each mount, made open (bwrap would make them 0700: closed to an
    # account that is not root).
    targets = ["/run/systemd/resolve", *readable, *(inside for _, inside in binds)]
    for folder in sorted({str(p) for t in targets for p in Path(t).parents} - {"/"}):
        if not any(folder == d or folder.startswith(d + "/") for d in SYSTEM_DIRS):
            argv += ["--perms", "0755", "--dir", folder]
    argv += ["--ro-bind-try", "/run/systemd/resolve", "/run/systemd/resolve"]
    if resolv_conf:  # bound where /etc/resolv.conf leads (often into systemd-resolved's)
        argv += ["--ro-bind", resolv_conf, os.path.realpath("/etc/resolv.conf")]
    for extra in readable:
        argv += ["--ro-bind-try", extra, extra]
    for source, inside in binds:
        argv += ["--bind", str(source), inside]
    argv += ["--hostname", "workspace", "--chdir", home, "--", *command]
    return ["/bin/sh", "-c", '"$@"; exit $?', SANDBOX_NAME, bwrap, *argv]


def setpriv_argv(account: pwd.struct_passwd, program: str, args: Sequence[str]) -> list[str]:
    """Run a command as account, with its own group only and no way to gain privileges."""
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    return [
        setpriv,
        f"--reuid={account.pw_uid}",
        f"--regid={account.pw_gid}",
        "--clear-groups",
        "--no-new-privs",
        "--inh-caps=-all",
        "--",
        program,
        *args,
    ]


def in_home(program: str, args: Sequence[str]) -> list[str]:
    """Run a command from $HOME (the router's own working folder is not the workspace's)."""
    return ["/bin/sh", "-c", 'cd "$HOME" 2>/dev/null; exec "$@"', SANDBOX_NAME, program, *args]
