"""API tokens: bearer tokens for the router's JSON API (`/api/v1/`), each with scopes and
an expiry, kept hashed in the store (a copy of the store opens nothing).

A token reads `cp_<id>_<secret>`: the id finds its record, the SHA-256 of the whole token
must match. Scopes:
  read              the pool's status, workspaces, events, the report, a reap's dry run
  workspaces:write  assign, release and hold anyone's workspace
  users:write       list, add and remove accounts (not admins: those need `admin` too)
  admin             with users:write, add and remove admin accounts (an admin may enter
                    people's workspaces where that is allowed, and may do everything)
  self              read, assign, release and hold one person's own workspace (the
                    token's user)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Sequence

from codepool.core import policy
from codepool.core.errors import InvalidInput
from codepool.core.models import TokenRecord
from codepool.core.store import Store

SCOPES = ("read", "workspaces:write", "users:write", "admin", "self")
MAX_TOKEN = 128  # longer is refused before any lookup


def _wall_ms() -> int:
    return int(time.time() * 1000)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    def __init__(self, store: Store, clock: Callable[[], int] = _wall_ms) -> None:
        self.store = store
        self.clock = clock

    async def create(
        self,
        name: str,
        scopes: Sequence[str],
        created_by: str,
        user: str = "",
        ttl_s: int = 90 * 86400,
    ) -> tuple[str, TokenRecord]:
        """A new token (shown once) and its record. ttl_s 0: it never expires."""
        if bad := [s for s in scopes if s not in SCOPES]:
            raise InvalidInput(f"invalid scope {', '.join(bad)}: allowed: {', '.join(SCOPES)}")
        if not scopes:
            raise InvalidInput(f"a token needs at least one scope: {', '.join(SCOPES)}")
        if ("self" in scopes) != bool(user):
            raise InvalidInput("a token acts for one person (--user) exactly when it has 'self'")
        if user:
            policy.check_user(user)
        if not 0 < len(name) <= 64 or not name.isprintable():
            raise InvalidInput("a token's name is 1 to 64 printable characters")
        if ttl_s < 0:
            raise InvalidInput("a token's lifetime is 0 (never expires) or more seconds")
        token_id = secrets.token_hex(4)
        token = f"cp_{token_id}_{secrets.token_urlsafe(32)}"
        now = self.clock()
        record = TokenRecord(
            token_id,
            digest(token),
            name,
            tuple(dict.fromkeys(scopes)),
            user,
            now,
            now + ttl_s * 1000 if ttl_s else 0,
            created_by,
        )
        await self.store.put_token(record)
        return token, record

    async def verify(self, token: str) -> TokenRecord | None:
        """The record of a good token: known, matching, not expired. None otherwise."""
        parts = token.split("_", 2) if len(token) <= MAX_TOKEN else []
        if len(parts) != 3 or parts[0] != "cp" or len(parts[1]) != 8:
            return None
        record = await self.store.get_token(parts[1])
        if record is None or not hmac.compare_digest(record.digest, digest(token)):
            return None
        if record.expires_ms and record.expires_ms <= self.clock():
            return None
        return record

    async def list(self) -> list[TokenRecord]:
        return await self.store.list_tokens()

    async def revoke(self, token_id: str) -> None:
        if not await self.store.delete_token(token_id):
            raise InvalidInput(f"no token {token_id!r} (see `codepool tokens list`)")


def allows(record: TokenRecord, scope: str, user: str | None = None) -> bool:
    """Whether a token may do what scope names; a `self` token only for its own user."""
    if scope in record.scopes:
        return True
    own = "self" in record.scopes and user is not None and user == record.user
    return own and scope in ("read", "workspaces:write")
