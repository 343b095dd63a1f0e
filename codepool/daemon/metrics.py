"""Prometheus metrics (docs/router.md lists them), one registry per app so tests and
several apps in one process do not share counters."""

from __future__ import annotations

import collections
import platform
from collections.abc import Mapping

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from codepool import __version__
from codepool.core.models import PoolStatus, WorkspaceState
from codepool.core.store import PingResult

disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series add nothing


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # The process's own (resident memory, CPU, open files), Python's and its GC's:
        # the standard collectors, registered here as well as in the default registry.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        build = Gauge(
            "codepool_build_info",
            "Always 1; the labels say which codepool and Python",
            ["version", "python"],
            registry=r,
        )
        build.labels(__version__, platform.python_version()).set(1)
        self.requests = Counter(
            "codepool_http_requests",
            "HTTP requests answered, by route template, method and status class",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "codepool_http_request_seconds",
            "Time to answer an HTTP request, by route template (WebSockets: how long open)",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
            registry=r,
        )
        self.logins = Counter(
            "codepool_logins",
            "Login attempts by how (password, oidc) and outcome",
            ["how", "outcome"],
            registry=r,
        )
        self.workspaces = Gauge("codepool_workspaces", "Workspaces by state", ["state"], registry=r)
        self.spares = Gauge("codepool_spares", "Running unowned boxes", registry=r)
        self.desired = Gauge("codepool_desired_capacity", "Desired capacity", registry=r)
        self.max_size = Gauge("codepool_max_size", "The group's maximum size", registry=r)
        self.in_service = Gauge("codepool_in_service", "Boxes in service", registry=r)
        self.leader = Gauge(
            "codepool_leader", "1 if this router runs the background loops", registry=r
        )
        self.assign_seconds = Histogram(
            "codepool_assign_seconds",
            "Time from dispatch to a ready workspace",
            ["how"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.pings = Counter("codepool_pings", "Pings by result", ["result"], registry=r)
        # Looked up once: labels() takes a lock and a dict lookup, on every ping.
        self.ping_results = {p: self.pings.labels(p.value) for p in PingResult}
        self.reaps = Counter(
            "codepool_reaps", "Workspaces reaped, by action", ["action"], registry=r
        )
        self.backend_errors = Counter(
            "codepool_backend_errors", "Failed backend or store steps", ["step"], registry=r
        )
        self.cycles = Counter(
            "codepool_loop_cycles", "Background cycles by outcome", ["outcome"], registry=r
        )
        for state in WorkspaceState:
            self.workspaces.labels(state.value)

    def observe_status(
        self, status: PoolStatus, counts: Mapping[WorkspaceState, int] | None = None
    ) -> None:
        """The gauges: workspaces by state (counted from status's rows unless given), and
        the group's numbers."""
        if counts is None:
            counts = collections.Counter(w.state for w in status.workspaces)
        for state in WorkspaceState:
            self.workspaces.labels(state.value).set(counts.get(state, 0))
        self.spares.set(status.spares)
        self.desired.set(status.capacity.desired)
        self.max_size.set(status.capacity.max_size)
        self.in_service.set(status.in_service)
