"""The router's shared state, handed to every request handler through the app."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

from aiohttp import web

from codepool.core import events
from codepool.core.accounts import Accounts
from codepool.core.models import Event, EventKind
from codepool.core.origins import Origins
from codepool.core.pool import CodePool
from codepool.core.report import Report
from codepool.core.settings import Settings
from codepool.daemon.auth import JwtVerifier, LoginLimiter
from codepool.daemon.dispatch import Dispatcher
from codepool.daemon.loops import Loops
from codepool.daemon.metrics import Metrics
from codepool.daemon.oidc import OidcClient
from codepool.daemon.proxy import WorkspaceProxy
from codepool.daemon.sessions import CookieNames, Sessions


@dataclass
class Router:
    """Everything a request handler needs, built once per app."""

    pool: CodePool
    settings: Settings
    accounts: Accounts
    sessions: Sessions
    jwt: JwtVerifier | None  # set when router.auth = "jwt"
    oidc: OidcClient | None  # set when router.auth = "oidc"
    limiter: LoginLimiter
    dispatcher: Dispatcher
    proxy: WorkspaceProxy
    loops: Loops
    metrics: Metrics
    origins: Origins  # the main origin, and each person's workspace origin
    cookies: CookieNames
    secure_cookies: bool
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...]  # whose X-Forwarded-For counts
    backend_checked_until: float = 0.0  # monotonic time the last good backend check holds
    usage: tuple[float, Report] | None = None  # the admin page's report, and when it was made

    async def record(self, kind: EventKind, user: str, actor: str, detail: str) -> None:
        """Add an event to the log (a failure is logged, not raised)."""
        event = Event(self.pool.clock(), kind, user, actor, detail)
        await events.record(self.pool.store, [event])

    @property
    def page_policy(self) -> str:
        """The Content-Security-Policy of the router's own pages (on workspace origins too:
        their style sheet is the main origin's)."""
        o = self.origins
        # A form's redirects must match form-action too: the login leads on to a workspace.
        workspaces = f" {o.scheme}://*.{o.domain}{o.port_suffix}" if o.per_user else ""
        return (
            "default-src 'none'; script-src 'self'; "
            f"style-src 'self' {o.main}; img-src 'self' data: {o.main}; connect-src 'self'; "
            f"form-action 'self'{workspaces}; frame-ancestors 'none'; base-uri 'none'"
        )


ROUTER = web.AppKey("router", Router)
