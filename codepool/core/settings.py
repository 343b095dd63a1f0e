"""Settings: frozen dataclasses, validated once, from TOML plus CODEPOOL_* overrides.

Every setting is declared once, here, with its default, unit and allowed values;
`config/example.toml` and `docs/configuration.md` are checked against this by tests.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from codepool.core.errors import ConfigError

SYSTEM_CONFIG = Path("/etc/codepool/config.toml")
ENV_PREFIX = "CODEPOOL_"
EMBEDDED = "embedded default"


def setting(
    default: Any,
    doc: str,
    *,
    choices: tuple[str, ...] = (),
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    """Declare a setting: its default, one line of help, and what values are allowed."""
    meta = {"doc": doc, "choices": choices, "minimum": minimum, "maximum": maximum}
    return field(default=default, metadata=meta)


DEFAULT_COMMAND = (
    "code-server",
    "--socket",
    "{socket}",
    "--auth",
    "none",
    "--disable-telemetry",
    "--disable-update-check",
    "--disable-workspace-trust",
    "--user-data-dir",
    "{data_dir}",
    "{home}",
)


DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class ScheduleEntry:
    """A time of the week when the pool keeps another number of warm spares."""

    days: tuple[str, ...]  # of DAYS
    start: str  # "HH:MM", the entry's `from`
    end: str  # "HH:MM" (up to "24:00"), the entry's `to`; after start
    timezone: str  # an IANA name ("Europe/Berlin", "UTC")
    warm_spares: int

    def describe(self) -> str:
        days = ",".join(self.days)
        return f"{days} {self.start}-{self.end} {self.timezone}: {self.warm_spares} warm spares"


SCHEDULE_KEYS = {"days", "from", "to", "timezone", "warm_spares"}


def _schedule_entry(raw: Any, where: str) -> ScheduleEntry:
    """One [[pool.schedule]] table, checked: every key there, each as allowed."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config error: {where}: each entry must be a table [[pool.schedule]]")
    if set(raw) != SCHEDULE_KEYS:
        missing, extra = SCHEDULE_KEYS - set(raw), set(raw) - SCHEDULE_KEYS
        what = f"missing {', '.join(sorted(missing))}" if missing else ""
        what += ("; " if what else "") + (f"unknown {', '.join(sorted(extra))}" if extra else "")
        raise ConfigError(
            f"config error: {where}: {what}; an entry has days, from, to, timezone, warm_spares"
        )
    days = raw["days"]
    if not isinstance(days, list) or not days or not all(d in DAYS for d in days):
        raise ConfigError(
            f"config error: {where}: days = {days!r}: a non-empty list of {', '.join(DAYS)}"
        )
    start, end = (_clock_time(raw[k], f"{where}: {k}") for k in ("from", "to"))
    if start >= end:
        raise ConfigError(
            f"config error: {where}: from {raw['from']!r} must be before to {raw['to']!r} "
            "(for a night, use two entries: up to 24:00, and from 00:00)"
        )
    zone = raw["timezone"]
    try:
        if not isinstance(zone, str):
            raise ValueError(zone)
        ZoneInfo(zone)
    except (ValueError, ZoneInfoNotFoundError):
        raise ConfigError(
            f"config error: {where}: timezone = {zone!r}: an IANA time zone such as "
            "'Europe/Berlin' or 'UTC'"
        ) from None
    spares = raw["warm_spares"]
    if isinstance(spares, bool) or not isinstance(spares, int) or not 0 <= spares <= 1000:
        raise ConfigError(f"config error: {where}: warm_spares = {spares!r}: from 0 to 1000")
    return ScheduleEntry(tuple(days), raw["from"], raw["to"], zone, spares)


def _clock_time(value: Any, where: str) -> int:
    """'HH:MM' (00:00 to 24:00) as minutes of the day."""
    if isinstance(value, str) and len(value) == 5 and value[2] == ":":
        hours, minutes = value[:2], value[3:]
        if hours.isdigit() and minutes.isdigit():
            total = int(hours) * 60 + int(minutes)
            if int(minutes) < 60 and total <= 24 * 60:
                return total
    raise ConfigError(f"config error: {where} = {value!r}: a time of day, HH:MM (00:00 to 24:00)")


@dataclass(frozen=True)
class PoolSettings:
    backend: str = setting("local", "where workspaces run", choices=("local", "aws"))
    warm_spares: int = setting(1, "started, unowned boxes kept ready", minimum=0, maximum=1000)
    schedule: tuple[ScheduleEntry, ...] = setting(
        (), "times of the week with another number of warm spares ([[pool.schedule]])"
    )
    idle_timeout_s: int = setting(
        300, "seconds without a ping before a workspace is stopped", minimum=1
    )
    on_idle: str = setting(
        "stop", "what reaping does to an idle workspace", choices=("stop", "terminate")
    )
    stopped_retention_days: int = setting(
        30, "days a stopped workspace is kept before its box is deleted (0: forever)", minimum=0
    )
    max_hold_s: int = setting(
        28800,
        "longest a person (or `extend`) may hold a workspace past idle, in seconds from "
        "now; 0: no holds",
        minimum=0,
    )
    idle_warning_s: int = setting(
        120,
        "seconds before an idle stop when an open but hidden tab warns its person "
        "(a browser notification, one click to keep it running); 0: no warning",
        minimum=0,
    )
    max_age_s: int = setting(
        0,
        "seconds a workspace may run without a stop, in use or not (warned first); 0: no limit",
        minimum=0,
    )
    max_concurrent_starts: int = setting(
        0,
        "launches and resumes in flight at once, across routers; past it people wait "
        "in line; 0: no limit",
        minimum=0,
    )
    assign_timeout_s: int = setting(300, "seconds to wait for a box to start and answer", minimum=1)


@dataclass(frozen=True)
class StoreSettings:
    url: str = setting(
        "",
        "sqlite:///PATH, memory://, redis://, rediss:// or unix://; "
        "empty: sqlite:///<local.state_dir>/codepool.db",
    )
    key_prefix: str = setting("", "prefix for every Redis key (several pools on one Redis)")
    batch_size: int = setting(500, "workspaces read per round trip when walking all", minimum=1)
    events_retention_days: int = setting(
        400, "days the event log keeps an event (the audit log, the report's source)", minimum=1
    )


@dataclass(frozen=True)
class LocalSettings:
    state_dir: str = setting(
        "",
        "where slots (users' disks) and the SQLite store live; empty: /var/lib/codepool as "
        "root, else $XDG_DATA_HOME/codepool (~/.local/share/codepool)",
    )
    min_size: int = setting(0, "fewest boxes the local group keeps", minimum=0)
    max_size: int = setting(10, "most boxes the local group may run", minimum=1)
    command: tuple[str, ...] = setting(
        DEFAULT_COMMAND,
        "command that starts a workspace; placeholders {socket} {port} {home} {data_dir} "
        "{slot} {host}",
    )
    isolation: str = setting(
        "auto",
        "how workspaces are kept apart from the router and each other: auto (accounts as "
        "root, else sandbox if bubblewrap works, else none), accounts, sandbox, or none "
        "(one person only)",
        choices=("auto", "accounts", "sandbox", "none"),
    )
    network: str = setting(
        "auto",
        "each workspace's network: auto (own where bubblewrap and slirp4netns are "
        "installed, else one person only), own (the internet and nothing of the machine), "
        "none (no network), or shared (the machine's: every person's servers reachable by "
        "every other)",
        choices=("auto", "own", "none", "shared"),
    )
    unix_user: str = setting(
        "cp-{name}", "each person's Unix account with isolation = accounts; {name} {hash}"
    )
    sandbox_paths: tuple[str, ...] = setting(
        (), "read-only paths a sandbox sees besides the system's (/usr, /etc, /opt)"
    )
    host: str = setting("127.0.0.1", "address a {port} workspace command binds to")
    ready_path: str = setting("/healthz", "HTTP path that answers 200 once a workspace is ready")


@dataclass(frozen=True)
class AwsSettings:
    group_name: str = setting("", "the Auto Scaling Group (required with pool.backend = aws)")
    region: str = setting("", "AWS region; empty: from the environment or AWS config")
    endpoint_url: str = setting("", "override the AWS endpoint (tests, compatible clouds)")
    address: str = setting(
        "private", "which address of a box the router dials", choices=("private", "public")
    )
    workspace_port: int = setting(
        8443, "port the workspace (nginx or code-server) listens on", minimum=1, maximum=65535
    )
    workspace_scheme: str = setting("https", "scheme to reach a box", choices=("http", "https"))
    workspace_ca_file: str = setting(
        "", "PEM bundle of the CA that signs boxes' certificates; empty: the system's CAs"
    )
    workspace_tls_name: str = setting(
        "", "name boxes' certificates must carry; empty: the address dialled"
    )
    ready_path: str = setting("/healthz", "HTTP path that answers 200 once a box serves")
    max_attempts: int = setting(
        8, "attempts per AWS call, with botocore's standard retries", minimum=1, maximum=20
    )
    wait_timeout_s: int = setting(
        300, "longest wait for a box to reach Standby or running", minimum=1
    )


@dataclass(frozen=True)
class RouterSettings:
    host: str = setting("127.0.0.1", "address `codepool serve` listens on")
    port: int = setting(8000, "port `codepool serve` listens on", minimum=1, maximum=65535)
    workers: int = setting(
        1, "router processes accepting from one socket and sharing the store", minimum=1, maximum=64
    )
    public_url: str = setting(
        "", "URL users browse to (origin checks, Secure cookies); empty: http://<host>:<port>"
    )
    auth: str = setting("local", "how users log in", choices=("local", "jwt", "oidc"))
    users_file: str = setting(
        "", "accounts file `codepool users import` reads; empty: <state_dir>/users.json"
    )
    secret_file: str = setting(
        "",
        "key for JWT sessions' CSRF tokens and OIDC logins in progress; "
        "empty: <state_dir>/session.key",
    )
    session_lifetime_s: int = setting(43200, "seconds a login lasts", minimum=60)
    access_log: bool = setting(
        False, "log every request (method, route, status, duration, user, client)"
    )
    login_attempts_per_minute: int = setting(
        10, "login attempts allowed per account name in a sliding minute", minimum=1
    )
    login_attempts_per_client_per_minute: int = setting(
        60, "login attempts allowed per client address in a sliding minute", minimum=1
    )
    heartbeat_interval_s: int = setting(
        30, "seconds between pings from a visible workspace tab", minimum=1
    )
    max_html_bytes: int = setting(
        2 * 1024 * 1024,
        "largest HTML page, in bytes once inflated, read whole to add the heartbeat; a "
        "bigger one passes through without it",
        minimum=64 * 1024,
        maximum=64 * 1024 * 1024,
    )
    reap_interval_s: int = setting(
        60, "seconds between reconcile, reap and scale cycles (leader only)", minimum=1
    )
    origin_mode: str = setting(
        "host",
        "where workspaces are served: each on its own origin <user>.<workspace_domain> "
        "(host), or under /w/<user>/ on the router's origin (path)",
        choices=("host", "path"),
    )
    workspace_domain: str = setting(
        "",
        "wildcard DNS name of workspace origins (e.g. ws.example.com); empty: localhost "
        "when the public URL is on this machine",
    )
    admins_enter_workspaces: bool = setting(
        False, "whether admin users may open other users' workspaces (origin_mode = host)"
    )
    trusted_proxies: tuple[str, ...] = setting(
        (), "addresses or CIDRs of load balancers whose X-Forwarded-For is believed"
    )


@dataclass(frozen=True)
class JwtSettings:
    jwks_url: str = setting(
        "", "the identity provider's JWKS URL (required with router.auth = jwt)"
    )
    issuer: str = setting("", "the `iss` tokens must carry (required with router.auth = jwt)")
    audience: str = setting("", "the `aud` tokens must carry (required with router.auth = jwt)")
    user_claim: str = setting(
        "sub", "claim that holds the user name: sub, email (if verified) or another"
    )
    cookie: str = setting("codepool_token", "cookie that may carry the token (besides Bearer)")
    login_url: str = setting("", "where /login sends people to get a token; empty: a notice")
    admin_users: tuple[str, ...] = setting((), "user names that get the admin page")
    leeway_s: int = setting(30, "clock skew allowed on exp and nbf, in seconds", minimum=0)


@dataclass(frozen=True)
class OidcSettings:
    issuer: str = setting(
        "",
        "the identity provider's issuer URL; its /.well-known/openid-configuration is read "
        "(required with router.auth = oidc)",
    )
    client_id: str = setting("", "this router's client id at the provider (required with oidc)")
    client_secret: str = setting(
        "", "the client's secret (better: CODEPOOL_OIDC_CLIENT_SECRET); empty: a public client"
    )
    user_claim: str = setting(
        "sub", "ID token claim that names the person: sub, email (if verified) or another"
    )
    scopes: tuple[str, ...] = setting(
        ("openid", "profile", "email"), "scopes asked for (openid is always asked)"
    )
    admin_users: tuple[str, ...] = setting((), "user names that get the admin page")
    leeway_s: int = setting(
        60, "clock skew allowed on the ID token's exp and iat, in seconds", minimum=0, maximum=600
    )


@dataclass(frozen=True)
class CostSettings:
    running_hour_price: float = setting(
        0.0,
        "price of one workspace box running for an hour; 0: no costs in the report",
        minimum=0,
    )
    storage_gb_month_price: float = setting(
        0.0, "price of one GB of workspace disk kept for a month", minimum=0
    )
    disk_gb: int = setting(
        0,
        "a workspace's disk in GB; 0: the group's launch template's (AWS), else none",
        minimum=0,
    )
    currency: str = setting("USD", "the currency of the prices, as shown in the report")
    daily_budget: float = setting(
        0.0,
        "an AWS daily cost budget for the pool's boxes (`codepool alarms apply`); 0: none",
        minimum=0,
    )
    budget_notify: str = setting(
        "", "who hears when the daily budget is passed: an e-mail address or an SNS topic ARN"
    )


@dataclass(frozen=True)
class Settings:
    pool: PoolSettings = field(default_factory=PoolSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    local: LocalSettings = field(default_factory=LocalSettings)
    aws: AwsSettings = field(default_factory=AwsSettings)
    router: RouterSettings = field(default_factory=RouterSettings)
    jwt: JwtSettings = field(default_factory=JwtSettings)
    oidc: OidcSettings = field(default_factory=OidcSettings)
    cost: CostSettings = field(default_factory=CostSettings)
    source: str = EMBEDDED  # the file these came from, for messages

    @property
    def state_dir(self) -> Path:
        if self.local.state_dir:
            return Path(self.local.state_dir).expanduser()
        return default_state_dir()

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{self.state_dir / 'codepool.db'}"

    @property
    def public_url(self) -> str:
        r = self.router
        return (r.public_url or f"http://{r.host}:{r.port}").rstrip("/")

    @property
    def users_file(self) -> Path:
        return (
            Path(self.router.users_file).expanduser()
            if self.router.users_file
            else (self.state_dir / "users.json")
        )

    @property
    def secret_file(self) -> Path:
        return (
            Path(self.router.secret_file).expanduser()
            if self.router.secret_file
            else (self.state_dir / "session.key")
        )


def _check_oidc(oidc: OidcSettings, source: str) -> None:
    if not (oidc.issuer and oidc.client_id):
        raise ConfigError(
            f"config error: {source}: router.auth = 'oidc' needs oidc.issuer and "
            "oidc.client_id (the provider's issuer URL and this router's client id there)"
        )
    url = urlsplit(oidc.issuer)
    loopback = url.hostname in ("localhost", "127.0.0.1", "::1")
    if not (url.scheme == "https" or (url.scheme == "http" and loopback)) or not url.hostname:
        raise ConfigError(
            f"config error: {source}: oidc.issuer {oidc.issuer!r} must be an https:// URL "
            "(http:// only for a provider on this machine): the login code and the client "
            "secret travel to it"
        )


def default_state_dir() -> Path:
    """Root's is the system's (/var/lib: the people's accounts must reach their folders,
    which /root would not let them); anyone else's is in their own data folder."""
    if os.geteuid() == 0:
        return Path("/var/lib/codepool")
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "codepool"


SECTIONS: dict[str, type[Any]] = {
    f.name: f.type if isinstance(f.type, type) else globals()[str(f.type)]
    for f in dataclasses.fields(Settings)
    if f.name != "source"
}


def find_config(path: str | None, environ: Mapping[str, str]) -> Path | None:
    """The config file to read, by the documented lookup order; None means embedded default."""
    explicit = path or environ.get("CODEPOOL_CONFIG")
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            why = "not a regular file" if p.exists() else "no such file"
            raise ConfigError(f"config error: {p}: {why}")
        return p
    for candidate in search_paths(environ):
        if candidate.is_file():
            return candidate
    return None


def search_paths(environ: Mapping[str, str]) -> tuple[Path, ...]:
    """Where a config file is looked for when none is named, in order: the working
    folder's, the user's own (XDG), the system's."""
    user = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return (Path("codepool.toml"), Path(user) / "codepool" / "config.toml", SYSTEM_CONFIG)


def load_settings(path: str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings: --config PATH, $CODEPOOL_CONFIG, ./codepool.toml,
    $XDG_CONFIG_HOME/codepool/config.toml (~/.config/...), /etc/codepool/config.toml, else
    the embedded default; then CODEPOOL_<SECTION>_<KEY>."""
    env = os.environ if environ is None else environ
    file = find_config(path, env)
    data: dict[str, Any] = {}
    if file is not None:
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config error: {file}: cannot read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config error: {file}: not valid TOML: {exc}") from None
    return settings_from_mapping(data, source=str(file or EMBEDDED), environ=env)


def settings_from_mapping(
    data: Mapping[str, Any], source: str = "dict", environ: Mapping[str, str] | None = None
) -> Settings:
    """Validate a parsed config (and env overrides) into Settings; the one validation path."""
    sections: dict[str, dict[str, Any]] = {}
    origins: dict[tuple[str, str], str] = {}  # (section, key) -> where an override came from
    for name, values in data.items():
        if name not in SECTIONS:
            raise ConfigError(
                f"config error: {source}: unknown section [{name}]; "
                f"allowed: {', '.join(sorted(SECTIONS))}"
            )
        if not isinstance(values, Mapping):
            raise ConfigError(f"config error: {source}: {name} must be a table [{name}]")
        sections[name] = dict(values)
    for key, raw in (environ or {}).items():
        section, name = _env_target(key)
        if section is None:
            continue
        fields = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
        if name not in fields:
            raise ConfigError(
                f"config error: environment: {key}: unknown key {section}.{name}; "
                f"allowed: {', '.join(sorted(fields))}"
            )
        sections.setdefault(section, {})[name] = _from_env(fields[name], raw, key)
        origins[(section, name)] = f"environment {key}"
    built = {
        name: _build(name, cls, sections.get(name, {}), source, origins)
        for name, cls in SECTIONS.items()
    }
    settings = Settings(**built, source=source)
    if settings.pool.backend == "aws" and not settings.aws.group_name:
        raise ConfigError(
            f"config error: {source}: pool.backend = 'aws' needs aws.group_name "
            "(the Auto Scaling Group of workspace boxes)"
        )
    if settings.router.auth == "jwt" and not settings.jwt.jwks_url:
        raise ConfigError(
            f"config error: {source}: router.auth = 'jwt' needs jwt.jwks_url "
            "(your identity provider's JWKS URL)"
        )
    if settings.router.auth == "jwt" and not (settings.jwt.issuer and settings.jwt.audience):
        raise ConfigError(
            f"config error: {source}: router.auth = 'jwt' needs jwt.issuer and jwt.audience: "
            "without them a token your identity provider made for another application "
            "would open workspaces here"
        )
    if settings.router.auth == "oidc":
        _check_oidc(settings.oidc, source)
    if settings.router.origin_mode == "path" and settings.router.admins_enter_workspaces:
        raise ConfigError(
            f"config error: {source}: router.admins_enter_workspaces needs router.origin_mode "
            "= 'host': with every workspace under the router's own origin, a page in the "
            "workspace an admin opens could act on the admin page as that admin"
        )
    if settings.local.min_size > settings.local.max_size:
        raise ConfigError(
            f"config error: {source}: local.min_size = {settings.local.min_size}: "
            f"must be <= local.max_size ({settings.local.max_size})"
        )
    return settings


def _env_target(key: str) -> tuple[str | None, str]:
    if not key.startswith(ENV_PREFIX):
        return None, ""
    rest = key[len(ENV_PREFIX) :].lower()
    for section in SECTIONS:
        if rest.startswith(section + "_"):
            return section, rest[len(section) + 1 :]
    return None, ""


def _from_env(f: dataclasses.Field[Any], raw: str, key: str) -> Any:
    """Env values are strings: turn them into the setting's type (lists split like a shell)."""
    kind: type[Any] = type(f.default)
    if f.name == "schedule":  # a list of tables, as JSON
        try:
            return json.loads(raw)
        except ValueError:
            raise ConfigError(
                f"config error: environment: {key}: must be a JSON list of schedule entries"
            ) from None
    if kind is tuple:
        return tuple(shlex.split(raw))
    if kind is bool:
        words = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
        if raw.strip().lower() not in words:
            raise ConfigError(f"config error: environment: {key} = {raw!r}: must be true or false")
        return words[raw.strip().lower()]
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(
                f"config error: environment: {key} = {raw!r}: must be a whole number"
            ) from None
    if kind is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(
                f"config error: environment: {key} = {raw!r}: must be a number"
            ) from None
    return raw


def _build(
    section: str,
    cls: type[Any],
    values: dict[str, Any],
    source: str,
    origins: dict[tuple[str, str], str],
) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        where = origins.get((section, name), source)
        if name not in fields:
            raise ConfigError(
                f"config error: {where}: unknown key {section}.{name}; "
                f"allowed: {', '.join(sorted(fields))}"
            )
        kwargs[name] = _check(fields[name], value, f"{where}: {section}.{name} = {value!r}")
    return cls(**kwargs)


def _check(f: dataclasses.Field[Any], value: Any, where: str) -> Any:
    meta = f.metadata
    kind: type[Any] = type(f.default)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config error: {where}: must be true or false")
        return value
    if kind in (int, float):
        number = int if kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, number):
            whole = "a whole number" if kind is int else "a number"
            raise ConfigError(f"config error: {where}: must be {whole}")
        if not math.isfinite(value):
            raise ConfigError(f"config error: {where}: must be a finite number")
        lo, hi = meta["minimum"], meta["maximum"]
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f">= {lo}" if hi is None else f"from {lo} to {hi}"
            raise ConfigError(f"config error: {where}: must be {bounds}")
        return float(value) if kind is float else value
    if f.name == "schedule":
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config error: {where}: must be a list of [[pool.schedule]] tables")
        return tuple(
            e if isinstance(e, ScheduleEntry) else _schedule_entry(e, f"{where} entry {i + 1}")
            for i, e in enumerate(value)
        )
    if kind is tuple:
        may_be_empty = not f.default  # a list that defaults to empty may be empty
        if (
            isinstance(value, list | tuple)
            and (value or may_be_empty)
            and all(isinstance(v, str) for v in value)
        ):
            return tuple(value)
        what = "a list of strings" if may_be_empty else "a non-empty list of strings"
        raise ConfigError(f"config error: {where}: must be {what}")
    if not isinstance(value, str):
        raise ConfigError(f"config error: {where}: must be a string")
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"config error: {where}: allowed: {', '.join(meta['choices'])}")
    return value
