"""The router's log and metrics, from a real `codepool serve`: --log-level, --log-format
json with who, where and why as fields of their own, the access log (method, route
template, status, duration, user, client), and /metrics against its documented table."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import aiohttp

import codepool
from codepool.core.logs import JsonLogs, TextLogs, fields
from tests.ports import free_port
from tests.serving import Server, add_accounts, client, log_in, log_in_and_dispatch, serve_env


def record(message: str, **values: object) -> logging.LogRecord:
    extra = fields(**values)["extra"]
    r = logging.LogRecord("codepool.router", logging.INFO, __file__, 1, message, (), None)
    r.__dict__.update(extra)
    return r


def test_fields_are_keys_in_json_and_key_value_in_text() -> None:
    r = record("login", user="alice", client="10.0.0.7", how="password", reason=None)
    body = json.loads(JsonLogs().format(r))
    assert body["message"] == "login" and body["level"] == "info"
    assert (body["user"], body["client"], body["how"]) == ("alice", "10.0.0.7", "password")
    assert "reason" not in body  # None is left out
    text = TextLogs(with_pid=False).format(r)
    assert text.endswith("codepool.router: login user=alice client=10.0.0.7 how=password")
    # A value with spaces, quotes or an equals sign is quoted, so a line parses back.
    odd = TextLogs(with_pid=False).format(record("x", reason='a b="c"', user=""))
    assert odd.endswith('x reason="a b=\\"c\\"" user=""')
    # A field cannot pass itself off as one of the line's own keys.
    assert json.loads(JsonLogs().format(record("m", level="error")))["level"] == "info"


async def test_json_log_with_access_log_and_levels(state_dir: Path) -> None:
    await add_accounts(state_dir, ["alice"])
    env = serve_env(state_dir)
    server = Server(env, free_port(), "--log-format", "json", "--access-log")
    try:
        server.wait_up()
        async with client() as http:
            await log_in(http, server.url, "alice")
            async with http.get(server.url + "/") as r:
                assert r.status == 200
            async with http.get(server.url + "/w/alice/some/secret-file.txt") as r:
                pass
    finally:
        out = server.stop()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert lines and len(lines) == len(out.splitlines()), out[-2000:]  # every line is JSON
    [login] = [x for x in lines if x["message"] == "login"]
    assert (login["user"], login["client"], login["how"]) == ("alice", "127.0.0.1", "password")
    access = [x for x in lines if x["logger"] == "codepool.access"]
    home = [x for x in access if x["route"] == "/" and x["method"] == "GET"]
    assert home and home[-1]["status"] == 200 and home[-1]["user"] == "alice"
    assert home[-1]["client"] == "127.0.0.1" and home[-1]["duration_ms"] >= 0
    posted = [x for x in access if x["route"] == "/login" and x["method"] == "POST"]
    assert posted and posted[0]["status"] == 302
    # Routes, never paths: a person's file names do not end up in the log.
    assert "secret-file" not in out
    assert any(x["route"] == "/w/{user}/{tail}" for x in access), {x["route"] for x in access}
    assert lines[0]["message"] == "serving" and lines[0]["url"] == server.url + "/"

    quiet = Server(env, free_port(), "--log-level", "warning", "--access-log")
    try:
        quiet.wait_up()
        async with client() as http:
            await log_in(http, quiet.url, "alice")
    finally:
        out = quiet.stop()
    assert " INFO " not in out and "request" not in out, out[-2000:]


def test_a_bad_log_level_is_refused(state_dir: Path) -> None:
    env = serve_env(state_dir)
    result = subprocess.run(
        [sys.executable, "-m", "codepool", "serve", "--log-level", "loud"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--log-level 'loud': use debug, info, warning, error" in result.stderr


def documented_metrics() -> set[str]:
    """The names in docs/operations.md's metrics table (a `prefix_*` row stands for the
    names it lists)."""
    text = (Path(__file__).parents[1] / "docs" / "operations.md").read_text()
    section = text.split("### Metrics", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for row in section.splitlines():
        if not row.startswith("| `"):
            continue
        first, *rest = row.split("|")[1:]
        name = first.strip().strip("`")
        if name.endswith("*"):
            names |= {
                n for n in re.findall(r"`([a-z_]+)`", "|".join(rest)) if n.startswith(name[:-1])
            }
        else:
            names.add(name)
    return names


async def test_metrics_are_the_documented_ones(state_dir: Path) -> None:
    """What /metrics exports (after logins and requests, so every labelled family has a
    sample) is exactly docs/operations.md's table; login outcomes and request counts by
    route template count what happened."""
    from prometheus_client.parser import text_string_to_metric_families

    await add_accounts(state_dir, ["alice"])
    server = Server(serve_env(state_dir), free_port())
    try:
        server.wait_up()
        async with client() as http:
            await log_in(http, server.url, "alice")
            # What a script can send: invented methods and paths grow no label, and the
            # heartbeat's pings are left to codepool_pings_total.
            for n in range(5):
                async with http.request(f"BREW{n}", f"{server.url}/secret-{n}") as r:
                    assert r.status < 500
            async with http.post(server.url + "/ping", json={"instanceId": "i-x"}) as r:
                assert r.status < 500
            async with http.get(server.url + "/metrics") as r:
                exported = await r.text()
    finally:
        out = server.stop()
    assert "Traceback" not in out, out[-3000:]  # a malformed request has no app to ask
    assert "secret-" not in exported and "BREW" not in exported
    assert 'method="other"' in exported and 'route="/ping"' not in exported
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(exported):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    families = set()
    for family in text_string_to_metric_families(exported):
        families.add(family.name + ("_total" if family.type == "counter" else ""))
    documented = documented_metrics()
    assert families == documented, (families - documented, documented - families)
    assert ({"how": "password", "outcome": "ok"}, 1.0) in samples["codepool_logins_total"]
    health = [v for labels, v in samples["codepool_http_requests_total"]
              if labels == {"route": "/health", "method": "GET", "status": "2xx"}]  # fmt: skip
    assert health and health[0] >= 1  # the readiness wait asked it
    assert samples["codepool_build_info"][0][0]["version"] == codepool.__version__
    assert samples["process_resident_memory_bytes"][0][1] > 0


def counters(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of every counter and histogram, keyed by name and labels."""
    from prometheus_client.parser import text_string_to_metric_families

    found = {}
    for family in text_string_to_metric_families(exposition):
        if family.type in ("counter", "histogram"):
            for s in family.samples:
                found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


async def test_metrics_of_workers_add_up_and_never_go_backwards(state_dir: Path) -> None:
    """With --workers 2, 20 scrapes (each on a new connection, so either worker answers)
    while people log in: no counter ever goes down from one scrape to the next, the
    logins add up over both workers, and the leader and the process are told once."""
    from prometheus_client.parser import text_string_to_metric_families

    await add_accounts(state_dir, ["alice"])
    server = Server(serve_env(state_dir), free_port(), "--workers", "2")
    scrapes = []
    logins = 0
    try:
        server.wait_up()
        for i in range(20):
            if i % 4 == 0:
                async with client() as http:
                    await log_in(http, server.url, "alice")
                logins += 1
            async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as r:
                assert r.status == 200
                scrapes.append(await r.text())
    finally:
        out = server.stop()
    assert server.proc.returncode == 0, out[-2000:]
    before = counters(scrapes[0])
    for text in scrapes[1:]:
        now = counters(text)
        went_back = {k: (before[k], v) for k, v in now.items() if k in before and v < before[k]}
        assert not went_back, went_back
        assert set(before) <= set(now), set(before) - set(now)  # nothing disappears
        before = now
    last = {f.name: f for f in text_string_to_metric_families(scrapes[-1])}
    wanted = {"how": "password", "outcome": "ok"}
    ok = [s.value for s in last["codepool_logins"].samples
          if s.labels == wanted and s.name.endswith("_total")]  # fmt: skip
    assert ok == [logins]  # each worker counted its own; every scrape adds both
    assert [s.value for s in last["codepool_leader"].samples] == [1.0]
    assert last["process_resident_memory_bytes"].samples[0].value > 0


async def test_every_router_shows_the_pools_gauges(state_dir: Path) -> None:
    """Two routers on one store: the leader counts the workspaces, and the other shows
    the same figures (read from the store), not zeros."""
    from prometheus_client.parser import text_string_to_metric_families

    await add_accounts(state_dir, ["alice"])
    env = serve_env(state_dir)
    routers = [Server(env, free_port()), Server(env, free_port())]

    async def gauges(server: Server) -> dict[str, float]:
        async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as r:
            text = await r.text()
        found = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "codepool_workspaces" and s.labels["state"] == "running":
                    found["running"] = s.value
                elif s.name == "codepool_leader":
                    found["leader"] = s.value
        return found

    try:
        for r in routers:
            r.wait_up()
        async with client() as http:
            await log_in_and_dispatch(http, routers[0].url, "alice")
        seen: list[dict[str, float]] = []
        for _ in range(100):
            seen = [await gauges(r) for r in routers]
            if all(g["running"] == 1 for g in seen):
                break
            await asyncio.sleep(0.2)
    finally:
        for r in routers:
            r.stop()
    assert [g["running"] for g in seen] == [1, 1], seen
    assert sorted(g["leader"] for g in seen) == [0, 1], seen
