"""Local accounts (router.auth = "local"), kept in the store so that every router behind a
load balancer sees the same people, and a change on one (a new password, a removal, a
logout) ends that person's sessions on all of them at once. The CLI and the router both
come here: one implementation of each step.

Passwords are hashed with argon2id (argon2-cffi, RFC 9106's second recommended profile:
64 MiB, 3 passes). Hashes made by earlier versions (scrypt) still verify, and are
replaced by an argon2id hash at the person's next login, as is any hash made with older
parameters."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from codepool.core import events
from codepool.core.errors import ConfigError, InvalidInput
from codepool.core.models import Account, Event, EventKind
from codepool.core.policy import check_user
from codepool.core.store import Store

T = TypeVar("T")
HASH_THREADS = 2  # passwords checked at once per process: argon2id takes 64 MiB each
MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # longer is refused before hashing: no one types that, a flood might
_HASHER = PasswordHasher()  # argon2id, RFC 9106 low-memory profile (t=3, m=64 MiB, p=4)


def _wall_ms() -> int:
    return int(time.time() * 1000)


_pools: dict[int, ThreadPoolExecutor] = {}


async def _in_hash_pool(fn: Callable[..., T], *args: Any) -> T:
    """Run a password hash in this process's small pool of its own: a flood of logins
    waits there, and cannot take the threads that store calls and the rest use, nor more
    than HASH_THREADS times argon2id's memory. (One pool per process: a pool made before
    a fork has no threads in the child.)"""
    pool = _pools.get(os.getpid())
    if pool is None:
        pool = _pools[os.getpid()] = ThreadPoolExecutor(HASH_THREADS, "password")
    return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def check_password(password: str, stored: str) -> tuple[bool, bool]:
    """(right, needs a new hash). Accepts argon2 hashes and the scrypt hashes of codepool
    0.1 (`scrypt$N$r$p$salt$digest`); anything else is simply wrong."""
    if stored.startswith("scrypt$"):
        return _check_scrypt(password, stored), True
    try:
        _HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False, False
    return True, _HASHER.check_needs_rehash(stored)


def _check_scrypt(password: str, stored: str) -> bool:
    def unb64(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    try:
        _, n, r, p, salt, digest = stored.split("$")
        got = hashlib.scrypt(
            password.encode(), salt=unb64(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
        return hmac.compare_digest(got, unb64(digest))
    except (ValueError, TypeError):
        return False


# Checked against when a name is unknown, so that a wrong name costs what a wrong password
# costs and timing does not tell which names exist.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def check_password_rule(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"password too short: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise InvalidInput(f"password too long: at most {MAX_PASSWORD} characters")


@dataclass(frozen=True, slots=True)
class ImportResult:
    imported: tuple[str, ...]
    skipped: tuple[str, ...]  # already in the store: the store's account wins


class Accounts:
    """The accounts in a store. Every change is one atomic store step."""

    def __init__(
        self, store: Store, clock: Callable[[], int] = _wall_ms, actor: str = events.ROUTER
    ) -> None:
        self.store = store
        self.clock = clock
        self.actor = actor  # who makes the changes, for the event log

    async def _record(self, kind: EventKind, name: str, detail: str) -> None:
        await events.record(self.store, [Event(self.clock(), kind, name, self.actor, detail)])

    async def get(self, name: str) -> Account | None:
        return await self.store.get_account(name)

    async def list(self) -> list[Account]:
        return await self.store.list_accounts()

    async def add(self, name: str, password: str, admin: bool = False) -> Account:
        check_user(name)
        check_password_rule(password)
        digest = await _in_hash_pool(hash_password, password)
        account = Account(name, admin, digest, self.clock())
        if not await self.store.add_account(account):
            raise InvalidInput(f"user {name!r} already exists (use `codepool users passwd`)")
        await self._record(EventKind.ACCOUNT, name, "added admin" if admin else "added")
        return account

    async def _existing(self, name: str) -> Account:
        account = await self.store.get_account(name)
        if account is None:
            raise InvalidInput(f"no user {name!r} (see `codepool users list`)")
        return account

    async def set_password(self, name: str, password: str) -> None:
        """A new password; every session of the account ends, on every router."""
        check_password_rule(password)
        account = await self._existing(name)
        digest = await _in_hash_pool(hash_password, password)
        if not await self.store.update_account(
            replace(account, password_hash=digest), end_sessions=True
        ):
            raise InvalidInput(f"no user {name!r} (removed meanwhile)")
        await self._record(EventKind.ACCOUNT, name, "password changed")

    async def set_admin(self, name: str, admin: bool) -> Account:
        """Grant or take back admin rights; taken back, they are gone at the next request."""
        account = replace(await self._existing(name), admin=admin)
        if not await self.store.update_account(account, end_sessions=False):
            raise InvalidInput(f"no user {name!r} (removed meanwhile)")
        await self._record(EventKind.ACCOUNT, name, "made admin" if admin else "admin taken back")
        return account

    async def remove(self, name: str) -> None:
        """Delete the account and end its sessions; the workspace is left alone."""
        if not await self.store.delete_account(name):
            raise InvalidInput(f"no user {name!r} (see `codepool users list`)")
        await self._record(EventKind.ACCOUNT, name, "removed")

    async def logout(self, name: str) -> int:
        """End every session of this person (an account or not: JWT people too)."""
        check_user(name)
        ended = await self.store.delete_user_sessions(name)
        await self._record(EventKind.LOGOUT, name, f"every session ended ({ended})")
        return ended

    async def verify(self, name: str, password: str) -> Account | None:
        """The account if the password is right, else None, at the same cost either way.
        A hash made with old parameters (or scrypt) is replaced by a fresh one."""
        if len(password) > MAX_PASSWORD:
            return None
        account = await self.store.get_account(name) if len(name) <= 64 else None
        stored = account.password_hash if account else _DUMMY_HASH
        right, stale = await _in_hash_pool(check_password, password, stored)
        if account is None or not right:
            return None
        if stale:
            digest = await _in_hash_pool(hash_password, password)
            await self.store.update_account(
                replace(account, password_hash=digest), end_sessions=False
            )
        return account

    async def ensure_admin(self) -> str | None:
        """With no account at all, create `admin` with a random password and return it (to
        be shown once); otherwise None. Two routers starting together make one admin."""
        password = secrets.token_urlsafe(12)
        digest = await _in_hash_pool(hash_password, password)
        admin = Account("admin", True, digest, self.clock())
        if not await self.store.add_account(admin, only_if_none=True):
            return None
        await self._record(EventKind.ACCOUNT, "admin", "added admin (first start)")
        return password

    async def import_file(self, path: Path) -> ImportResult:
        """Accounts from a users file of codepool 0.1 (`{"users": {name: {"hash": ...,
        "admin": bool}}}`), hashes as they are. A name already in the store is skipped."""
        users = read_users_file(path)
        imported, skipped = [], []
        for name, entry in sorted(users.items()):
            account = Account(name, bool(entry.get("admin")), str(entry["hash"]), self.clock())
            if await self.store.add_account(account):
                imported.append(name)
            else:
                skipped.append(name)
        now = self.clock()
        added = [Event(now, EventKind.ACCOUNT, n, self.actor, "imported") for n in imported]
        await events.record(self.store, added)
        return ImportResult(tuple(imported), tuple(skipped))


def write_users_file(path: Path, accounts: list[Account]) -> None:
    """The accounts with their hashes, in the format import_file reads: a backup (mode
    0600, written whole or not at all)."""
    data = {"users": {a.name: {"hash": a.password_hash, "admin": a.admin} for a in accounts}}
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
    os.replace(tmp, path)


def read_users_file(path: Path) -> dict[str, dict[str, Any]]:
    """The entries of a users file, checked: every name valid, every entry with a hash."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInput(f"users file {path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"users file {path}: unreadable: {exc}") from None
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict):
        raise ConfigError(f'users file {path}: no "users" table')
    for name, entry in users.items():
        try:
            check_user(name)
        except InvalidInput as exc:
            raise ConfigError(f"users file {path}: {exc}") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str):
            raise ConfigError(f'users file {path}: user {name!r} has no "hash"')
    return users
