"""router.auth = "jwt": tokens from an identity provider, verified against its JWKS served
by a real HTTP server on loopback (signature, expiry, issuer, audience, user claim)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from codepool.core.errors import ConfigError
from codepool.core.settings import settings_from_mapping
from tests.helpers import serve_app
from tests.router_fixtures import Served

ISSUER = "https://idp.example/pool"
AUDIENCE = "codepool"


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    good = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    evil = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {"good": good, "evil": evil}


@pytest.fixture
async def jwks_url(keys: dict[str, Any]) -> AsyncIterator[str]:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(keys["good"].public_key()))
    public.update(kid="k1", use="sig", alg="RS256")

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response({"keys": [public]})

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", jwks)
    async with serve_app(app) as url:
        yield url + "/.well-known/jwks.json"


def token(keys: dict[str, Any], *, key: str = "good", kid: str = "k1", **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": now + 600,
        "iat": now,
        "preferred_username": "alice",
        **claims,
    }
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, keys[key], algorithm="RS256", headers={"kid": kid})


@pytest.fixture
async def served(make_served: Callable[..., Any], jwks_url: str) -> Served:
    result: Served = await make_served(
        router={"auth": "jwt"},
        jwt={
            "jwks_url": jwks_url,
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "admin_users": ["root"],
        },
    )
    return result


async def test_a_valid_token_opens_the_workspace_by_header_or_cookie(
    served: Served, keys: dict[str, Any]
) -> None:
    c = await served.client()
    auth = {"Authorization": f"Bearer {token(keys)}"}
    for _ in range(100):
        resp = await c.get("/dispatch", headers=auth, allow_redirects=False)
        if resp.status == 302:
            break
        await resp.release()
        await asyncio.sleep(0.2)
    assert resp.status == 302 and resp.headers["Location"] == "/w/alice/"
    echoed = await (await c.get("/w/alice/echo-headers", headers=auth)).json()
    assert "authorization" not in {k.lower() for k in echoed["headers"]}  # never upstream
    c.session.cookie_jar.update_cookies({"codepool_token": token(keys)}, served_url(served))
    resp = await c.get("/w/alice/healthz")
    assert resp.status == 200
    echoed = await (await c.get("/w/alice/echo-headers")).json()
    assert "codepool_token" not in echoed["headers"].get("Cookie", "")


def served_url(served: Served) -> Any:
    from yarl import URL

    return URL(served.origin)


@pytest.mark.parametrize(
    ("why", "make"),
    [
        ("expired", lambda k: token(k, exp=int(time.time()) - 3600)),
        ("wrong issuer", lambda k: token(k, iss="https://evil.example")),
        ("wrong audience", lambda k: token(k, aud="someone-else")),
        ("signed by another key", lambda k: token(k, key="evil")),
        ("unknown key id", lambda k: token(k, kid="nope")),
        ("no expiry", lambda k: token(k, exp=None)),
        ("no user claim", lambda k: token(k, preferred_username=None)),
        ("unusable user name", lambda k: token(k, preferred_username="../root")),
        ("alg none", lambda k: jwt.encode({"preferred_username": "alice"}, "", algorithm="none")),
        ("garbage", lambda k: "not.a.token"),
    ],
)
async def test_bad_tokens_are_refused(
    served: Served, keys: dict[str, Any], why: str, make: Callable[[dict[str, Any]], str]
) -> None:
    c = await served.client()
    headers = {"Authorization": f"Bearer {make(keys)}"}
    resp = await c.get("/dispatch", headers=headers, allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"].startswith("/login"), why
    resp = await c.post("/ping", json={"instanceId": "x"}, headers=headers)
    assert resp.status == 401, why
    assert await served.pool.store.get_workspace("alice") is None


async def test_admins_come_from_config_and_login_page_points_away(
    served: Served, keys: dict[str, Any]
) -> None:
    c = await served.client()
    root = {"Authorization": f"Bearer {token(keys, preferred_username='root')}"}
    alice = {"Authorization": f"Bearer {token(keys)}"}
    assert (await c.get("/admin", headers=root)).status == 200
    assert (await c.get("/admin", headers=alice)).status == 403
    resp = await c.get("/login")
    assert resp.status == 401 and "identity provider" in await resp.text()
    assert (await c.post("/login", data={"user": "alice"})).status == 404


def test_jwt_needs_a_jwks_url() -> None:
    with pytest.raises(ConfigError, match=r"needs jwt\.jwks_url"):
        settings_from_mapping({"router": {"auth": "jwt"}}, "f.toml")
