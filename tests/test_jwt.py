"""router.auth = "jwt": tokens from an identity provider, verified against its JWKS served
by a real HTTP server on loopback (signature, expiry, issuer, audience, user claim), and
the workspace origin entered with them."""

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
from yarl import URL

from codepool.core.errors import ConfigError
from codepool.core.settings import settings_from_mapping
from codepool.daemon.auth import user_from_claims
from tests.helpers import serve_app
from tests.router_fixtures import Served, dispatched

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
        "sub": "alice",
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
    assert resp.status == 302 and resp.headers["Location"] == served.ws("alice")
    # The token is the main origin's; the workspace origin gets its own cookie through a
    # pass. Here the token rides in the cookie the provider's front would set.
    c.session.cookie_jar.update_cookies({"codepool_token": token(keys)}, URL(served.origin))
    await served.enter(c, "alice")
    echoed = await (await c.get(served.ws("alice", "/echo-headers"), headers=auth)).json()
    headers = {k.lower(): v for k, v in echoed["headers"].items()}
    assert "authorization" not in headers  # never upstream
    assert "codepool" not in headers.get("cookie", "")
    assert (await c.get(served.ws("alice", "/healthz"))).status == 200


async def test_users_logout_ends_a_jwt_persons_workspace_sessions(
    served: Served, keys: dict[str, Any]
) -> None:
    c = await served.client()
    c.session.cookie_jar.update_cookies({"codepool_token": token(keys)}, URL(served.origin))
    await dispatched(c, "alice", served)
    assert (await c.get(served.ws("alice", "/healthz"))).status == 200
    assert await served.router.accounts.logout("alice") == 1
    await asyncio.sleep(1.1)  # the router's lookup cache
    assert (await c.get(served.ws("alice", "/healthz"))).status == 401


@pytest.mark.parametrize(
    ("why", "make"),
    [
        ("expired", lambda k: token(k, exp=int(time.time()) - 3600)),
        ("wrong issuer", lambda k: token(k, iss="https://evil.example")),
        ("wrong audience", lambda k: token(k, aud="someone-else")),
        ("signed by another key", lambda k: token(k, key="evil")),
        ("unknown key id", lambda k: token(k, kid="nope")),
        ("no expiry", lambda k: token(k, exp=None)),
        ("no issuer", lambda k: token(k, iss=None)),
        ("no audience", lambda k: token(k, aud=None)),
        ("no sub", lambda k: token(k, sub=None)),
        ("unusable user name", lambda k: token(k, sub="../root")),
        ("a name that needs lower-casing", lambda k: token(k, sub="Alice")),
        ("a name that Unicode folding would make", lambda k: token(k, sub="\u212aarl")),
        ("only a preferred_username", lambda k: token(k, sub=None, preferred_username="alice")),
        ("alg none", lambda k: jwt.encode({"sub": "alice"}, "", algorithm="none")),
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
    assert await served.pool.store.get_workspace("karl") is None


@pytest.mark.parametrize(
    ("claims", "user"),
    [
        ({"email": "jane@example.com", "email_verified": True}, "jane@example.com"),
        ({"email": "jane@example.com", "email_verified": "true"}, None),
        ({"email": "jane@example.com"}, None),
        ({"email": "Jane@Example.com", "email_verified": True}, None),
    ],
)
def test_an_email_claim_counts_only_when_verified_and_as_it_is(
    claims: dict[str, Any], user: str | None
) -> None:
    assert user_from_claims({"sub": "x", **claims}, "email") == user


async def test_admins_come_from_config_and_login_page_points_away(
    served: Served, keys: dict[str, Any]
) -> None:
    c = await served.client()
    root = {"Authorization": f"Bearer {token(keys, sub='root')}"}
    alice = {"Authorization": f"Bearer {token(keys)}"}
    assert (await c.get("/admin", headers=root)).status == 200
    assert (await c.get("/admin", headers=alice)).status == 403
    resp = await c.get("/login")
    assert resp.status == 401 and "identity provider" in await resp.text()
    assert (await c.post("/login", data={"user": "alice"})).status == 404


def test_jwt_needs_a_jwks_url_an_issuer_and_an_audience() -> None:
    with pytest.raises(ConfigError, match=r"needs jwt\.jwks_url"):
        settings_from_mapping({"router": {"auth": "jwt"}}, "f.toml")
    for missing in ("issuer", "audience"):
        conf = {"jwks_url": "https://idp/jwks", "issuer": ISSUER, "audience": AUDIENCE}
        del conf[missing]
        with pytest.raises(ConfigError, match=r"needs jwt\.issuer and jwt\.audience"):
            settings_from_mapping({"router": {"auth": "jwt"}, "jwt": conf}, "f.toml")
    assert settings_from_mapping({}).jwt.user_claim == "sub"
