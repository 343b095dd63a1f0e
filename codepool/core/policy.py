"""Pure decisions: no I/O, no clock. Every rule the pool follows that can be stated
as a function of numbers lives here, so it can be tested by itself."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from codepool.core.errors import InvalidInput
from codepool.core.models import Capacity, ReapAction, ReapDecision, Workspace, WorkspaceState
from codepool.core.settings import DAYS, ScheduleEntry

# One safe pattern for user names everywhere (CLI, router, store keys, URL paths, tags):
# lower-case letters, digits and . _ @ -, starting with a letter or digit, at most 64.
USER_PATTERN = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
USER_RULE = (
    "1 to 64 characters: lower-case letters, digits and . _ @ -, starting with a letter or a digit"
)

_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_UNIT_S = (86400, 3600, 60, 1)


def is_user(user: str) -> bool:
    """Whether a user name is safe to use as a key, a path segment and a tag value."""
    return USER_PATTERN.fullmatch(user) is not None and ".." not in user


def check_user(user: str) -> str:
    """Return the user name if it is safe (is_user), else say what is allowed."""
    if not is_user(user):
        raise InvalidInput(f"invalid user name {user!r}: {USER_RULE}")
    return user


MAX_DURATION_S = 100 * 365 * 86400  # longer is no one's meaning (and overflows a store)


def parse_duration(text: str) -> int:
    """'90' (seconds), '45s', '30m', '2h', '1d', '1h30m' -> seconds (at most 100 years)."""
    cleaned = text.strip().lower()
    match = _DURATION.fullmatch(cleaned)
    if cleaned.isdigit():
        seconds = int(cleaned)
    elif cleaned and match is not None:
        seconds = sum(int(n or 0) * unit for n, unit in zip(match.groups(), _UNIT_S, strict=True))
    else:
        raise InvalidInput(
            f"invalid duration {text!r}: use seconds or units d h m s, e.g. 90, 30m, 2h, 1h30m"
        )
    if seconds > MAX_DURATION_S:
        raise InvalidInput(f"invalid duration {text!r}: at most 100 years")
    return seconds


def parse_time(text: str, now_ms: int) -> int:
    """A moment as epoch ms: a duration ago ('7d', '12h', '90') or a date or time in ISO
    form ('2026-11-01', '2026-11-01T09:30', with a zone or in the machine's)."""
    cleaned = text.strip()
    try:
        if cleaned[:1].isdigit() and ("-" in cleaned[1:] or ":" in cleaned):
            moment = datetime.fromisoformat(cleaned)
            if moment.tzinfo is None:
                moment = moment.astimezone()  # the machine's zone, as a person typing it means
            return int(moment.timestamp() * 1000)
        return now_ms - parse_duration(cleaned) * 1000
    except (ValueError, InvalidInput):
        raise InvalidInput(
            f"invalid time {text!r}: use a duration ago (7d, 12h, 30m) or an ISO date or time "
            "(2026-11-01, 2026-11-01T09:30, 2026-11-01T09:30+01:00)"
        ) from None


def parse_period(since: str, until: str, now_ms: int, flag: str = "") -> tuple[int, int]:
    """since and until (now when empty) as epoch ms, the one not after the other; flag is
    how the caller names its options in messages ("--" on the command line)."""
    start = parse_time(since, now_ms)
    end = parse_time(until, now_ms) if until else now_ms
    if end < start:
        raise InvalidInput(f"{flag}until ({until}) is before {flag}since ({since})")
    return start, end


def format_duration(seconds: float) -> str:
    """Seconds as a person reads them: 45s, 6m12s, 2h05m, 3d04h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def stoppable_at_ms(ws: Workspace, idle_timeout_s: int, max_age_s: int = 0) -> int:
    """The time after which the reaper may stop a running workspace: idle_timeout_s after
    its last ping, or the end of its hold, whichever is later; or, sooner, max_age_s after
    it started. (The reaper runs every router.reap_interval_s, so it stops at that time or
    up to one interval later.)"""
    idle = max(ws.last_seen_ms + idle_timeout_s * 1000, ws.hold_until_ms)
    aged = aged_at_ms(ws, max_age_s)
    return min(idle, aged) if aged else idle


def aged_at_ms(ws: Workspace, max_age_s: int) -> int:
    """When a workspace reaches pool.max_age_s (0: no limit, or no start time known)."""
    return ws.started_at_ms + max_age_s * 1000 if max_age_s and ws.started_at_ms else 0


def age_decision(ws: Workspace, now_ms: int, max_age_s: int, on_idle: str) -> ReapDecision:
    """Whether a running workspace has run too long without a stop (holds do not count)."""
    idle_s = (now_ms - ws.last_seen_ms) / 1000
    aged = aged_at_ms(ws, max_age_s)
    if ws.state is not WorkspaceState.RUNNING or not aged or now_ms <= aged:
        return ReapDecision(ws.user, ws.instance_id, ReapAction.KEEP, "within max age", idle_s)
    action = ReapAction.TERMINATE if on_idle == "terminate" else ReapAction.STOP
    ran = format_duration((now_ms - ws.started_at_ms) / 1000)
    return ReapDecision(
        ws.user, ws.instance_id, action, f"ran {ran} > max age {format_duration(max_age_s)}", idle_s
    )


HOLD_CHOICES_S = (1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600)


def hold_choices(max_hold_s: int) -> tuple[int, ...]:
    """The holds a person is offered: the usual ones up to the pool's maximum, and the
    maximum itself."""
    if max_hold_s <= 0:
        return ()
    return tuple(sorted({c for c in HOLD_CHOICES_S if c < max_hold_s} | {max_hold_s}))


def reap_decision(ws: Workspace, now_ms: int, idle_timeout_s: int, on_idle: str) -> ReapDecision:
    """Whether a running workspace is idle enough to stop, and why (or why not)."""
    idle_s = (now_ms - ws.last_seen_ms) / 1000
    timeout = format_duration(idle_timeout_s)

    def keep(reason: str) -> ReapDecision:
        return ReapDecision(ws.user, ws.instance_id, ReapAction.KEEP, reason, idle_s)

    if ws.state is not WorkspaceState.RUNNING:
        return keep(f"{ws.state.value}, not running")
    if ws.hold_until_ms > now_ms:
        return keep(f"held for another {format_duration((ws.hold_until_ms - now_ms) / 1000)}")
    if idle_s <= idle_timeout_s:
        return keep(f"active: idle {format_duration(idle_s)} <= {timeout}")
    action = ReapAction.TERMINATE if on_idle == "terminate" else ReapAction.STOP
    return ReapDecision(
        ws.user, ws.instance_id, action, f"idle {format_duration(idle_s)} > {timeout}", idle_s
    )


def retention_decision(ws: Workspace, now_ms: int, retention_days: int) -> ReapDecision:
    """Whether a stopped workspace has been kept long enough that its box is deleted."""
    stopped_s = (now_ms - ws.stopped_at_ms) / 1000
    idle_s = (now_ms - ws.last_seen_ms) / 1000
    limit_s = retention_days * 86400
    if ws.state is not WorkspaceState.STOPPED or retention_days == 0 or stopped_s <= limit_s:
        return ReapDecision(ws.user, ws.instance_id, ReapAction.KEEP, "within retention", idle_s)
    return ReapDecision(
        ws.user,
        ws.instance_id,
        ReapAction.TERMINATE,
        f"stopped {format_duration(stopped_s)} > retention {retention_days}d",
        idle_s,
    )


def schedule_entry(entries: Sequence[ScheduleEntry], now_ms: int) -> ScheduleEntry | None:
    """The first [[pool.schedule]] entry in force at now_ms (each in its own time zone)."""
    for entry in entries:
        local = datetime.fromtimestamp(now_ms / 1000, ZoneInfo(entry.timezone))
        minute = local.hour * 60 + local.minute
        start, end = (int(t[:2]) * 60 + int(t[3:]) for t in (entry.start, entry.end))
        if DAYS[local.weekday()] in entry.days and start <= minute < end:
            return entry
    return None


def desired_capacity(running_assigned: int, warm_spares: int, min_size: int, max_size: int) -> int:
    """Running assigned boxes plus warm spares, clamped to the group's limits, and never
    below 1 while spares are wanted (a spare is what makes a new person's start quick)."""
    desired = min(max(running_assigned + warm_spares, min_size), max_size)
    if warm_spares > 0:
        desired = max(desired, min(1, max_size))
    return desired


def capacity_warnings(capacity: Capacity, in_service: int) -> tuple[str, ...]:
    """The two conditions worth an operator's attention (also CloudWatch alarms)."""
    warnings: list[str] = []
    if capacity.max_size > 0 and capacity.desired >= math.ceil(0.9 * capacity.max_size):
        warnings.append(
            f"desired {capacity.desired} is at or above 90% of max {capacity.max_size}: "
            "new users may soon get 'pool full'"
        )
    if capacity.desired - in_service >= 1:
        warnings.append(
            f"desired {capacity.desired} exceeds in service {in_service}: "
            "boxes are launching or failing to launch"
        )
    return tuple(warnings)
