"""Usage and savings, from the event log: per person and in total, the hours their
workspace ran and the hours it was stopped with its disk kept, its starts by kind and its
stops by reason, and what that cost at the configured prices; then what the same
workspaces would have cost left running (the "always on" baseline), and the difference:
what stopping idle workspaces saved.

A workspace runs from a start (an `assign` event) to a stop or a deletion; it exists
(its disk is kept, and paid for) from a start to a deletion. The always-on baseline
counts every hour a workspace existed as a running hour: the same people, their
workspaces never stopped. It is conservative: a workspace deleted for having been stopped
too long (retention) would still exist, and run, without stops, but is not counted past
its deletion. Warm spares are the pool's, not a person's, and are not in the report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from codepool.core.models import Event, EventKind

HOUR_MS = 3_600_000
MONTH_H = 730  # hours in a month, as cloud prices count them


@dataclass(frozen=True, slots=True)
class Prices:
    running_hour: float = 0.0
    storage_gb_month: float = 0.0
    disk_gb: int = 0
    currency: str = "USD"
    instance_type: str = ""  # what a box is (the group's launch template), for the reader

    def cost(self, running_h: float, existing_h: float) -> float:
        storage = existing_h * self.disk_gb * self.storage_gb_month / MONTH_H
        return running_h * self.running_hour + storage


@dataclass(frozen=True, slots=True)
class Usage:
    """One person's (or everyone's) use of their workspace in the report's period."""

    user: str
    running_h: float = 0.0
    stopped_h: float = 0.0  # stopped, disk kept
    starts: dict[str, int] = field(default_factory=dict)  # how: spare, launched, resumed...
    stops: dict[str, int] = field(default_factory=dict)  # why: idle, released, admin...
    cost: float = 0.0
    always_on_cost: float = 0.0

    @property
    def existing_h(self) -> float:
        return self.running_h + self.stopped_h

    @property
    def saved(self) -> float:
        return self.always_on_cost - self.cost


@dataclass(frozen=True, slots=True)
class Report:
    since_ms: int
    until_ms: int
    prices: Prices
    people: tuple[Usage, ...]
    total: Usage


@dataclass
class _Tally:
    """A person's workspace as the events go by, and the hours counted so far."""

    running_since: int | None = None
    existing_since: int | None = None
    running_ms: int = 0
    existing_ms: int = 0
    starts: Counter[str] = field(default_factory=Counter)
    stops: Counter[str] = field(default_factory=Counter)


def _overlap(start: int, end: int, since: int, until: int) -> int:
    return max(0, min(end, until) - max(start, since))


def usage(events: Iterable[Event], since_ms: int, until_ms: int, prices: Prices) -> Report:
    """The report for since_ms..until_ms from every event up to until_ms, in order (events
    before the period say what was running or kept when it began)."""
    tallies: dict[str, _Tally] = {}
    for e in events:
        if e.at_ms > until_ms or e.kind not in (
            EventKind.ASSIGN,
            EventKind.STOP,
            EventKind.TERMINATE,
        ):
            continue
        t = tallies.setdefault(e.user, _Tally())
        counted = e.at_ms >= since_ms
        if e.kind is EventKind.ASSIGN:
            if t.running_since is None:
                t.running_since = e.at_ms
            if t.existing_since is None:
                t.existing_since = e.at_ms
            if counted:
                t.starts[e.detail] += 1
            continue
        if t.running_since is not None:
            t.running_ms += _overlap(t.running_since, e.at_ms, since_ms, until_ms)
            t.running_since = None
            if counted:
                t.stops[e.detail] += 1
        if e.kind is EventKind.STOP and t.existing_since is None:
            t.existing_since = e.at_ms  # a stop of a start before the log began: kept from here
        if e.kind is EventKind.TERMINATE and t.existing_since is not None:
            t.existing_ms += _overlap(t.existing_since, e.at_ms, since_ms, until_ms)
            t.existing_since = None
    people = []
    for user, t in sorted(tallies.items()):
        if t.running_since is not None:
            t.running_ms += _overlap(t.running_since, until_ms, since_ms, until_ms)
        if t.existing_since is not None:
            t.existing_ms += _overlap(t.existing_since, until_ms, since_ms, until_ms)
        if not (t.existing_ms or t.starts or t.stops):
            continue  # nothing of theirs in the period
        running_h, existing_h = t.running_ms / HOUR_MS, t.existing_ms / HOUR_MS
        people.append(
            Usage(
                user,
                running_h,
                existing_h - running_h,
                dict(t.starts),
                dict(t.stops),
                prices.cost(running_h, existing_h),
                prices.cost(existing_h, existing_h),
            )
        )
    return Report(since_ms, until_ms, prices, tuple(people), total_of(people))


def total_of(people: list[Usage]) -> Usage:
    starts: Counter[str] = Counter()
    stops: Counter[str] = Counter()
    for p in people:
        starts.update(p.starts)
        stops.update(p.stops)
    return Usage(
        "total",
        sum(p.running_h for p in people),
        sum(p.stopped_h for p in people),
        dict(starts),
        dict(stops),
        sum(p.cost for p in people),
        sum(p.always_on_cost for p in people),
    )
