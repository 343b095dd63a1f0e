"""`codepool users`: the local accounts the router logs people in with."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from codepool.cli import render
from codepool.core.settings import load_settings
from codepool.daemon.auth import Users

users_app = typer.Typer(
    help='Manage local accounts (router.auth = "local"). Example: codepool users add alice',
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
StdinOpt = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from standard input.")
]


def _users(ctx: typer.Context, as_json: bool) -> Users:
    with render.exits_on_error(as_json):
        return Users(load_settings(ctx.obj).users_file)  # click hands ctx.obj down


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    value: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return value


@users_app.command("add")
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="User name (the workspace's owner).")],
    admin: Annotated[bool, typer.Option("--admin", help="May see the pool page.")] = False,
    password_stdin: StdinOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Add an account. Example: codepool users add alice"""
    users = _users(ctx, as_json)
    with render.exits_on_error(as_json):
        account = users.add(name, _password(password_stdin), admin)
    if as_json:
        render.print_json(account)
    else:
        render.out.print(f"added {account.name}" + (" (admin)" if account.admin else ""))


@users_app.command("passwd")
def passwd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Whose password to set.")],
    password_stdin: StdinOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Set an account's password. Example: codepool users passwd admin"""
    users = _users(ctx, as_json)
    with render.exits_on_error(as_json):
        users.set_password(name, _password(password_stdin))
    if as_json:
        render.print_json({"name": name, "password_set": True})
    else:
        render.out.print(f"password of {name} set")


@users_app.command("remove")
def remove(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Account to remove (the workspace stays).")],
    as_json: JsonOpt = False,
) -> None:
    """Remove an account; its workspace is left alone. Example: codepool users remove bob"""
    users = _users(ctx, as_json)
    with render.exits_on_error(as_json):
        users.remove(name)
    if as_json:
        render.print_json({"name": name, "removed": True})
    else:
        render.out.print(f"removed {name}")


@users_app.command("list")
def list_(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List accounts. Example: codepool users list"""
    users = _users(ctx, as_json)
    with render.exits_on_error(as_json):
        accounts = users.accounts()
    if as_json:
        render.print_json(accounts)
        return
    for a in accounts:
        render.out.print(a.name + ("  (admin)" if a.admin else ""))
    if not accounts:
        render.out.print("no accounts yet (`codepool serve` makes `admin` on first start)")
