"""The JSON API (/api/v1/) with tokens of each scope, on the local backend and on moto's
AWS: what each may do, every refusal as JSON with its kind (no token, a bad, expired or
revoked one, a missing scope), the start limit's 429, and the OpenAPI document matching
the routes exactly."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from codepool.core.store import Store
from codepool.core.tokens import Tokens
from codepool.daemon.api import PREFIX
from tests.helpers import codepool_env
from tests.router_fixtures import Client, Served

API = PREFIX


async def token(served: Served, *scopes: str, user: str = "", ttl_s: int = 3600) -> str:
    value, _ = await Tokens(served.pool.store, served.pool.clock).create(
        "test", scopes, "tests", user, ttl_s
    )
    return value


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


async def call(c: Client, method: str, path: str, value: str, **kw: Any) -> tuple[int, Any]:
    headers = {**bearer(value), **kw.pop("headers", {})}
    resp = await c.request(method, API + path, headers=headers, **kw)
    return resp.status, await resp.json()


async def test_refusals_are_json_with_a_stable_kind(served: Served) -> None:
    c = await served.client()
    resp = await c.get(API + "/status")
    assert resp.status == 401 and (await resp.json())["error"] == "unauthenticated"
    # a person's browser, logged in, is no token: a page cannot use the API through it
    logged_in = await served.client("root")
    resp = await logged_in.get(API + "/status", headers={"Sec-Fetch-Site": "same-origin"})
    assert resp.status == 401
    for bad in ("nonsense", "cp_1234abcd_forged", "cp_" + "x" * 300, "cp__", "Basic abc"):
        status, body = await call(c, "GET", "/status", bad)
        assert (status, body["error"]) == (401, "unauthenticated"), bad
    reader = await token(served, "read")
    status, body = await call(c, "POST", "/workspaces/alice/assign", reader)
    assert (status, body["error"]) == (403, "forbidden") and "workspaces:write" in body["message"]
    # expired: a token whose time is up
    tokens = Tokens(served.pool.store, served.pool.clock)
    old, record = await tokens.create("old", ["read"], "tests", ttl_s=60)
    await served.pool.store.delete_token(record.id)
    await served.pool.store.put_token(dataclasses.replace(record, expires_ms=1))
    assert (await call(c, "GET", "/status", old))[0] == 401
    # revoked: refused from the next request on
    assert (await call(c, "GET", "/status", reader))[0] == 200
    [mine] = [t for t in await tokens.list() if t.scopes == ("read",) and t.name == "test"]
    await tokens.revoke(mine.id)
    assert (await call(c, "GET", "/status", reader))[0] == 401
    # bad input is a 400 with what is allowed, and changes nothing
    writer = await token(served, "workspaces:write")
    status, body = await call(c, "POST", "/workspaces/..x/assign", writer)
    assert (status, body["error"]) == (400, "invalid-input")
    reader2 = await token(served, "read")
    for query in ("since=99999999999999999999d", "since=tomorrow", "since=1h&until=2h",
                  "kind=nope", "user=..x"):  # fmt: skip
        status, body = await call(c, "GET", "/events?" + query, reader2)
        assert (status, body["error"]) == (400, "invalid-input"), query
    status, body = await call(c, "POST", "/workspaces/alice/hold", writer, json={"for_s": "1h"})
    assert (status, body["error"]) == (400, "invalid-input") and "for_s" in body["message"]
    status, body = await call(
        c, "POST", "/workspaces/alice/hold", writer, data=b"{", headers={"Content-Type": "x"}
    )
    assert status in (400, 415)
    assert await served.pool.store.get_workspace("alice") is None


async def test_a_writer_assigns_holds_and_releases_anyones_workspace(served: Served) -> None:
    c = await served.client()
    writer = await token(served, "workspaces:write", "read")
    status, body = await call(c, "POST", "/workspaces/alice/assign", writer)
    assert status == 200 and body["how"] in ("launched", "spare") and body["url"]
    assert body["workspace"]["state"] == "running"
    status, body = await call(c, "POST", "/workspaces/alice/hold", writer, json={"for_s": 600})
    assert status == 200 and body["hold_until_ms"] > 0
    status, body = await call(c, "GET", "/workspaces", writer)
    assert [w["user"] for w in body["workspaces"]] == ["alice"]
    status, body = await call(c, "POST", "/workspaces/alice/release", writer, json={})
    assert status == 200 and body["terminated"] is False
    status, body = await call(c, "POST", "/workspaces/alice/release", writer)
    assert (status, body["error"]) == (409, "no-workspace")
    status, body = await call(c, "GET", "/events?since=1h&user=alice", writer)
    assert [(e["kind"], e["actor"]) for e in body["events"]][:3] == [
        ("assign", "token:test"),
        ("hold", "token:test"),
        ("stop", "token:test"),
    ]
    status, body = await call(c, "GET", "/report?since=1h", writer)
    assert status == 200 and body["people"][0]["user"] == "alice"
    status, body = await call(c, "GET", "/reap", writer)
    assert status == 200 and body["decisions"] == []


async def test_a_self_token_acts_for_its_person_only(served: Served) -> None:
    c = await served.client()
    own = await token(served, "self", user="alice")
    assert (await call(c, "POST", "/workspaces/alice/assign", own))[0] == 200
    assert (await call(c, "GET", "/workspaces/alice", own))[0] == 200
    for method, path in (
        ("POST", "/workspaces/bob/assign"),
        ("GET", "/workspaces/bob"),
        ("GET", "/status"),
        ("GET", "/users"),
        ("GET", "/events"),
    ):
        status, body = await call(c, method, path, own)
        assert (status, body["error"]) == (403, "forbidden"), path
    assert (await call(c, "POST", "/workspaces/alice/release", own))[0] == 200


async def test_users_write_adds_lists_and_removes_accounts(served: Served) -> None:
    c = await served.client()
    admin = await token(served, "users:write")
    status, body = await call(
        c, "POST", "/users", admin, json={"name": "carol", "password": "carol-password-1"}
    )
    assert status == 200 and body == {
        "name": "carol",
        "admin": False,
        "created_ms": body["created_ms"],
    }
    status, body = await call(c, "POST", "/users", admin, json={"name": "carol", "password": "x"})
    assert (status, body["error"]) == (400, "invalid-input")
    names = [u["name"] for u in (await call(c, "GET", "/users", admin))[1]["users"]]
    assert "carol" in names and "alice" in names
    assert "hash" not in str(await call(c, "GET", "/users", admin))
    assert (await call(c, "DELETE", "/users/carol", admin))[0] == 200
    status, body = await call(c, "DELETE", "/users/carol", admin)
    assert (status, body["error"]) == (400, "invalid-input")


async def test_making_or_removing_an_admin_needs_the_admin_scope(served: Served) -> None:
    """An admin may enter people's workspaces: a token for managing accounts cannot mint
    one, nor remove one; with the admin scope too, it can."""
    c = await served.client()
    manager = await token(served, "users:write")
    status, body = await call(
        c,
        "POST",
        "/users",
        manager,
        json={"name": "eve", "password": "eve-password-1", "admin": True},
    )
    assert (status, body["error"]) == (403, "forbidden") and "admin" in body["message"]
    assert await served.router.accounts.get("eve") is None  # nothing made
    owner = await token(served, "users:write", "admin")
    status, body = await call(
        c,
        "POST",
        "/users",
        owner,
        json={"name": "eve", "password": "eve-password-1", "admin": True},
    )
    assert status == 200 and body["admin"] is True
    status, body = await call(c, "DELETE", "/users/eve", manager)
    assert (status, body["error"]) == (403, "forbidden")
    assert (await call(c, "DELETE", "/users/eve", owner))[0] == 200
    alone = await token(served, "admin")  # the admin scope alone manages no account
    assert (await call(c, "GET", "/users", alone))[0] == 403


async def test_past_the_start_limit_the_api_answers_429(
    make_served: Callable[..., Any],
) -> None:
    served: Served = await make_served(pool={"max_concurrent_starts": 1, "warm_spares": 0})
    store: Store = served.pool.store
    assert await store.take_start("someone-else", 1, 60_000) == 0  # a start in flight
    c = await served.client()
    writer = await token(served, "workspaces:write")
    resp = await c.post(API + "/workspaces/alice/assign", headers=bearer(writer))
    body = await resp.json()
    assert resp.status == 429 and body["error"] == "starts-full"
    assert int(resp.headers["Retry-After"]) > 0 and body["retry_after_s"] > 0
    await store.give_back_start("someone-else")
    assert (await call(c, "POST", "/workspaces/alice/assign", writer))[0] == 200


async def test_the_openapi_document_matches_the_routes(served: Served) -> None:
    c = await served.client()
    resp = await c.get(API + "/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert served.app is not None
    served_routes = {
        (r.method, r.resource.canonical)
        for r in served.app.router.routes()
        if r.resource is not None and r.resource.canonical.startswith(API)
    }
    assert documented == served_routes
    for path, ops in doc["paths"].items():
        for op in ops.values():
            if path != API + "/openapi.json":
                assert op["x-scope"] in ("read", "workspaces:write", "users:write")
                # (admin is asked for by the handler, for admin accounts only)
                assert set(re.findall(r"{(\w+)}", path)) <= {
                    p["name"] for p in op.get("parameters", [])
                }


@pytest.mark.parametrize("scope", ["read", "workspaces:write", "users:write"])
async def test_tokens_are_kept_hashed(served: Served, scope: str) -> None:
    value = await token(served, scope)
    [record] = [t for t in await served.pool.store.list_tokens() if t.scopes == (scope,)]
    assert value not in repr(record) and value.split("_", 2)[2] not in repr(record)


async def test_codepool_tokens_create_list_revoke(state_dir: Path) -> None:
    env = codepool_env(state_dir)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "codepool", "tokens", *args], env=env, capture_output=True,
            text=True,
        )  # fmt: skip

    made = cli("create", "bot", "--scope", "read", "--expires", "7d", "--json")
    assert made.returncode == 0, made.stderr
    body = json.loads(made.stdout)
    assert body["token"].startswith("cp_" + body["id"] + "_") and body["scopes"] == ["read"]
    listed = json.loads(cli("list", "--json").stdout)["tokens"]
    assert [t["id"] for t in listed] == [body["id"]] and "token" not in listed[0]
    assert "digest" not in listed[0]
    assert cli("revoke", body["id"]).returncode == 0
    assert json.loads(cli("list", "--json").stdout)["tokens"] == []
    for bad, says in [
        (["create", "x", "--scope", "root"], "invalid scope root: allowed: read"),
        (["create", "x", "--scope", "self"], "exactly when it has 'self'"),
        (["create", "x", "--scope", "read", "--expires", "soon"], "invalid duration"),
        (["create", "x", "--scope", "read", "--expires", "9" * 30], "at most 100 years"),
        (["revoke", "nope"], "no token 'nope'"),
    ]:
        result = cli(*bad)
        assert result.returncode == 2 and says in result.stderr, (bad, result.stderr)
        assert "Traceback" not in result.stderr
