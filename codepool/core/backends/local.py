"""The `local` backend: a pool of slots on this machine (docs/local-backend.md).

A slot is a directory (the owner's disk: `home/` and code-server's `data/`) plus a
workspace process listening on a Unix socket in the slot (a loopback port would be open
to every process of the machine). Slot metadata on disk (`meta.json`) is the durable
truth, like EC2 tags. Processes run in their own session, so they outlive the command
that started them, and are found again by pid and start time. How workspaces are kept
apart from the router and each other is isolation.py's; their network, network.py's.

Layout under local.state_dir (mode 0711 with per-person accounts, else 0700):
  group.json            {"desired": N}
  resolv.conf           the resolver a workspace with a network of its own reads
  backend.lock          flock: one process changes slots at a time
  slots/<id>/meta.json  owner, lifecycle, wanted state, port, pid (the router's, 0600)
  slots/<id>/home/      the folder the user works in (kept across stop/resume)
  slots/<id>/data/      code-server's user data (settings, extensions)
  slots/<id>/run/ws.sock  the socket code-server listens on
  slots/<id>/workspace.log
  slots/<id>/network.log  slirp4netns's (a network of its own)
home/, data/ and run/ are the workspace's (its account's, mode 0700); the rest is the
router's.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from codepool.core import sockets
from codepool.core.backends import isolation, network
from codepool.core.errors import BackendError, NotASpare
from codepool.core.models import (
    BatchResult,
    BoxShape,
    Capacity,
    Check,
    Fleet,
    Instance,
    InstanceState,
    Lifecycle,
)
from codepool.core.settings import LocalSettings
from codepool.core.tls import WorkspaceTls

# A slot is recorded before its process starts; without a process this long after, the
# launch was cut short (a crash) and the slot counts as stopped, for reconcile to delete.
LAUNCH_GRACE_MS = 60_000
CODE_SERVER_VERSION = "4.99.4"
INSTALL_HINT = (
    "install it with `scripts/install-code-server` (code-server "
    f"{CODE_SERVER_VERSION} from npm), put `code-server` on PATH, or set local.command"
)
STOP_GRACE_S = 5.0
# Where a sandboxed workspace sees its data and its socket's folder (its home is
# /home/<person>).
SANDBOX_PATHS = {"data": "/run/workspace/data", "run": "/run/workspace/run"}
SHARED_INSTALL = Path("/opt/codepool")  # scripts/install-code-server's folder as root
T = TypeVar("T")


def code_server_candidates() -> list[Path]:
    """Where scripts/install-code-server puts code-server, for when it is not on PATH:
    $CODEPOOL_CODE_SERVER_DIR, /opt/codepool (root's install: every account may run it),
    the user's cache."""
    explicit = os.environ.get("CODEPOOL_CODE_SERVER_DIR")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    roots = [Path(explicit)] if explicit else []
    roots.append(SHARED_INSTALL / f"code-server-{CODE_SERVER_VERSION}")
    roots.append(cache / "codepool" / f"code-server-{CODE_SERVER_VERSION}")
    return [root / "node_modules" / ".bin" / "code-server" for root in roots]


def resolve_executable(name: str) -> str:
    """The program to run for the first word of local.command, or a BackendError saying how
    to get it."""
    found = shutil.which(name)
    if found:
        return found
    if name == "code-server":
        for candidate in code_server_candidates():
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        raise BackendError(f"code-server not found: {INSTALL_HINT}")
    raise BackendError(f"workspace command {name!r} not found (local.command)")


@dataclass(frozen=True)
class SlotMeta:
    instance_id: str
    owner: str | None
    lifecycle: str  # Lifecycle value
    want: str  # "running" or "stopped": what the slot should be doing
    port: int
    pid: int
    pid_start: str  # /proc start time, guards against a recycled pid
    launched_at_ms: int
    stopped_at_ms: int = 0
    account: str = ""  # the Unix account its process runs as ("": the router's)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _end_family(pid: int, start: str) -> None:
    """SIGTERM, then SIGKILL after STOP_GRACE_S, to pid's group and every process under it
    (each checked by its start time: a pid given to another process since is spared)."""
    family = {(pid, start), *sockets.descendants(pid, group=pid)}

    def left() -> list[int]:
        # Looked for again each time: a process of the family may have been started after
        # the first look (a sandbox's first process forks the one in its namespaces as
        # it starts), and one whose parent has gone is found only by its group.
        _reap_child(pid)
        alive = [p for p, s in family if sockets.proc_start(p) == s]
        family.update(sockets.descendants(*alive, group=pid))
        return [p for p, s in family if sockets.proc_start(p) == s]

    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        for p in left():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, sig)
        deadline = time.monotonic() + STOP_GRACE_S
        while left() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not left():
            return


def _strays(slot: Path, recorded: int) -> list[tuple[int, str]]:
    """Workspace processes of slot that its record does not name: each runs in a session
    of its own, and its command line (the sandbox's folders) or its environment (HOME)
    names the slot's folder. A `codepool assign` killed between starting one and writing
    its pid down leaves such a process, which nothing else would ever stop."""
    marker = f"{slot}/".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (recorded, os.getpid()):
            continue
        pid = int(entry.name)
        with contextlib.suppress(OSError):
            if os.getsid(pid) != pid:
                continue
            named = (entry / "cmdline").read_bytes() + b"\0" + (entry / "environ").read_bytes()
            if marker in named and (start := sockets.proc_start(pid)):
                found.append((pid, start))
    return found


def _reap_child(pid: int) -> None:
    """Collect the exit status if pid is our own child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _alive(meta: SlotMeta) -> bool:
    if meta.pid <= 0:
        return False
    _reap_child(meta.pid)
    start = sockets.proc_start(meta.pid)
    return bool(start) and start == meta.pid_start


def _free_port(host: str, preferred: int = 0) -> int:
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # As servers do: a port in TIME_WAIT after a stop is free to reuse on resume.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise BackendError(f"no free port on {host}")


class LocalBackend:
    """Slots on this machine, mirroring the AWS group's lifecycle."""

    def __init__(self, settings: LocalSettings, state_dir: Path) -> None:
        self.settings = settings
        self.ready_path = settings.ready_path
        self.tls: WorkspaceTls | None = None  # slots serve plain http on this machine
        self.root = state_dir
        self.slots = self.root / "slots"
        self.isolation, self.isolation_detail = isolation.choose(settings.isolation)
        # Accounts run in a sandbox as well where bubblewrap is at hand: their folders get
        # names of their own there, and the state folder need not be open to them.
        self.sandboxed = self.isolation == "sandbox" or (
            self.isolation == "accounts" and not isolation.bwrap_works()
        )
        # A Unix socket unless the command asks for a port ({port}: the operator's choice).
        self.on_socket = not any("{port}" in part for part in settings.command)
        self.network, self.network_detail = network.choose(
            settings.network,
            "" if self.sandboxed else "bubblewrap is not in use",
            self.on_socket,
        )
        # Without isolation, or with workspaces sharing the machine's network by default
        # (not by choice), one person only: no other's servers to reach.
        self.one_person = self.isolation == "none" or self.network == "one person"
        self.writes = 0  # counted before each change (see Backend.writes)

    # -- plumbing -------------------------------------------------------------------------

    async def _thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking file and process work off the event loop; OS errors (a full disk, a
        state_dir without permission) become BackendErrors that name the problem."""
        try:
            return await asyncio.to_thread(fn, *args)
        except OSError as exc:
            raise BackendError(f"local backend ({self.root}): {exc}") from None

    def _make_dirs(self) -> None:
        """The state folder and slots/: traversable (0711) when workspaces run as other
        accounts, who must reach their own slot's folders; else the router's alone."""
        mode = 0o711 if self.isolation == "accounts" else 0o700
        for folder in (self.root, self.slots):
            folder.mkdir(parents=True, exist_ok=True)
            if folder.stat().st_mode & 0o777 != mode:
                folder.chmod(mode)
        if self.isolation == "accounts" and not self.sandboxed:
            _check_reachable(self.root)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._make_dirs()
        with (self.root / "backend.lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read(self, iid: str) -> SlotMeta | None:
        try:
            data: dict[str, Any] = json.loads((self.slots / iid / "meta.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise BackendError(f"slot {iid}: unreadable metadata: {exc}") from None
        return SlotMeta(**data)

    def _write(self, meta: SlotMeta) -> None:
        path = self.slots / meta.instance_id / "meta.json"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(asdict(meta), indent=2))
        os.replace(tmp, path)  # atomic: a crash leaves the old or the new, never half

    def _all(self) -> list[SlotMeta]:
        if not self.slots.is_dir():
            return []
        metas = [self._read(p.name) for p in sorted(self.slots.iterdir()) if p.is_dir()]
        return [m for m in metas if m is not None]

    def _desired(self) -> int:
        try:
            return int(json.loads((self.root / "group.json").read_text())["desired"])
        except FileNotFoundError:
            return self.settings.min_size
        except (OSError, ValueError, KeyError) as exc:
            raise BackendError(f"{self.root / 'group.json'}: unreadable: {exc}") from None

    def _set_desired_file(self, desired: int) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / "group.json.tmp"
        tmp.write_text(json.dumps({"desired": desired}))
        os.replace(tmp, self.root / "group.json")

    def _instance(self, meta: SlotMeta) -> Instance:
        launching = _now_ms() - meta.launched_at_ms < LAUNCH_GRACE_MS
        if meta.want == "running" and meta.pid <= 0 and launching:
            state = InstanceState.PENDING  # recorded, its process about to start: booting
        elif meta.want == "running" and _alive(meta):
            state = InstanceState.RUNNING
        else:
            state = InstanceState.STOPPED
        return Instance(
            instance_id=meta.instance_id,
            state=state,
            lifecycle=Lifecycle(meta.lifecycle),
            owner=meta.owner,
            address=self._address(meta),
            launched_at_ms=meta.launched_at_ms,
            stopped_at_ms=meta.stopped_at_ms,
        )

    def _address(self, meta: SlotMeta) -> str:
        if not self.on_socket:
            return f"http://{self.settings.host}:{meta.port}"
        # With isolation, only the slot's own process may answer on its socket.
        pid = meta.pid if self.isolation != "none" else 0
        socket_path = str(self.slots / meta.instance_id / "run" / "ws.sock")
        return str(sockets.UnixAddress(socket_path, pid, meta.pid_start))

    def _spawn(self, meta: SlotMeta) -> SlotMeta:
        """Start the workspace process of a slot, kept apart as local.isolation says (see
        isolation.py); it runs in its own session."""
        slot = self.slots / meta.instance_id
        home, data, run = slot / "home", slot / "data", slot / "run"
        account = self._account_of(meta.owner, home)
        for folder in (home, data, run):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            if account is not None and folder.stat().st_uid != account.pw_uid:
                isolation.own(folder, account.pw_uid, account.pw_gid)
        socket_path = run / "ws.sock"
        if self.on_socket and len(str(socket_path)) > sockets.MAX_PATH:
            raise BackendError(
                f"local.state_dir {self.root} is too deep: a workspace's socket path "
                f"({len(str(socket_path))} bytes) must stay within {sockets.MAX_PATH}; "
                "choose a shorter local.state_dir"
            )
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()  # a stale one from the last run
        # Where the workspace sees its folders: in a sandbox, under names of its own.
        seen = {"slot": str(slot), "home": str(home), "data": str(data), "run": str(run)}
        if self.sandboxed:
            inside = "/home/" + (meta.owner or "workspace")
            seen = {"slot": "/run/workspace", "home": inside, **SANDBOX_PATHS}
        port = 0 if self.on_socket else _free_port(self.settings.host, meta.port)
        values = {
            "port": str(port),
            "socket": f"{seen['run']}/ws.sock",
            "home": str(seen["home"]),
            "data_dir": str(seen["data"]),
            "slot": str(seen["slot"]),
            "host": self.settings.host,
        }
        try:
            argv = [part.format(**values) for part in self.settings.command]
        except (KeyError, IndexError, ValueError) as exc:
            raise BackendError(
                f"local.command: bad placeholder {exc}; allowed: "
                "{socket} {port} {home} {data_dir} {slot} {host}"
            ) from None
        program = resolve_executable(argv[0])
        env = isolation.clean_env(Path(seen["home"]), meta.owner or "workspace")
        own_net = self.network == "own"  # never chosen without the sandbox (network.choose)
        if self.sandboxed:
            binds = [(home, str(seen["home"])), (data, str(seen["data"])), (run, str(seen["run"]))]
            readable = [*self.settings.sandbox_paths, *_install_root(program)]
            command = isolation.sandbox_argv(
                [program, *argv[1:]],
                binds,
                readable,
                str(seen["home"]),
                account,
                net=network.bwrap_args(self.network),
                resolv_conf=str(network.write_resolv_conf(self.root)) if own_net else "",
            )
        elif account is not None:
            command = isolation.setpriv_argv(account, *_in_home(program, argv[1:]))
        else:
            command = isolation.in_home(program, argv[1:])
        hand = network.Handshake.open() if own_net else None
        out = os.open(slot / "workspace.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            pid = os.posix_spawn(
                command[0],
                command,
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, out, 1),
                    (os.POSIX_SPAWN_DUP2, out, 2),
                    *(
                        (os.POSIX_SPAWN_DUP2, fd, to)
                        for fd, to in (hand.sandbox_ends() if hand else [])
                    ),
                ],
                setsid=True,
            )
            start = sockets.proc_start(pid)
            if hand is not None:
                hand.started()
                try:  # the sandbox waits for its network before the workspace starts
                    network.attach(hand, slot / "network.log")
                except BackendError:
                    _end_family(pid, start)
                    raise
        except OSError as exc:
            raise BackendError(f"cannot start workspace {program}: {exc}") from None
        finally:
            os.close(out)
            if hand is not None:
                hand.close()
        return replace(
            meta,
            port=port,
            pid=pid,
            pid_start=start,
            want="running",
            account=account.pw_name if account is not None else "",
        )

    def _account_of(self, owner: str | None, home: Path) -> pwd.struct_passwd | None:
        """The account a slot's process runs as: the owner's own with per-person
        accounts (nobody for an unowned spare); None: the router's (sandbox, none)."""
        if self.isolation != "accounts":
            return None
        if owner is None:
            return pwd.getpwnam(isolation.NOBODY)
        name = isolation.account_name(self.settings.unix_user, owner)
        return isolation.ensure_account(name, owner, home)

    def _kill(self, meta: SlotMeta) -> None:
        """Stop a slot's processes: SIGTERM, then SIGKILL after a grace period, to its
        process group and to every process under it. The sandbox's own first process
        leaves the group and outlives its parent (bubblewrap's --die-with-parent does not
        reach it once it has entered its user namespace), so the group alone is not
        enough. A process of the slot that its record does not name (a command killed
        between starting it and writing its pid down) ends too. With per-person accounts
        every process of the account ends too (jobs left in the background included)."""
        if _alive(meta):
            _end_family(meta.pid, meta.pid_start)
        else:  # only a slot whose recorded process is gone can have one started since
            for pid, start in _strays(self.slots / meta.instance_id, meta.pid):
                _end_family(pid, start)
        if meta.account and meta.account != isolation.NOBODY:
            with contextlib.suppress(KeyError):
                account = pwd.getpwnam(meta.account)
                if account.pw_gecos.startswith(isolation.MARK):
                    isolation.kill_account(account.pw_uid)

    def start_warnings(self) -> list[str]:
        """What `codepool serve` says as it starts: the ways workspaces are not kept apart."""
        found = []
        if self.isolation == "none":
            found.append(f"workspaces are not isolated: {self.isolation_detail}")
        if self.network in ("shared", "one person"):
            found.append(f"workspaces share the machine's network: {self.network_detail}")
        return found

    def _other_owner(self, owner: str) -> str | None:
        """On a machine kept to one person, that person, if it is not owner."""
        if not self.one_person:
            return None
        return next((m.owner for m in self._all() if m.owner and m.owner != owner), None)

    def _refusal(self, owner: str) -> str:
        other = self._other_owner(owner)
        if other is None:
            return ""
        hint = isolation.INSTALL_HINT if self.isolation == "none" else network.INSTALL_HINT
        return (
            f"this machine cannot keep workspaces apart, so it serves one person only, and "
            f"{other} has a workspace here; to serve several people, {hint}"
        )

    # -- the protocol ---------------------------------------------------------------------

    async def fleet(self) -> Fleet:
        s = self.settings

        def run() -> Fleet:
            instances = [self._instance(m) for m in self._all()]
            return Fleet(instances, Capacity(s.min_size, s.max_size, self._desired()))

        return await self._thread(run)

    async def list_instances(self) -> list[Instance]:
        return (await self.fleet()).instances

    async def capacity(self) -> Capacity:
        s = self.settings
        return await self._thread(lambda: Capacity(s.min_size, s.max_size, self._desired()))

    def _in_service(self) -> int:
        return sum(1 for m in self._all() if m.lifecycle == Lifecycle.IN_SERVICE.value)

    async def set_desired(self, desired: int) -> None:
        s = self.settings
        self.writes += 1
        if not s.min_size <= desired <= s.max_size:
            raise BackendError(
                f"desired capacity {desired} outside the group's limits "
                f"[{s.min_size}, {s.max_size}]"
            )

        def run() -> None:
            with self._locked():
                self._set_desired_file(desired)
                try:
                    for _ in range(desired - self._in_service()):
                        self._launch()
                except BackendError:
                    # AWS would keep trying; here a failed launch (say, no code-server) would
                    # fail again at once, so desired falls back to what actually runs.
                    self._set_desired_file(max(s.min_size, self._in_service()))
                    raise

        await self._thread(run)

    def _launch(self) -> None:
        iid = f"slot-{secrets.token_hex(4)}"
        # The router's; other accounts may only pass through, to their own folders in it.
        (self.slots / iid).mkdir(mode=0o711 if self.isolation == "accounts" else 0o700)
        (self.slots / iid).chmod(0o711 if self.isolation == "accounts" else 0o700)
        meta = SlotMeta(iid, None, Lifecycle.IN_SERVICE.value, "running", 0, 0, "", _now_ms())
        self._write(meta)  # recorded before the process starts: a crash leaves a visible slot
        try:
            self._write(self._spawn(meta))
        except BackendError:
            shutil.rmtree(self.slots / iid, ignore_errors=True)
            raise

    async def claim(self, instance_id: str, owner: str, seen: Instance | None = None) -> Instance:
        # seen saves nothing here: the slot's file is read under the lock either way.
        self.writes += 1

        def run() -> Instance:
            with self._locked():
                meta = self._read(instance_id)
                if meta is None:  # terminated meanwhile (say, as an excess spare)
                    raise NotASpare(f"{instance_id}: no such slot")
                inst = self._instance(meta)
                if meta.owner is not None or not inst.is_spare:
                    raise NotASpare(f"{instance_id}: not an unowned running spare")
                if refusal := self._refusal(owner):
                    raise BackendError(refusal)
                meta = replace(meta, owner=owner)
                self._write(meta)  # the owner first: a crash leaves the box to its person
                if self.isolation != "none":
                    meta = self._restart_as_owner(meta)
                return self._instance(meta)

        return await self._thread(run)

    def _restart_as_owner(self, meta: SlotMeta) -> SlotMeta:
        """A spare ran for nobody in particular; its person's workspace runs as them
        (their account, their folder's name), on folders made afresh for them (nothing
        the spare wrote is kept)."""
        self._kill(meta)
        slot = self.slots / meta.instance_id
        for folder in ("home", "data", "run"):
            shutil.rmtree(slot / folder, ignore_errors=True)
        meta = self._spawn(meta)
        self._write(meta)
        return meta

    def _leave_service(
        self, instance_ids: Sequence[str], step: Callable[[SlotMeta], None]
    ) -> BatchResult:
        """Take each slot out of service (desired drops by one for each that was in it, as
        ShouldDecrementDesiredCapacity does), then apply step to it; report per slot."""
        done: list[str] = []
        failed: dict[str, str] = {}
        for iid in instance_ids:
            with self._locked():
                meta = self._read(iid)
                if meta is None:
                    failed[iid] = "no such slot"
                    continue
                if meta.lifecycle == Lifecycle.IN_SERVICE.value:
                    self._set_desired_file(max(0, self._desired() - 1))
                step(meta)
            done.append(iid)
        return BatchResult(tuple(done), failed)

    async def stop(self, instance_ids: Sequence[str]) -> BatchResult:
        self.writes += 1

        def standby_and_stop(meta: SlotMeta) -> None:
            stopped_at = meta.stopped_at_ms if meta.want == "stopped" else _now_ms()
            standby = Lifecycle.STANDBY.value
            self._write(replace(meta, lifecycle=standby, want="stopped", stopped_at_ms=stopped_at))
            self._kill(meta)

        return await self._thread(self._leave_service, instance_ids, standby_and_stop)

    async def start(self, instance_id: str, seen: Instance | None = None) -> Instance:
        s = self.settings
        self.writes += 1

        def run() -> Instance:
            with self._locked():
                meta = self._read(instance_id)
                if meta is None:
                    raise BackendError(f"{instance_id}: no such slot")
                if _alive(meta) and meta.want == "running":
                    return self._instance(meta)
                if meta.owner and (refusal := self._refusal(meta.owner)):
                    raise BackendError(refusal)
                desired = self._desired()
                if meta.lifecycle == Lifecycle.STANDBY.value:
                    if desired + 1 > s.max_size:
                        raise BackendError(
                            f"{instance_id}: cannot return to service: desired {desired} "
                            f"is at max {s.max_size}"
                        )
                    self._set_desired_file(desired + 1)  # ExitStandby raises desired by one
                self._kill(meta)  # what a crashed start may have left running
                meta = self._spawn(replace(meta, lifecycle=Lifecycle.IN_SERVICE.value))
                meta = replace(meta, stopped_at_ms=0)
                self._write(meta)
                return self._instance(meta)

        return await self._thread(run)

    async def terminate(self, instance_ids: Sequence[str]) -> BatchResult:
        self.writes += 1

        def delete(meta: SlotMeta) -> None:
            self._kill(meta)
            shutil.rmtree(self.slots / meta.instance_id, ignore_errors=True)

        return await self._thread(self._leave_service, instance_ids, delete)

    async def label_spares(self, instance_ids: Sequence[str]) -> None:
        return None  # a slot's metadata always records its owner, if only as none

    async def box_shape(self) -> BoxShape:
        """A slot is a process on this machine: no instance type, no disk of its own to pay
        for (cost.disk_gb may say otherwise)."""
        return BoxShape("local process", 0)

    async def checks(self) -> list[Check]:
        def run() -> list[Check]:
            found = []
            try:
                program = resolve_executable(self.settings.command[0])
                found.append(Check("workspace command", True, program))
            except BackendError as exc:
                found.append(Check("workspace command", False, str(exc)))
            self.root.mkdir(parents=True, exist_ok=True)
            writable = os.access(self.root, os.W_OK)
            found.append(
                Check(
                    "state dir", writable, str(self.root) + ("" if writable else ": not writable")
                )
            )
            found.append(Check("isolation", self.isolation != "none", self.isolation_detail))
            found.append(Check("network", self.network in ("own", "none"), self.network_detail))
            found.append(
                Check(
                    "max size",
                    self.settings.max_size >= 2,
                    f"local.max_size {self.settings.max_size}"
                    + ("" if self.settings.max_size >= 2 else ": must be >= 2"),
                )
            )
            return found

        return await self._thread(run)

    async def refuses(self, user: str) -> str:
        return await self._thread(self._refusal, user)

    async def close(self) -> None:
        return None


def _in_home(program: str, args: list[str]) -> tuple[str, list[str]]:
    command = isolation.in_home(program, args)
    return command[0], command[1:]


def _install_root(program: str) -> list[str]:
    """What a sandbox must see of the program's own installation: an npm prefix (where
    scripts/install-code-server puts code-server) whole; else nothing beyond the
    system's folders and local.sandbox_paths."""
    real = os.path.realpath(program)
    for path in (program, real):
        if "/node_modules/" in path:
            return [path.split("/node_modules/", 1)[0]]
    return []


def _check_reachable(root: Path) -> None:
    """With per-person accounts, each account must reach its own slot: every folder above
    the state folder must let others pass (x). /root does not, for one."""
    for folder in (root, *root.parents):
        if folder.stat().st_mode & 0o001 == 0:
            raise BackendError(
                f"local.state_dir {root}: {folder} is closed to other accounts (mode "
                f"{folder.stat().st_mode & 0o777:o}), so workspaces running as their "
                "people's accounts cannot reach their folders; use a state folder such as "
                "/var/lib/codepool"
            )
