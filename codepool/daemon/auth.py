"""Who is asking: local accounts (scrypt hashes in a users file), signed session cookies,
CSRF tokens and the login rate limit. No I/O on a request's hot path but the cookie check,
which is one HMAC."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codepool.core.errors import ConfigError, InvalidInput
from codepool.core.policy import check_user
from codepool.core.settings import JwtSettings

log = logging.getLogger("codepool.auth")

SESSION_COOKIE = "codepool_session"
VERIFIED_CACHE = 10_000  # session cookies remembered as verified (emptied when full)
LOGIN_CSRF_COOKIE = "codepool_login_csrf"
MIN_PASSWORD = 8

# scrypt cost: 16 MiB and about 50 ms per check on a 2-core machine (OWASP's minimum).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, _unb64(digest))


# Checked against when a user name is unknown, so a wrong name costs what a wrong password
# costs and timing does not tell which names exist.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class Account:
    name: str
    admin: bool


class Users:
    """The users file: {"users": {name: {"hash": ..., "admin": bool}}}, mode 0600."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write under a lock; written atomically (temp file, then rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            yield data
            tmp = self.path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=2, sort_keys=True)
            os.replace(tmp, self.path)

    def _read(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"users": {}}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"users file {self.path}: unreadable: {exc}") from None
        if not isinstance(data.get("users"), dict):
            raise ConfigError(f'users file {self.path}: no "users" table')
        return data

    def accounts(self) -> list[Account]:
        users = self._read()["users"]
        return [Account(name, bool(u.get("admin"))) for name, u in sorted(users.items())]

    def get(self, name: str) -> Account | None:
        u = self._read()["users"].get(name)
        return Account(name, bool(u.get("admin"))) if u else None

    def verify(self, name: str, password: str) -> Account | None:
        """The account if the password is right; None otherwise (same cost either way)."""
        u = self._read()["users"].get(name)
        ok = check_password(password, u["hash"] if u else _DUMMY_HASH)
        return Account(name, bool(u.get("admin"))) if u and ok else None

    def add(self, name: str, password: str, admin: bool = False) -> Account:
        check_user(name)
        _check_password_rule(password)
        with self._locked() as data:
            if name in data["users"]:
                raise InvalidInput(f"user {name!r} already exists (use `codepool users passwd`)")
            data["users"][name] = {"hash": hash_password(password), "admin": admin}
        return Account(name, admin)

    def set_password(self, name: str, password: str) -> None:
        _check_password_rule(password)
        with self._locked() as data:
            if name not in data["users"]:
                raise InvalidInput(f"no user {name!r}")
            data["users"][name]["hash"] = hash_password(password)

    def remove(self, name: str) -> None:
        with self._locked() as data:
            if data["users"].pop(name, None) is None:
                raise InvalidInput(f"no user {name!r}")

    def ensure_admin(self) -> str | None:
        """On first start (no accounts at all), create `admin` with a random password and
        return it, to be shown once. Afterwards return None."""
        with self._locked() as data:
            if data["users"]:
                return None
            password = secrets.token_urlsafe(12)
            data["users"]["admin"] = {"hash": hash_password(password), "admin": True}
            return password


def _check_password_rule(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"password too short: at least {MIN_PASSWORD} characters")


def load_or_create_secret(path: Path) -> bytes:
    """The session signing key; made once (32 random bytes, mode 0600) and then reused."""
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


@dataclass(frozen=True)
class Session:
    user: str
    admin: bool
    sid: str  # new at every login: a session id planted before login is worthless after
    csrf: str  # token every state-changing form and request of this session must carry
    expires_s: int


class Sessions:
    """Stateless sessions: the cookie holds the session, signed with HMAC-SHA256."""

    def __init__(self, key: bytes, lifetime_s: int) -> None:
        self.key = key
        self.lifetime_s = lifetime_s
        self._verified: dict[str, Session] = {}

    def _sign(self, payload: bytes) -> str:
        return _b64(hmac.new(self.key, payload, hashlib.sha256).digest())

    def issue(self, account: Account, now_s: float | None = None) -> tuple[str, Session]:
        now = int(now_s if now_s is not None else time.time())
        session = Session(
            account.name,
            account.admin,
            secrets.token_urlsafe(16),
            secrets.token_urlsafe(16),
            now + self.lifetime_s,
        )
        body = json.dumps(
            [session.user, session.admin, session.sid, session.csrf, session.expires_s],
            separators=(",", ":"),
        ).encode()
        return f"{_b64(body)}.{self._sign(body)}", session

    def read(self, cookie: str | None, now_s: float | None = None) -> Session | None:
        """The session in a cookie, or None if absent, forged, malformed or expired. A
        cookie verified once is remembered (every ping carries the same one): only the
        expiry is checked again."""
        if not cookie or len(cookie) > 4096:
            return None
        session = self._verified.get(cookie)
        if session is None:
            session = self._verify(cookie)
            if session is None:
                return None
            if len(self._verified) >= VERIFIED_CACHE:
                self._verified.clear()
            self._verified[cookie] = session
        now = now_s if now_s is not None else time.time()
        return session if session.expires_s > now else None

    def _verify(self, cookie: str) -> Session | None:
        if "." not in cookie:
            return None
        body_b64, sig = cookie.rsplit(".", 1)
        try:
            body = _unb64(body_b64)
        except ValueError:
            return None
        if not hmac.compare_digest(sig, self._sign(body)):
            return None
        try:
            user, admin, sid, csrf, expires = json.loads(body)
            return Session(str(user), bool(admin), str(sid), str(csrf), int(expires))
        except (ValueError, TypeError):
            return None


class LoginLimiter:
    """Failed logins per key (a client address, a user name) in a sliding minute."""

    def __init__(self, per_minute: int, window_s: float = 60.0) -> None:
        self.per_minute = per_minute
        self.window_s = window_s
        self.failures: dict[str, deque[float]] = {}

    def retry_after(self, keys: list[str], now: float | None = None) -> int:
        """Seconds until every key may try again; 0 if none is over the limit."""
        t = time.monotonic() if now is None else now
        wait = 0.0
        for key in keys:
            q = self.failures.get(key)
            if not q:
                continue
            while q and q[0] <= t - self.window_s:
                q.popleft()
            if len(q) >= self.per_minute:
                wait = max(wait, q[0] + self.window_s - t)
        return int(wait) + 1 if wait > 0 else 0

    def fail(self, keys: list[str], now: float | None = None) -> None:
        t = time.monotonic() if now is None else now
        if len(self.failures) > 100_000:  # bound memory under a spray of names
            self.failures = {k: q for k, q in self.failures.items() if q and q[-1] > t - 60}
        for key in keys:
            self.failures.setdefault(key, deque()).append(t)

    def forget(self, keys: list[str]) -> None:
        for key in keys:
            self.failures.pop(key, None)


class JwtVerifier:
    """Sessions from JSON Web Tokens signed by an identity provider (Cognito or any OIDC
    issuer): signature against the provider's JWKS, expiry, and issuer and audience when
    configured. Verified tokens are cached until they expire, so the proxy's hot path
    pays for the signature check once per token, not once per request."""

    def __init__(self, settings: JwtSettings, key: bytes) -> None:
        import jwt

        self.settings = settings
        self.key = key
        self.jwks = jwt.PyJWKClient(settings.jwks_url, cache_keys=True, lifespan=300, timeout=5)
        self._cache: dict[str, Session] = {}

    def token_of(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> str | None:
        auth = headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip() or None
        return cookies.get(self.settings.cookie) or None

    async def session(self, token: str, now_s: float | None = None) -> Session | None:
        now = time.time() if now_s is None else now_s
        hit = self._cache.get(token)
        if hit is not None:
            return hit if hit.expires_s > now else None
        if len(token) > 8192:
            return None
        session = await asyncio.to_thread(self._verify, token)
        if session is not None:
            if len(self._cache) > 10_000:
                self._cache = {t: s for t, s in self._cache.items() if s.expires_s > now}
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
                audience=s.audience or None,
                issuer=s.issuer or None,
                leeway=s.leeway_s,
                options={"require": ["exp"], "verify_aud": bool(s.audience)},
            )
        except jwt.PyJWKClientError as exc:
            log.warning("jwt: cannot get the signing key: %s", exc)
            return None
        except jwt.PyJWTError as exc:
            log.info("jwt refused: %s", exc)
            return None
        raw_user = claims.get(s.user_claim)
        try:
            user = check_user(str(raw_user).lower()) if isinstance(raw_user, str) else None
        except InvalidInput:
            user = None
        if user is None:
            log.warning("jwt refused: claim %r is not a usable user name", s.user_claim)
            return None
        digest = hmac.new(self.key, token.encode(), hashlib.sha256).digest()
        return Session(
            user=user,
            admin=user in s.admin_users,
            sid=_b64(digest[:12]),
            csrf=_b64(digest[12:28]),
            expires_s=int(claims["exp"]),
        )
