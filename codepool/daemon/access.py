"""The access log (`router.access_log`, `serve --access-log`): one line per request with
its method, route template (never the path: it may hold a person's file names or a
one-time token), status, duration, user and client, as fields of the log line."""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from codepool.core.logs import fields
from codepool.daemon.http import USER, client_address


class AccessLog(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        route = ""
        if isinstance(request, web.Request):
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else ""
        self.logger.info(
            "request",
            **fields(
                method=request.method,
                route=route or "(none)",
                status=response.status,
                duration_ms=round(time * 1000, 2),
                user=request.get(USER, ""),
                client=client_address(request) if isinstance(request, web.Request) else "",
            ),
        )
