"""The background loops: reconcile, reap and scale every `router.reap_interval_s` (with
jitter), run only by the router holding the leader lease, so several routers behind one
load balancer never reap twice. A failing cycle is logged and the next one runs.

After the store was unreachable, the pings sent meanwhile are lost: lastSeen says idle
about people who were working. So for one idle timeout after the store comes back, no
idle workspace is stopped (retention still runs); every router's loop sees the outage,
since each asks for the lease every cycle."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import secrets
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from codepool.core.errors import CodepoolError, StoreUnavailable
from codepool.core.models import ReapAction, WorkspaceState
from codepool.core.pool import CodePool
from codepool.daemon.metrics import Metrics

log = logging.getLogger("codepool.loops")

FIGURES = "pool-figures"  # the leader's gauges, for every router's /metrics
LEADER = "leader"


class Loops:
    def __init__(self, pool: CodePool, metrics: Metrics, interval_s: float) -> None:
        self.pool = pool
        self.metrics = metrics
        self.interval_s = interval_s
        self.holder = f"{socket.gethostname()}:{secrets.token_hex(4)}"
        self.is_leader = False
        self.store_lost = False  # a store step failed since the last successful lease call
        self.no_idle_stops_until = 0.0  # time.monotonic(): the grace after a store outage
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def lease_ms(self) -> int:
        # Outlives a slow cycle, expires soon after a dead leader: another takes over.
        return int(self.interval_s * 3 * 1000)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="codepool loops")

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self.cycle()
            pause = self.interval_s * random.uniform(0.9, 1.1)  # routers drift apart
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), pause)

    async def cycle(self) -> bool:
        """One cycle if this router is (or becomes) the leader; True if it ran."""
        try:
            self.is_leader = await self.pool.store.acquire_lease(LEADER, self.holder, self.lease_ms)
        except CodepoolError as exc:
            log.warning("leader lease: %s", exc)
            self.is_leader = False
            self.store_lost = self.store_lost or isinstance(exc, StoreUnavailable)
        else:
            if self.store_lost:
                self.store_lost = False
                grace_s = self.pool.settings.pool.idle_timeout_s
                self.no_idle_stops_until = time.monotonic() + grace_s
                log.warning("store is back: no idle workspace is stopped for %ss", grace_s)
        self.metrics.leader.set(1 if self.is_leader else 0)
        if not self.is_leader:
            await self._step("follow", self._follow)
            return False
        # The gauges are counted on reconcile's walk, the cycle's one read of every record
        # (so they show the workspaces as the cycle began: a reap's stops appear next time).
        walked: Counter[WorkspaceState] = Counter()
        walk_ok = await self._step(
            "reconcile",
            functools.partial(self.pool.reconcile, seen=lambda w: walked.update([w.state])),
        )
        # Reaping on a store that failed to reconcile could act on stale data: skip it.
        ok = walk_ok and await self._step("reap", self._reap)
        ok = await self._step("scale", functools.partial(self.pool.scale, share=True)) and ok
        ok = await self._step("events", self.pool.trim_events) and ok
        observe = functools.partial(self._observe, walked if walk_ok else None)
        ok = await self._step("status", observe) and ok
        self.metrics.cycles.labels("ok" if ok else "error").inc()
        return True

    async def _step(self, name: str, fn: Callable[[], Awaitable[object]]) -> bool:
        try:
            await fn()
        except Exception as exc:  # one failing step must not stop the loop
            self.metrics.backend_errors.labels(name).inc()
            self.store_lost = self.store_lost or isinstance(exc, StoreUnavailable)
            if isinstance(exc, CodepoolError):
                log.warning("%s failed: %s", name, exc)
            else:
                log.exception("%s failed", name)
            return False
        return True

    async def _reap(self) -> None:
        stop_idle = time.monotonic() >= self.no_idle_stops_until
        for d in await self.pool.reap(stop_idle=stop_idle):
            if d.action is not ReapAction.KEEP and d.done:
                self.metrics.reaps.labels(d.action.value).inc()

    async def _observe(self, walked: Counter[WorkspaceState] | None) -> None:
        status = await self.pool.status(walk=walked is None, share=True)
        figures = self.metrics.observe_status(status, walked)
        # For the other routers' gauges; kept for three cycles, so a leader gone quiet
        # leaves them showing 0 rather than old news.
        await self.pool.store.put_note(FIGURES, json.dumps(figures), self.lease_ms)

    async def _follow(self) -> None:
        """Not the leader: show the leader's figures (0 when there are none)."""
        note = await self.pool.store.get_note(FIGURES)
        try:
            figures = json.loads(note) if note else {}
        except ValueError:
            figures = {}
        self.metrics.observe_figures(figures if isinstance(figures, dict) else {})

    async def stop(self) -> None:
        """Finish the cycle under way, then give the lease back so another router leads."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.is_leader:
            with contextlib.suppress(CodepoolError):
                await self.pool.store.release_lease(LEADER, self.holder)
            self.is_leader = False
            self.metrics.leader.set(0)
