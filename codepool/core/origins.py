"""Where things are served: the router's own pages on the main origin (router.public_url),
and each person's workspace on an origin of its own, `<label>.<workspace_domain>`, with
the main origin's scheme and port (router.origin_mode = "host", the default).

A workspace serves whatever its person runs, so it must not share an origin with the
router (it could read the admin page's CSRF token, or register a service worker over the
router's pages) nor with another person's workspace. Browsers keep cookies, storage and
service workers apart by origin; the router makes sure the rest does not cross
(routes in workspace.py).

A DNS label holds only a-z, 0-9 and '-', 63 at most; user names may also hold '.', '@'
and '_'. A name that is a plain label is its own label ("alice"); any other name gets
"u--" and 26 base32 letters of its SHA-256 ("jane.doe@example.com" -> "u--…"). A plain
label never holds "--", so the two kinds never meet.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from ipaddress import ip_address
from urllib.parse import urlsplit

from codepool.core.errors import ConfigError
from codepool.core.settings import Settings

_PLAIN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_HASHED = re.compile(r"u--[a-z2-7]{26}")
_PART = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_DOMAIN = re.compile(rf"(?=.{{1,190}}$){_PART}(?:\.{_PART})*")
DEFAULT_PORTS = {"http": 80, "https": 443}
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")


def label_of(user: str) -> str:
    """The DNS label of a user's workspace host (see the module's docstring)."""
    if _PLAIN.fullmatch(user) and "--" not in user:
        return user
    digest = base64.b32encode(hashlib.sha256(user.encode()).digest()).decode()
    return "u--" + digest[:26].lower()


def user_of_label(label: str) -> str | None:
    """The user a plain label names; None for a hashed label (it names nobody by itself)."""
    return label if _PLAIN.fullmatch(label) and "--" not in label else None


def is_label(label: str) -> bool:
    return user_of_label(label) is not None or _HASHED.fullmatch(label) is not None


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def workspace_domain(settings: Settings) -> str:
    """router.workspace_domain, or `localhost` when the router is only on this machine
    (browsers resolve every *.localhost name to the loopback address); a ConfigError if
    per-user origins are on and there is neither."""
    r = settings.router
    if r.workspace_domain:
        domain = r.workspace_domain.lower().strip(".")
        if not _DOMAIN.fullmatch(domain):
            raise ConfigError(
                f"config error: router.workspace_domain = {r.workspace_domain!r}: "
                "a DNS name such as ws.example.com (letters, digits, '-' and dots)"
            )
        return domain
    host = (urlsplit(settings.public_url).hostname or "").lower()
    if _is_loopback(host):
        return "localhost"
    raise ConfigError(
        f"config error: {settings.source}: router.origin_mode = 'host' (each person's "
        "workspace on its own origin) needs router.workspace_domain, a wildcard DNS name "
        f"such as ws.example.com whose *.ws.example.com leads to this router (public URL "
        f"{settings.public_url}); or set router.origin_mode = 'path' (docs/security.md "
        "says what that gives up)"
    )


@dataclass(frozen=True, slots=True)
class Origins:
    """The main origin and the workspace origins, and which one a Host header names."""

    mode: str  # "host" or "path"
    scheme: str
    main_host: str  # host[:port] as browsers send it in Host (default port left out)
    domain: str  # workspace domain ("" in path mode)
    port_suffix: str  # ":8000", or "" for the scheme's default port

    @classmethod
    def from_settings(cls, settings: Settings) -> Origins:
        parts = urlsplit(settings.public_url)
        scheme = parts.scheme.lower()
        port = parts.port
        suffix = f":{port}" if port and port != DEFAULT_PORTS.get(scheme) else ""
        host = (parts.hostname or "").lower()
        if ":" in host:  # an IPv6 address
            host = f"[{host}]"
        mode = settings.router.origin_mode
        domain = workspace_domain(settings) if mode == "host" else ""
        if domain and (host == domain or host.endswith("." + domain)):
            raise ConfigError(
                f"config error: router.workspace_domain = {domain!r}: the router's own host "
                f"{host} would be a workspace host; use a domain of its own for workspaces, "
                f"such as ws.{domain}"
            )
        return cls(mode, scheme, host + suffix, domain, suffix)

    @property
    def main(self) -> str:
        return f"{self.scheme}://{self.main_host}"

    @property
    def per_user(self) -> bool:
        return self.mode == "host"

    def origin_of(self, label: str) -> str:
        """The origin of a workspace host, as browsers write it in Origin headers."""
        return f"{self.scheme}://{label}.{self.domain}{self.port_suffix}"

    def workspace(self, user: str) -> str:
        """The origin of user's workspace (in path mode, the main origin)."""
        if not self.per_user:
            return self.main
        return self.origin_of(label_of(user))

    def workspace_url(self, user: str, path: str = "/") -> str:
        if not self.per_user:
            return f"/w/{user}{path}"
        return self.workspace(user) + path

    def label_in(self, host_header: str) -> str | None:
        """The label if the Host header names a workspace host, else None."""
        if not self.per_user:
            return None
        host = host_header.lower()
        if host.endswith(":" + str(DEFAULT_PORTS.get(self.scheme))):
            host = host.rsplit(":", 1)[0]
        tail = f".{self.domain}{self.port_suffix}"
        if not host.endswith(tail):
            return None
        label = host[: -len(tail)]
        return label if is_label(label) else None

    def is_main(self, host_header: str) -> bool:
        host = host_header.lower()
        if host.endswith(":" + str(DEFAULT_PORTS.get(self.scheme))):
            host = host.rsplit(":", 1)[0]
        return host == self.main_host
