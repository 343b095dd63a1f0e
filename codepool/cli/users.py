"""`codepool users`: the local accounts people log in with (router.auth = "local"). They
live in the store, so every router sees the same ones; a change here reaches every
router at once (a removed or re-passworded person's sessions end within two seconds)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from codepool.cli import render
from codepool.core.accounts import Accounts, write_users_file
from codepool.core.errors import InvalidInput
from codepool.core.events import cli_actor
from codepool.core.models import Account
from codepool.core.policy import check_user
from codepool.core.settings import Settings, load_settings
from codepool.core.store import create_store

T = TypeVar("T")

users_app = typer.Typer(
    help='Manage local accounts (router.auth = "local"). Example: codepool users add alice',
    no_args_is_help=True,
)

JsonOpt = render.JsonOpt
YesOpt = render.YesOpt
StdinOpt = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from standard input.")
]
NameArg = Annotated[str, typer.Argument(help="User name (the workspace's owner).")]


def with_accounts(settings: Settings, step: Callable[[Accounts], Awaitable[T]]) -> T:
    """Run one step on the accounts in the configured store."""

    async def go() -> T:
        store = create_store(settings.store_url, key_prefix=settings.store.key_prefix)
        try:
            return await step(Accounts(store, actor=cli_actor()))
        finally:
            await store.close()

    return asyncio.run(go())


def _run(ctx: typer.Context, as_json: bool, step: Callable[[Accounts], Awaitable[T]]) -> T:
    with render.exits_on_error(as_json):
        return with_accounts(load_settings(ctx.obj), step)  # click hands ctx.obj down


def _checked(name: str, as_json: bool) -> str:
    with render.exits_on_error(as_json):
        return check_user(name)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    value: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return value


def _shown(account: Account) -> dict[str, object]:
    """An account as the CLI shows it: never its hash."""
    return {"name": account.name, "admin": account.admin, "created_ms": account.created_ms}


@users_app.command("add")
def add(
    ctx: typer.Context,
    name: NameArg,
    admin: Annotated[bool, typer.Option("--admin", help="May see the pool page.")] = False,
    password_stdin: StdinOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Add an account. Example: codepool users add alice"""
    _checked(name, as_json)
    password = _password(password_stdin)
    account = _run(ctx, as_json, lambda accounts: accounts.add(name, password, admin))
    if as_json:
        render.print_json(_shown(account))
    else:
        render.out.print(f"added {account.name}" + (" (admin)" if account.admin else ""))


@users_app.command("passwd")
def passwd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Whose password to set.")],
    password_stdin: StdinOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Set an account's password; its open sessions end, on every router.

    Example: codepool users passwd admin"""
    _checked(name, as_json)
    password = _password(password_stdin)
    _run(ctx, as_json, lambda accounts: accounts.set_password(name, password))
    if name == "admin":  # the first start's password, no longer the password
        from codepool.cli.serve import initial_password_file

        with render.exits_on_error(as_json):
            initial_password_file(load_settings(ctx.obj)).unlink(missing_ok=True)
    if as_json:
        render.print_json({"name": name, "password_set": True, "sessions_ended": True})
    else:
        render.out.print(f"password of {name} set; their sessions have ended")


@users_app.command("admin")
def admin(
    ctx: typer.Context,
    name: NameArg,
    revoke: Annotated[
        bool, typer.Option("--revoke", help="Take the rights back instead of granting them.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Grant admin rights (the pool page, stop and extend for anyone), or take them back:
    at once, even in open sessions. Example: codepool users admin bob --revoke"""
    _checked(name, as_json)
    account = _run(ctx, as_json, lambda accounts: accounts.set_admin(name, not revoke))
    if as_json:
        render.print_json(_shown(account))
    else:
        render.out.print(f"{name} is {'no longer ' if revoke else ''}an admin")


@users_app.command("remove")
def remove(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Account to remove (the workspace stays).")],
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove an account and end its sessions; its workspace is left alone.

    Example: codepool users remove bob --yes"""
    _checked(name, as_json)
    render.confirm(f"Remove the account {name} and end its sessions?", yes, as_json)
    _run(ctx, as_json, lambda accounts: accounts.remove(name))
    if as_json:
        render.print_json({"name": name, "removed": True})
    else:
        render.out.print(f"removed {name}; their sessions have ended")


@users_app.command("logout")
def logout(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Whose sessions to end.")],
    as_json: JsonOpt = False,
) -> None:
    """End every session of a person, on every router (JWT people too: they come back
    with a new token). Example: codepool users logout bob"""
    _checked(name, as_json)
    ended = _run(ctx, as_json, lambda accounts: accounts.logout(name))
    if as_json:
        render.print_json({"name": name, "sessions_ended": ended})
    else:
        render.out.print(f"ended {ended} session{'s' if ended != 1 else ''} of {name}")


@users_app.command("list")
def list_(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List accounts. Example: codepool users list"""
    accounts = _run(ctx, as_json, lambda accounts: accounts.list())
    if as_json:
        render.print_json([_shown(a) for a in accounts])
        return
    for a in accounts:
        render.out.print(a.name + ("  (admin)" if a.admin else ""))
    if not accounts:
        render.out.print("no accounts yet (`codepool serve` makes `admin` on first start)")


@users_app.command("import")
def import_(
    ctx: typer.Context,
    path: Annotated[
        Path | None,
        typer.Argument(help="A users file of codepool 0.1 (default: router.users_file)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Copy accounts from a users file into the store, hashes as they are (each is
    upgraded at its person's next login). Names already in the store are kept as they
    are. Example: codepool users import /root/.local/share/codepool/users.json"""
    with render.exits_on_error(as_json):
        settings = load_settings(ctx.obj)
        source = path or settings.users_file
        result = with_accounts(settings, lambda accounts: accounts.import_file(source))
    if as_json:
        render.print_json({"file": str(source), **render.jsonable(result)})
        return
    render.out.print(f"imported {len(result.imported)} account(s) from {source}")
    if result.skipped:
        render.out.print("kept the store's own: " + ", ".join(result.skipped))


@users_app.command("export")
def export(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="File to write (mode 0600); it must not exist.")],
    as_json: JsonOpt = False,
) -> None:
    """Write every account, with its password hash, to a file `codepool users import`
    reads: a backup for a store that may lose them (a Redis without persistence).
    Example: codepool users export /root/codepool-accounts.json"""
    with render.exits_on_error(as_json):
        if path.exists():
            raise InvalidInput(f"{path} exists: choose a new file (nothing is overwritten)")
        accounts = with_accounts(load_settings(ctx.obj), lambda a: a.list())
        try:
            write_users_file(path, accounts)
        except OSError as exc:
            raise InvalidInput(f"cannot write {path}: {exc.strerror or exc}") from None
    if as_json:
        render.print_json({"file": str(path), "accounts": len(accounts)})
    else:
        render.out.print(f"wrote {len(accounts)} account(s) to {path}")
