"""Plain data the core passes around. No I/O here."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field


class WorkspaceState(enum.StrEnum):
    """A workspace as the store records it."""

    STARTING = "starting"  # being assigned or resumed; not reapable
    RUNNING = "running"  # serving; pings accepted; reapable when idle
    STOPPING = "stopping"  # a reaper or release has claimed it; pings refused
    STOPPED = "stopped"  # its box is stopped and keeps the owner's disk


class InstanceState(enum.StrEnum):
    """A box as the backend reports it (EC2's words)."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    TERMINATED = "terminated"


class Lifecycle(enum.StrEnum):
    """Where a box stands in its group (Auto Scaling's words)."""

    PENDING = "Pending"
    IN_SERVICE = "InService"  # counted in desired capacity
    STANDBY = "Standby"  # kept, not counted: where stopped workspaces wait


@dataclass(frozen=True, slots=True)
class Workspace:
    """One user's workspace: the seed's `workspace:<user>` hash."""

    user: str
    instance_id: str
    address: str  # base URL the router reaches the workspace at, e.g. http://127.0.0.1:41234
    state: WorkspaceState
    last_seen_ms: int
    assigned_at_ms: int
    hold_until_ms: int = 0
    stopped_at_ms: int = 0
    started_at_ms: int = 0  # when it last started running (pool.max_age_s counts from it)

    def row(self) -> tuple[str, str, str, str, int, int, int, int, int]:
        """The fields in the order above, the state as its text: how the stores write a
        record (SQLite's columns, the Redis script's array)."""
        return (
            self.user,
            self.instance_id,
            self.address,
            self.state.value,
            self.last_seen_ms,
            self.assigned_at_ms,
            self.hold_until_ms,
            self.stopped_at_ms,
            self.started_at_ms,
        )


@dataclass(frozen=True, slots=True)
class Instance:
    """One box of the pool, as the backend (the durable truth) sees it."""

    instance_id: str
    state: InstanceState
    lifecycle: Lifecycle
    owner: str | None  # None is the seed's Owner=UNASSIGNED
    address: str
    launched_at_ms: int
    stopped_at_ms: int = 0
    tagged: bool = True  # False: the box carries no owner record at all (not even UNASSIGNED)

    @property
    def in_service(self) -> bool:
        # Identity tests: `in (…)` compares enum members as strings, and scale asks this
        # of every box of the group each cycle.
        state = self.state
        return self.lifecycle is not Lifecycle.STANDBY and (
            state is InstanceState.RUNNING or state is InstanceState.PENDING
        )

    @property
    def is_spare(self) -> bool:
        """Unowned, in service and running: ready to be handed out now."""
        return self.owner is None and self.in_service and self.state is InstanceState.RUNNING

    @property
    def is_booting_spare(self) -> bool:
        """Unowned and launching: a spare in a minute or two."""
        return self.owner is None and self.in_service and self.state is InstanceState.PENDING


@dataclass(frozen=True, slots=True)
class Census:
    """What scaling and assigning count of a group's boxes, in one pass over them (the
    group's every box, each cycle: three passes cost a 100k-box reap two thirds of its
    time, docs/performance.md)."""

    spares: list[Instance]  # is_spare
    booting: int  # is_booting_spare
    in_service: int

    @classmethod
    def of(cls, instances: Iterable[Instance]) -> Census:
        spares: list[Instance] = []
        booting = in_service = 0
        for i in instances:
            if not i.in_service:
                continue
            in_service += 1
            if i.owner is None:
                if i.state is InstanceState.RUNNING:
                    spares.append(i)
                else:  # in service and not running: pending
                    booting += 1
        return cls(spares, booting, in_service)


@dataclass(frozen=True, slots=True)
class Capacity:
    """The group's size limits and its desired capacity."""

    min_size: int
    max_size: int
    desired: int


@dataclass(frozen=True, slots=True)
class Fleet:
    """One look at the pool: its boxes and the group's capacity, read together (on AWS,
    one DescribeAutoScalingGroups and one DescribeInstances)."""

    instances: list[Instance]
    capacity: Capacity


@dataclass(frozen=True, slots=True)
class BoxShape:
    """What one workspace box is, for the cost report."""

    instance_type: str  # "" when unknown
    disk_gb: int  # 0 when unknown or none


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Outcome of a call over many instances: AWS answers per instance, so do we."""

    succeeded: tuple[str, ...] = ()
    failed: dict[str, str] = field(default_factory=dict)  # instance id -> why


class ReapAction(enum.StrEnum):
    STOP = "stop"
    TERMINATE = "terminate"
    KEEP = "keep"


@dataclass(frozen=True, slots=True)
class ReapDecision:
    """What a reap cycle decided for one workspace, and why, in words an operator reads."""

    user: str
    instance_id: str
    action: ReapAction
    reason: str
    idle_s: float
    done: bool = False  # True once carried out (never in a dry run)
    error: str = ""


@dataclass(frozen=True, slots=True)
class ScaleResult:
    desired_before: int
    desired_after: int
    terminated_spares: tuple[str, ...] = ()
    dry_run: bool = False
    spares: str = ""  # the warm spares wanted and why: the schedule entry in force, or not

    @property
    def changed(self) -> bool:
        return self.desired_before != self.desired_after or bool(self.terminated_spares)


@dataclass(frozen=True, slots=True)
class Assignment:
    """The answer to `assign`: where the user's workspace is and how it got there."""

    workspace: Workspace
    how: str  # "running" | "resumed" | "spare" | "launched"


@dataclass(frozen=True, slots=True)
class ReconcileAction:
    kind: str  # short machine word, e.g. "rebuild", "add-spare", "clear"
    subject: str  # a user or an instance id
    detail: str
    done: bool = False


@dataclass(frozen=True, slots=True)
class PoolStatus:
    capacity: Capacity
    in_service: int
    pending: int
    standby: int
    running: int
    stopped: int
    spares: int
    workspaces: tuple[Workspace, ...]
    warnings: tuple[str, ...]
    now_ms: int


@dataclass(frozen=True, slots=True)
class Check:
    """One finding of `codepool doctor`: what was checked, whether it holds, and what to do."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Account:
    """A local account (router.auth = "local"): who may log in, and with what rights. The
    password hash is kept beside it, never shown."""

    name: str
    admin: bool
    password_hash: str = field(default="", repr=False)
    created_ms: int = 0


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One login, kept in the store behind an opaque random cookie. Only the cookie's
    SHA-256 is stored (`sid`), so a copy of the store opens no session.

    A session of the main origin has no owner. A session of a workspace origin names
    whose workspace (`owner`), the one host it is valid on, and the main session it came
    from (`parent`): it ends when that one ends."""

    sid: str
    user: str  # who is logged in
    csrf: str  # the token every state-changing request of this session must carry
    created_ms: int
    last_seen_ms: int
    expires_ms: int
    client: str = ""  # the address it logged in from
    owner: str = ""
    host: str = ""
    parent: str = ""


@dataclass(frozen=True, slots=True)
class EntryGrant:
    """A one-time pass from the main origin to a workspace origin: taken once (the store
    deletes it as it hands it out), before `expires_ms`, on `host` only, by the browser
    that holds the state cookie whose hash is `state`."""

    user: str  # who enters
    owner: str  # whose workspace
    host: str
    parent: str  # the main session it comes from ("" with JWT sessions)
    state: str
    expires_ms: int
    session_expires_ms: int  # the workspace session it opens ends by then


class EventKind(enum.StrEnum):
    """What happened, in the event log (the audit log and the source of the report)."""

    ASSIGN = "assign"  # a workspace started running for its person; detail: how
    STOP = "stop"  # a running workspace stopped, its disk kept; detail: why
    TERMINATE = "terminate"  # a workspace and its disk deleted; detail: why
    HOLD = "hold"  # kept running past idle; detail: for how many seconds (0 ends a hold)
    LOGIN = "login"  # detail: how (password, jwt)
    LOGOUT = "logout"
    ACCOUNT = "account"  # an account changed; detail: added, removed, password, admin...


# Why a workspace stopped or was deleted (the detail of STOP and TERMINATE events).
WHY_IDLE = "idle"  # the reaper: no tab in view for pool.idle_timeout_s
WHY_RELEASED = "released"  # its person, or an operator's `codepool release`
WHY_ADMIN = "admin"  # an admin, from the admin page
WHY_RETENTION = "retention"  # stopped longer than pool.stopped_retention_days
WHY_GONE = "gone"  # its box was found stopped or missing by reconcile
WHY_MAX_AGE = "max-age"  # the reaper: it ran pool.max_age_s without a stop


@dataclass(frozen=True, slots=True)
class Event:
    """One line of the event log. `id` is the store's, unique; events are ordered by
    (at_ms, id)."""

    at_ms: int
    kind: EventKind
    user: str  # whose workspace or account
    actor: str  # who did it: a person's name, "reaper", "cli:<login>", "router"
    detail: str = ""
    instance_id: str = ""
    id: str = ""

    def row(self) -> list[object]:
        return [self.at_ms, self.kind.value, self.user, self.actor, self.detail, self.instance_id]


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """An API token as the store keeps it: only the SHA-256 of the token itself, so a copy
    of the store opens nothing. `user` is the one person a `self` token acts for."""

    id: str
    digest: str
    name: str
    scopes: tuple[str, ...]
    user: str
    created_ms: int
    expires_ms: int  # 0: never
    created_by: str
