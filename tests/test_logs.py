"""The router's log: --log-level, --log-format json with who, where and why as fields of
their own, and the access log (method, route template, status, duration, user, client),
from a real `codepool serve`."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from codepool.core.logs import JsonLogs, TextLogs, fields
from tests.router_fixtures import free_port
from tests.serving import Server, add_accounts, client, log_in, serve_env


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
