"""Hostile input, generated: hypothesis throws bodies, form fields, paths and arguments at
the router and the CLI. Every answer must be a clean refusal (a 4xx, a redirect to the
login, or an exit code with one line), never a 5xx or a traceback, and nothing may be
written: the workspaces, the accounts and the boxes are compared before and after.

The hand-written cases (CSRF, Origin checks, fixation, rate limit, JWT forgery, open
redirects, other users' paths) are in test_router.py and test_jwt.py."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner
from yarl import URL

from codepool.cli.app import app
from codepool.core.models import Account, Workspace
from codepool.core.tokens import Tokens
from tests.router_fixtures import Client, Served, dispatched

# One router serves every example of a test (that is the point: state must not drift).
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,  # the same examples on every run: a failure reproduces
)
local_only = pytest.mark.parametrize("make_served", ["local"], indirect=True)

# Characters people and attackers type: path, header, shell and HTML metacharacters.
NASTY = st.text(
    alphabet=st.sampled_from(
        list("abcxyz019ALICE") + list("/\\.%;:&|$`'\"<>(){}[]*?!#~@=+ \t\r\n\x00é☃")
    ),
    max_size=40,
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | NASTY,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(NASTY, inner, max_size=4),
    max_leaves=12,
)


async def snapshot(served: Served) -> tuple[list[Workspace], set[str], list[Account], list[Any]]:
    """Everything a request could change: workspaces, spares, accounts, boxes."""
    found: list[Workspace] = []
    async for batch in served.pool.store.iter_workspaces():
        found += batch
    users = await served.pool.store.list_accounts()
    boxes = sorted(await served.pool.backend.list_instances(), key=lambda i: i.instance_id)
    return sorted(found, key=lambda w: w.user), await served.pool.store.spares(), users, boxes


@pytest.fixture
async def bob_working(served: Served) -> Client:
    """Bob has a workspace; the fuzzing client is alice, who has none (but has entered her
    own workspace origin, so that her requests there carry its session)."""
    await dispatched(await served.client("bob"), "bob", served)
    alice = await served.client("alice")
    await served.enter(alice, "alice")
    return alice


@local_only
@FUZZ
@given(body=st.one_of(st.binary(max_size=2048), JSON_VALUES.map(lambda v: json.dumps(v).encode())))
async def test_fuzzed_pings_are_refused_and_write_nothing(
    served: Served, bob_working: Client, body: bytes
) -> None:
    bob = await served.pool.store.get_workspace("bob")
    assert bob is not None
    before = await snapshot(served)
    for payload in (body, json.dumps({"instanceId": bob.instance_id}).encode()):
        for url, origin in (
            ("/ping", served.origin),  # path mode's heartbeat
            (served.ping_url("alice"), served.ws("alice")[:-1]),  # her workspace origin's
        ):
            resp = await bob_working.post(
                url, data=payload, headers={"Content-Type": "application/json", "Origin": origin}
            )
            assert resp.status in (400, 403, 404, 409, 413), (payload, await resp.text())
            assert resp.content_type == "application/json"
    assert await snapshot(served) == before


@local_only
@FUZZ
@given(
    fields=st.dictionaries(
        st.sampled_from(["user", "password", "next", "csrf", "extra"]), NASTY, max_size=5
    )
)
async def test_fuzzed_logins_never_log_in_or_fail(served: Served, fields: dict[str, str]) -> None:
    c = await served.make_client()
    before = await snapshot(served)
    resp = await c.post(
        "/login", data=fields, headers={"Origin": served.origin}, allow_redirects=False
    )
    assert resp.status in (200, 400, 403, 429), await resp.text()
    assert c.cookie(served.router.cookies.session) is None
    assert await snapshot(served) == before


@local_only
@FUZZ
@given(segment=NASTY, rest=NASTY)
async def test_fuzzed_workspace_paths_never_reach_another_users_box(
    served: Served, bob_working: Client, segment: str, rest: str
) -> None:
    """alice (no workspace) asks bob's workspace origin, her own, and a host of any name
    for any path, raw and percent-encoded: bob's box is never reached (every answer is
    the router's own: a way to log in, a refusal, or alice's stopped page)."""
    before = await snapshot(served)
    port = URL(served.origin).port
    label = quote(segment, safe="").lower()[:60] or "x"
    for url in (
        served.ws("bob", "/" + quote(rest, safe="/")),
        served.ws("bob", "/" + quote(rest, safe="")),
        served.ws("alice", "/..%2F..%2F" + quote(rest, safe="")),
        f"http://127.0.0.1:{port}/w/{quote(segment, safe='')}/{quote(rest, safe='/')}",
    ):
        resp = await bob_working.get(url, allow_redirects=False)
        text = await resp.text()
        assert resp.status in (302, 400, 401, 403, 404, 409), (url, resp.status, text)
        assert resp.headers.get("Content-Type", "").split(";")[0] != "application/octet-stream"
    resp = await bob_working.get(
        f"http://127.0.0.1:{port}/" + quote(rest, safe="/"),
        headers={"Host": f"{label}.localhost:{port}"},
        allow_redirects=False,
    )
    assert resp.status in (200, 302, 400, 401, 403, 404, 409, 421), (label, resp.status)
    assert await snapshot(served) == before


@local_only
@FUZZ
@given(query=st.dictionaries(NASTY, NASTY, max_size=3))
async def test_fuzzed_dispatch_queries_send_nobody_elsewhere(
    served: Served, query: dict[str, str]
) -> None:
    """Without a session, /dispatch with any query goes to the login page, on this site."""
    c = await served.make_client()
    resp = await c.get("/dispatch", params=query, allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"].startswith("/login?next=")


@FUZZ
@given(
    command=st.sampled_from(["release", "extend", "assign"]),
    user=NASTY,
    duration=NASTY,
)
def test_fuzzed_cli_arguments_get_a_clean_answer(
    tmp_path: Path, command: str, user: str, duration: str
) -> None:
    """Bad names and durations exit 2 with one line, unknown users 3; never a traceback.
    Names that pass the rule are only used with commands that change nothing for them."""
    from codepool.core import policy
    from codepool.core.errors import InvalidInput

    try:
        policy.check_user(user)
        valid = True
    except InvalidInput:
        valid = False
    if command == "assign" and valid:
        command = "release"  # a real assignment would start a workspace: not a fuzz's job
    args = [command, "--json", "--", user]
    if command == "extend":
        args = ["extend", "--json", "--for", duration, "--", user]
    config = tmp_path / "codepool.toml"
    config.write_text(f'[local]\nstate_dir = "{tmp_path / "state"}"\n')
    result = CliRunner().invoke(app, ["--config", str(config), *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code in (2, 3), (args, result.exit_code, result.output)
    assert json.loads(result.stderr)["error"]["exit_code"] == result.exit_code
    assert result.stdout == ""


@local_only
@FUZZ
@given(host=NASTY, state=NASTY, token=NASTY, cookie=NASTY)
async def test_fuzzed_entry_passes_open_nothing(
    served: Served, bob_working: Client, host: str, state: str, token: str, cookie: str
) -> None:
    """The two steps of entering a workspace origin, with anything in their query and in
    the state cookie: a clean refusal, and no session for any host."""
    before = await snapshot(served)
    resp = await bob_working.get(
        "/authorize", params={"host": host, "state": state}, allow_redirects=False
    )
    assert resp.status in (302, 400, 403), (host, state, resp.status)
    for where in ("alice", "bob"):
        resp = await bob_working.get(
            served.ws(where, "/_codepool/enter"),
            params={"token": token},
            headers={"Cookie": f"codepool_state={quote(cookie)}"},
            allow_redirects=False,
        )
        assert resp.status == 403, (where, token, cookie, resp.status)
        assert "codepool_ws" not in resp.headers.get("Set-Cookie", "")
    assert await snapshot(served) == before


async def test_a_decompression_bomb_does_not_swell_the_router(
    state_dir: Path, servers: list[Any]
) -> None:
    """A hostile box answers HTML pages of 1 MB that inflate to 1 GB, eight at once. A real
    `codepool serve` inflates each only up to router.max_html_bytes and passes it on: its
    memory grows by less than 100 MB, and another person's requests are answered all the
    while."""
    from tests.ports import free_port
    from tests.serving import Server, add_accounts, client, enter, log_in_and_dispatch, serve_env
    from tests.standin_workspace import gzip_bomb
    from tests.test_soak import rss_kb

    await add_accounts(state_dir, ["alice", "bob"])
    server = Server(serve_env(state_dir), free_port())
    servers.append(server)
    await asyncio.to_thread(server.wait_up)
    html = {"Accept": "text/html"}
    async with client(inflate=False) as alice, client() as bob:
        homes = {}
        for name, http in (("alice", alice), ("bob", bob)):
            homes[name] = await log_in_and_dispatch(http, server.url, name)
            await enter(http, homes[name])

        async def bomb() -> int:
            async with alice.get(homes["alice"] + "bomb?mb=1024", headers=html) as resp:
                return len(await resp.read())

        assert await bomb() == len(gzip_bomb(1024))  # warm-up: the box makes its bomb once
        before = peak = rss_kb(server.proc.pid)
        bombs = [asyncio.create_task(bomb()) for _ in range(8)]
        answered = 0
        while not all(b.done() for b in bombs):
            async with asyncio.timeout(5), bob.get(homes["bob"] + "healthz") as resp:
                assert resp.status == 200
                answered += 1
            peak = max(peak, rss_kb(server.proc.pid))
            await asyncio.sleep(0.05)
        assert all(size == len(gzip_bomb(1024)) for size in await asyncio.gather(*bombs))
        peak = max(peak, rss_kb(server.proc.pid))
    print(f"RSS {before} kB -> peak {peak} kB; bob answered {answered} times meanwhile")
    assert peak - before < 100 * 1024, (before, peak)
    assert answered >= 1


MAIN_ROUTES = [
    "/", "/login", "/logout", "/dispatch", "/dispatch/status", "/authorize", "/ping",
    "/admin", "/admin/stop", "/admin/extend", "/hold", "/stop", "/api/me", "/favicon.ico",
    "/health", "/livez", "/readyz", "/metrics",
    "/assets/style.css", "/w/alice/x", "/nope",
    "/api/v1/status", "/api/v1/events", "/api/v1/report", "/api/v1/users",
    "/api/v1/workspaces/alice/hold", "/api/v1/workspaces/alice/release", "/api/v1/openapi.json",
]  # fmt: skip
WORKSPACE_ROUTES = [
    "/", "/_codepool/enter", "/_codepool/ping", "/_codepool/resume", "/_codepool/auth",
    "/_codepool/heartbeat.js", "/_codepool/status", "/_codepool/hold", "/x",
]  # fmt: skip
# What a hand-written HTTP request may carry in a header: any byte but CR, LF and NUL.
HEADER_BYTES = st.binary(max_size=60).map(
    lambda b: bytes(c for c in b if c not in b"\r\n\0") or b"x"
)


@pytest.fixture
async def api_token(served: Served) -> str:
    """A token of every scope: logged in, the fuzz sends it, so the API's own parsing of
    the query and body meets the bytes."""
    scopes = ["read", "workspaces:write", "users:write"]
    made, _ = await Tokens(served.pool.store).create("fuzz", scopes, "tests")
    return made


async def raw_request(port: int, host: str, method: str, target: bytes, headers: bytes,
                      body: bytes) -> int:  # fmt: skip
    """Send bytes as they are (an HTTP client would check and encode them); the status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"{method} ".encode() + target + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
    head += headers + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
    writer.write(head + body)
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return int(status_line.split()[1])


@local_only
@FUZZ
@given(
    where=st.sampled_from(["main", "workspace"]),
    route=st.integers(min_value=0, max_value=100),
    method=st.sampled_from(["GET", "POST", "PUT", "HEAD"]),
    cookie=HEADER_BYTES,
    origin=HEADER_BYTES,
    fetch_site=st.sampled_from([b"same-origin", b"same-site", b"cross-site", b"none", b"\xff"]),
    accept=st.sampled_from([b"text/html", b"application/json", b"*/*", b"\xe9"]),
    query=HEADER_BYTES,
    body=st.binary(max_size=200),
    logged_in=st.booleans(),
)
async def test_any_bytes_on_any_route_never_make_a_5xx_or_a_traceback(
    served: Served,
    bob_working: Client,
    api_token: str,
    caplog: pytest.LogCaptureFixture,
    where: str,
    route: int,
    method: str,
    cookie: bytes,
    origin: bytes,
    fetch_site: bytes,
    accept: bytes,
    query: bytes,
    body: bytes,
    logged_in: bool,
) -> None:
    """Every route of both kinds of origin, with any bytes in the cookies, Origin, Fetch
    Metadata, Accept, query and body, and with and without a real session alongside."""
    port = URL(served.origin).port
    assert port is not None
    routes = MAIN_ROUTES if where == "main" else WORKSPACE_ROUTES
    path = routes[route % len(routes)]
    host = f"127.0.0.1:{port}" if where == "main" else f"alice.localhost:{port}"
    real = ""
    if logged_in:
        name = served.router.cookies.session if where == "main" else served.router.cookies.workspace
        real = bob_working.cookie(name, served.ws("alice") if where != "main" else "") or ""
    cookies = b"codepool_session=" + cookie + b"; codepool_ws=" + cookie
    if real:
        cookies += f"; {name}={real}".encode()
    bearer = api_token.encode() if real and where == "main" else cookie  # or any bytes
    headers = b"Authorization: Bearer " + bearer + b"\r\n"
    headers += b"Cookie: " + cookies + b"\r\nOrigin: " + origin + b"\r\n"
    headers += b"Sec-Fetch-Site: " + fetch_site + b"\r\nAccept: " + accept + b"\r\n"
    headers += b"Content-Type: application/x-www-form-urlencoded\r\n"
    target = path.encode() + b"?" + bytes(c for c in query if 32 < c < 127 and c != 35)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        status = await raw_request(port, host, method, target, headers, body)
    assert status < 500, (where, method, target, status)
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert not tracebacks, tracebacks[0].getMessage()
