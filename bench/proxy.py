"""The workspace proxy: a 2 KB page, a 2 KB asset and a 1 MB asset through <user>.localhost
vs straight to the server (direct), vs plain nginx, vs configurable-http-proxy
(JupyterHub's proxy, Node, from npm), vs a minimal aiohttp reverse proxy
(bench/peers/aiohttp_proxy.py), and through nginx/front.conf (nginx carries the bytes,
the router authorizes); req/s, p50, p99 at 64 connections, and the latency added at one
connection. Then WebSocket round trips of small messages, direct vs through codepool.

    python -m bench.proxy [--seconds 5] [--rounds 3]

The workspace end is an nginx serving the two files (fast enough not to be the limit)
and the tests' stand-in workspace (tests/standin_workspace.py) for its WebSocket echo.
The routers' workspaces are real Redis records pointing at them; the benchmark holds
the leader lease so that no reconcile clears them.
The page is text/html, so the router's own proxy buffers it to inject the heartbeat (as
it does for every HTML document); the front passes it through, since wrk does not ask
for text/html (a browser's page loads go to the router).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench import _lib
from bench._lib import Nginx, Proc, RedisServer, Request, Sample
from bench.ping import _seed_records

USERS = [f"u{i}" for i in range(50)]
WS_MESSAGES = 2000


def _upstream_site(port: int, root: Path) -> str:
    return f"""
server {{
    listen 127.0.0.1:{port} backlog=4096;
    root {root};
    location /healthz {{ return 200 "ok"; }}
}}"""


def _nginx_proxy_site(port: int, upstream: int, keepalive: bool = True) -> str:
    """Plain nginx as people run it in front of one server; without keepalive it opens a
    connection per request, as the front must (it names each box in a variable)."""
    return f"""
upstream box {{ server 127.0.0.1:{upstream}; {"keepalive 64;" if keepalive else ""} }}
server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
        proxy_pass http://box;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
    }}
}}"""


def _front_site(port: int, router_port: int) -> str:
    conf = (_lib.ROOT / "nginx" / "front.conf").read_text()
    # Two server blocks on one port: listen options go on the first only.
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{port} backlog=4096;", 1)
    for old, new in {
        "listen 80;": f"listen 127.0.0.1:{port};",
        "server 127.0.0.1:8000;": f"server 127.0.0.1:{router_port};",
        "server_name router.example.com;": "server_name 127.0.0.1;",
        r"\.ws\.example\.com$;": r"\.localhost$;",
        # The boxes here serve plain http: the file's lines for their TLS go, as it says.
        "proxy_ssl_verify on;": "",
        "proxy_ssl_trusted_certificate /etc/codepool/tls/workspace-ca.crt;": "",
        "proxy_ssl_name workspace.codepool.internal;": "",
        "proxy_ssl_server_name on;": "",
    }.items():
        if old not in conf:
            raise _lib.BenchError(f"nginx/front.conf no longer has {old!r}")
        conf = conf.replace(old, new)
    return conf


async def _ws_rtts(url: str, origin: str, cookie: str) -> list[float]:
    headers = {"Cookie": f"codepool_ws={cookie}", "Host": origin.split("//")[1]} if cookie else {}
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, origin=origin, headers=headers, protocols=("echo",)) as ws,
    ):
        times = []
        for i in range(WS_MESSAGES):
            t = time.perf_counter()
            await ws.send_str(f"keystroke {i:06d} of a developer")
            await ws.receive_str()
            times.append((time.perf_counter() - t) * 1000)
        return times


def run(seconds: float, rounds: int) -> dict[str, Any]:
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="codepool-bench-") as tmp:
        work = Path(tmp)
        try:
            result = _run(work, procs, seconds, rounds)
        finally:
            for p in reversed(procs):
                p.stop()
    _lib.say(f"wrote {_lib.save('proxy', result)}")
    return result


def _run(work: Path, procs: list[Proc], seconds: float, rounds: int) -> dict[str, Any]:
    files = work / "files"
    files.mkdir()
    (files / "page.html").write_text(
        "<!doctype html><html><head><title>p</title></head><body>"
        + "x" * (2048 - 80)
        + "</body></html>"
    )
    (files / "asset.js").write_bytes(b"/* asset */" + b"a" * (1024 * 1024 - 11))
    (files / "small.js").write_bytes(b"/* asset */" + b"a" * (2048 - 11))
    up = _lib.free_port()
    procs.append(Nginx("upstream", work / "upstream", _upstream_site(up, files), up))
    echo_port = _lib.free_port()
    echo = Proc(
        "ws-echo",
        [
            sys.executable,
            str(_lib.ROOT / "tests" / "standin_workspace.py"),
            "--port",
            str(echo_port),
            "--home",
            str(work),
        ],
        cwd=_lib.ROOT,
    )
    procs.append(echo)
    echo.wait_http(f"http://127.0.0.1:{echo_port}/healthz")
    ngx = _lib.free_port()
    procs.append(Nginx("nginx-proxy", work / "nginx-proxy", _nginx_proxy_site(ngx, up), ngx))
    ngx_new = _lib.free_port()
    site = _nginx_proxy_site(ngx_new, up, keepalive=False)
    procs.append(Nginx("nginx-new-conns", work / "nginx-new-conns", site, ngx_new))
    chp = _lib.free_port()
    chp_proc = Proc(
        "chp",
        [
            str(_lib.chp_binary()),
            "--ip",
            "127.0.0.1",
            "--port",
            str(chp),
            "--api-ip",
            "127.0.0.1",
            "--api-port",
            str(_lib.free_port()),
            "--default-target",
            f"http://127.0.0.1:{up}",
            "--log-level",
            "error",
        ],
    )
    procs.append(chp_proc)
    chp_proc.wait_http(f"http://127.0.0.1:{chp}/healthz")
    minimal = _lib.free_port()
    minimal_proc = Proc(
        "minimal",
        [
            sys.executable,
            "-m",
            "bench.peers.aiohttp_proxy",
            "--port",
            str(minimal),
            "--upstream",
            f"http://127.0.0.1:{up}",
        ],
        cwd=_lib.ROOT,
    )
    procs.append(minimal_proc)
    minimal_proc.wait_http(f"http://127.0.0.1:{minimal}/healthz")

    redis = RedisServer(work)
    procs.append(redis)
    front = _lib.free_port()
    routers: dict[str, int] = {}
    cookies: dict[str, dict[str, str]] = {}
    for name, workers in (("codepool", 1), ("codepool x2", 2)):
        port = _lib.free_port()
        state = work / name.replace(" ", "-")
        prefix = f"bench-{port}:"
        records = dict.fromkeys(USERS, f"http://127.0.0.1:{up}") | {
            "ws": f"http://127.0.0.1:{echo_port}"
        }
        asyncio.run(_seed_records(redis.url, prefix, records))
        sessions = _lib.session_cookies(redis.url, prefix, [*USERS, "ws"])
        cookies[name] = {u: ws for u, (_, ws) in sessions.items()}
        env = _lib.router_env(
            state,
            port,
            CODEPOOL_STORE_URL=redis.url,
            CODEPOOL_STORE_KEY_PREFIX=prefix,
            CODEPOOL_ROUTER_TRUSTED_PROXIES="127.0.0.1",
            CODEPOOL_ROUTER_PUBLIC_URL=f"http://127.0.0.1:{front}",
        )
        procs.append(_lib.start_router(name.replace(" ", "-"), env, port, workers))
        routers[name] = port
    procs.append(
        Nginx(
            "front",
            work / "front",
            _front_site(front, routers["codepool"]),
            front,
        )
    )
    cookies["front"] = cookies["codepool"]

    targets_of = {
        "direct": up,
        "nginx": ngx,
        "nginx, no keepalive": ngx_new,
        "chp": chp,
        "minimal": minimal,
        "codepool": routers["codepool"],
        "codepool x2": routers["codepool x2"],
        "front": front,
    }

    def requests(name: str, file: str) -> list[Request]:
        if name in cookies:  # each user's own origin, u.localhost, with its cookie
            return [
                Request(
                    "GET",
                    f"/{file}",
                    {"Host": f"{u}.localhost:{front}", "Cookie": f"codepool_ws={cookies[name][u]}"},
                )
                for u in USERS
            ]
        return [Request("GET", f"/{file}")]

    def load(name: str, file: str, connections: int, threads: int = 2) -> Callable[[], Sample]:
        reqs = requests(name, file)
        url = f"http://127.0.0.1:{targets_of[name]}"
        return lambda: _lib.wrk(
            url, reqs, seconds=seconds, connections=connections, threads=threads
        )

    out: dict[str, Any] = {}
    files_labels = (
        ("page.html", "2 KB page"),
        ("small.js", "2 KB asset"),
        ("asset.js", "1 MB asset"),
    )
    for file, label in files_labels:
        _lib.say(f"proxy: {label}, 64 connections")
        samples = _lib.interleave({n: load(n, file, 64) for n in targets_of}, rounds, _lib.say)
        out[label] = {n: _lib.summarize(v) for n, v in samples.items()}
        for n, v in samples.items():  # median of the ratios round by round (_lib.paired)
            out[label][n]["x direct"] = _lib.paired(v, samples["direct"])
            out[label][n]["x chp"] = _lib.paired(v, samples["chp"])
            out[label][n]["x nginx"] = _lib.paired(v, samples["nginx"])
            out[label][n]["x minimal"] = _lib.paired(v, samples["minimal"])
    _lib.say("proxy: 2 KB page, one connection (added latency)")
    one = _lib.interleave(
        {n: load(n, "page.html", 1, 1) for n in ("direct", "codepool", "front", "chp")},
        rounds,
        _lib.say,
    )
    out["2 KB page, 1 connection"] = {n: _lib.summarize(v) for n, v in one.items()}

    _lib.say(f"proxy: WebSocket, {WS_MESSAGES} round trips of small messages")
    origin = f"http://ws.localhost:{front}"  # the workspace of the user "ws"
    ws_targets = {
        "direct": (f"ws://127.0.0.1:{echo_port}/ws", ""),
        "codepool": (f"ws://127.0.0.1:{routers['codepool']}/ws", cookies["codepool"]["ws"]),
        "front": (f"ws://127.0.0.1:{front}/ws", cookies["codepool"]["ws"]),
    }
    ws_out: dict[str, list[float]] = {n: [] for n in ws_targets}
    for _ in range(rounds):
        for name, (url, cookie) in ws_targets.items():
            ws_out[name] += asyncio.run(_ws_rtts(url, origin, cookie))
    out["websocket"] = {
        n: {
            "p50_ms": statistics.median(v),
            "p99_ms": sorted(v)[int(len(v) * 0.99)],
            "messages": len(v),
        }
        for n, v in ws_out.items()
    }
    return _report(out)


def _report(out: dict[str, Any]) -> dict[str, Any]:
    for label in ("2 KB page", "2 KB asset", "1 MB asset"):
        s = out[label]
        rows = [
            [
                n,
                v["rps"],
                f"{v['rps_min']:,.0f}-{v['rps_max']:,.0f}",
                v["p50_ms"],
                v["p99_ms"],
                v["mb_per_s"],
                v["x direct"],
                v["x chp"],
                v["x minimal"],
            ]
            for n, v in s.items()
        ]
        print(
            _lib.table(
                f"{label} (wrk, 64 connections)",
                [
                    "path",
                    "req/s",
                    "spread",
                    "p50 ms",
                    "p99 ms",
                    "MB/s",
                    "x direct",
                    "x chp",
                    "x minimal",
                ],
                rows,
            )
        )
    one = out["2 KB page, 1 connection"]
    print(
        _lib.table(
            "2 KB page, one connection",
            ["path", "req/s", "p50 ms", "p99 ms", "added p50 ms"],
            [
                [n, v["rps"], v["p50_ms"], v["p99_ms"], v["p50_ms"] - one["direct"]["p50_ms"]]
                for n, v in one.items()
            ],
        )
    )
    ws = out["websocket"]
    print(
        _lib.table(
            "WebSocket round trip (one connection)",
            ["path", "p50 ms", "p99 ms", "added p50 ms"],
            [
                [n, v["p50_ms"], v["p99_ms"], v["p50_ms"] - ws["direct"]["p50_ms"]]
                for n, v in ws.items()
            ],
        )
    )
    page, asset = out["2 KB page"], out["2 KB asset"]
    targets = [
        ("codepool >= 1.5x chp req/s (2 KB page, injected)", page["codepool"]["x chp"], 1.5, True),
        ("codepool >= 1.5x chp req/s (2 KB asset)", asset["codepool"]["x chp"], 1.5, True),
        (
            "codepool p99 <= chp p99 (2 KB page)",
            page["codepool"]["p99_ms"],
            page["chp"]["p99_ms"],
            False,
        ),
        (
            "codepool p99 <= chp p99 (2 KB asset)",
            asset["codepool"]["p99_ms"],
            asset["chp"]["p99_ms"],
            False,
        ),
        (
            "codepool >= 1.2x minimal req/s (2 KB asset)",
            asset["codepool"]["x minimal"],
            1.2,
            True,
        ),
        (
            "codepool p99 <= minimal p99 (2 KB asset)",
            asset["codepool"]["p99_ms"],
            asset["minimal"]["p99_ms"],
            False,
        ),
        ("front >= 0.8x nginx req/s (2 KB asset)", asset["front"]["x nginx"], 0.8, True),
        (
            "added p50 over direct < 1 ms (2 KB, codepool)",
            one["codepool"]["p50_ms"] - one["direct"]["p50_ms"],
            1.0,
            False,
        ),
    ]
    rows = [
        [t, v, lim, "yes" if (v >= lim if at_least else v <= lim) else "NO"]
        for t, v, lim, at_least in targets
    ]
    print(_lib.table("proxy targets", ["target", "measured", "limit", "met"], rows))
    out["targets"] = [
        {"target": r[0], "measured": r[1], "limit": r[2], "met": r[3] == "yes"} for r in rows
    ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--seconds", type=_lib.positive_float, default=5, help="length of one run (default 5)"
    )
    ap.add_argument(
        "--rounds", type=_lib.positive_int, default=3, help="interleaved rounds (default 3)"
    )
    a = ap.parse_args()
    _lib.command(lambda: run(a.seconds, a.rounds))


if __name__ == "__main__":
    main()
