"""The Store plug point: the fast index and the activity record (docs/architecture.md).

Operations are domain steps, each atomic in every implementation, not raw commands.
The backend stays the durable truth; everything here can be rebuilt by reconcile.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Protocol

from codepool.core.errors import ConfigError
from codepool.core.models import (
    Account,
    EntryGrant,
    Event,
    SessionRecord,
    TokenRecord,
    Workspace,
)


class PingResult(enum.StrEnum):
    OK = "ok"
    NO_WORKSPACE = "no-workspace"  # the user has no workspace
    STALE_INSTANCE = "stale-instance"  # the ping names an instance that is not the user's now
    NOT_RUNNING = "not-running"  # stopping or stopped: the ping must not revive it


class Store(Protocol):
    """What the core needs from a store. Each method is one atomic step."""

    async def get_workspace(self, user: str) -> Workspace | None:
        """The user's workspace record, or None."""

    async def put_workspace(self, ws: Workspace) -> None:
        """Write the whole record and its indexes (lastSeen for running, stoppedAt for stopped)."""

    async def put_workspaces(self, workspaces: Sequence[Workspace]) -> None:
        """put_workspace for many, in one round trip."""

    async def delete_workspace(self, user: str, instance_id: str) -> bool:
        """Remove the record if it still names instance_id; True if removed."""

    async def record_ping(self, user: str, instance_id: str, now_ms: int) -> PingResult:
        """Set lastSeen (never backwards) only if instance_id is the user's running workspace."""

    async def set_hold(self, user: str, instance_id: str, hold_until_ms: int) -> bool:
        """Set holdUntil if the record still names instance_id and is running; True if set."""

    async def mark_stopping(self, user: str, instance_id: str, last_seen_ms: int) -> bool:
        """Compare-and-set: running -> stopping only if lastSeen still equals last_seen_ms.
        A ping that landed since makes this fail, so the ping wins."""

    async def mark_stopping_many(self, items: Sequence[tuple[str, str, int]]) -> list[bool]:
        """mark_stopping for many (user, instance_id, last_seen_ms), each on its own, in one
        round trip."""

    async def idle_workspaces(self, seen_before_ms: int, limit: int) -> list[Workspace]:
        """Running workspaces last seen before seen_before_ms, oldest first (from the index,
        so the cost follows the number returned, not the number of workspaces)."""

    async def long_running(self, started_before_ms: int, limit: int) -> list[Workspace]:
        """Running workspaces that started before started_before_ms, oldest first (at most
        limit): those past pool.max_age_s."""

    async def expired_workspaces(self, stopped_before_ms: int, limit: int) -> list[Workspace]:
        """Stopped workspaces stopped before stopped_before_ms, oldest first."""

    def iter_workspaces(self) -> AsyncIterator[list[Workspace]]:
        """Every workspace, in batches of the configured size (never all at once)."""

    async def claim_spare(self, user: str, claim_ttl_ms: int) -> str | None:
        """Take one spare id out of the pool atomically (each id goes to one caller only) and
        mark it claimed by user for claim_ttl_ms, so add_spares will not put it back."""

    async def keep_claim(self, instance_id: str, user: str, claim_ttl_ms: int) -> bool:
        """Make user's claim on instance_id last claim_ttl_ms from now; False (and nothing
        changed) if the claim has expired or is not user's."""

    async def take_spare(self, instance_id: str, claim_ttl_ms: int) -> bool:
        """Take this spare out of the pool; True if it was there (and so is now ours). Like
        claim_spare it leaves a claim, so a reconcile that listed the box before it was
        terminated cannot put it back."""

    async def add_spares(self, instance_ids: Iterable[str]) -> int:
        """Put ids into the pool, skipping any with a live claim; returns how many were added."""

    async def remove_spares(self, instance_ids: Iterable[str]) -> None:
        """Remove ids from the pool if present."""

    async def spares(self) -> set[str]:
        """The ids in the pool now."""

    async def acquire_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        """Take the named lease, or renew it if holder has it; False if someone else has it."""

    async def release_lease(self, name: str, holder: str) -> None:
        """Give the lease back if holder still has it."""

    async def acquire_leases(self, names: Sequence[str], holder: str, ttl_ms: int) -> list[bool]:
        """acquire_lease for many names, each on its own, in one round trip."""

    async def release_leases(self, names: Sequence[str], holder: str) -> None:
        """release_lease for many names, in one round trip."""

    async def put_note(self, name: str, body: str, ttl_ms: int) -> None:
        """Keep a small text under name for ttl_ms, replacing any: what one router tells
        the others (the leader's gauges)."""

    async def get_note(self, name: str) -> str | None:
        """The note under name, unless it is gone or expired."""

    # -- accounts, sessions and entry passes (every router sees the same ones) ---------

    async def get_account(self, name: str) -> Account | None:
        """The account with its password hash, or None."""

    async def list_accounts(self) -> list[Account]:
        """Every account, by name."""

    async def add_account(self, account: Account, *, only_if_none: bool = False) -> bool:
        """Create the account if the name is free (and, with only_if_none, if there are no
        accounts at all: the first admin); True if created."""

    async def update_account(self, account: Account, *, end_sessions: bool) -> bool:
        """Replace an existing account's hash and rights; with end_sessions, delete every
        session of that user in the same step. False if there is no such account."""

    async def delete_account(self, name: str) -> bool:
        """Delete the account and every session of that user; True if it existed."""

    async def put_session(self, session: SessionRecord) -> None:
        """Record a session; it disappears by itself after its expiry."""

    async def get_session(self, sid: str) -> SessionRecord | None:
        """The session, or None if it is unknown, expired, or its parent session is gone."""

    async def touch_session(self, sid: str, now_ms: int) -> None:
        """Move the session's last seen time forward, if it still exists."""

    async def delete_session(self, sid: str) -> bool:
        """End one session (its children end with it); True if it existed."""

    async def delete_user_sessions(self, user: str) -> int:
        """End every session of a user, on every router; how many there were."""

    async def put_entry(self, token_hash: str, grant: EntryGrant) -> None:
        """Record a one-time entry pass under the hash of its token."""

    async def take_entry(self, token_hash: str) -> EntryGrant | None:
        """The pass, deleted in the same step (a second take gets None); None if expired."""

    async def reserve_attempts(
        self, limits: Sequence[tuple[str, int]], attempt: str, window_ms: int
    ) -> int:
        """Count one attempt (named attempt) against every key of limits, only if each has
        had fewer than its limit in the last window_ms: 0 if counted, else the ms until one
        may try again (nothing counted). One step: concurrent attempts never pass a limit."""

    async def release_attempts(self, keys: Sequence[str], attempt: str) -> None:
        """Take back one counted attempt (it succeeded)."""

    async def clear_attempts(self, keys: Sequence[str]) -> None:
        """Forget every attempt of these keys."""

    async def take_start(self, ticket: str, limit: int, ttl_ms: int) -> int:
        """A place among the starts in flight (at most limit across every router), given
        fairly by arrival: 0 if ticket holds one (taken now, or renewed), else its place in
        line (1: next). Each call renews the ticket; one not renewed within ttl_ms loses
        its place in line, or its start."""

    async def give_back_start(self, ticket: str) -> None:
        """Leave the line, or give a start back."""

    async def put_token(self, token: TokenRecord) -> None:
        """Keep an API token (a new id)."""

    async def get_token(self, token_id: str) -> TokenRecord | None:
        """The token with this id, or None."""

    async def list_tokens(self) -> list[TokenRecord]:
        """Every API token."""

    async def delete_token(self, token_id: str) -> bool:
        """Revoke a token; True if it existed."""

    async def append_events(self, events: Sequence[Event]) -> None:
        """Add events to the event log (their ids are the store's)."""

    async def read_events(self, since_ms: int, until_ms: int, limit: int) -> list[Event]:
        """At most limit events with since_ms <= at_ms <= until_ms, ordered by (at_ms, id)."""

    async def trim_events(self, before_ms: int) -> int:
        """Delete the events before before_ms (retention); how many."""

    async def check(self) -> None:
        """Raise StoreUnavailable if the store cannot answer."""

    async def close(self) -> None:
        """Release connections."""


def create_store(url: str, *, key_prefix: str = "", batch_size: int = 500) -> Store:
    """A store for a URL. Only the chosen implementation's module is imported."""
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("sqlite", "memory"):
        from codepool.core.stores.sqlite import SQLiteStore

        return SQLiteStore.from_url(url, batch_size=batch_size)
    if scheme in ("redis", "rediss", "unix"):
        from codepool.core.stores.redis import RedisStore

        return RedisStore.from_url(url, key_prefix=key_prefix, batch_size=batch_size)
    raise ConfigError(
        f"config error: store.url = {url!r}: allowed schemes: "
        "sqlite:///PATH, memory://, redis://, rediss://, unix://"
    )
