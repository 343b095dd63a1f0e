"""A network of its own for each local workspace.

On one machine, workspaces that share the machine's network share its loopback: a
server one person starts on 127.0.0.1 (a dev server, a debugger's port) answers every
other person's terminal, and a workspace running as the router's own user may join the
router's listening port. So each workspace runs in a network namespace of its own
(bubblewrap's --unshare-net), chosen by `local.network`:

- `own` (the default where bubblewrap and slirp4netns are installed): the namespace
  reaches the internet through slirp4netns, a user-mode network stack, and nothing of
  the machine: not its loopback (slirp4netns's --disable-host-loopback), not its own
  addresses (where the router, the store and every other service listen), not the
  private and link-local ranges (the cloud's metadata address, the LAN). Those are
  `prohibit` routes set in the namespace before the workspace starts; the workspace has
  no capability to change them.
- `none`: a namespace with only its own loopback: no network at all.
- `shared`: the machine's network, an explicit opt-in that `doctor` and the start log
  flag. With `auto` (the default setting) and the tools missing, the machine serves one
  person only, as without isolation.

The router reaches code-server over its Unix socket (a file, not the network), and
code-server's own /proxy/<port>/ reaches the workspace's loopback from inside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import select
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from codepool.core.backends.isolation import SYSTEM_PATH, system_tool
from codepool.core.errors import BackendError, ConfigError

INSTALL_HINT = (
    "install slirp4netns (apt-get install slirp4netns) so that each workspace gets a "
    "network of its own, or set local.network = 'shared' to let workspaces share the "
    "machine's network (each person's servers reachable by every other)"
)
# What a workspace's namespace never reaches through slirp4netns, besides the machine's
# own addresses: private (RFC 1918), shared (carrier-grade NAT) and link-local ranges
# (169.254.169.254 is the cloud's metadata service), IETF protocol assignments,
# benchmarking, multicast and reserved.
PROHIBITED = (
    "10.0.0.0/8",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
)
# slirp4netns's own network inside the namespace (its default): the gateway is .2, the
# DNS forwarder .3. The prohibit of 10.0.0.0/8 leaves this /24, a more specific route.
SLIRP_DNS = "10.0.2.3"
MTU = 65520  # slirp4netns's largest: fewer, bigger packets through the user-mode stack
SETUP_S = 10.0  # longest wait for bubblewrap's namespace and for slirp4netns
_NS_GET_USERNS = 0xB701  # ioctl: the user namespace that owns a namespace
# The descriptors a sandbox's bubblewrap gets: where it writes its child's pid, what it
# waits on before starting the workspace, and one held open for slirp4netns's life.
INFO_FD, BLOCK_FD, EXIT_FD = 3, 4, 5


TOOLS = ("slirp4netns", "nsenter", "setsid", "ip")
tool = system_tool  # each time: the answer follows the machine, not a first look


def tools() -> str:
    """'' if slirp4netns and the tools that set it up are here, else what is missing."""
    missing = [t for t in TOOLS if not tool(t)]
    return f"{', '.join(missing)} not installed" if missing else ""


def choose(setting: str, sandboxed: str, on_socket: bool) -> tuple[str, str]:
    """The network in force for local.network, and why (for doctor and the logs).
    sandboxed: '' if workspaces run in bubblewrap, else why not. Returns ('own' | 'none'
    | 'shared' | 'one person', detail); 'one person' is a shared network that the
    machine keeps to one person (auto without the tools)."""
    if setting == "shared":
        return "shared", "shared (local.network): every workspace reaches the machine's network"
    needs = []
    if sandboxed:
        needs.append(f"a bubblewrap sandbox ({sandboxed})")
    if not on_socket:
        needs.append("a workspace command on {socket} (a {port} one is dialled over the network)")
    if setting in ("own", "auto") and (why := tools()):
        needs.append(why)
    if not needs:
        if setting == "none":
            return "none", "none: each workspace has only a loopback of its own"
        return "own", "a network of its own for each workspace (slirp4netns; no private range)"
    if setting == "auto":
        return "one person", f"shared, one person only ({'; '.join(needs)}): {INSTALL_HINT}"
    raise ConfigError(f"config error: local.network = {setting!r} needs {'; and '.join(needs)}")


def bwrap_args(mode: str) -> list[str]:
    """bubblewrap's network arguments for the mode: a namespace of its own and, for
    `own`, the descriptors of the start-up handshake (see attach)."""
    if mode not in ("own", "none"):
        return ["--share-net"]
    args = ["--unshare-net"]
    if mode == "own":
        args += ["--info-fd", str(INFO_FD), "--block-fd", str(BLOCK_FD)]
    return args


def write_resolv_conf(folder: Path) -> Path:
    path = folder / "resolv.conf"
    if not path.exists():
        tmp = folder / "resolv.conf.tmp"
        tmp.write_text(f"nameserver {SLIRP_DNS}\n")
        tmp.chmod(0o644)
        tmp.replace(path)
    return path


@dataclass
class Handshake:
    """The pipes between the router and a sandbox starting with a network of its own:
    the sandbox's ends go to bubblewrap as INFO_FD, BLOCK_FD and EXIT_FD."""

    info_r: int
    info_w: int
    block_r: int
    block_w: int
    exit_r: int
    exit_w: int

    @classmethod
    def open(cls) -> Handshake:
        info_r, info_w = os.pipe()
        block_r, block_w = os.pipe()
        exit_r, exit_w = os.pipe()
        # The sandbox's ends above the numbers they are given as (3-5), so that putting
        # one in its place never overwrites another before it is moved.
        info_w, block_r, exit_w = (_above(fd) for fd in (info_w, block_r, exit_w))
        return cls(info_r, info_w, block_r, block_w, exit_r, exit_w)

    def sandbox_ends(self) -> list[tuple[int, int]]:
        """(descriptor, where the sandbox gets it)."""
        return [(self.info_w, INFO_FD), (self.block_r, BLOCK_FD), (self.exit_w, EXIT_FD)]

    def started(self) -> None:
        """The sandbox holds its ends now: the router lets go of its copies."""
        for fd in (self.info_w, self.block_r, self.exit_w):
            os.close(fd)
        self.info_w = self.block_r = self.exit_w = -1

    def close(self) -> None:
        for fd in vars(self).values():
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _above(fd: int, lowest: int = 10) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest)
    os.close(fd)
    return moved


def attach(hand: Handshake, log: Path) -> None:
    """Give the sandbox that is waiting on hand its network: the prohibit routes, then
    slirp4netns, then let it start. Raises BackendError (the sandbox is then left to
    start with no network at all, and the caller stops it)."""
    deadline = time.monotonic() + SETUP_S
    pid = _child_pid(hand.info_r, deadline)
    _wait_for_loopback(pid, deadline)
    net = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    owner = -1
    try:
        # Unprivileged, the namespace belongs to a user namespace of bubblewrap's where
        # the router's uid is root (the sandbox's processes are in one nested in it): only
        # there may the routes be set and slirp4netns join. As root, nothing to join.
        if os.geteuid() != 0:
            owner = fcntl.ioctl(net, _NS_GET_USERNS)
        userns = [f"/proc/self/fd/{owner}"] if owner >= 0 else []
        _prohibit(net, userns, owner, deadline)
        _slirp(pid, userns, owner, hand.exit_r, log, deadline)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BackendError(f"cannot set up the workspace's network: {exc}") from None
    finally:
        os.close(net)
        if owner >= 0:
            os.close(owner)
    try:
        os.write(hand.block_w, b"1")
    except OSError:  # it is no longer waiting: it ended
        raise BackendError("the workspace's sandbox ended before its network was set up") from None


def _child_pid(info: int, deadline: float) -> int:
    raw = b""
    while True:
        chunk = _read(info, deadline, "bubblewrap's namespace")
        if not chunk:
            raise BackendError("the workspace's sandbox ended before its network was set up")
        raw += chunk
        with contextlib.suppress(ValueError):
            return int(json.loads(raw)["child-pid"])


def _wait_for_loopback(pid: int, deadline: float) -> None:
    """Until bubblewrap has set up the namespace's loopback (its last step before it
    waits for us): changing the namespace while it does made it fail now and then
    ("loopback: Failed RTM_NEWADDR") in a crowd of starts."""
    while True:
        try:
            with open(f"/proc/{pid}/net/fib_trie") as fh:  # the namespace's local routes
                if "127.0.0.1" in fh.read():
                    return
        except OSError:
            raise BackendError(
                "the workspace's sandbox ended before its network was set up"
            ) from None
        if time.monotonic() > deadline:
            raise BackendError(
                f"the workspace's sandbox did not set up its loopback within {SETUP_S:.0f}s"
            )
        time.sleep(0.002)


def _read(fd: int, deadline: float, what: str) -> bytes:
    ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
    if not ready:
        raise BackendError(f"{what} did not come within {SETUP_S:.0f}s")
    return os.read(fd, 4096)


def _prohibit(net: int, userns: list[str], owner: int, deadline: float) -> None:
    """prohibit routes to the private ranges and to each of the machine's addresses."""
    routes = [*PROHIBITED, *(f"{a}/32" for a in machine_addresses())]
    enter = [tool("nsenter"), f"--net=/proc/self/fd/{net}"]
    if userns:
        enter += [f"--user={userns[0]}", "--preserve-credentials"]
    batch = "".join(f"route add prohibit {r}\n" for r in routes)
    done = subprocess.run(
        [*enter, tool("ip"), "-batch", "-"],
        input=batch,
        capture_output=True,
        text=True,
        pass_fds=[fd for fd in (net, owner) if fd >= 0],
        timeout=max(1.0, deadline - time.monotonic()),
    )
    if done.returncode != 0:
        raise BackendError(f"cannot set the workspace's routes: {done.stderr.strip()}")


def _slirp(
    pid: int, userns: list[str], owner: int, exit_r: int, log: Path, deadline: float
) -> None:
    ready_r, ready_w = os.pipe()
    # seccomp always; --enable-sandbox (a mount namespace, capabilities dropped) only as
    # root: unprivileged, slirp4netns cannot make one outside the sandbox's namespace.
    argv = [tool("slirp4netns"), "--configure", f"--mtu={MTU}", "--disable-host-loopback"]
    argv += ["--enable-seccomp", *(["--enable-sandbox"] if os.geteuid() == 0 else [])]
    argv += [f"--userns-path={p}" for p in userns]
    argv += [f"--ready-fd={ready_w}", f"--exit-fd={exit_r}", str(pid), "tap0"]
    try:
        with log.open("ab") as out:
            # A session of its own, and not the router's child (setsid --fork): a router's
            # restart leaves it running, and no router waits for its exit. It ends when
            # every holder of the exit descriptor (the sandbox's processes) has.
            subprocess.run(
                [tool("setsid"), "--fork", *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                pass_fds=[fd for fd in (ready_w, exit_r, owner) if fd >= 0],
                env={"PATH": SYSTEM_PATH},
                timeout=max(1.0, deadline - time.monotonic()),
                check=True,
            )
        os.close(ready_w)
        ready_w = -1
        if _read(ready_r, deadline, "slirp4netns") != b"1":
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise BackendError(f"slirp4netns failed: {' / '.join(tail) or 'no reason given'}")
    finally:
        os.close(ready_r)
        if ready_w >= 0:
            os.close(ready_w)


def machine_addresses() -> list[str]:
    """The machine's own IPv4 addresses but loopback (where its services listen)."""
    done = subprocess.run(
        [tool("ip") or "ip", "-json", "-4", "address", "show"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    found: set[str] = set()
    with contextlib.suppress(ValueError, TypeError, KeyError):
        for link in json.loads(done.stdout or "[]"):
            for addr in link.get("addr_info", []):
                ip = ipaddress.ip_address(addr["local"])
                if not ip.is_loopback:
                    found.add(str(ip))
    return sorted(found)
