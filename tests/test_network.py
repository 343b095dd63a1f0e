"""A network of its own for each local workspace, tried from inside real workspaces (real
bubblewrap, real network namespaces, real slirp4netns): with per-person accounts (the
router as root) and with the sandbox (`codepool serve` as an ordinary user).

What a workspace reaches: the internet (here, a server in a network namespace of the
test's own at a public test address, so nothing leaves this machine), and its own
loopback. What it never reaches: another workspace's loopback, the machine's loopback
(the router, the store), the machine's own addresses, private ranges, the cloud's
metadata address. And a listener it binds to the router's address and port gets nothing
of the router's connections."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from codepool.core.backends.network import machine_addresses, tools
from tests.conftest import need
from tests.helpers import codepool_env, eventually, post_login
from tests.isolation_fixtures import (
    Sandboxed,
    accounts_pool,
    assign_as,
    run_in,
    slot_of,
)
from tests.ports import free_port, worker_index

# Python in a workspace: connect to host:port, print what happened (a refusal by a
# prohibit route or slirp4netns, a timeout, or "reached").
PROBE = """python3 - <<'EOF'
import socket, sys
try:
    with socket.create_connection(({host!r}, {port}), timeout=3) as s:
        s.sendall(b"GET /marker HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
        s.settimeout(3)
        got = b""
        while chunk := s.recv(4096):
            got += chunk
        print("reached", got.decode(errors="replace"))
except OSError as exc:
    print("refused", exc)
EOF"""


async def probe(address: str, host: str, port: int) -> str:
    return str((await run_in(address, PROBE.format(host=host, port=port)))["out"])


@dataclass
class Outside:
    """Somewhere a workspace may reach (internet), and services of the machine it may not."""

    public: str  # an address outside the machine, on the internet's side
    port: int  # an HTTP server there, answering MARKER
    private: str  # a private address routed from the machine, with a listener too
    host_side: str  # the machine's own address on the link to `public`
    machine_port: int  # a listener on all the machine's addresses (its services)


MARKER = "outside-" + os.urandom(4).hex()


def answer(conn: socket.socket) -> None:
    """Read the request, then answer MARKER: closing with a request unread would reset
    the connection, and the reset can overtake the answer."""
    conn.settimeout(5)
    with contextlib.suppress(OSError):
        got = b""
        while b"\r\n\r\n" not in got and (chunk := conn.recv(4096)):
            got += chunk
        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + MARKER.encode())
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(4096):
            pass


class _Answer(threading.Thread):
    """A listener that answers each connection with MARKER and counts them."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.count = 0

    def run(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.count += 1
                with conn:
                    answer(conn)


@contextlib.contextmanager
def _listening(host: str, port: int) -> Iterator[_Answer]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(64)
    answer = _Answer(sock)
    answer.start()
    try:
        yield answer
    finally:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        answer.join(5)


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr}"


@pytest.fixture
def outside() -> Iterator[Outside]:
    """A network namespace of the test's own (held by its server, so it goes with it),
    joined to the machine by a veth pair: its side holds a public test address
    (198.51.100.0/24, TEST-NET-2) with an HTTP server; the machine's side a private one
    (10.213.<worker>.1) with a listener. And a listener on every address of the machine."""
    if os.geteuid() != 0:
        need("root", "the test's own network namespace and veth pair need root")
    if why := tools():
        need("slirp4netns", why)
    w = worker_index()
    host_if, ns_if = f"cpt{w}h", f"cpt{w}o"
    public, host_side = f"198.51.100.{4 * w + 2}", f"198.51.100.{4 * w + 1}"
    private = f"10.213.{w}.1"
    subprocess.run(["ip", "link", "del", host_if], capture_output=True)  # a crashed run's
    port = free_port()
    # The server binds once its address is there (the test adds it below).
    serve = f"""
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
print("up", flush=True)
while True:
    try:
        s.bind(({public!r}, {port})); break
    except OSError:
        time.sleep(0.01)
s.listen(16); print("listening", flush=True)
while True:
    c, _ = s.accept(); c.settimeout(5)
    try:
        got = b""
        while b"\\r\\n\\r\\n" not in got and (chunk := c.recv(4096)):
            got += chunk
        c.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\n{MARKER}"); c.shutdown(socket.SHUT_WR)
        while c.recv(4096):
            pass
    except OSError:
        pass
    c.close()
"""
    server = subprocess.Popen(
        ["unshare", "--net", "--", "python3", "-c", serve], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
        inside = ["nsenter", "-t", str(server.pid), "-n", "ip"]
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", str(server.pid))
        _ip("addr", "add", f"{host_side}/30", "dev", host_if)
        _ip("addr", "add", f"{private}/24", "dev", host_if)
        _ip("link", "set", host_if, "up")
        for args in (
            ("addr", "add", f"{public}/30", "dev", ns_if),
            ("link", "set", ns_if, "up"),
            ("link", "set", "lo", "up"),
            ("route", "add", "default", "via", host_side),
        ):
            done = subprocess.run([*inside, *args], capture_output=True, text=True)
            assert done.returncode == 0, f"{args}: {done.stderr}"
        assert server.stdout.readline().strip() == "listening"
        with (
            _listening(private, port),
            _listening("0.0.0.0", free_port()) as machine,
        ):
            yield Outside(public, port, private, host_side, machine.sock.getsockname()[1])
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)


def stable_addresses(out: Outside) -> list[str]:
    """The machine's addresses but those of other tests' `outside` (made and removed
    while this test runs)."""
    fixtures = (ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("10.213.0.0/16"))
    ours = {out.host_side, out.private}
    return [
        a
        for a in machine_addresses()
        if a in ours or not any(ipaddress.ip_address(a) in n for n in fixtures)
    ]


async def reaches(
    address: str, out: Outside, router_port: int, addresses: list[str]
) -> dict[str, str]:
    """What a workspace reaches: each value is its probe's answer. addresses: the
    machine's when the workspace started (other tests running beside this one add
    addresses of their own later, which a workspace's routes, set as it starts, do not
    cover: docs/security.md says so)."""
    found = {
        "the internet": await probe(address, out.public, out.port),
        "the router by loopback": await probe(address, "127.0.0.1", router_port),
        "the store by loopback": await probe(address, "127.0.0.1", 6379),
        "the machine's loopback through slirp": await probe(address, "10.0.2.2", router_port),
        "a private range": await probe(address, out.private, out.port),
        "the cloud's metadata": await probe(address, "169.254.169.254", 80),
    }
    for ip in addresses:
        found[f"the machine at {ip}"] = await probe(address, ip, out.machine_port)
    return found


def check_reach(found: dict[str, str]) -> None:
    assert found["the internet"].startswith("reached") and MARKER in found["the internet"]
    beyond = {k: v for k, v in found.items() if k != "the internet"}
    reached = {k: v for k, v in beyond.items() if not v.startswith("refused")}
    assert beyond and not reached, reached


# A server on the workspace's loopback (a dev server, a debugger's port), and who
# reaches it.
SERVE_LOOPBACK = (
    "setsid python3 -c \"import http.server as h, os; os.chdir(os.path.expanduser('~')); "
    "h.ThreadingHTTPServer(('127.0.0.1', {port}), h.SimpleHTTPRequestHandler)"
    '.serve_forever()" >/dev/null 2>&1 < /dev/null &'
)


async def check_loopbacks_apart(alice: str, bob: str, alice_home: Path) -> None:
    (alice_home / "marker").write_text(MARKER)
    port = 8000 + worker_index()
    await run_in(alice, SERVE_LOOPBACK.format(port=port))
    for _ in range(100):  # until her server listens (it answers her own terminal)
        own = await probe(alice, "127.0.0.1", port)
        if own.startswith("reached"):
            break
        await asyncio.sleep(0.1)
    assert MARKER in own, own
    theirs = await probe(bob, "127.0.0.1", port)
    assert theirs.startswith("refused"), theirs


# -- per-person accounts (the router as root) -------------------------------------------------


async def test_a_workspace_of_an_account_reaches_the_internet_and_nothing_of_the_machine(
    root_state: Path, test_accounts: str, checkout: Path, outside: Outside
) -> None:
    pool = accounts_pool(root_state, test_accounts, checkout)
    try:
        addresses = stable_addresses(outside)
        alice = (await pool.assign("alice")).workspace.address
        bob = (await pool.assign("bob")).workspace.address
        with _listening("127.0.0.1", free_port()) as router:
            port = router.sock.getsockname()[1]
            check_reach(await reaches(alice, outside, port, addresses))
            assert router.count == 0
            await check_port_not_joined(alice, slot_of(root_state, alice) / "home", port)
            assert router.count == 50
        await check_loopbacks_apart(alice, bob, slot_of(root_state, alice) / "home")
        checks = {c.name: c for c in await pool.doctor()}
        assert checks["network"].ok, checks["network"]
    finally:
        await pool.close()


# -- the sandbox (the router as an ordinary user) ---------------------------------------------


# A workspace's attempt to share the router's port (SO_REUSEPORT): it says in ~/bound
# whether it bound it, then counts the connections it is handed until ~/stop appears.
BIND_ROUTER_PORT = """python3 - <<'EOF'
import os, socket, time
home = os.path.expanduser("~")
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
try:
    s.bind(("127.0.0.1", {port})); s.listen(64)
except OSError as exc:
    open(home + "/bound", "w").write("cannot bind"); print("cannot bind", exc); raise SystemExit
open(home + "/bound", "w").write("bound")
s.settimeout(0.1); got = 0; end = time.monotonic() + 60
while not os.path.exists(home + "/stop") and time.monotonic() < end:
    try:
        c, _ = s.accept(); got += 1; c.close()
    except OSError:
        pass
print("connections", got)
EOF"""


async def check_port_not_joined(address: str, home: Path, port: int) -> None:
    """The workspace at address (its home folder: home) tries to share the router's port;
    once it has bound it (or failed to), 50 logins come: it is handed none of them, and
    the router answers each."""
    bind = asyncio.ensure_future(run_in(address, BIND_ROUTER_PORT.format(port=port)))

    async def tried() -> bool:
        return (home / "bound").exists() or bind.done()

    await eventually(tried, "the workspace's bind")
    answers = await asyncio.gather(*(post_login(port) for _ in range(50)))
    assert all(a.startswith(b"HTTP/1.") for a in answers), answers
    (home / "stop").touch()
    out = str((await bind)["out"])
    assert "connections 0" in out or "cannot bind" in out, out


async def test_a_sandboxed_workspace_reaches_the_internet_and_nothing_of_the_machine(
    sandboxed: Sandboxed, outside: Outside
) -> None:
    state, (_, as_user), env = sandboxed
    router_port = int(env["CODEPOOL_ROUTER_PORT"])
    addresses = stable_addresses(outside)
    alice = await asyncio.to_thread(assign_as, as_user, env, "alice")
    bob = await asyncio.to_thread(assign_as, as_user, env, "bob")
    check_reach(await reaches(alice, outside, router_port, addresses))
    await check_loopbacks_apart(alice, bob, slot_of(state, alice) / "home")

    # The router runs as the same user as the workspaces: sharing its port would hand a
    # workspace other people's logins. In a namespace of its own, its listener is on
    # another loopback: the 50 logins all go to the router.
    await check_port_not_joined(alice, slot_of(state, alice) / "home", router_port)


async def test_doctor_and_the_start_log_flag_a_shared_network(
    tmp_path: Path, checkout: Path
) -> None:
    """local.network = 'shared' is a choice that doctor and the start log say."""
    from codepool.core.backends.local import LocalBackend
    from codepool.core.settings import LocalSettings

    backend = LocalBackend(LocalSettings(network="shared"), tmp_path)
    assert backend.network == "shared"
    assert any("share the machine's network" in w for w in backend.start_warnings())
    checks = {c.name: c for c in await backend.checks()}
    assert not checks["network"].ok and "shared" in checks["network"].detail


async def test_with_network_none_a_workspace_has_its_loopback_only(
    root_state: Path, test_accounts: str, checkout: Path, outside: Outside
) -> None:
    pool = accounts_pool(root_state, test_accounts, checkout, network="none")
    try:
        alice = (await pool.assign("alice")).workspace.address
        found = await probe(alice, outside.public, outside.port)
        assert found.startswith("refused") and "unreachable" in found, found
        await check_loopbacks_apart(
            alice, (await pool.assign("bob")).workspace.address, slot_of(root_state, alice) / "home"
        )
    finally:
        await pool.close()


@pytest.mark.parametrize(
    ("setting", "sandboxed", "on_socket", "missing", "expected"),
    [
        ("auto", "", True, "", "own"),
        ("auto", "", True, "slirp4netns not installed", "one person"),
        ("auto", "no bubblewrap", True, "", "one person"),
        ("auto", "", False, "", "one person"),
        ("own", "", True, "", "own"),
        ("none", "", True, "slirp4netns not installed", "none"),
        ("shared", "no bubblewrap", False, "slirp4netns not installed", "shared"),
        ("own", "", True, "slirp4netns not installed", "error"),
        ("own", "no bubblewrap", True, "", "error"),
        ("none", "", False, "", "error"),
    ],
)
def test_the_network_in_force(
    setting: str,
    sandboxed: str,
    on_socket: bool,
    missing: str,
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """auto: own where it can be had, else one person only (with what to install);
    own and none as asked or a clear config error; shared always, as asked."""
    from codepool.core.backends import network
    from codepool.core.errors import ConfigError

    monkeypatch.setattr(network, "tools", lambda: missing)
    if expected == "error":
        with pytest.raises(ConfigError, match=f"local.network = '{setting}' needs"):
            network.choose(setting, sandboxed, on_socket)
        return
    mode, detail = network.choose(setting, sandboxed, on_socket)
    assert mode == expected, detail
    if mode == "one person":
        assert "apt-get install slirp4netns" in detail and "local.network = 'shared'" in detail


def test_the_tools_are_found_whatever_path_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ordinary account's PATH often lacks /usr/sbin (Debian's ip), and a router's may be
    anything: the tools are looked for in the system's folders too, each time (a first
    look made under an odd PATH must not stay the answer)."""
    from codepool.core.backends import network

    if why := tools():
        need("slirp4netns", why)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert network.tools() == ""
    assert all(network.tool(t).startswith("/") for t in network.TOOLS)


def test_a_network_that_cannot_be_had_is_a_clear_error_that_changes_nothing(
    tmp_path: Path,
) -> None:
    """local.network = 'own' with a {port} command (dialled over the machine's network):
    the command says what is missing, exits 2, and leaves no state folder, no store."""
    import sys

    state = tmp_path / "state"
    env = codepool_env(
        state,
        CODEPOOL_LOCAL_NETWORK="own",
        CODEPOOL_LOCAL_COMMAND="code-server --bind-addr 127.0.0.1:{port}",
    )
    done = subprocess.run(
        [sys.executable, "-m", "codepool", "status"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "local.network = 'own' needs a workspace command on {socket}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not state.exists()
