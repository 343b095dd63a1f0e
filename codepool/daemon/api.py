"""The JSON API under /api/v1/, for automation (a chat bot, a CI job, an offboarding
script): bearer tokens with scopes (codepool/core/tokens.py), no cookies, so no page of
any site can use it through a person's browser. Every route is in ROUTES, from which
both the router's table and the OpenAPI document (/api/v1/openapi.json) are made.

Errors are JSON: {"error": <kind>, "message": ...}; kind is stable: unauthenticated
(401), forbidden (403), not-found (404), invalid-input (400), no-workspace and busy
(409), starts-full (429, with Retry-After), pool-full (503, with Retry-After), ..."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from codepool import __version__
from codepool.cli.render import event_json, jsonable, report_json, status_json
from codepool.core import events, policy
from codepool.core.accounts import Accounts
from codepool.core.errors import InvalidInput
from codepool.core.models import WHY_RELEASED, TokenRecord
from codepool.core.tokens import Tokens, allows
from codepool.daemon.context import ROUTER, Router
from codepool.daemon.http import USER, json_error

PREFIX = "/api/v1"
MAX_BODY = 4096
MAX_EVENTS = 10_000

Handler = Callable[[web.Request, Router, TokenRecord], Awaitable[Any]]


class ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # under PREFIX; {user} is a person's name
    scope: str  # what the token needs ("self" tokens may for their own {user})
    summary: str
    handler: Handler
    body: dict[str, Any] | None = None  # JSON schema of the request body, if any
    query: tuple[tuple[str, str], ...] = ()  # (name, description)


async def _token(request: web.Request, router: Router, route: Route) -> TokenRecord:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        raise ApiError(
            401, "unauthenticated", "send Authorization: Bearer <token> (codepool tokens create)"
        )
    record = await Tokens(router.pool.store, router.pool.clock).verify(header[7:].strip())
    if record is None:
        raise ApiError(401, "unauthenticated", "the token is unknown, expired or revoked")
    request[USER] = _actor(record)
    user = request.match_info.get("user")
    if not allows(record, route.scope, user):
        raise ApiError(403, "forbidden", f"this token may not do this (it needs {route.scope})")
    return record


async def _body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object ({} when there is none)."""
    raw = await request.content.read(MAX_BODY + 1)
    if not raw:
        return {}
    if len(raw) > MAX_BODY:
        raise ApiError(413, "too-large", f"a request body is at most {MAX_BODY} bytes")
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported-media-type", "send Content-Type: application/json")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid-input", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid-input", "the body must be a JSON object")
    return body


def _user(request: web.Request) -> str:
    return policy.check_user(request.match_info["user"])


def _actor(token: TokenRecord) -> str:
    return f"token:{token.name}"


def _period(request: web.Request, default: str) -> tuple[int, int]:
    since, until = request.query.get("since", default), request.query.get("until", "")
    return policy.parse_period(since, until, request.app[ROUTER].pool.clock())


# -- handlers ----------------------------------------------------------------------------------


async def get_status(request: web.Request, router: Router, token: TokenRecord) -> Any:
    return status_json(await router.pool.status())


async def list_workspaces(request: web.Request, router: Router, token: TokenRecord) -> Any:
    return {"workspaces": jsonable((await router.pool.status()).workspaces)}


async def get_workspace(request: web.Request, router: Router, token: TokenRecord) -> Any:
    ws = await router.pool.store.get_workspace(_user(request))
    if ws is None:
        raise ApiError(404, "not-found", f"{request.match_info['user']} has no workspace")
    return jsonable(ws)


async def assign(request: web.Request, router: Router, token: TokenRecord) -> Any:
    user = _user(request)
    await _body(request)
    result = await router.pool.assign(user, actor=_actor(token), queue=False)
    return {"how": result.how, "workspace": jsonable(result.workspace),
            "url": router.origins.workspace_url(user, "/")}  # fmt: skip


async def release(request: web.Request, router: Router, token: TokenRecord) -> Any:
    user = _user(request)
    terminate = (await _body(request)).get("terminate", False)
    if not isinstance(terminate, bool):
        raise InvalidInput('"terminate" is true or false')
    ws = await router.pool.release(user, terminate, _actor(token), WHY_RELEASED)
    router.proxy.forget(user)
    return {"released": jsonable(ws), "terminated": terminate}


async def hold(request: web.Request, router: Router, token: TokenRecord) -> Any:
    user = _user(request)
    seconds = (await _body(request)).get("for_s")
    if not isinstance(seconds, int) or isinstance(seconds, bool):
        raise InvalidInput('send {"for_s": <whole seconds>} (0 ends the hold)')
    return jsonable(await router.pool.extend(user, seconds, _actor(token)))


async def reap_dry_run(request: web.Request, router: Router, token: TokenRecord) -> Any:
    return {"decisions": jsonable(await router.pool.reap(dry_run=True))}


async def list_events(request: web.Request, router: Router, token: TokenRecord) -> Any:
    since, until = _period(request, "1d")
    user = request.query.get("user")
    if user is not None:
        policy.check_user(user)
    wanted = events.parse_kinds(request.query.get("kind", ""))
    found = []
    async for e in events.read(router.pool.store, since, until, user):
        if not wanted or e.kind in wanted:
            found.append(event_json(e))
            if len(found) >= MAX_EVENTS:
                break
    return {"events": found, "truncated": len(found) >= MAX_EVENTS}


async def get_report(request: web.Request, router: Router, token: TokenRecord) -> Any:
    since, until = _period(request, "30d")
    return report_json(await router.pool.report(since, until))


async def list_users(request: web.Request, router: Router, token: TokenRecord) -> Any:
    accounts = await router.accounts.list()
    return {"users": [{"name": a.name, "admin": a.admin, "created_ms": a.created_ms}
                      for a in accounts]}  # fmt: skip


async def add_user(request: web.Request, router: Router, token: TokenRecord) -> Any:
    body = await _body(request)
    name, password, admin = body.get("name"), body.get("password"), body.get("admin", False)
    if not isinstance(name, str) or not isinstance(password, str) or not isinstance(admin, bool):
        raise InvalidInput('send {"name": ..., "password": ..., "admin": false}')
    if admin:
        _needs_admin(token, "add an admin")
    account = await Accounts(router.pool.store, router.pool.clock, _actor(token)).add(
        name, password, admin
    )
    return {"name": account.name, "admin": account.admin, "created_ms": account.created_ms}


def _needs_admin(token: TokenRecord, what: str) -> None:
    """Making or removing an admin takes the admin scope beside users:write: an admin
    may enter people's workspaces, so a token for managing accounts must not mint one."""
    if "admin" not in token.scopes:
        raise ApiError(403, "forbidden", f"this token may not {what} (it needs admin)")


async def remove_user(request: web.Request, router: Router, token: TokenRecord) -> Any:
    name = _user(request)
    account = await router.accounts.get(name)
    if account is not None and account.admin:
        _needs_admin(token, "remove an admin")
    await Accounts(router.pool.store, router.pool.clock, _actor(token)).remove(name)
    return {"removed": name}


WORKSPACE = "/workspaces/{user}"
ROUTES = (
    Route("GET", "/status", "read", "The pool: capacity, counts, every workspace, warnings",
          get_status),
    Route("GET", "/workspaces", "read", "Every workspace", list_workspaces),
    Route("GET", WORKSPACE, "read", "One person's workspace", get_workspace),
    Route("POST", WORKSPACE + "/assign", "workspaces:write",
          "Give the person their workspace (429 while the start limit is reached)", assign),
    Route("POST", WORKSPACE + "/release", "workspaces:write",
          "Stop the person's workspace now (or delete it)", release,
          body={"type": "object", "properties": {"terminate": {"type": "boolean"}}}),
    Route("POST", WORKSPACE + "/hold", "workspaces:write",
          "Keep the running workspace from the idle reaper for a time from now", hold,
          body={"type": "object", "required": ["for_s"],
                "properties": {"for_s": {"type": "integer", "minimum": 0}}}),
    Route("GET", "/reap", "read", "What the reaper would do now, and why (nothing is done)",
          reap_dry_run),
    Route("GET", "/events", "read", "The event log", list_events,
          query=(("since", "a duration ago (7d) or an ISO date or time; default 1d"),
                 ("until", "as since; default now"), ("user", "only this person's"),
                 ("kind", "only these kinds, comma-separated"))),
    Route("GET", "/report", "read", "Usage and savings from the event log", get_report,
          query=(("since", "a duration ago or an ISO date; default 30d"),
                 ("until", "as since; default now"))),
    Route("GET", "/users", "users:write", "The accounts", list_users),
    Route("POST", "/users", "users:write",
          "Add an account (an admin: with the admin scope too)", add_user,
          body={"type": "object", "required": ["name", "password"],
                "properties": {"name": {"type": "string"}, "password": {"type": "string"},
                               "admin": {"type": "boolean"}}}),
    Route("DELETE", "/users/{user}", "users:write",
          "Remove an account and end its sessions (its workspace stays; an admin: with the "
          "admin scope too)", remove_user),
)  # fmt: skip


def _serve(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        router = request.app[ROUTER]
        try:
            token = await _token(request, router, route)
            result = await route.handler(request, router, token)
        except ApiError as exc:
            return json_error(exc.status, exc.kind, str(exc))
        return web.json_response(result, headers={"Cache-Control": "no-store"})

    return handle


def openapi() -> dict[str, Any]:
    """The API's shape, from ROUTES."""
    error = {"$ref": "#/components/schemas/Error"}
    paths: dict[str, dict[str, Any]] = {}
    for r in ROUTES:
        op: dict[str, Any] = {
            "summary": r.summary,
            "security": [{"bearer": []}],
            "x-scope": r.scope,
            "responses": {
                "200": {"description": "done", "content": {"application/json": {}}},
                **{
                    code: {"description": why, "content": {"application/json": {"schema": error}}}
                    for code, why in (
                        ("400", "invalid input"),
                        ("401", "no token, or an unknown, expired or revoked one"),
                        ("403", f"the token lacks the scope {r.scope}"),
                    )
                },
            },
        }
        params = [{"name": "user", "in": "path", "required": True, "schema": {"type": "string"}}]
        parameters = params if "{user}" in r.path else []
        parameters += [
            {"name": n, "in": "query", "description": d, "schema": {"type": "string"}}
            for n, d in r.query
        ]
        if parameters:
            op["parameters"] = parameters
        if r.body is not None:
            op["requestBody"] = {"content": {"application/json": {"schema": r.body}}}
        paths.setdefault(PREFIX + r.path, {})[r.method.lower()] = op
    paths[PREFIX + "/openapi.json"] = {
        "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "codepool API", "version": __version__},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
                }
            },
        },
    }


async def openapi_json(request: web.Request) -> web.StreamResponse:
    return web.json_response(openapi())


def api_routes() -> list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]]:
    """(method, path, handler) for the router's table."""
    table = [(r.method, PREFIX + r.path, _serve(r)) for r in ROUTES]
    return [*table, ("GET", PREFIX + "/openapi.json", openapi_json)]
