"""What the router notes about every request it answered: the request metrics (count and
time by route template), and, when asked for (`router.access_log`, `serve
--access-log`), an access log line with method, route template (never the path: it may
hold a person's file names or a one-time pass), status, duration, user and client, as
fields of the log line."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from codepool.core.logs import fields
from codepool.daemon.context import Router
from codepool.daemon.http import USER, client_address
from codepool.daemon.workspace import PING

PINGS = frozenset({"/ping", PING})  # a tab's heartbeat, on the main or its own origin
# Methods counted by name; anything else a client invents is "other" (a label per
# invented method would let anyone grow the metrics without bound).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def access_log(router: Router) -> type[AbstractAccessLogger]:
    """aiohttp's access logger for this router's app (bound to it: a request refused before
    routing, a malformed one, has no app to ask)."""

    class AccessLog(AbstractAccessLogger):
        @property
        def enabled(self) -> bool:
            return True  # the metrics always; the log line only when it is on

        def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
            counted = request.path not in PINGS  # the hot path: codepool_pings_total has them
            if not (counted or router.settings.router.access_log):
                return
            # None when aiohttp refused the request before routing it (a malformed one).
            match_info = getattr(request, "_match_info", None)
            resource = match_info.route.resource if match_info is not None else None
            route = resource.canonical if resource is not None else "(none)"
            note(
                router,
                request.method,
                route,
                response.status,
                time,
                request.get(USER, ""),
                lambda: client_address(request, router),
                counted=counted,
            )

    return AccessLog


LOG = logging.getLogger("codepool.access")


def note(
    router: Router,
    method: str,
    route: str,
    status: int,
    seconds: float,
    user: str,
    client: Callable[[], str],
    counted: bool = True,
) -> None:
    """Count a request the router answered, and log it when the access log is on (client:
    asked only then). aiohttp's answers and the lane's (lane.py) both come here."""
    method = method if method in METHODS else "other"
    if counted:
        router.metrics.answered(route, method, status, seconds)
    if router.settings.router.access_log:
        LOG.info(
            "request",
            **fields(
                method=method,
                route=route,
                status=status,
                duration_ms=round(seconds * 1000, 2),
                user=user,
                client=client(),
            ),
        )
