"""Accounts in the store: argon2id hashes, the scrypt hashes of codepool 0.1 upgraded at
the next login, and the users file of 0.1 taken in on the first start."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
from pathlib import Path

import pytest

from codepool.cli.serve import first_admin
from codepool.core.accounts import MAX_PASSWORD, Accounts, check_password
from codepool.core.errors import InvalidInput
from codepool.core.models import Account
from codepool.core.settings import settings_from_mapping
from codepool.core.store import Store, create_store


def scrypt_hash(password: str) -> str:
    """A hash as codepool 0.1 wrote it (scrypt, N=2^14, r=8, p=1)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return f"scrypt$16384$8$1${b64(salt)}${b64(digest)}"


async def test_a_scrypt_hash_still_works_and_becomes_argon2id(store: Store) -> None:
    await store.add_account(Account("old", False, scrypt_hash("old-password"), 1))
    accounts = Accounts(store)
    assert await accounts.verify("old", "wrong-password") is None
    assert (await store.get_account("old") or Account("", False)).password_hash.startswith(
        "scrypt$"
    )
    assert await accounts.verify("old", "old-password") is not None
    upgraded = await store.get_account("old")
    assert upgraded is not None and upgraded.password_hash.startswith("$argon2id$")
    assert await accounts.verify("old", "old-password") is not None


async def test_passwords_are_checked_and_never_too_long(store: Store) -> None:
    accounts = Accounts(store)
    with pytest.raises(InvalidInput, match="at least 8"):
        await accounts.add("alice", "short")
    with pytest.raises(InvalidInput, match="too long"):
        await accounts.add("alice", "x" * (MAX_PASSWORD + 1))
    with pytest.raises(InvalidInput, match="invalid user name"):
        await accounts.add("Alice", "long-enough")
    await accounts.add("alice", "long-enough")
    assert await accounts.verify("alice", "x" * (MAX_PASSWORD + 1)) is None
    assert await accounts.verify("nobody", "long-enough") is None
    assert check_password("x", "not a hash at all") == (False, False)


def test_the_first_start_takes_in_the_users_file_of_0_1(tmp_path: Path) -> None:
    users = {
        "alice": {"hash": scrypt_hash("alice-password"), "admin": True},
        "bob": {"hash": scrypt_hash("bob-password"), "admin": False},
    }
    (tmp_path / "users.json").write_text(json.dumps({"users": users}))
    settings = settings_from_mapping({"local": {"state_dir": str(tmp_path)}})
    first_admin(settings)
    first_admin(settings)  # a second start changes nothing

    async def check() -> list[tuple[str, bool]]:
        store = create_store(settings.store_url)
        try:
            found = [(a.name, a.admin) for a in await Accounts(store).list()]
            assert await Accounts(store).verify("bob", "bob-password") is not None
            return found
        finally:
            await store.close()

    assert asyncio.run(check()) == [("alice", True), ("bob", False)]  # no extra admin


def test_the_first_admin_password_is_kept_in_a_private_file_until_changed(
    tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from codepool.cli.app import app

    settings = settings_from_mapping({"local": {"state_dir": str(tmp_path)}})
    first_admin(settings)
    secret = tmp_path / "initial-admin-password"
    assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_text().strip()) >= 12
    config = tmp_path / "codepool.toml"
    config.write_text(f'[local]\nstate_dir = "{tmp_path}"\n')
    result = CliRunner().invoke(
        app,
        ["--config", str(config), "users", "passwd", "admin", "--password-stdin"],
        input="a-new-password\n",
    )
    assert result.exit_code == 0, result.output
    assert not secret.exists()
