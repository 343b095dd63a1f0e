"""router.auth = "oidc": logging in at an OpenID provider (oidc-provider-mock, a real
provider built on Authlib's server, run on loopback by the test) in a real Chromium, and
what an attacker tries against the callback: a forged state, another browser's code, a
replayed code, a wrong nonce, an expired ID token, a provider that says no."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from codepool.core.errors import ConfigError
from codepool.core.models import EventKind
from codepool.core.settings import settings_from_mapping
from codepool.daemon.oidc import Pending, check_provider
from tests.router_fixtures import Served
from tests.test_hostile import FUZZ, HEADER_BYTES, raw_request

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(120),
    # The provider (not codepool) still uses Authlib's older JOSE module.
    pytest.mark.filterwarnings("ignore::authlib.deprecate.AuthlibDeprecationWarning"),
    pytest.mark.filterwarnings("ignore:get_jwt_config.*:DeprecationWarning"),
]


CALLBACK_ANSWERS: dict[Any, list[int]] = {}  # page -> statuses of its /login/callback


@dataclass
class Provider:
    """An OpenID provider on loopback, and every authorization and token request it got."""

    issuer: str
    authorize: list[dict[str, str]] = field(default_factory=list)
    token: list[dict[str, str]] = field(default_factory=list)


@contextlib.contextmanager
def run_provider(token_age: timedelta = timedelta(hours=1)) -> Iterator[Provider]:
    import flask
    import oidc_provider_mock
    import werkzeug.serving

    app = oidc_provider_mock.app(require_nonce=True, access_token_max_age=token_age)
    server = werkzeug.serving.make_server("127.0.0.1", 0, app, threaded=True)
    provider = Provider(f"http://127.0.0.1:{server.server_port}")

    def record() -> None:
        if flask.request.path == "/oauth2/authorize" and flask.request.method == "GET":
            provider.authorize.append(dict(flask.request.args))
        if flask.request.path == "/oauth2/token":
            provider.token.append(dict(flask.request.form))

    app.before_request(record)

    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[Provider]:
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # the provider's own https rule
    with run_provider() as p:
        yield p


def oidc_router(make_served: Callable[..., Any], issuer: str) -> Any:  # a coroutine of Served
    return make_served(
        router={"auth": "oidc"},
        oidc={
            "issuer": issuer,
            "client_id": "codepool-test",
            "client_secret": "s3cret",
            "admin_users": ["root"],
        },
    )


@pytest.fixture
async def page_of(browser: Any) -> AsyncIterator[Callable[[], Any]]:
    """New browser contexts (separate cookie jars: separate people), closed at the end."""
    contexts: list[Any] = []

    async def new() -> Any:
        context = await browser.new_context()
        # The provider's form links a style sheet on a CDN; this machine has no internet.
        await context.route("https://cdn.jsdelivr.net/**", lambda route: route.abort())
        contexts.append(context)
        page = await context.new_page()
        answers: list[int] = []
        page.on(
            "response",
            lambda r: answers.append(r.status) if "/login/callback?" in r.url else None,
        )
        CALLBACK_ANSWERS[page] = answers
        return page

    yield new
    for c in contexts:
        await c.close()


async def at_provider(page: Any, served: Served, provider: Provider) -> None:
    """Open the router; it sends the browser to the provider's login form."""
    await page.goto(served.origin + "/")
    await page.wait_for_url(provider.issuer + "/oauth2/authorize?*")


async def authorize(page: Any, sub: str) -> None:
    await page.fill("input[name=sub]", sub)
    await page.get_by_role("button", name="Authorize").click()


async def session_cookie(page: Any, served: Served) -> str | None:
    cookies = await page.context.cookies(served.origin)
    return next((c["value"] for c in cookies if c["name"] == served.router.cookies.session), None)


async def logins(served: Served) -> list[str]:
    events = await served.pool.store.read_events(0, 2**62, 1000)
    return [f"{e.user}:{e.detail.split(' from ')[0]}" for e in events if e.kind == EventKind.LOGIN]


async def refused(page: Any, served: Served, status: int, heading: str) -> None:
    assert await page.get_by_role("heading", name=heading).count() == 1, await page.content()
    assert await session_cookie(page, served) is None
    assert CALLBACK_ANSWERS[page][-1:] == [status]
    resp = await page.request.get(served.origin + "/", max_redirects=0)
    assert resp.status == 302 and resp.headers["location"].startswith("/login")


@pytest.mark.parametrize("make_served", ["local"], indirect=True)
async def test_login_at_the_provider_in_a_real_browser(
    make_served: Callable[..., Any], provider: Provider, page_of: Callable[[], Any]
) -> None:
    served = await oidc_router(make_served, provider.issuer)
    page = await page_of()
    await page.goto(served.origin + "/dispatch?from=bookmark")  # a deep link, kept
    await page.wait_for_url(provider.issuer + "/oauth2/authorize?*")
    await authorize(page, "alice")
    await page.wait_for_url(served.origin + "/**", timeout=30_000)
    # Through /dispatch (the deep link) to the starting page or the workspace itself.
    assert urlsplit(page.url).path != "/login/callback", page.url
    await page.goto(served.origin + "/")
    await page.get_by_role("heading", name="Hello, alice").wait_for(timeout=10_000)
    assert await page.get_by_role("link", name="Admin").count() == 0

    # The same server-side session as a password login: a record in the store.
    cookie = await session_cookie(page, served)
    assert cookie is not None
    session = await served.router.sessions.find([cookie])
    assert session is not None and session.user == "alice" and session.sid
    names = {c["name"] for c in await page.context.cookies(served.origin)}
    assert served.router.cookies.oidc not in names  # the login in progress is gone

    # PKCE (S256) and a nonce went out; the verifier that came back matches the challenge.
    (asked,) = provider.authorize
    assert asked["code_challenge_method"] == "S256" and asked["nonce"] and asked["state"]
    assert asked["redirect_uri"] == served.origin + "/login/callback"
    assert set(asked["scope"].split()) == {"openid", "profile", "email"}
    (redeemed,) = provider.token
    digest = hashlib.sha256(redeemed["code_verifier"].encode()).digest()
    assert base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == asked["code_challenge"]
    assert "client_secret" not in redeemed  # sent as HTTP Basic, the default method
    assert await logins(served) == ["alice:oidc"]

    # Log out ends the session in the store, and stays out (no silent login at the
    # provider) until the person asks to log in again.
    await page.get_by_role("button", name="Log out").click()
    await page.get_by_role("heading", name="You are logged out").wait_for(timeout=10_000)
    assert await served.router.sessions.find([cookie]) is None
    await page.get_by_role("link", name="Log in again").click()
    await page.wait_for_url(provider.issuer + "/oauth2/authorize?*")

    # An admin named in oidc.admin_users sees the admin page.
    admin = await page_of()
    await at_provider(admin, served, provider)
    await authorize(admin, "root")
    await admin.get_by_role("heading", name="Hello, root").wait_for(timeout=30_000)
    assert await admin.get_by_role("link", name="Admin").count() == 1


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {**query_of(url), **changes}
    return f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(query)}"


async def on_answer(page: Any, provider: Provider, answer: Callable[[Any, str], Any]) -> None:
    """Hand the provider's answer to the login form (the redirect back to the router, with
    code and state) to answer(route, location) instead of the browser. (Playwright routes
    only the first request of a redirect chain: the form's POST, not the callback.)"""

    async def handle(route: Any) -> None:
        if route.request.method != "POST":
            await route.continue_()
            return
        resp = await route.fetch(max_redirects=0)
        await answer(route, resp.headers["location"])

    await page.route(provider.issuer + "/oauth2/authorize?*", handle)


async def redirect(route: Any, location: str) -> None:
    await route.fulfill(status=302, headers={"Location": location})


@pytest.mark.parametrize("make_served", ["local"], indirect=True)
async def test_forged_state_and_another_browsers_code_are_refused(
    make_served: Callable[..., Any], provider: Provider, page_of: Callable[[], Any]
) -> None:
    served = await oidc_router(make_served, provider.issuer)
    # The state changed on the way back.
    page = await page_of()
    await at_provider(page, served, provider)
    await on_answer(
        page,
        provider,
        lambda route, loc: redirect(
            route, with_query(loc, state="forged" + query_of(loc)["state"])
        ),
    )
    await authorize(page, "alice")
    await page.wait_for_url(served.origin + "/login/callback?*")
    await refused(page, served, 400, "This login did not start here")

    # Login CSRF: an attacker's own code and state, put in the victim's browser.
    attacker = await page_of()
    await at_provider(attacker, served, provider)
    stolen: list[str] = []

    async def keep(route: Any, location: str) -> None:
        stolen.append(location)
        await route.fulfill(status=200, body="kept")

    await on_answer(attacker, provider, keep)
    await authorize(attacker, "mallory")
    await attacker.get_by_text("kept").wait_for()
    victim = await page_of()
    await victim.goto(stolen[0])
    await refused(victim, served, 400, "This login did not start here")
    assert await logins(served) == []


@pytest.mark.parametrize("make_served", ["local"], indirect=True)
async def test_replayed_code_and_wrong_nonce_are_refused(
    make_served: Callable[..., Any], provider: Provider, page_of: Callable[[], Any]
) -> None:
    served = await oidc_router(make_served, provider.issuer)
    first = await page_of()
    await at_provider(first, served, provider)
    answers: list[str] = []

    async def note(route: Any, location: str) -> None:
        answers.append(location)
        await redirect(route, location)

    await on_answer(first, provider, note)
    await authorize(first, "alice")
    await first.get_by_role("heading", name="Hello, alice").wait_for(timeout=30_000)
    used_code = query_of(answers[0])["code"]

    # A replayed code: a fresh login whose provider answer is the code already redeemed.
    replay = await page_of()
    await at_provider(replay, served, provider)
    await on_answer(
        replay, provider, lambda route, loc: redirect(route, with_query(loc, code=used_code))
    )
    await authorize(replay, "alice")
    await replay.wait_for_url(served.origin + "/login/callback?*")
    await refused(replay, served, 401, "You are not logged in")
    assert "did not accept this login" in await replay.content()

    # A wrong nonce: the authorization request's nonce changed on its way to the provider,
    # so the ID token carries one this browser never asked for.
    nonce = await page_of()
    await at_provider(nonce, served, provider)

    async def change_nonce(route: Any) -> None:
        if route.request.method != "POST":
            await route.continue_()
            return
        url = route.request.url
        await route.continue_(url=with_query(url, nonce="not-" + query_of(url)["nonce"]))

    await nonce.route(provider.issuer + "/oauth2/authorize?*", change_nonce)
    await authorize(nonce, "bob")
    await nonce.wait_for_url(served.origin + "/login/callback?*")
    await refused(nonce, served, 401, "You are not logged in")
    assert "could not be verified" in await nonce.content()

    # The person says no at the provider.
    deny = await page_of()
    await at_provider(deny, served, provider)
    # (This provider leaves the state out of a refusal; RFC 6749 section 4.1.2.1 has it
    # sent back, as real providers do, and without it the answer is not trusted at all.)
    await on_answer(
        deny,
        provider,
        lambda route, loc: redirect(
            route, with_query(loc, state=query_of(route.request.url)["state"])
        ),
    )
    await deny.get_by_role("button", name="Deny").click()
    await deny.wait_for_url(served.origin + "/login/callback?*")
    await refused(deny, served, 401, "Your organisation's login did not log you in")
    assert await logins(served) == [
        "alice:oidc",
        ":failed (oidc: token endpoint answered 400: invalid_grant)",
        ":failed (oidc: ID token refused: invalid_claim: Invalid claim: 'nonce')",
        ":failed (oidc: access_denied)",
    ]


@pytest.mark.parametrize("make_served", ["local"], indirect=True)
async def test_an_expired_id_token_is_refused(
    make_served: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    page_of: Callable[[], Any],
) -> None:
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")
    # This provider's tokens expired five minutes before they were made (leeway: 60 s).
    with run_provider(token_age=timedelta(minutes=-5)) as provider:
        served = await oidc_router(make_served, provider.issuer)
        page = await page_of()
        await at_provider(page, served, provider)
        await authorize(page, "alice")
        await page.wait_for_url(served.origin + "/login/callback?*")
        await refused(page, served, 401, "You are not logged in")
    (event,) = await logins(served)
    assert event.startswith(":failed (oidc: ID token refused") and "exp" in event


@pytest.mark.parametrize("make_served", ["local"], indirect=True)
async def test_a_provider_that_cannot_be_reached(
    make_served: Callable[..., Any], page_of: Callable[[], Any]
) -> None:
    from tests.ports import free_port

    served = await oidc_router(make_served, f"http://127.0.0.1:{free_port()}")
    page = await page_of()
    resp = await page.goto(served.origin + "/login")
    assert resp.status == 502
    await page.get_by_role("heading", name="Your organisation's login cannot be reached").wait_for()
    assert await page.get_by_role("link", name="Try again").count() == 1
    # Local password login stays off: the form is not there to post to.
    post = await page.request.post(served.origin + "/login", form={"user": "alice"})
    assert post.status == 404


async def test_doctor_reads_the_providers_documents(provider: Provider) -> None:
    def settings(issuer: str) -> Any:
        oidc = {"issuer": issuer, "client_id": "codepool"}
        return settings_from_mapping({"router": {"auth": "oidc"}, "oidc": oidc})

    check = await check_provider(settings(provider.issuer))
    assert check.ok, check
    assert "1 signing key(s)" in check.detail and "/login/callback" in check.detail
    from tests.ports import free_port

    down = await check_provider(settings(f"http://127.0.0.1:{free_port()}"))
    assert not down.ok and "ClientConnectorError" in down.detail
    wrong = await check_provider(settings(provider.issuer + "/other"))  # not its issuer
    assert not wrong.ok, wrong


def test_the_sealed_login_cannot_be_altered_or_kept() -> None:
    key = b"k" * 32
    pending = Pending("state", "nonce", "verifier", "/", expires_ms=2_000)
    sealed = pending.seal(key)
    assert Pending.unseal(sealed, key, now_ms=1_000) == pending
    assert Pending.unseal(sealed, key, now_ms=2_000) is None  # expired
    assert Pending.unseal(sealed, b"x" * 32, now_ms=1_000) is None  # another router's key
    body, mac = sealed.split(".")
    other = Pending("state", "nonce", "verifier", "https://evil.example/", 2_000).seal(key)
    assert Pending.unseal(other.split(".")[0] + "." + mac, key, 1_000) is None
    for junk in ("", ".", "a.b.c", "x" * 5000, body + ".", "." + mac, "é.é"):
        assert Pending.unseal(junk, key, now_ms=1_000) is None


@pytest.mark.parametrize(
    ("oidc", "why"),
    [
        ({}, "needs oidc.issuer and oidc.client_id"),
        ({"issuer": "https://idp.example"}, "needs oidc.issuer and oidc.client_id"),
        ({"issuer": "http://idp.example", "client_id": "c"}, "must be an https:// URL"),
        ({"issuer": "idp.example", "client_id": "c"}, "must be an https:// URL"),
    ],
)
def test_settings_refuse_an_incomplete_or_plain_http_provider(
    oidc: dict[str, str], why: str
) -> None:
    with pytest.raises(ConfigError, match=why):
        settings_from_mapping({"router": {"auth": "oidc"}, "oidc": oidc})
    ok = {"issuer": "http://localhost:9400", "client_id": "c"}  # on this machine: allowed
    assert settings_from_mapping({"router": {"auth": "oidc"}, "oidc": ok}).oidc.client_id == "c"


@pytest.mark.parametrize("make_served", ["local"], indirect=True)
@FUZZ
@given(
    sealed=st.sampled_from(["none", "junk", "real"]),
    junk=HEADER_BYTES,
    state=st.sampled_from(["right", "junk"]),
    query=HEADER_BYTES,
    error=st.booleans(),
)
async def test_any_bytes_at_the_callback_never_make_a_5xx_or_a_session(
    make_served: Callable[..., Any],
    provider: Provider,
    caplog: pytest.LogCaptureFixture,
    sealed: str,
    junk: bytes,
    state: str,
    query: bytes,
    error: bool,
) -> None:
    """The callback with any bytes in the login cookie, state, code and error, including a
    genuinely sealed login whose state matches and a code the provider never issued."""
    served = await oidc_router(make_served, provider.issuer)
    port = URL(served.origin).port
    assert port is not None and served.router.oidc is not None
    pending = Pending("s" * 43, "n" * 43, "v" * 64, "/", served.pool.clock() + 60_000)
    cookie = {
        "none": b"",
        "junk": b"codepool_oidc=" + junk,
        "real": b"codepool_oidc=" + pending.seal(served.router.oidc.key).encode(),
    }[sealed]
    printable = bytes(c for c in query if 32 < c < 127 and c not in b"#&")
    target = b"/login/callback?code=" + printable
    target += b"&state=" + (pending.state.encode() if state == "right" else printable)
    if error:
        target += b"&error=" + printable
    headers = (b"Cookie: " + cookie + b"\r\n") if cookie else b""
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        status = await raw_request(port, f"127.0.0.1:{port}", "GET", target, headers, b"")
    assert status in (400, 401), (target, cookie, status)
    assert not [r for r in caplog.records if r.exc_info]
    assert [e for e in await logins(served) if not e.startswith(":failed")] == []


def test_only_asymmetric_algorithms_the_provider_announces() -> None:
    from codepool.daemon.oidc import signing_algorithms

    assert signing_algorithms({}) == ["RS256"]  # OIDC's default
    announced = {"id_token_signing_alg_values_supported": ["none", "HS256", "ES256", 7]}
    assert signing_algorithms(announced) == ["ES256"]
    assert signing_algorithms({"id_token_signing_alg_values_supported": "RS256"}) == []
