"""The router's shared state, handed to every request handler through the app."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

from aiohttp import web

from codepool.core.pool import CodePool
from codepool.core.settings import Settings
from codepool.daemon.auth import JwtVerifier, LoginLimiter, Sessions, Users
from codepool.daemon.dispatch import Dispatcher
from codepool.daemon.loops import Loops
from codepool.daemon.metrics import Metrics
from codepool.daemon.proxy import WorkspaceProxy


@dataclass
class Router:
    """Everything a request handler needs, built once per app."""

    pool: CodePool
    settings: Settings
    users: Users
    sessions: Sessions
    jwt: JwtVerifier | None  # set when router.auth = "jwt"
    limiter: LoginLimiter
    dispatcher: Dispatcher
    proxy: WorkspaceProxy
    loops: Loops
    metrics: Metrics
    origin: str  # scheme://host[:port] of the public URL: what Origin headers must say
    secure_cookies: bool
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...]  # whose X-Forwarded-For counts


ROUTER = web.AppKey("router", Router)
