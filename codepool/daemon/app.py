"""`create_app(pool, settings)`: the router as an aiohttp application. Nothing is built at
import time; the background loops and the proxy's client start with the app and stop
with it (SIGTERM finishes the cycle under way and gives the leader lease back)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from ipaddress import IPv4Network, IPv6Network, ip_network
from urllib.parse import urlsplit

from aiohttp import web

from codepool.core.errors import ConfigError
from codepool.core.pool import CodePool
from codepool.core.settings import Settings
from codepool.daemon import routes
from codepool.daemon.auth import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    JwtVerifier,
    LoginLimiter,
    Sessions,
    Users,
    load_or_create_secret,
)
from codepool.daemon.context import ROUTER, Router
from codepool.daemon.dispatch import Dispatcher
from codepool.daemon.loops import Loops
from codepool.daemon.metrics import Metrics
from codepool.daemon.proxy import WorkspaceProxy


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def trusted_networks(entries: tuple[str, ...]) -> tuple[IPv4Network | IPv6Network, ...]:
    nets = []
    for entry in entries:
        try:
            nets.append(ip_network(entry, strict=False))
        except ValueError:
            raise ConfigError(
                f"config error: router.trusted_proxies: {entry!r} is not an address or CIDR"
            ) from None
    return tuple(nets)


def create_app(pool: CodePool, settings: Settings, *, run_loops: bool = True) -> web.Application:
    r = settings.router
    metrics = Metrics()
    key = load_or_create_secret(settings.secret_file)
    jwt = JwtVerifier(settings.jwt, key) if r.auth == "jwt" else None
    # Credentials of the router that must never reach a workspace.
    private_cookies = {SESSION_COOKIE, LOGIN_CSRF_COOKIE} | (
        {settings.jwt.cookie} if jwt else set()
    )
    router = Router(
        pool=pool,
        settings=settings,
        users=Users(settings.users_file),
        sessions=Sessions(key, r.session_lifetime_s),
        jwt=jwt,
        limiter=LoginLimiter(r.login_attempts_per_minute),
        dispatcher=Dispatcher(pool),
        proxy=WorkspaceProxy(
            pool, r.heartbeat_interval_s, frozenset(private_cookies), strip_authorization=bool(jwt)
        ),
        loops=Loops(pool, metrics, r.reap_interval_s),
        metrics=metrics,
        origin=origin_of(settings.public_url),
        secure_cookies=settings.public_url.startswith("https://"),
        trusted_proxies=trusted_networks(r.trusted_proxies),
    )
    app = web.Application(client_max_size=1024**2)
    app[ROUTER] = router
    routes.add_routes(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await router.proxy.start()
        if run_loops:
            router.loops.start()
        yield
        await router.loops.stop()
        await router.dispatcher.close()
        await router.proxy.close()

    app.cleanup_ctx.append(lifecycle)
    return app
