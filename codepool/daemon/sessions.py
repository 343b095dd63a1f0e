"""Sessions: records in the store behind opaque random cookies, and the one-time passes
that carry a login from the main origin to a workspace origin.

A cookie is 32 random bytes; the store keys the session by the cookie's SHA-256, so a
copy of the store (a backup, a replica) opens no session. Ending a session is deleting
its record, which every router sees: logout, `codepool users remove`, `users passwd` and
`users logout` take effect everywhere. Each router remembers a lookup for at most
CACHE_S, so an ended session stops working within that time (and one store round trip).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from codepool.core.models import EntryGrant, SessionRecord
from codepool.core.store import Store

CACHE_S = 1.0  # how long a router trusts a lookup: revocation takes at most this long
CACHE_SIZE = 10_000  # lookups remembered (emptied when full)
TOUCH_EVERY_MS = 60_000  # last seen is written at most this often per session
ENTRY_TTL_MS = 60_000  # an entry pass not taken by then is worthless
MAX_COOKIE_VALUES = 4  # copies of one cookie name looked at (more: someone is playing)
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_token(value: str) -> bool:
    """A value we could have issued: checked before anything else is done with it, so any
    bytes a client sends are simply not a session."""
    return _TOKEN.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class CookieNames:
    """The router's cookies. Over https they carry the __Host- prefix: the browser then
    accepts them only host-only, Secure and for Path=/, so a page on a sibling host
    (another person's workspace) cannot plant one with a Domain attribute."""

    session: str  # the main origin's login
    workspace: str  # a workspace origin's own login
    state: str  # binds an entry pass to the browser that asked for it
    login_csrf: str  # the login form's CSRF token (Path=/login, so no __Host-)
    oidc: str  # a login in progress at the identity provider (Path=/login too)

    @classmethod
    def for_scheme(cls, secure: bool) -> CookieNames:
        p = "__Host-" if secure else ""
        return cls(
            f"{p}codepool_session",
            f"{p}codepool_ws",
            f"{p}codepool_state",
            "codepool_login_csrf",
            "codepool_oidc",
        )

    def all(self) -> frozenset[str]:
        """Every name, with and without the prefix: none of them may reach a box."""
        bare = {n.removeprefix("__Host-") for n in (self.session, self.workspace, self.state)}
        return frozenset(bare | {f"__Host-{n}" for n in bare} | {self.login_csrf, self.oidc})


@dataclass(frozen=True, slots=True)
class Session:
    """Who is asking, as a request handler sees it."""

    user: str
    admin: bool
    sid: str  # the store's key of the session ("" for a JWT on the main origin)
    csrf: str
    expires_ms: int
    owner: str = ""  # on a workspace origin: whose workspace this session enters
    host: str = ""  # ... and on which host


# Whether a user may still act, and as admin: None if the account is gone.
AdminOf = Callable[[str], Awaitable[bool | None]]


class Sessions:
    """Open, find and end sessions; hand out and take entry passes."""

    def __init__(self, store: Store, admin_of: AdminOf, lifetime_s: int) -> None:
        self.store = store
        self.admin_of = admin_of
        self.lifetime_s = lifetime_s
        self._cache: dict[str, tuple[Session | None, float]] = {}

    async def open(
        self,
        user: str,
        client: str,
        *,
        owner: str = "",
        host: str = "",
        parent: str = "",
        expires_ms: int = 0,
    ) -> tuple[str, Session]:
        """A new session (a new id at every login: one planted before is worthless); the
        cookie value and what it opens."""
        now = _now_ms()
        cookie = new_token()
        record = SessionRecord(
            sid=token_hash(cookie),
            user=user,
            csrf=secrets.token_urlsafe(24),
            created_ms=now,
            last_seen_ms=now,
            expires_ms=expires_ms or now + self.lifetime_s * 1000,
            client=client[:64],
            owner=owner,
            host=host,
            parent=parent,
        )
        await self.store.put_session(record)
        admin = await self.admin_of(user)
        return cookie, _as_session(record, bool(admin))

    async def find(self, values: list[str], host: str = "") -> Session | None:
        """The session the cookie values open, for this host ("" on the main origin). The
        values are every copy of the cookie the browser sent: if they open sessions of two
        different people, someone planted one, and none is taken."""
        found: Session | None = None
        for value in values[:MAX_COOKIE_VALUES]:
            session = await self._lookup(value)
            if session is None or session.host != host:
                continue
            if found is not None and found.sid != session.sid:
                return None
            found = session
        return found

    async def _lookup(self, cookie: str) -> Session | None:
        if not is_token(cookie):
            return None
        now = time.monotonic()
        hit = self._cache.get(cookie)
        if hit is not None and hit[1] > now:
            session = hit[0]
        else:
            session = await self._load(cookie)
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[cookie] = (session, now + CACHE_S)
        if session is not None and session.expires_ms <= _now_ms():
            return None
        return session

    async def _load(self, cookie: str) -> Session | None:
        record = await self.store.get_session(token_hash(cookie))
        if record is None:
            return None
        admin = await self.admin_of(record.user)
        if admin is None:  # the account is gone (its sessions are being deleted with it)
            return None
        now = _now_ms()
        if now - record.last_seen_ms > TOUCH_EVERY_MS:
            await self.store.touch_session(record.sid, now)
        return _as_session(record, admin)

    async def end(self, session: Session) -> None:
        """Log out: this session and every workspace session opened from it."""
        if session.sid:
            await self.store.delete_session(session.sid)
        self._cache = {k: v for k, v in self._cache.items() if not v[0] or v[0].sid != session.sid}

    async def grant(
        self, session: Session, owner: str, host: str, state: str, lifetime_ms: int
    ) -> str:
        """A one-time pass for this session's person into owner's workspace on host, bound
        to the browser's state cookie; the token to hand over (only its hash is kept)."""
        token = new_token()
        now = _now_ms()
        grant = EntryGrant(
            user=session.user,
            owner=owner,
            host=host,
            parent=session.sid,
            state=token_hash(state),
            expires_ms=now + ENTRY_TTL_MS,
            session_expires_ms=min(session.expires_ms, now + lifetime_ms),
        )
        await self.store.put_entry(token_hash(token), grant)
        return token

    async def take(self, token: str, host: str, state: str) -> EntryGrant | None:
        """The pass, used up; None if unknown, used, expired, for another host or taken by
        a browser without its state cookie. A pass is used up even when refused: a token
        seen by the wrong party is never tried twice."""
        if not is_token(token):
            return None
        grant = await self.store.take_entry(token_hash(token))
        if grant is None or grant.host != host:
            return None
        if not is_token(state) or not secrets.compare_digest(grant.state, token_hash(state)):
            return None
        return grant


def _as_session(record: SessionRecord, admin: bool) -> Session:
    return Session(
        user=record.user,
        admin=admin,
        sid=record.sid,
        csrf=record.csrf,
        expires_ms=record.expires_ms,
        owner=record.owner,
        host=record.host,
    )


def _now_ms() -> int:
    return int(time.time() * 1000)
