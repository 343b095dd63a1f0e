"""`codepool tokens ...`: bearer tokens for the router's JSON API (docs/api.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, TypeVar

import typer

from codepool.cli import render
from codepool.core import policy
from codepool.core.events import cli_actor
from codepool.core.models import TokenRecord
from codepool.core.settings import load_settings
from codepool.core.store import create_store
from codepool.core.tokens import SCOPES, Tokens

T = TypeVar("T")

tokens_app = typer.Typer(
    help=(
        "Bearer tokens for the router's JSON API (/api/v1/).\n\n"
        "Examples:\n\n"
        "  codepool tokens create slack-bot --scope read --scope workspaces:write\n\n"
        "  codepool tokens create alice-ci --scope self --user alice --expires 30d\n\n"
        "  codepool tokens list\n\n"
        "  codepool tokens revoke 1a2b3c4d"
    ),
    no_args_is_help=True,
)
JsonOpt = render.JsonOpt


def _run(ctx: typer.Context, as_json: bool, step: Callable[[Tokens], Awaitable[T]]) -> T:
    with render.exits_on_error(as_json):
        settings = load_settings(ctx.obj)

        async def go() -> T:
            store = create_store(settings.store_url, key_prefix=settings.store.key_prefix)
            try:
                return await step(Tokens(store))
            finally:
                await store.close()

        return asyncio.run(go())


def _shown(t: TokenRecord) -> dict[str, object]:
    """A token as the CLI shows it: never its hash."""
    return {
        "id": t.id,
        "name": t.name,
        "scopes": list(t.scopes),
        "user": t.user,
        "created_ms": t.created_ms,
        "expires_ms": t.expires_ms,
        "created_by": t.created_by,
    }


def _date(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M") if ms else "never"


@tokens_app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="What the token is for (shown in the event log).")],
    scopes: Annotated[
        list[str],
        typer.Option("--scope", metavar="SCOPE", help="May be given again: " + ", ".join(SCOPES)),
    ],
    user: Annotated[str, typer.Option("--user", help="The person a 'self' token acts for.")] = "",
    expires: Annotated[
        str, typer.Option("--expires", metavar="DURATION", help="Lifetime (90d); 0: never.")
    ] = "90d",
    as_json: JsonOpt = False,
) -> None:
    """Make a token; it is shown once (only its hash is kept).

    Example: codepool tokens create offboarding --scope users:write --expires 7d"""
    with render.exits_on_error(as_json):
        ttl_s = policy.parse_duration(expires)
    token, record = _run(
        ctx, as_json, lambda tokens: tokens.create(name, scopes, cli_actor(), user, ttl_s)
    )
    if as_json:
        render.print_json({**_shown(record), "token": token})
        return
    render.out.print(token)
    render.err.print(
        f"token {record.id} ({', '.join(record.scopes)}), expires {_date(record.expires_ms)}: "
        "it is shown only now",
        style="dim",
    )


@tokens_app.command("list")
def list_(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every token: id, name, scopes, whom a 'self' token acts for, expiry."""
    found = _run(ctx, as_json, lambda tokens: tokens.list())
    if as_json:
        render.print_json({"tokens": [_shown(t) for t in found]})
        return
    table = render.make_table(None, "id", "name", "scopes", "user", "expires", "made by")
    for t in found:
        table.add_row(t.id, t.name, " ".join(t.scopes), t.user, _date(t.expires_ms), t.created_by)
    render.show(table)


@tokens_app.command("revoke")
def revoke(
    ctx: typer.Context,
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The token's id (tokens list).")],
    as_json: JsonOpt = False,
) -> None:
    """Revoke a token: refused from the next request on. Example: codepool tokens revoke 1a2b3c4d"""
    _run(ctx, as_json, lambda tokens: tokens.revoke(token_id))
    if as_json:
        render.print_json({"revoked": token_id})
    else:
        render.out.print(f"revoked {token_id}")
