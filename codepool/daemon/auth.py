"""Identity besides local accounts: JSON Web Tokens from an identity provider, the key
their sessions' CSRF tokens are derived with, and the login rate limit."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from codepool.core.errors import ConfigError, InvalidInput
from codepool.core.policy import check_user
from codepool.core.settings import JwtSettings
from codepool.core.store import Store
from codepool.daemon.sessions import Session

log = logging.getLogger("codepool.auth")


def load_or_create_secret(path: Path) -> bytes:
    """The key JWT sessions' CSRF tokens are derived with; made once (32 random bytes,
    mode 0600) and then reused. Every router behind one load balancer shares it."""
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    except ValueError:
        raise ConfigError(f"secret file {path}: not a hex key") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another router made it first: use theirs
        return load_or_create_secret(path)
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex())
    return key


class LoginLimiter:
    """Login attempts per account name and per client address in a sliding window,
    counted in the store, so every worker and every router shares the count. An attempt
    is counted before its password is checked, in one store step for both keys: a burst
    of concurrent attempts never gets more password checks than the limits. A successful
    login takes its own attempt back and clears the account's count.

    An account allows few attempts (guessing one person's password); a client address
    more (the people behind one office's address log in around the same minute, and
    their attempts count while their passwords are being checked)."""

    def __init__(
        self, store: Store, per_account: int, per_client: int, window_s: float = 60.0
    ) -> None:
        self.store = store
        self.per_account = per_account
        self.per_client = per_client
        self.window_s = window_s

    def keys(self, client: str, user: str) -> list[tuple[str, int]]:
        return [(f"client:{client}", self.per_client), (f"user:{user[:64]}", self.per_account)]

    async def reserve(self, keys: list[tuple[str, int]]) -> tuple[str, int]:
        """(the attempt's id, 0) if it may go on; else ("", seconds to wait)."""
        attempt = secrets.token_hex(8)
        wait_ms = await self.store.reserve_attempts(keys, attempt, int(self.window_s * 1000))
        return ("", wait_ms // 1000 + 1) if wait_ms else (attempt, 0)

    async def succeeded(self, keys: list[tuple[str, int]], attempt: str) -> None:
        names = [key for key, _ in keys]
        await self.store.release_attempts(names, attempt)
        await self.store.clear_attempts([k for k in names if k.startswith("user:")])


class JwtVerifier:
    """Sessions from JSON Web Tokens signed by an identity provider (Cognito or any OIDC
    issuer): signature against the provider's JWKS, expiry, issuer and audience (all
    required), and a user claim that is a valid name as it is. Verified tokens are cached
    until they expire, so the proxy's hot path pays for the signature check once per
    token, not once per request."""

    def __init__(self, settings: JwtSettings, key: bytes) -> None:
        import jwt

        self.settings = settings
        self.key = key
        self.jwks = jwt.PyJWKClient(settings.jwks_url, cache_keys=True, lifespan=300, timeout=5)
        self._cache: dict[str, Session] = {}

    def token_of(self, headers: Mapping[str, str], cookie: str | None) -> str | None:
        auth = headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip() or None
        return cookie or None

    async def session(self, token: str, now_s: float | None = None) -> Session | None:
        now = time.time() if now_s is None else now_s
        hit = self._cache.get(token)
        if hit is not None:
            return hit if hit.expires_ms > now * 1000 else None
        if len(token) > 8192:
            return None
        session = await asyncio.to_thread(self._verify, token)
        if session is not None:
            if len(self._cache) > 10_000:
                self._cache = {t: s for t, s in self._cache.items() if s.expires_ms > now * 1000}
            self._cache[token] = session
        return session

    def _verify(self, token: str) -> Session | None:
        import jwt

        s = self.settings
        try:
            signing_key = self.jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                signing_key.key,
                algorithms=["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"],
                audience=s.audience,
                issuer=s.issuer,
                leeway=s.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWKClientError as exc:
            log.warning("jwt: cannot get the signing key: %s", exc)
            return None
        except jwt.PyJWTError as exc:
            log.info("jwt refused: %s", exc)
            return None
        user = user_from_claims(claims, s.user_claim)
        if user is None:
            return None
        digest = hmac.new(self.key, token.encode(), hashlib.sha256).digest()
        return Session(
            user=user,
            admin=user in s.admin_users,
            sid="",  # no store record: the token itself is the session
            csrf=base64.urlsafe_b64encode(digest[:18]).decode(),
            expires_ms=int(claims["exp"]) * 1000,
        )


def user_from_claims(claims: Mapping[str, Any], claim: str) -> str | None:
    """The user name a token's claims give, taken exactly as it is: a value that is not a
    valid user name is refused, never lower-cased or folded into one (Unicode case
    folding turns "\u212aarl" into "karl": someone else's name). An e-mail address
    counts only when the provider says it was verified."""
    value = claims.get(claim)
    if claim == "email" and claims.get("email_verified") is not True:
        log.warning("identity refused: email is not verified (email_verified is not true)")
        return None
    if not isinstance(value, str):
        log.warning("identity refused: no %r claim", claim)
        return None
    try:
        return check_user(value)
    except InvalidInput:
        log.warning("identity refused: claim %r is not a valid user name as it is", claim)
        return None
