"""`create_app(pool, settings)`: the router as an aiohttp application. Nothing is built at
import time; the background loops and the proxy's client start with the app and stop
with it (SIGTERM finishes the cycle under way and gives the leader lease back)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from codepool.core.accounts import Accounts
from codepool.core.errors import ConfigError
from codepool.core.origins import Origins
from codepool.core.pool import CodePool
from codepool.core.settings import Settings
from codepool.daemon import routes
from codepool.daemon.auth import JwtVerifier, LoginLimiter, load_or_create_secret
from codepool.daemon.context import ROUTER, Router
from codepool.daemon.dispatch import Dispatcher
from codepool.daemon.loops import Loops
from codepool.daemon.metrics import Metrics
from codepool.daemon.oidc import CALLBACK as OIDC_CALLBACK
from codepool.daemon.oidc import OidcClient
from codepool.daemon.proxy import Heartbeat, WorkspaceProxy
from codepool.daemon.sessions import CookieNames, Sessions
from codepool.daemon.workspace import HOLD, PING, RESUME, SCRIPT, STATUS


class QuietBadRequests(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logs every malformed request (a control byte in a header, a bad
    request line) at ERROR with a traceback: anyone sending junk would fill the log with
    them. Those are the client's mistakes: one line at INFO. Anything else keeps its
    traceback."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self.logger.info("bad request (%s): %s", ", ".join(map(str, args)), exc_info.message)
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kw)


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


def create_app(
    pool: CodePool, settings: Settings, *, run_loops: bool = True, metrics: Metrics | None = None
) -> web.Application:
    """The router's app; metrics: the ones an app before it counted in (a reload carries
    them on, so no counter starts again from 0)."""
    r = settings.router
    metrics = metrics or Metrics()
    origins = Origins.from_settings(settings)
    secure = settings.public_url.startswith("https://")
    cookies = CookieNames.for_scheme(secure)
    accounts = Accounts(pool.store)
    jwt = None
    oidc = None
    if r.auth in ("jwt", "oidc"):  # people are the identity provider's, not accounts here
        key = load_or_create_secret(settings.secret_file)
        if r.auth == "jwt":
            jwt = JwtVerifier(settings.jwt, key)
            admins = frozenset(settings.jwt.admin_users)
        else:
            oidc = OidcClient(settings.oidc, f"{origins.main}{OIDC_CALLBACK}", key)
            admins = frozenset(settings.oidc.admin_users)

        async def admin_of(user: str) -> bool | None:
            return user in admins

    else:

        async def admin_of(user: str) -> bool | None:
            account = await accounts.get(user)
            return None if account is None else account.admin

    # Credentials of the router that must never reach a workspace.
    private_cookies = cookies.all() | ({settings.jwt.cookie} if jwt else set())
    heartbeat = (
        Heartbeat(
            script=SCRIPT,
            ping=PING,
            status=STATUS,
            hold=HOLD,
            resume=RESUME,
            login="",
            home=origins.main + "/",
            interval_s=r.heartbeat_interval_s,
            max_age_s=settings.pool.max_age_s,
        )
        if origins.per_user
        else Heartbeat(
            script="/assets/heartbeat.js?v=4",
            ping="/ping",
            status="/api/me",
            hold="/hold",
            resume="/dispatch",
            login="/login",
            home="/",
            interval_s=r.heartbeat_interval_s,
            max_age_s=settings.pool.max_age_s,
        )
    )
    router = Router(
        pool=pool,
        settings=settings,
        accounts=accounts,
        sessions=Sessions(pool.store, admin_of, r.session_lifetime_s),
        jwt=jwt,
        oidc=oidc,
        limiter=LoginLimiter(
            pool.store, r.login_attempts_per_minute, r.login_attempts_per_client_per_minute
        ),
        dispatcher=Dispatcher(pool),
        proxy=WorkspaceProxy(
            pool,
            heartbeat,
            private_cookies,
            path_mode=not origins.per_user,
            strip_authorization=bool(jwt),
            max_html_bytes=r.max_html_bytes,
        ),
        loops=Loops(pool, metrics, r.reap_interval_s),
        metrics=metrics,
        origins=origins,
        cookies=cookies,
        secure_cookies=secure,
        trusted_proxies=trusted_networks(r.trusted_proxies),
    )
    app = web.Application(client_max_size=1024**2, handler_args={"logger": QuietBadRequests()})
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
        if router.oidc is not None:
            await router.oidc.close()

    async def close_websockets(_: web.Application) -> None:
        await router.proxy.close_websockets()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(close_websockets)  # before requests in flight are waited for
    return app
