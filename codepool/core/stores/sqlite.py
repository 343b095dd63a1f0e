"""SQLite store: the embedded default. Durable, WAL mode, shared by the CLI and a running
daemon on one machine. Every step is one transaction; writers take the database lock
up front (BEGIN IMMEDIATE) so concurrent processes serialize instead of deadlocking."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from codepool.core.batching import GroupCommit
from codepool.core.errors import ConfigError, StoreUnavailable
from codepool.core.models import (
    Account,
    EntryGrant,
    Event,
    EventKind,
    SessionRecord,
    TokenRecord,
    Workspace,
    WorkspaceState,
)
from codepool.core.store import PingResult

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS workspaces (
    user TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    address TEXT NOT NULL,
    state TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    assigned_at_ms INTEGER NOT NULL,
    hold_until_ms INTEGER NOT NULL DEFAULT 0,
    stopped_at_ms INTEGER NOT NULL DEFAULT 0,
    started_at_ms INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS workspaces_by_state_last_seen ON workspaces (state, last_seen_ms);
CREATE INDEX IF NOT EXISTS workspaces_by_state_stopped_at ON workspaces (state, stopped_at_ms);
CREATE TABLE IF NOT EXISTS spares (instance_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS notes (
    name TEXT PRIMARY KEY, body TEXT NOT NULL, expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    instance_id TEXT PRIMARY KEY, user TEXT NOT NULL, expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS accounts (
    name TEXT PRIMARY KEY, admin INTEGER NOT NULL, hash TEXT NOT NULL, created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    sid TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    client TEXT NOT NULL,
    owner TEXT NOT NULL,
    host TEXT NOT NULL,
    parent TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (user);
CREATE INDEX IF NOT EXISTS sessions_by_parent ON sessions (parent);
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (expires_ms);
CREATE TABLE IF NOT EXISTS entries (
    token TEXT PRIMARY KEY, grant_json TEXT NOT NULL, expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    key TEXT NOT NULL, attempt TEXT NOT NULL, at_ms INTEGER NOT NULL,
    PRIMARY KEY (key, attempt)
);
CREATE INDEX IF NOT EXISTS attempts_by_time ON attempts (key, at_ms);
CREATE TABLE IF NOT EXISTS start_queue (
    ticket TEXT PRIMARY KEY, arrival INTEGER NOT NULL, seen_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS start_holders (ticket TEXT PRIMARY KEY, expires_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, digest TEXT NOT NULL, name TEXT NOT NULL, scopes TEXT NOT NULL,
    user TEXT NOT NULL, created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    user TEXT NOT NULL,
    actor TEXT NOT NULL,
    detail TEXT NOT NULL,
    instance_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (at_ms, id);
"""
EVENT_COLUMNS = "at_ms, kind, user, actor, detail, instance_id"

SESSION_COLUMNS = (
    "sid, user, csrf, created_ms, last_seen_ms, expires_ms, client, owner, host, parent"
)
EXPIRED_BATCH = 200  # expired sessions and passes deleted per write that adds one

COLUMNS = (
    "user, instance_id, address, state, last_seen_ms, assigned_at_ms, hold_until_ms, "
    "stopped_at_ms, started_at_ms"
)
# Columns added since a store file was first made: added to older files when opened.
ADDED_COLUMNS = {
    "started_at_ms": "ALTER TABLE workspaces ADD COLUMN started_at_ms INTEGER NOT NULL DEFAULT 0"
}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ping_one(db: sqlite3.Connection, user: str, instance_id: str, now_ms: int) -> PingResult:
    r = db.execute("SELECT instance_id, state FROM workspaces WHERE user = ?", (user,)).fetchone()
    if r is None:
        return PingResult.NO_WORKSPACE
    if r[0] != instance_id:
        return PingResult.STALE_INSTANCE
    if r[1] != WorkspaceState.RUNNING.value:
        return PingResult.NOT_RUNNING
    db.execute(
        "UPDATE workspaces SET last_seen_ms = MAX(last_seen_ms, ?) WHERE user = ?", (now_ms, user)
    )
    return PingResult.OK


def _session(r: tuple[Any, ...]) -> SessionRecord:
    return SessionRecord(*r)


def _account(r: tuple[Any, ...]) -> Account:
    return Account(r[0], bool(r[1]), r[2], r[3])


def _end_sessions(db: sqlite3.Connection, user: str) -> int:
    """Delete a user's sessions and the sessions made from them."""
    sids = [r[0] for r in db.execute("SELECT sid FROM sessions WHERE user = ?", (user,))]
    for sid in sids:
        db.execute("DELETE FROM sessions WHERE sid = ? OR parent = ?", (sid, sid))
    return len(sids)


def _token(r: tuple[Any, ...]) -> TokenRecord:
    return TokenRecord(r[0], r[1], r[2], tuple(r[3].split()), r[4], r[5], r[6], r[7])


def _row(r: tuple[Any, ...]) -> Workspace:
    return Workspace(r[0], r[1], r[2], WorkspaceState(r[3]), r[4], r[5], r[6], r[7], r[8])


OPEN_TIMEOUT_S = 30.0  # as long as a step waits for another process's write


def _open(path: str) -> sqlite3.Connection:
    """One connection, in WAL mode, with the schema. Processes that open a new file at the
    same moment (`codepool events --follow` and an `assign`) race to turn it to WAL, and
    SQLite answers the losers "database is locked" at once, without waiting as it does for
    a write: that step is tried again until the file is WAL or OPEN_TIMEOUT_S passes."""
    deadline = time.monotonic() + OPEN_TIMEOUT_S
    while True:
        db = sqlite3.connect(
            path, timeout=OPEN_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            have = {r[1] for r in db.execute("PRAGMA table_info(workspaces)")}
            for column, add in ADDED_COLUMNS.items():
                if column not in have:
                    db.execute(add)
            db.execute(
                "CREATE INDEX IF NOT EXISTS workspaces_by_state_started_at "
                "ON workspaces (state, started_at_ms)"
            )
            return db
        except sqlite3.OperationalError as exc:
            db.close()
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.005, 0.05))  # apart, so the openers do not meet again
        except BaseException:
            db.close()
            raise


class SQLiteStore:
    """Store on one SQLite file (or in memory for memory://, one process only)."""

    def __init__(self, path: str, *, batch_size: int = 500) -> None:
        self.path = path
        self.batch_size = batch_size
        try:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                # It holds password and session hashes: the owner's alone (SQLite gives its
                # journal files the database file's mode).
                os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            self._db = _open(path)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"store unavailable: sqlite {path}: {exc}") from None
        self._lock = threading.Lock()
        self._pings = GroupCommit(self._write_pings, max_batch=batch_size)
        self._sessions = GroupCommit(self._read_sessions, max_batch=batch_size)

    @classmethod
    def from_url(cls, url: str, *, batch_size: int = 500) -> SQLiteStore:
        if url.startswith("memory:"):
            return cls(":memory:", batch_size=batch_size)
        prefix = "sqlite:///"
        if not url.startswith(prefix) or len(url) == len(prefix):
            raise ConfigError(
                f"config error: store.url = {url!r}: a SQLite URL is sqlite:///PATH "
                "(sqlite:////abs/path or sqlite:///relative/path)"
            )
        return cls(str(Path(url[len(prefix) :]).expanduser()), batch_size=batch_size)

    # -- plumbing -------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = False) -> T:
        return await asyncio.to_thread(self._call, fn, write)

    def _call(self, fn: Callable[[sqlite3.Connection], T], write: bool) -> T:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    result = fn(self._db)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                return result
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"store unavailable: sqlite {self.path}: {exc}") from None

    # -- workspaces -----------------------------------------------------------------------

    async def get_workspace(self, user: str) -> Workspace | None:
        def q(db: sqlite3.Connection) -> Workspace | None:
            r = db.execute(f"SELECT {COLUMNS} FROM workspaces WHERE user = ?", (user,)).fetchone()
            return _row(r) if r else None

        return await self._run(q)

    async def put_workspace(self, ws: Workspace) -> None:
        await self.put_workspaces([ws])

    async def put_workspaces(self, workspaces: Sequence[Workspace]) -> None:
        rows = [ws.row() for ws in workspaces]

        def q(db: sqlite3.Connection) -> None:
            db.executemany(
                f"INSERT OR REPLACE INTO workspaces ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

        if rows:
            await self._run(q, write=True)

    async def delete_workspace(self, user: str, instance_id: str) -> bool:
        def q(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "DELETE FROM workspaces WHERE user = ? AND instance_id = ?", (user, instance_id)
            )
            return cur.rowcount > 0

        return await self._run(q, write=True)

    async def record_ping(self, user: str, instance_id: str, now_ms: int) -> PingResult:
        return await self._pings.submit((user, instance_id, now_ms))

    async def _write_pings(self, pings: Sequence[tuple[str, str, int]]) -> list[PingResult]:
        def q(db: sqlite3.Connection) -> list[PingResult]:
            return [_ping_one(db, *ping) for ping in pings]

        return await self._run(q, write=True)

    async def set_hold(self, user: str, instance_id: str, hold_until_ms: int) -> bool:
        def q(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE workspaces SET hold_until_ms = ? "
                "WHERE user = ? AND instance_id = ? AND state = ?",
                (hold_until_ms, user, instance_id, WorkspaceState.RUNNING.value),
            )
            return cur.rowcount == 1

        return await self._run(q, write=True)

    async def mark_stopping(self, user: str, instance_id: str, last_seen_ms: int) -> bool:
        return (await self.mark_stopping_many([(user, instance_id, last_seen_ms)]))[0]

    async def mark_stopping_many(self, items: Sequence[tuple[str, str, int]]) -> list[bool]:
        def q(db: sqlite3.Connection) -> list[bool]:
            return [
                db.execute(
                    "UPDATE workspaces SET state = ? WHERE user = ? AND instance_id = ? "
                    "AND state = ? AND last_seen_ms = ?",
                    (WorkspaceState.STOPPING.value, user, iid, WorkspaceState.RUNNING.value, seen),
                ).rowcount
                == 1
                for user, iid, seen in items
            ]

        return await self._run(q, write=True) if items else []

    async def idle_workspaces(self, seen_before_ms: int, limit: int) -> list[Workspace]:
        def q(db: sqlite3.Connection) -> list[Workspace]:
            rows = db.execute(
                f"SELECT {COLUMNS} FROM workspaces WHERE state = ? AND last_seen_ms < ? "
                "ORDER BY last_seen_ms LIMIT ?",
                (WorkspaceState.RUNNING.value, seen_before_ms, limit),
            ).fetchall()
            return [_row(r) for r in rows]

        return await self._run(q)

    async def long_running(self, started_before_ms: int, limit: int) -> list[Workspace]:
        def q(db: sqlite3.Connection) -> list[Workspace]:
            rows = db.execute(
                f"SELECT {COLUMNS} FROM workspaces WHERE state = ? AND started_at_ms > 0 "
                "AND started_at_ms < ? ORDER BY started_at_ms LIMIT ?",
                (WorkspaceState.RUNNING.value, started_before_ms, limit),
            )
            return [_row(r) for r in rows]

        return await self._run(q)

    async def expired_workspaces(self, stopped_before_ms: int, limit: int) -> list[Workspace]:
        def q(db: sqlite3.Connection) -> list[Workspace]:
            rows = db.execute(
                f"SELECT {COLUMNS} FROM workspaces WHERE state = ? AND stopped_at_ms < ? "
                "ORDER BY stopped_at_ms LIMIT ?",
                (WorkspaceState.STOPPED.value, stopped_before_ms, limit),
            ).fetchall()
            return [_row(r) for r in rows]

        return await self._run(q)

    async def iter_workspaces(self) -> AsyncIterator[list[Workspace]]:
        after = ""
        while True:

            def q(db: sqlite3.Connection, after: str = after) -> list[Workspace]:
                rows = db.execute(
                    f"SELECT {COLUMNS} FROM workspaces WHERE user > ? ORDER BY user LIMIT ?",
                    (after, self.batch_size),
                ).fetchall()
                return [_row(r) for r in rows]

            batch = await self._run(q)
            if not batch:
                return
            yield batch
            after = batch[-1].user

    # -- spares ---------------------------------------------------------------------------

    async def claim_spare(self, user: str, claim_ttl_ms: int) -> str | None:
        def q(db: sqlite3.Connection) -> str | None:
            r = db.execute(
                "DELETE FROM spares WHERE instance_id = "
                "(SELECT instance_id FROM spares ORDER BY random() LIMIT 1) RETURNING instance_id"
            ).fetchone()
            if r is None:
                return None
            db.execute(
                "INSERT OR REPLACE INTO claims (instance_id, user, expires_ms) VALUES (?, ?, ?)",
                (r[0], user, _now_ms() + claim_ttl_ms),
            )
            return str(r[0])

        return await self._run(q, write=True)

    async def keep_claim(self, instance_id: str, user: str, claim_ttl_ms: int) -> bool:
        def q(db: sqlite3.Connection) -> bool:
            now = _now_ms()
            cur = db.execute(
                "UPDATE claims SET expires_ms = ? "
                "WHERE instance_id = ? AND user = ? AND expires_ms > ?",
                (now + claim_ttl_ms, instance_id, user, now),
            )
            return cur.rowcount == 1

        return await self._run(q, write=True)

    async def take_spare(self, instance_id: str, claim_ttl_ms: int) -> bool:
        def q(db: sqlite3.Connection) -> bool:
            cur = db.execute("DELETE FROM spares WHERE instance_id = ?", (instance_id,))
            if cur.rowcount != 1:
                return False
            db.execute(
                "INSERT OR REPLACE INTO claims (instance_id, user, expires_ms) VALUES (?, ?, ?)",
                (instance_id, "", _now_ms() + claim_ttl_ms),
            )
            return True

        return await self._run(q, write=True)

    async def add_spares(self, instance_ids: Iterable[str]) -> int:
        ids = list(instance_ids)

        def q(db: sqlite3.Connection) -> int:
            now = _now_ms()
            db.execute("DELETE FROM claims WHERE expires_ms <= ?", (now,))
            added = 0
            for iid in ids:
                cur = db.execute(
                    "INSERT OR IGNORE INTO spares (instance_id) SELECT ? "
                    "WHERE NOT EXISTS (SELECT 1 FROM claims WHERE instance_id = ?)",
                    (iid, iid),
                )
                added += cur.rowcount
            return added

        return await self._run(q, write=True) if ids else 0

    async def remove_spares(self, instance_ids: Iterable[str]) -> None:
        ids = [(i,) for i in instance_ids]

        def q(db: sqlite3.Connection) -> None:
            db.executemany("DELETE FROM spares WHERE instance_id = ?", ids)

        if ids:
            await self._run(q, write=True)

    async def spares(self) -> set[str]:
        def q(db: sqlite3.Connection) -> set[str]:
            return {r[0] for r in db.execute("SELECT instance_id FROM spares")}

        return await self._run(q)

    # -- leases ---------------------------------------------------------------------------

    async def acquire_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        return (await self.acquire_leases([name], holder, ttl_ms))[0]

    async def release_lease(self, name: str, holder: str) -> None:
        await self.release_leases([name], holder)

    async def acquire_leases(self, names: Sequence[str], holder: str, ttl_ms: int) -> list[bool]:
        def q(db: sqlite3.Connection) -> list[bool]:
            now = _now_ms()
            return [
                db.execute(
                    "INSERT INTO leases (name, holder, expires_ms) VALUES (?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                    "expires_ms = excluded.expires_ms "
                    "WHERE leases.holder = excluded.holder OR leases.expires_ms <= ?",
                    (name, holder, now + ttl_ms, now),
                ).rowcount
                == 1
                for name in names
            ]

        return await self._run(q, write=True) if names else []

    async def release_leases(self, names: Sequence[str], holder: str) -> None:
        rows = [(name, holder) for name in names]

        def q(db: sqlite3.Connection) -> None:
            db.executemany("DELETE FROM leases WHERE name = ? AND holder = ?", rows)

        if rows:
            await self._run(q, write=True)

    async def put_note(self, name: str, body: str, ttl_ms: int) -> None:
        row = (name, body, _now_ms() + ttl_ms)

        def q(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO notes (name, body, expires_ms) VALUES (?, ?, ?)", row
            )

        await self._run(q, write=True)

    async def get_note(self, name: str) -> str | None:
        def q(db: sqlite3.Connection) -> str | None:
            r = db.execute(
                "SELECT body FROM notes WHERE name = ? AND expires_ms > ?", (name, _now_ms())
            ).fetchone()
            return None if r is None else str(r[0])

        return await self._run(q)

    # -- accounts -------------------------------------------------------------------------

    async def get_account(self, name: str) -> Account | None:
        def q(db: sqlite3.Connection) -> Account | None:
            r = db.execute(
                "SELECT name, admin, hash, created_ms FROM accounts WHERE name = ?", (name,)
            ).fetchone()
            return _account(r) if r else None

        return await self._run(q)

    async def list_accounts(self) -> list[Account]:
        def q(db: sqlite3.Connection) -> list[Account]:
            rows = db.execute("SELECT name, admin, hash, created_ms FROM accounts ORDER BY name")
            return [_account(r) for r in rows]

        return await self._run(q)

    async def add_account(self, account: Account, *, only_if_none: bool = False) -> bool:
        a = account

        def q(db: sqlite3.Connection) -> bool:
            if only_if_none and db.execute("SELECT 1 FROM accounts LIMIT 1").fetchone():
                return False
            cur = db.execute(
                "INSERT OR IGNORE INTO accounts (name, admin, hash, created_ms) "
                "VALUES (?, ?, ?, ?)",
                (a.name, int(a.admin), a.password_hash, a.created_ms),
            )
            return cur.rowcount == 1

        return await self._run(q, write=True)

    async def update_account(self, account: Account, *, end_sessions: bool) -> bool:
        a = account

        def q(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "UPDATE accounts SET admin = ?, hash = ? WHERE name = ?",
                (int(a.admin), a.password_hash, a.name),
            )
            if cur.rowcount != 1:
                return False
            if end_sessions:
                _end_sessions(db, a.name)
            return True

        return await self._run(q, write=True)

    async def delete_account(self, name: str) -> bool:
        def q(db: sqlite3.Connection) -> bool:
            _end_sessions(db, name)
            return db.execute("DELETE FROM accounts WHERE name = ?", (name,)).rowcount == 1

        return await self._run(q, write=True)

    # -- sessions and entry passes ----------------------------------------------------------

    async def put_session(self, session: SessionRecord) -> None:
        row = tuple(asdict(session).values())

        def q(db: sqlite3.Connection) -> None:
            now = _now_ms()
            db.execute(
                "DELETE FROM sessions WHERE sid IN "
                "(SELECT sid FROM sessions WHERE expires_ms <= ? LIMIT ?)",
                (now, EXPIRED_BATCH),
            )
            db.execute(
                f"INSERT OR REPLACE INTO sessions ({SESSION_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )

        await self._run(q, write=True)

    async def get_session(self, sid: str) -> SessionRecord | None:
        return await self._sessions.submit(sid)

    async def _read_sessions(self, sids: Sequence[str]) -> list[SessionRecord | None]:
        """Session lookups that arrive together share one transaction (group commit)."""

        def q(db: sqlite3.Connection) -> list[SessionRecord | None]:
            now = _now_ms()
            out: list[SessionRecord | None] = []
            for sid in sids:
                # A workspace session lives only as long as the session it came from.
                r = db.execute(
                    f"SELECT {SESSION_COLUMNS} FROM sessions s WHERE sid = ? "
                    "AND expires_ms > ? AND (parent = '' OR EXISTS "
                    "(SELECT 1 FROM sessions p WHERE p.sid = s.parent AND p.expires_ms > ?))",
                    (sid, now, now),
                ).fetchone()
                out.append(_session(r) if r else None)
            return out

        return await self._run(q)

    async def touch_session(self, sid: str, now_ms: int) -> None:
        def q(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE sessions SET last_seen_ms = MAX(last_seen_ms, ?) WHERE sid = ?",
                (now_ms, sid),
            )

        await self._run(q, write=True)

    async def delete_session(self, sid: str) -> bool:
        def q(db: sqlite3.Connection) -> bool:
            found = db.execute("SELECT 1 FROM sessions WHERE sid = ?", (sid,)).fetchone()
            db.execute("DELETE FROM sessions WHERE sid = ? OR parent = ?", (sid, sid))
            return found is not None

        return await self._run(q, write=True)

    async def delete_user_sessions(self, user: str) -> int:
        return await self._run(lambda db: _end_sessions(db, user), write=True)

    async def put_entry(self, token_hash: str, grant: EntryGrant) -> None:
        body = json.dumps(asdict(grant))

        def q(db: sqlite3.Connection) -> None:
            db.execute(
                "DELETE FROM entries WHERE token IN "
                "(SELECT token FROM entries WHERE expires_ms <= ? LIMIT ?)",
                (_now_ms(), EXPIRED_BATCH),
            )
            db.execute(
                "INSERT INTO entries (token, grant_json, expires_ms) VALUES (?, ?, ?)",
                (token_hash, body, grant.expires_ms),
            )

        await self._run(q, write=True)

    async def take_entry(self, token_hash: str) -> EntryGrant | None:
        def q(db: sqlite3.Connection) -> EntryGrant | None:
            r = db.execute(
                "DELETE FROM entries WHERE token = ? RETURNING grant_json, expires_ms",
                (token_hash,),
            ).fetchone()
            if r is None or r[1] <= _now_ms():
                return None
            return EntryGrant(**json.loads(r[0]))

        return await self._run(q, write=True)

    # -- login attempts ---------------------------------------------------------------------

    async def reserve_attempts(
        self, limits: Sequence[tuple[str, int]], attempt: str, window_ms: int
    ) -> int:
        def q(db: sqlite3.Connection) -> int:
            now = _now_ms()
            wait = 0
            for key, limit in limits:
                db.execute(
                    "DELETE FROM attempts WHERE key = ? AND at_ms <= ?", (key, now - window_ms)
                )
                count, oldest = db.execute(
                    "SELECT COUNT(*), MIN(at_ms) FROM attempts WHERE key = ?", (key,)
                ).fetchone()
                if count >= limit:
                    wait = max(wait, oldest + window_ms - now)
            if wait:
                return max(wait, 1)
            db.executemany(
                "INSERT OR REPLACE INTO attempts (key, attempt, at_ms) VALUES (?, ?, ?)",
                [(key, attempt, now) for key, _ in limits],
            )
            return 0

        return await self._run(q, write=True)

    async def release_attempts(self, keys: Sequence[str], attempt: str) -> None:
        rows = [(key, attempt) for key in keys]

        def q(db: sqlite3.Connection) -> None:
            db.executemany("DELETE FROM attempts WHERE key = ? AND attempt = ?", rows)

        await self._run(q, write=True)

    async def clear_attempts(self, keys: Sequence[str]) -> None:
        rows = [(key,) for key in keys]

        def q(db: sqlite3.Connection) -> None:
            db.executemany("DELETE FROM attempts WHERE key = ?", rows)

        await self._run(q, write=True)

    # -- the start limit ----------------------------------------------------------------------

    async def take_start(self, ticket: str, limit: int, ttl_ms: int) -> int:
        def q(db: sqlite3.Connection) -> int:
            now = _now_ms()
            db.execute("DELETE FROM start_holders WHERE expires_ms <= ?", (now,))
            db.execute("DELETE FROM start_queue WHERE seen_ms <= ?", (now - ttl_ms,))
            renewed = db.execute(
                "UPDATE start_holders SET expires_ms = ? WHERE ticket = ?", (now + ttl_ms, ticket)
            )
            if renewed.rowcount:
                return 0
            # Arrivals are numbered (the next after the last in line): one who came later
            # never goes ahead, not even within one millisecond.
            db.execute(
                "INSERT INTO start_queue (ticket, arrival, seen_ms) "
                "VALUES (?, (SELECT COALESCE(MAX(arrival), 0) + 1 FROM start_queue), ?) "
                "ON CONFLICT (ticket) DO UPDATE SET seen_ms = excluded.seen_ms",
                (ticket, now),
            )
            ahead = db.execute(
                "SELECT COUNT(*) FROM start_queue WHERE arrival < "
                "(SELECT arrival FROM start_queue WHERE ticket = ?)",
                (ticket,),
            ).fetchone()[0]
            free = limit - db.execute("SELECT COUNT(*) FROM start_holders").fetchone()[0]
            if ahead >= free:
                return int(ahead - free + 1)
            db.execute("DELETE FROM start_queue WHERE ticket = ?", (ticket,))
            db.execute("INSERT INTO start_holders VALUES (?, ?)", (ticket, now + ttl_ms))
            return 0

        return await self._run(q, write=True)

    async def give_back_start(self, ticket: str) -> None:
        def q(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM start_queue WHERE ticket = ?", (ticket,))
            db.execute("DELETE FROM start_holders WHERE ticket = ?", (ticket,))

        await self._run(q, write=True)

    # -- API tokens ---------------------------------------------------------------------------

    async def put_token(self, token: TokenRecord) -> None:
        row = (token.id, token.digest, token.name, " ".join(token.scopes), token.user,
               token.created_ms, token.expires_ms, token.created_by)  # fmt: skip

        def q(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)

        await self._run(q, write=True)

    async def get_token(self, token_id: str) -> TokenRecord | None:
        def q(db: sqlite3.Connection) -> TokenRecord | None:
            r = db.execute("SELECT * FROM tokens WHERE id = ?", (token_id,)).fetchone()
            return _token(r) if r else None

        return await self._run(q)

    async def list_tokens(self) -> list[TokenRecord]:
        def q(db: sqlite3.Connection) -> list[TokenRecord]:
            return [_token(r) for r in db.execute("SELECT * FROM tokens ORDER BY created_ms")]

        return await self._run(q)

    async def delete_token(self, token_id: str) -> bool:
        def q(db: sqlite3.Connection) -> bool:
            return db.execute("DELETE FROM tokens WHERE id = ?", (token_id,)).rowcount > 0

        return await self._run(q, write=True)

    # -- the event log ----------------------------------------------------------------------

    async def append_events(self, events: Sequence[Event]) -> None:
        rows = [e.row() for e in events]

        def q(db: sqlite3.Connection) -> None:
            db.executemany(f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", rows)

        if rows:
            await self._run(q, write=True)

    async def read_events(self, since_ms: int, until_ms: int, limit: int) -> list[Event]:
        def q(db: sqlite3.Connection) -> list[Event]:
            rows = db.execute(
                f"SELECT {EVENT_COLUMNS}, id FROM events WHERE at_ms BETWEEN ? AND ? "
                "ORDER BY at_ms, id LIMIT ?",
                (since_ms, until_ms, limit),
            )
            return [Event(r[0], EventKind(r[1]), r[2], r[3], r[4], r[5], str(r[6])) for r in rows]

        return await self._run(q)

    async def trim_events(self, before_ms: int) -> int:
        def q(db: sqlite3.Connection) -> int:
            return db.execute("DELETE FROM events WHERE at_ms < ?", (before_ms,)).rowcount

        return await self._run(q, write=True)

    async def check(self) -> None:
        await self._run(lambda db: db.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        with self._lock:
            self._db.close()
