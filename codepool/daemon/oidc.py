"""Logging in at the organisation's identity provider: OpenID Connect's authorization code
flow with PKCE, as a confidential client (client secret) or a public one (PKCE alone).

The login in progress (state, nonce, PKCE verifier and where to go afterwards) travels in
a cookie sealed with the router's key (`router.secret_file`), not in the store: starting a
login writes nothing anywhere, so a script that opens /login in a loop costs the router a
redirect and nothing more. The cookie binds the provider's answer to the browser that
asked for it: a callback carrying another browser's code and state (login CSRF) finds no
matching state and is refused. A code is redeemed once (the provider's rule); the cookie
is cleared at the callback whatever happens.

Authlib makes the PKCE challenge and the authorization URL and checks the ID token's
claims (issuer, audience, expiry, nonce, azp, at_hash); joserfc checks its signature
against the provider's keys, with the asymmetric algorithms the provider announces.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote_plus, urlsplit

import aiohttp
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from codepool.core.models import Check
from codepool.core.settings import OidcSettings, Settings

log = logging.getLogger("codepool.oidc")

CALLBACK = "/login/callback"  # the redirect URI's path, registered at the provider
PENDING_S = 600  # a login not finished at the provider within this is started again
METADATA_S = 3600  # the provider's discovery document is read again after this
TIMEOUT_S = 10
MAX_BODY = 1024**2  # discovery, keys and token answers are small
MAX_COOKIE = 2048
# Asymmetric only: an HMAC-signed ID token would be checked with the client secret, which
# every router holds; "none" is never accepted.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
_SEAL_LABEL = b"codepool oidc login\0"


class OidcRefused(Exception):
    """The provider's answer does not log anyone in: what to tell the person, and what to
    log (the reason, never a token)."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(detail)
        self.message = message


class OidcUnavailable(Exception):
    """The provider cannot be reached or answers nonsense: nobody can log in right now."""


@dataclass(frozen=True, slots=True)
class Pending:
    """A login in progress, as sealed into the browser's cookie."""

    state: str
    nonce: str
    verifier: str
    next: str
    expires_ms: int

    def seal(self, key: bytes) -> str:
        body = _b64(json.dumps(asdict(self), separators=(",", ":")).encode())
        return f"{body}.{_b64(_mac(key, body))}"

    @classmethod
    def unseal(cls, value: str, key: bytes, now_ms: int) -> Pending | None:
        """The login in the cookie; None if it is not one this router sealed, or is old."""
        if len(value) > MAX_COOKIE or value.count(".") != 1:
            return None
        body, mac = value.split(".")
        if not hmac.compare_digest(mac.encode(), _b64(_mac(key, body)).encode()):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            pending = cls(**data)
        except (ValueError, TypeError):
            return None
        return pending if pending.expires_ms > now_ms else None


class OidcClient:
    """One identity provider: its discovery document and keys (cached), a login's start
    and its end."""

    def __init__(self, settings: OidcSettings, redirect_uri: str, key: bytes) -> None:
        self.settings = settings
        self.redirect_uri = redirect_uri
        self.key = key
        self._metadata: dict[str, Any] = {}
        self._metadata_until = 0.0
        self._keys: KeySet | None = None
        self._http: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- the provider's documents ---------------------------------------------------------

    async def metadata(self) -> dict[str, Any]:
        """The discovery document: checked to be the configured issuer's, with https
        endpoints (http only on this machine, as for the issuer)."""
        if self._metadata and time.monotonic() < self._metadata_until:
            return self._metadata
        issuer = self.settings.issuer.rstrip("/")
        doc = await self._get_json(f"{issuer}/.well-known/openid-configuration")
        # The ID token's iss must equal the document's issuer exactly; the configured one
        # may differ from it by a trailing slash only.
        if not isinstance(doc.get("issuer"), str) or doc["issuer"].rstrip("/") != issuer:
            raise OidcUnavailable(
                f"the discovery document names issuer {str(doc.get('issuer'))[:200]!r}, "
                f"not {self.settings.issuer!r}"
            )
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not _acceptable_url(doc.get(name)):
                raise OidcUnavailable(f"the discovery document has no usable {name}")
        self._metadata, self._metadata_until = doc, time.monotonic() + METADATA_S
        self._keys = None
        return doc

    async def signing_keys(self, *, fresh: bool = False) -> KeySet:
        if self._keys is None or fresh:
            doc = await self._get_json((await self.metadata())["jwks_uri"])
            try:
                self._keys = KeySet.import_key_set(doc)  # type: ignore[arg-type]
            except (JoseError, ValueError, TypeError, KeyError) as exc:
                raise OidcUnavailable(f"the provider's keys cannot be read: {exc}") from None
        return self._keys

    # -- a login --------------------------------------------------------------------------

    async def begin(self, next_path: str, now_ms: int) -> tuple[str, str]:
        """Where to send the browser, and the sealed cookie that remembers the login."""
        meta = await self.metadata()
        pending = Pending(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            verifier=secrets.token_urlsafe(48),  # 64 characters, within RFC 7636's 43..128
            next=next_path,
            expires_ms=now_ms + PENDING_S * 1000,
        )
        scopes = ["openid", *(s for s in self.settings.scopes if s != "openid")]
        url: str = prepare_grant_uri(
            meta["authorization_endpoint"],
            self.settings.client_id,
            "code",
            redirect_uri=self.redirect_uri,
            scope=" ".join(scopes),
            state=pending.state,
            nonce=pending.nonce,
            code_challenge=create_s256_code_challenge(pending.verifier),
            code_challenge_method="S256",
        )
        return url, pending.seal(self.key)

    async def finish(self, code: str, pending: Pending) -> dict[str, Any]:
        """Redeem the code (with the PKCE verifier) and return the ID token's claims, each
        checked; OidcRefused if the provider or the token says no."""
        if not code or len(code) > 2048:
            raise OidcRefused("The identity provider sent no login code.", "no code")
        meta = await self.metadata()
        token = await self._redeem(meta, code, pending.verifier)
        id_token = token.get("id_token")
        if not isinstance(id_token, str) or len(id_token) > 16384:
            raise OidcRefused(_NOT_VERIFIED, "the token answer holds no ID token")
        registry = JWSRegistry(algorithms=signing_algorithms(meta) or ["RS256"])
        try:
            try:
                decoded = jwt.decode(id_token, await self.signing_keys(), registry=registry)
            except InvalidKeyIdError:  # the provider rotated its keys since we read them
                decoded = jwt.decode(
                    id_token, await self.signing_keys(fresh=True), registry=registry
                )
            claims = CodeIDToken(
                decoded.claims,
                decoded.header,
                {
                    "iss": {"essential": True, "value": meta["issuer"]},
                    "aud": {"essential": True, "value": self.settings.client_id},
                },
                {
                    "nonce": pending.nonce,
                    "client_id": self.settings.client_id,
                    "access_token": token.get("access_token"),
                },
            )
            claims.validate(now=int(time.time()), leeway=self.settings.leeway_s)
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise OidcRefused(_NOT_VERIFIED, f"ID token refused: {exc}") from None
        if claims.get("nonce") != pending.nonce:  # the request always carries one
            raise OidcRefused(_NOT_VERIFIED, "ID token refused: nonce missing or wrong")
        return dict(claims)

    async def _redeem(self, meta: Mapping[str, Any], code: str, verifier: str) -> dict[str, Any]:
        s = self.settings
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": verifier,
            "client_id": s.client_id,
        }
        headers = {"Accept": "application/json"}
        methods = meta.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        if s.client_secret and "client_secret_basic" in methods:
            headers["Authorization"] = _basic(s.client_id, s.client_secret)
        elif s.client_secret:
            form["client_secret"] = s.client_secret
        http = self._session()
        try:
            async with http.post(meta["token_endpoint"], data=form, headers=headers) as resp:
                body = await _json_body(resp)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OidcUnavailable(f"token endpoint: {exc.__class__.__name__}: {exc}") from None
        if status != 200:
            error = str(body.get("error", f"HTTP {status}"))[:100]
            raise OidcRefused(
                "The identity provider did not accept this login (it may have been used "
                "already, or taken too long). Log in again.",
                f"token endpoint answered {status}: {error}",
            )
        return body

    # -- HTTP -----------------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=TIMEOUT_S), raise_for_status=False
            )
        return self._http

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            async with self._session().get(url, headers={"Accept": "application/json"}) as resp:
                if resp.status != 200:
                    raise OidcUnavailable(f"{url} answered HTTP {resp.status}")
                return await _json_body(resp)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OidcUnavailable(f"{url}: {exc.__class__.__name__}: {exc}") from None


def signing_algorithms(meta: Mapping[str, Any]) -> list[str]:
    """The algorithms the provider announces for ID tokens that codepool accepts (RS256,
    OIDC's default, when it announces none)."""
    announced = meta.get("id_token_signing_alg_values_supported", ["RS256"])
    if not isinstance(announced, list):
        return []
    return [a for a in announced if isinstance(a, str) and a in ALGORITHMS]


async def check_provider(settings: Settings) -> Check:
    """`codepool doctor`'s check: the discovery document and the keys can be read."""
    client = OidcClient(settings.oidc, "", b"")
    try:
        meta = await client.metadata()
        keys = await client.signing_keys()
    except OidcUnavailable as exc:
        return Check("oidc", False, f"issuer {settings.oidc.issuer}: {exc}")
    finally:
        await client.close()
    if not signing_algorithms(meta):
        return Check(
            "oidc",
            False,
            f"issuer {settings.oidc.issuer} signs ID tokens with none of {', '.join(ALGORITHMS)}",
        )
    return Check(
        "oidc",
        True,
        f"issuer {meta['issuer']}, client {settings.oidc.client_id}, {len(keys.keys)} signing "
        f"key(s), redirect URI {settings.public_url}{CALLBACK}",
    )


_NOT_VERIFIED = "The identity provider's answer could not be verified. Log in again."


async def _json_body(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    data = await resp.content.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise OidcUnavailable(f"{resp.url}: answer larger than {MAX_BODY} bytes")
    try:
        doc = json.loads(data)
    except ValueError:
        raise OidcUnavailable(f"{resp.url}: answer is not JSON") from None
    if not isinstance(doc, dict):
        raise OidcUnavailable(f"{resp.url}: answer is not a JSON object")
    return doc


def _acceptable_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    url = urlsplit(value)
    loopback = url.hostname in ("localhost", "127.0.0.1", "::1")
    return url.scheme == "https" or (url.scheme == "http" and loopback)


def _basic(client_id: str, secret: str) -> str:
    """client_secret_basic: both parts form-encoded first (RFC 6749 section 2.3.1)."""
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def _mac(key: bytes, body: str) -> bytes:
    return hmac.new(key, _SEAL_LABEL + body.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
