"""What every benchmark shares: processes on loopback, wrk as the load generator, rounds
interleaved A/B so that a noisy neighbour hits every variant alike, and the table and
JSON every script prints and writes.

wrk (C, Debian's package) generates the load: a Python client would be slower than the
servers it measures. Its Lua `done` hook prints the figures as JSON, and a run with any
non-2xx answer or socket error is refused rather than reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "build" / "bench"  # tools the benchmarks install (configurable-http-proxy)
OUT = Path(os.environ.get("CODEPOOL_BENCH_OUT") or CACHE)  # results (the tests use a temp dir)
LOGS = OUT / "logs"


class BenchError(Exception):
    """A benchmark could not run as asked (a tool missing, a server that never came up)."""


def command(run: Callable[[], object]) -> None:
    """Run a benchmark as a command: a BenchError is one line and exit 1, not a traceback."""
    try:
        run()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return n


def positive_float(text: str) -> float:
    """An argparse type: a number of seconds above 0."""
    try:
        x = float(text)
    except ValueError:
        x = 0.0
    if not x > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return x


def sizes(text: str) -> list[int]:
    """An argparse type: a comma-separated list of whole numbers of at least 1."""
    try:
        return [positive_int(x) for x in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of whole numbers of at least 1"
        ) from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def need_package(package: str) -> None:
    """Install a Debian package with apt."""
    if shutil.which("apt-get") is None:
        raise BenchError(f"Debian package {package} is needed: install it")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print(f"==> installing {package} with apt", file=sys.stderr)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", package],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


def need(tool: str, package: str | None = None) -> str:
    """The path of a command, installing its Debian package first if it is missing."""
    found = shutil.which(tool) or (
        f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else None
    )
    if found:
        return found
    need_package(package or tool)
    found = shutil.which(tool) or (
        f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else None
    )
    if not found:
        raise BenchError(f"{tool} is still missing after installing {package or tool}")
    return found


class Proc:
    """A server process for the length of a benchmark, in its own process group, its
    output in build/bench/logs/<name>.log."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = LOGS / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_http(self, url: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.name} exited ({self.proc.returncode}); see {self.log_path}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status < 500:
                        return
            except urllib.error.HTTPError as exc:  # any answer but a 5xx: it is up
                if exc.code < 500:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise BenchError(f"{self.name} did not answer {url} in {timeout_s}s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


# -- wrk --------------------------------------------------------------------------------

_WRK_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"socket_errors":%d,"status_errors":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"bytes":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean,
    summary.bytes))
end
"""


def _lua_string(text: str) -> str:
    return (
        '"'
        + "".join(c if c.isalnum() or c in " -_./:;=,{}@" else f"\\{ord(c)}" for c in text)
        + '"'
    )


@dataclass(frozen=True)
class Request:
    method: str = "GET"
    path: str = "/"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str = ""


def wrk_script(requests: Sequence[Request]) -> str:
    """A wrk Lua script that sends these requests round-robin (one per connection turn)."""
    rows = []
    for r in requests:
        headers = ", ".join(f"[{_lua_string(k)}] = {_lua_string(v)}" for k, v in r.headers.items())
        body = _lua_string(r.body) if r.body else "nil"
        rows.append(
            f"wrk.format({_lua_string(r.method)}, {_lua_string(r.path)}, {{{headers}}}, {body})"
        )
    return (
        "local reqs = nil\nlocal n = 0\n"
        "request = function()\n"
        f"  if reqs == nil then reqs = {{{', '.join(rows)}}} end\n"
        "  n = n + 1\n  return reqs[(n % #reqs) + 1]\nend\n" + _WRK_DONE
    )


@dataclass(frozen=True)
class Sample:
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    mb_per_s: float


def wrk(
    base_url: str,
    requests: Sequence[Request],
    *,
    seconds: float,
    connections: int = 64,
    threads: int = 2,
) -> Sample:
    """Load base_url with the requests for `seconds`; refuses a run with any error."""
    binary = need("wrk")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(wrk_script(requests))
    try:
        out = subprocess.run(
            [
                binary,
                "-t",
                str(threads),
                "-c",
                str(connections),
                "-d",
                f"{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                fh.name,
                base_url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
    finally:
        os.unlink(fh.name)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise BenchError(f"wrk gave no result for {base_url}: {out.stdout}{out.stderr}")
    d = json.loads(line[len("WRKJSON ") :])
    if d["status_errors"] or d["socket_errors"] or not d["requests"]:
        raise BenchError(
            f"wrk on {base_url}: {d['status_errors']} non-2xx answers, {d['socket_errors']} "
            f"socket errors in {d['requests']} requests: the figures would be meaningless"
        )
    secs = d["duration_us"] / 1e6
    return Sample(
        rps=d["requests"] / secs,
        p50_ms=d["p50_us"] / 1000,
        p90_ms=d["p90_us"] / 1000,
        p99_ms=d["p99_us"] / 1000,
        requests=d["requests"],
        mb_per_s=d["bytes"] / secs / 1e6,
    )


# -- rounds, summaries, tables -------------------------------------------------------------


def interleave(
    variants: Mapping[str, Callable[[], Sample]],
    rounds: int,
    say: Callable[[str], None] | None = None,
) -> dict[str, list[Sample]]:
    """Run every variant once per round, in an order that rotates each round (A B C, B C A,
    C A B...), so that drift in the machine spreads over all of them."""
    names = list(variants)
    samples: dict[str, list[Sample]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            s = variants[name]()
            samples[name].append(s)
            if say:
                say(
                    f"  round {r + 1}/{rounds} {name}: {s.rps:,.0f} req/s  p50 {s.p50_ms:.2f} ms  "
                    f"p99 {s.p99_ms:.2f} ms"
                )
    return samples


def paired(a: Sequence[Sample], b: Sequence[Sample]) -> float:
    """How many times b's req/s a does: the median of the ratios round by round. Two
    samples of one round ran minutes apart at most, so a slow spell of the machine (it is
    shared) moves both; a ratio of two medians can pair a good round with a bad one."""
    return statistics.median(x.rps / y.rps for x, y in zip(a, b, strict=True))


def summarize(samples: Sequence[Sample]) -> dict[str, float]:
    rps = [s.rps for s in samples]
    return {
        "rps": statistics.median(rps),
        "rps_min": min(rps),
        "rps_max": max(rps),
        "p50_ms": statistics.median(s.p50_ms for s in samples),
        "p99_ms": statistics.median(s.p99_ms for s in samples),
        "mb_per_s": statistics.median(s.mb_per_s for s in samples),
        "rounds": len(samples),
    }


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [
        max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)
    ]
    lines = [f"\n{title}", "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append(
            "  ".join(
                v.rjust(w) if i else v.ljust(w)
                for i, (v, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.2f}"
    return str(v)


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def save(name: str, data: Mapping[str, Any]) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    return path


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- what the benchmarks run against ------------------------------------------------------


class RedisServer(Proc):
    """A private redis-server on a free loopback port, nothing kept on disk: the figures do
    not depend on what else the machine's own Redis holds."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        super().__init__(
            f"redis-{self.port}",
            [
                need("redis-server"),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise BenchError(f"redis-server did not start; see {self.log_path}")

    def command_calls(self, command: str) -> int:
        """How many times the server ran `command` since the last reset_stats."""
        import redis

        with redis.Redis.from_url(self.url) as r:
            stats: dict[str, Any] = r.info("commandstats")
            return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))

    def reset_stats(self) -> None:
        import redis

        with redis.Redis.from_url(self.url) as r:
            r.config_resetstat()


def router_env(state_dir: Path, port: int, **settings: str) -> dict[str, str]:
    """The environment of a `codepool serve` for a benchmark: its own state directory, no
    warm spare, and the given settings (CODEPOOL_<SECTION>_<KEY>)."""
    need("bwrap", "bubblewrap")
    return {
        **os.environ,
        "CODEPOOL_LOCAL_STATE_DIR": str(state_dir),
        "CODEPOOL_LOCAL_ISOLATION": "sandbox",  # as any ordinary user's (root's: accounts)
        "CODEPOOL_POOL_WARM_SPARES": "0",
        "CODEPOOL_ROUTER_PUBLIC_URL": f"http://127.0.0.1:{port}",
        **settings,
    }


def start_router(name: str, env: Mapping[str, str], port: int, workers: int = 1) -> Proc:
    proc = Proc(
        name,
        [sys.executable, "-m", "codepool", "serve", "--port", str(port), "--workers", str(workers)],
        env=env,
    )
    proc.wait_http(f"http://127.0.0.1:{port}/health")
    return proc


def session_cookies(
    store_url: str, prefix: str, users: Iterable[str]
) -> dict[str, tuple[str, str]]:
    """For each user an account, a session of the main origin and one of their workspace
    origin, written into the store as a login and an entry would (so the load is all
    pings and requests, no logins): user -> (main cookie, workspace cookie)."""
    return asyncio.run(_sessions(store_url, prefix, list(users)))


async def _sessions(store_url: str, prefix: str, users: list[str]) -> dict[str, tuple[str, str]]:
    from codepool.core.models import Account, SessionRecord
    from codepool.core.origins import label_of
    from codepool.core.store import create_store
    from codepool.daemon.sessions import new_token, token_hash

    store = create_store(store_url, key_prefix=prefix)
    out = {}
    day = int(time.time() * 1000) + 86_400_000
    try:
        for user in users:
            await store.add_account(Account(user, False, "not-for-logging-in", 1))
            main, ws = new_token(), new_token()
            record = SessionRecord(token_hash(main), user, "csrf", 1, 1, day)
            await store.put_session(record)
            await store.put_session(
                SessionRecord(
                    token_hash(ws), user, "csrf", 1, 1, day, "", user, label_of(user), record.sid
                )
            )
            out[user] = (main, ws)
    finally:
        await store.close()
    return out


LUA_MODULE = Path("/usr/lib/nginx/modules/ngx_http_lua_module.so")
NGINX_MAIN = """
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module {lua};
{user}worker_processes {workers};
pid {dir}/nginx.pid;
error_log stderr warn;  # into build/bench/logs/<name>.log: kept after the run
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}  # a WebSocket through a proxy holds two
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    types {{ text/html html; text/javascript js; }}
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{site}
}}
"""


class Nginx(Proc):
    """Debian's nginx with one site, in its own folder (one worker unless told)."""

    def __init__(self, name: str, directory: Path, site: str, port: int, workers: int = 1) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers must reach the folder
        conf = directory / "nginx.conf"
        binary = need("nginx")
        if not LUA_MODULE.exists():  # nginx/front.conf's Lua (Debian's module for its nginx)
            need_package("libnginx-mod-http-lua")
        text = NGINX_MAIN.format(
            user=user, workers=workers, dir=directory, site=site, lua=LUA_MODULE
        )
        conf.write_text(text)
        test = subprocess.run(
            [binary, "-t", "-c", str(conf), "-p", str(directory)], capture_output=True, text=True
        )
        if test.returncode:
            raise BenchError(f"nginx config of {name}: {test.stderr}")
        super().__init__(name, [binary, "-c", str(conf), "-p", str(directory), "-g", "daemon off;"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise BenchError(f"nginx {name} did not listen on {port}; see {self.log_path}")


def chp_binary() -> Path:
    """configurable-http-proxy (JupyterHub's proxy), installed from npm into build/bench."""
    prefix = CACHE / "chp"
    binary = prefix / "node_modules" / ".bin" / "configurable-http-proxy"
    if not binary.exists():
        if shutil.which("npm") is None:
            raise BenchError("npm is needed to install configurable-http-proxy (Node.js 20)")
        say("==> installing configurable-http-proxy from npm")
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "npm",
                "install",
                "--prefix",
                str(prefix),
                "--no-audit",
                "--no-fund",
                "configurable-http-proxy@4.6.3",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return binary
