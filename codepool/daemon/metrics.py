"""Prometheus metrics (docs/operations.md lists them), one registry per app so tests and
several apps in one process do not share counters.

With `serve --workers N` the workers keep their values in files of one folder
(prometheus-client's multiprocess mode) and every scrape, whichever worker answers it,
adds them up: counters never go backwards from one scrape to the next. The leader's
gauges are the largest value of the live workers (the others hold 0), and the process's
figures are the sum over the live workers."""

from __future__ import annotations

import collections
import os
import platform
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from codepool import __version__
from codepool.core.models import PoolStatus, WorkspaceState
from codepool.core.store import PingResult

disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series add nothing


SHARED = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's name for the folder


def share_values(directory: str) -> None:
    """In a worker, before any metric is made: keep values in files of `directory`."""
    os.environ[SHARED] = directory
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def worker_died(pid: int) -> None:
    """The supervisor's word that a worker is gone: its live gauges no longer count."""
    if directory := os.environ.get(SHARED):
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.shared = os.environ.get(SHARED, "")
        if not self.shared:
            # The process's own (resident memory, CPU, open files), Python's and its GC's:
            # the standard collectors, registered here as well as in the default registry.
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                r.register(collector)
        # The pool's gauges are the leader's figures (every router shows them, read from
        # the store); with workers, the live workers' largest.
        leaders: dict[str, Literal["livemax"]] = {"multiprocess_mode": "livemax"}
        build = Gauge(
            "codepool_build_info",
            "Always 1; the labels say which codepool and Python",
            ["version", "python"],
            registry=r,
            **leaders,
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
        # (route, method, status class) -> its counter and histogram: labels() takes a lock
        # and builds a key; a request should not pay for that on every call.
        self._requests: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.lane = Counter(
            "codepool_lane_requests",
            "Requests the lane answered itself: a workspace's assets and API calls, and "
            "pings (the rest of the router's requests go through aiohttp's server)",
            registry=r,
        )
        self.logins = Counter(
            "codepool_logins",
            "Login attempts by how (password, oidc) and outcome",
            ["how", "outcome"],
            registry=r,
        )
        self.workspaces = Gauge(
            "codepool_workspaces", "Workspaces by state", ["state"], registry=r, **leaders
        )
        self.spares = Gauge("codepool_spares", "Running unowned boxes", registry=r, **leaders)
        self.desired = Gauge("codepool_desired_capacity", "Desired capacity", registry=r, **leaders)
        self.max_size = Gauge(
            "codepool_max_size", "The group's maximum size", registry=r, **leaders
        )
        self.in_service = Gauge("codepool_in_service", "Boxes in service", registry=r, **leaders)
        self.leader = Gauge(
            "codepool_leader", "1 if this router runs the background loops", registry=r, **leaders
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

    def answered(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count a request the router answered, and its time."""
        key = (route, method, status // 100)
        found = self._requests.get(key)
        if found is None:
            found = self._requests[key] = (
                self.requests.labels(route, method, f"{key[2]}xx"),
                self.request_seconds.labels(route),
            )
        found[0].inc()
        found[1].observe(seconds)

    def exposition(self) -> bytes:
        """What /metrics answers: this app's registry; with workers, everyone's files."""
        if not self.shared:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.shared)  # type: ignore[no-untyped-call]
        registry.register(WorkersProcess(self.shared))
        registry.register(PLATFORM_COLLECTOR)
        return generate_latest(registry)

    def observe_status(
        self, status: PoolStatus, counts: Mapping[WorkspaceState, int] | None = None
    ) -> dict[str, int]:
        """The leader's gauges: workspaces by state (counted from status's rows unless
        given), and the group's numbers. Returns them as figures, for the other routers."""
        if counts is None:
            counts = collections.Counter(w.state for w in status.workspaces)
        figures = {f"workspaces_{state.value}": counts.get(state, 0) for state in WorkspaceState}
        figures |= {
            "spares": status.spares,
            "desired": status.capacity.desired,
            "max_size": status.capacity.max_size,
            "in_service": status.in_service,
        }
        self.observe_figures(figures)
        return figures

    def observe_figures(self, figures: Mapping[str, object]) -> None:
        """Set the pool's gauges from figures (the leader's, read from the store by the
        other routers; a figure missing or not a count shows 0)."""

        def count(name: str) -> int:
            value = figures.get(name)
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        for state in WorkspaceState:
            self.workspaces.labels(state.value).set(count(f"workspaces_{state.value}"))
        self.spares.set(count("spares"))
        self.desired.set(count("desired"))
        self.max_size.set(count("max_size"))
        self.in_service.set(count("in_service"))


class WorkersProcess:
    """process_* for a router of several workers: resident and virtual memory, CPU
    seconds and open files summed over the live workers (those with files in the
    folder), the earliest start time, the smallest file limit."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def pids(self) -> set[int]:
        found = {int(m.group(1)) for p in self.directory.glob("*.db")
                 if (m := re.search(r"_(\d+)\.db$", p.name))}  # fmt: skip
        return {pid for pid in found if Path(f"/proc/{pid}").exists()}

    def collect(self) -> Iterator[Metric]:
        sums: dict[str, float] = collections.defaultdict(float)
        kinds: dict[str, tuple[str, str]] = {}
        for pid in self.pids():
            collector = ProcessCollector(pid=lambda pid=pid: pid, registry=None)  # type: ignore[misc]
            for family in collector.collect():
                kinds[family.name] = (family.type, family.documentation)
                for sample in family.samples:
                    if family.name in ("process_start_time_seconds", "process_max_fds"):
                        first = sums.get(family.name) or sample.value
                        sums[family.name] = min(first, sample.value)
                    else:
                        sums[family.name] += sample.value
        for name, value in sums.items():
            kind, doc = kinds[name]
            if kind == "counter":
                yield CounterMetricFamily(name, doc, value=value)
            else:
                yield GaugeMetricFamily(name, doc, value=value)
