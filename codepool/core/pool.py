"""The CodePool service: the one implementation of every lifecycle step.

The CLI and the daemon both call these methods. The backend is the durable truth;
the store is the index and activity record. Crash safety comes from the
order of writes: a box is tagged with its owner before the store records it, so a crash
in between leaves a state that `reconcile` (or the user's next `assign`) finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from urllib.parse import urlsplit

from codepool.core import events, policy
from codepool.core.backend import Backend, create_backend
from codepool.core.errors import (
    AssignTimeout,
    BackendError,
    Busy,
    InvalidInput,
    NotASpare,
    NoWorkspace,
    PoolFull,
    StartsFull,
    StoreUnavailable,
)
from codepool.core.logs import fields
from codepool.core.models import (
    WHY_GONE,
    WHY_IDLE,
    WHY_MAX_AGE,
    WHY_RELEASED,
    WHY_RETENTION,
    Assignment,
    Census,
    Check,
    Event,
    EventKind,
    Fleet,
    Instance,
    InstanceState,
    Lifecycle,
    PoolStatus,
    ReapAction,
    ReapDecision,
    ReconcileAction,
    ScaleResult,
    Workspace,
    WorkspaceState,
)
from codepool.core.ready import http_ok, wait_ready
from codepool.core.report import Prices, Report, usage
from codepool.core.settings import Settings
from codepool.core.store import PingResult, Store, create_store

log = logging.getLogger("codepool")

Progress = Callable[[str], None]

IN_LINE = "Many workspaces are starting"  # what one waiting for a start is told
LOCKED = "Waiting for a start or stop of this workspace to finish"
START_TTL_MS = 10_000  # a start in flight, or a place in line, lives this long unless renewed
START_POLL_S = 1.0  # how often one in line asks again (and renews their place)
STARTS_FULL_RETRY_S = 15  # what Retry-After says when the start line is not waited in
LOCK_TTL_MS = 10_000  # a user lock lives this long unless renewed; renewed every third of it
# A spare taken from the pool is claimed: it is not put back while the claim lives. While
# it is being tagged (or terminated) the claim lives CLAIMING_TTL_MS at a time, renewed, so
# that one whose router died goes back to the pool at the first leader cycle after that;
# once done it lives CLAIM_TTL_MS, longer than any look at the group taken before.
CLAIMING_TTL_MS = 10_000
CLAIM_TTL_MS = 600_000
POLL_S = 0.25  # how often to look again while waiting for a box
POOL_FULL_RETRY_S = 60
SHARE_S = 5.0  # a look at the group this young, with no change since, serves again


@contextlib.asynccontextmanager
async def _renewing(renew: Callable[[], Awaitable[None]], every_s: float) -> AsyncIterator[None]:
    """Call renew every every_s seconds while the body runs. Stopped by an event, not by
    cancelling it: a cancel that lands inside a store call can be swallowed there (Python
    3.11's timeout and redis-py's retry), and the renewer then kept a lock forever while
    its owner waited for it to end."""
    done = asyncio.Event()

    async def loop() -> None:
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), every_s)
                return
            await renew()

    renewer = asyncio.create_task(loop())
    try:
        yield
    finally:
        done.set()
        with contextlib.suppress(Exception):  # a renewal's own failure was logged
            await renewer


def _running(ws: Workspace | None) -> bool:
    """Whether a record counts as a running workspace (for the report: a box serving)."""
    return ws is not None and ws.state is not WorkspaceState.STOPPED


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _quiet(_: str) -> None:
    return None


class CodePool:
    """Assign, release, reap, scale, reconcile, extend and report one pool."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        backend: Backend,
        clock: Callable[[], int] = _wall_ms,
    ) -> None:
        self.settings = settings
        self.store = store
        self.backend = backend
        self.clock = clock  # epoch ms; tests drive it to control time
        self._launching = asyncio.Lock()  # one capacity read-and-raise at a time here
        self._last_look: tuple[int, float, Fleet] | None = None  # (writes, until, look)
        self._scale_wanted = ""  # why a scale was asked for since the last one began
        self._scaling: asyncio.Task[None] | None = None

    async def close(self) -> None:
        await self.scaled()  # a scale asked for by an assignment finishes first
        await self.store.close()
        await self.backend.close()

    async def _look(self, share: bool = False) -> Fleet:
        """The group and its boxes, read. share: a look taken in the last SHARE_S with no
        change asked of the backend since serves again, so the steps of one cycle
        (reconcile, reap, scale, status) read the group once between them. Reads that
        precede a change or poll for one never share."""
        last = self._last_look
        writes = self.backend.writes  # before the read: a change made during it voids it
        if share and last is not None and last[0] == writes and time.monotonic() < last[1]:
            return last[2]
        fleet = await self.backend.fleet()
        self._last_look = (writes, time.monotonic() + SHARE_S, fleet)
        return fleet

    # -- the per-user lock ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def user_lock(
        self, user: str, wait_s: float, progress: Progress = _quiet
    ) -> AsyncIterator[None]:
        """Hold the user's lock (a renewed lease in the store) so that one assignment or
        stop of that user runs at a time across every process and router. A holder that
        dies releases it within LOCK_TTL_MS."""
        name, holder = f"lock:{user}", secrets.token_hex(8)
        deadline = time.monotonic() + wait_s
        waited = False
        while not await self.store.acquire_lease(name, holder, LOCK_TTL_MS):
            if time.monotonic() >= deadline:
                raise Busy(f"{user}: another assignment or stop of this workspace is under way")
            if not waited:
                progress(LOCKED)
                waited = True
            await asyncio.sleep(POLL_S)
        async with self._held([name], holder):
            yield

    @contextlib.asynccontextmanager
    async def start_slot(self, say: Progress = _quiet, queue: bool = True) -> AsyncIterator[None]:
        """Hold one of pool.max_concurrent_starts starts in flight (a launch or a resume,
        counted in the store across routers) while the body runs; past the limit, wait in
        line, first come first served, saying one's place (queue=False: raise StartsFull
        instead)."""
        limit = self.settings.pool.max_concurrent_starts
        if not limit:
            yield
            return
        ticket = secrets.token_hex(8)
        try:
            shown = 0
            while place := await self.store.take_start(ticket, limit, START_TTL_MS):
                if not queue:
                    raise StartsFull(
                        f"{limit} workspaces are starting; {place} waiting before you: "
                        "try again shortly",
                        STARTS_FULL_RETRY_S,
                    )
                if place != shown:
                    say(f"{IN_LINE}: you are number {place} in line")
                    shown = place
                await asyncio.sleep(START_POLL_S)

            async def renew() -> None:
                with contextlib.suppress(StoreUnavailable):
                    if await self.store.take_start(ticket, limit, START_TTL_MS):
                        log.warning("a start in flight expired: another took its place")

            async with _renewing(renew, START_TTL_MS / 3000):
                yield
        finally:
            with contextlib.suppress(StoreUnavailable):
                await asyncio.shield(self.store.give_back_start(ticket))

    @contextlib.asynccontextmanager
    async def user_locks(self, users: Sequence[str]) -> AsyncIterator[set[str]]:
        """The locks of many users at once, without waiting: yields the users whose lock
        was free (a reap skips the others). One store round trip to take them all, one to
        renew them all, one to give them back."""
        holder = secrets.token_hex(8)
        names = [f"lock:{u}" for u in users]
        got = await self.store.acquire_leases(names, holder, LOCK_TTL_MS)
        held = [n for n, ok in zip(names, got, strict=True) if ok]
        async with self._held(held, holder):
            yield {u for u, ok in zip(users, got, strict=True) if ok}

    @contextlib.asynccontextmanager
    async def _held(self, names: list[str], holder: str) -> AsyncIterator[None]:
        """Keep leases taken by holder renewed while the body runs, then give them back."""

        async def renew() -> None:
            try:
                renewed = await self.store.acquire_leases(names, holder, LOCK_TTL_MS)
            except StoreUnavailable as exc:  # the step itself will meet the outage
                log.warning("could not renew %s: %s", ", ".join(names), exc)
                return
            for name, ok in zip(names, renewed, strict=True):
                if not ok:
                    log.warning("lost %s: it expired and another holder took it", name)

        if not names:
            yield
            return
        try:
            async with _renewing(renew, LOCK_TTL_MS / 3000):
                yield
        finally:
            await self.store.release_leases(names, holder)

    @contextlib.asynccontextmanager
    async def _claimed(self, instance_ids: Sequence[str], user: str) -> AsyncIterator[None]:
        """While the body tags (or terminates) spares this process took from the pool
        (claimed for user, for CLAIMING_TTL_MS), keep their claims alive. Should the
        process die in the body, the claims end soon after and the next cycle's scale puts
        a box that is still an unowned running spare back in the pool, instead of leaving
        it running for nobody for CLAIM_TTL_MS. Once the body is done, the claims are kept
        CLAIM_TTL_MS: a look at the group taken before the tag still shows the box unowned,
        and must not put it back."""

        async def renew() -> None:
            try:
                for iid in instance_ids:
                    if not await self.store.keep_claim(iid, user, CLAIMING_TTL_MS):
                        log.warning("lost the claim on %s: it expired", iid)
            except StoreUnavailable as exc:  # the step itself will meet the outage
                log.warning("could not renew the claim on %s: %s", ", ".join(instance_ids), exc)

        async with _renewing(renew, CLAIMING_TTL_MS / 3000):
            yield
        try:
            for iid in instance_ids:
                await self.store.keep_claim(iid, user, CLAIM_TTL_MS)
        except StoreUnavailable as exc:  # done all the same: the box is tagged (or gone)
            log.warning("could not keep the claim on %s: %s", ", ".join(instance_ids), exc)

    # -- assign ---------------------------------------------------------------------------

    async def assign(
        self, user: str, progress: Progress | None = None, actor: str = "", queue: bool = True
    ) -> Assignment:
        """Give the user their workspace: the running one, their own stopped one resumed,
        a warm spare, or a newly launched box. Raises PoolFull at the group's maximum.
        actor: who asked (the event log's; the person themself when empty). queue=False:
        past pool.max_concurrent_starts, raise StartsFull rather than wait in line."""
        policy.check_user(user)
        say = progress or _quiet
        timeout_s = self.settings.pool.assign_timeout_s
        async with self.user_lock(user, timeout_s, say), contextlib.AsyncExitStack() as starts:
            ws = await self.store.get_workspace(user)
            if (
                ws is not None
                and ws.state is WorkspaceState.RUNNING
                and await http_ok(ws.address, self.backend.ready_path, self.backend.tls)
            ):
                # The user is arriving: count that as activity so a reap does not race them.
                await self.store.record_ping(user, ws.instance_id, self.clock())
                return Assignment(ws, "running")

            fleet = await self._look()
            owned = _own_instance(user, ws, fleet.instances)
            if owned is not None and owned.state is InstanceState.RUNNING and owned.in_service:
                inst, how = owned, "running"
            elif owned is not None:
                await starts.enter_async_context(self.start_slot(say, queue))
                say("Waking up your workspace")
                log.info("resume", **fields(user=user, instance=owned.instance_id))
                inst, how = await self._resume(user, owned, fleet), "resumed"
            else:
                inst, how = await self._claim_box(user, fleet.instances, say, starts, queue)
            now = self.clock()
            same = ws is not None and ws.instance_id == inst.instance_id
            assigned_at = ws.assigned_at_ms if ws is not None and same else now
            # A box that kept running (a record repaired here) keeps its start time.
            kept = ws is not None and same and how == "running" and ws.started_at_ms
            starting = Workspace(
                user,
                inst.instance_id,
                inst.address,
                WorkspaceState.STARTING,
                now,
                assigned_at,
                started_at_ms=ws.started_at_ms if ws is not None and kept else now,
            )
            await self.store.put_workspace(starting)
            await wait_ready(
                inst.address, self.backend.ready_path, timeout_s, say, self.backend.tls
            )
            ready = replace(starting, state=WorkspaceState.RUNNING, last_seen_ms=self.clock())
            await self.store.put_workspace(ready)
        log.info("assign", **fields(user=user, instance=inst.instance_id, how=how))
        if ws is None or ws.state is not WorkspaceState.RUNNING or not same:
            await self._record(EventKind.ASSIGN, ready, actor or user, how)
        self._scale_soon(f"assign of {user}")
        return Assignment(ready, how)

    async def _resume(self, user: str, inst: Instance, fleet: Fleet) -> Instance:
        if inst.lifecycle is Lifecycle.STANDBY:  # returning to service raises desired
            await self._make_room(user, fleet)
        return await self.backend.start(inst.instance_id, seen=inst)

    async def _make_room(self, user: str, fleet: Fleet) -> None:
        """Before a box returns to service at the group's maximum, give up a spare for it."""
        cap = fleet.capacity
        if cap.desired < cap.max_size:
            return
        await self.store.add_spares(i.instance_id for i in fleet.instances if i.is_spare)
        spare = await self.store.claim_spare(user, CLAIMING_TTL_MS)
        if spare is None:
            raise PoolFull(
                f"pool full: all {cap.max_size} workspaces are in use; try again later",
                POOL_FULL_RETRY_S,
            )
        log.info("terminate spare %s: room for %s's workspace to resume", spare, user)
        async with self._claimed([spare], user):
            await self.backend.terminate([spare])

    async def _claim_box(
        self,
        user: str,
        instances: list[Instance],
        say: Progress,
        starts: contextlib.AsyncExitStack,
        queue: bool = True,
    ) -> tuple[Instance, str]:
        """Claim a spare for the user, launching a box if none is free (once this
        assignment holds a start in flight, in starts, when their number is limited)."""
        deadline = time.monotonic() + self.settings.pool.assign_timeout_s
        launched = False  # whether this assignment has asked the group for a box
        may_launch = not self.settings.pool.max_concurrent_starts
        while True:
            iid = await self.store.claim_spare(user, CLAIMING_TTL_MS)
            if iid is not None:
                seen = next((i for i in instances if i.instance_id == iid), None)
                try:
                    async with self._claimed([iid], user):
                        inst = await self.backend.claim(iid, user, seen)
                except NotASpare as exc:  # a stale pool entry: try the next one
                    log.info("spare %s skipped: %s", iid, exc)
                    continue
                # Any other BackendError ends this assignment: going on would drain the
                # pool of good spares while the backend fails (the next cycle's scale puts
                # this one back once its claim has expired).
                return inst, "launched" if launched else "spare"
            census = Census.of(instances)
            free = [i.instance_id for i in census.spares]
            if free and await self.store.add_spares(free):
                continue  # spares the store did not know about yet
            if launched and not census.booting:
                cap = await self.backend.capacity()
                if cap.desired <= census.in_service:
                    launched = False  # the box asked for went to someone else: ask again
            if not launched and not may_launch:
                await starts.enter_async_context(self.start_slot(say, queue))
                may_launch = True
                # The wait in line is not the box's: its time to start counts from here.
                deadline = time.monotonic() + self.settings.pool.assign_timeout_s
                instances = await self.backend.list_instances()
                continue  # a spare may have come meanwhile
            if not launched:
                # Each waiting assignment asks for one box of its own, so ten new users
                # at once get ten boots in parallel, not one after another. The lock keeps
                # this process's waiters from reading the same desired and writing it twice.
                async with self._launching:
                    cap = await self.backend.capacity()
                    if await self._starts_full():
                        pass  # a box another start left booting will do: claimed when up
                    elif cap.desired < cap.max_size:
                        say("Preparing a new workspace")
                        log.info("launch: no spare free", **fields(user=user))
                        await self.backend.set_desired(cap.desired + 1)
                        launched = True
                    elif not census.booting and not await self._coming():
                        # The look above may predate another router's launch: only a
                        # fresh one showing nothing booting and no spare turns them away.
                        raise PoolFull(
                            f"pool full: all {cap.max_size} workspaces are in use; try again later",
                            POOL_FULL_RETRY_S,
                        )
            if time.monotonic() >= deadline:
                raise AssignTimeout(
                    f"no workspace box became free for {user} within "
                    f"{self.settings.pool.assign_timeout_s}s"
                )
            await asyncio.sleep(POLL_S)
            instances = await self.backend.list_instances()

    async def _coming(self) -> bool:
        """Whether a fresh look at the group shows a box booting or a spare free."""
        fresh = Census.of(await self.backend.list_instances())
        return bool(fresh.booting or fresh.spares)

    async def _starts_full(self) -> bool:
        """Whether pool.max_concurrent_starts boxes are booting already. A start in flight
        holds one box at most, but the box it launched may be left booting when another
        spare came first: that box counts until it is up."""
        limit = self.settings.pool.max_concurrent_starts
        if not limit:
            return False
        instances = await self.backend.list_instances()
        return sum(i.state is InstanceState.PENDING for i in instances) >= limit

    # -- release and the stop step --------------------------------------------------------

    async def release(
        self, user: str, terminate: bool = False, actor: str = "", why: str = WHY_RELEASED
    ) -> Workspace:
        """Stop the user's workspace now (per pool.on_idle, or delete it with terminate).
        actor and why are the event log's (the person themself, "released", when empty)."""
        policy.check_user(user)
        async with self.user_lock(user, wait_s=self.settings.pool.assign_timeout_s):
            ws = await self.store.get_workspace(user)
            if ws is None:
                raise NoWorkspace(f"{user} has no workspace")
            if ws.state is WorkspaceState.STOPPED and not terminate:
                raise NoWorkspace(f"{user}'s workspace {ws.instance_id} is already stopped")
            await self.store.put_workspace(replace(ws, state=WorkspaceState.STOPPING))
            kill = terminate or self.settings.pool.on_idle == "terminate"
            failed = await self._stop([ws], terminate=kill)
        if ws.instance_id in failed:
            raise BackendError(f"could not stop {ws.instance_id}: {failed[ws.instance_id]}")
        log.info("release", **fields(user=user, instance=ws.instance_id, terminate=kill))
        kind = EventKind.TERMINATE if kill else EventKind.STOP
        await self._record(kind, ws, actor or user, why)
        await self._scale_after(f"release of {user}")
        return ws

    async def _stop(self, workspaces: Sequence[Workspace], terminate: bool) -> dict[str, str]:
        """The stop step, shared by release and reap: one batched backend call, then the
        store. Returns the instances that failed (left `stopping` for reconcile)."""
        if not workspaces:
            return {}
        ids = [w.instance_id for w in workspaces]
        result = await (self.backend.terminate(ids) if terminate else self.backend.stop(ids))
        now = self.clock()
        done = [w for w in workspaces if w.instance_id in result.succeeded]
        if terminate:
            for ws in done:
                await self.store.delete_workspace(ws.user, ws.instance_id)
        else:
            await self.store.put_workspaces(
                [
                    replace(ws, state=WorkspaceState.STOPPED, stopped_at_ms=now, hold_until_ms=0)
                    for ws in done
                ]
            )
        return dict(result.failed)

    # -- reap -----------------------------------------------------------------------------

    async def reap(
        self, dry_run: bool = False, idle_timeout_s: int | None = None, stop_idle: bool = True
    ) -> list[ReapDecision]:
        """Stop workspaces idle past the timeout or running past pool.max_age_s, and delete
        boxes stopped past retention. A ping that lands before a workspace is marked
        stopping keeps it (compare-and-set; one past its age is stopped the next cycle).
        stop_idle=False does only the retention part (after a store outage, when the
        pings of the outage are lost and nobody can be known to be idle)."""
        p = self.settings.pool
        timeout = p.idle_timeout_s if idle_timeout_s is None else idle_timeout_s
        if timeout < 1:
            raise InvalidInput(f"invalid idle timeout {timeout}: must be at least 1 second")
        now = self.clock()
        limit = self.settings.store.batch_size
        idle = await self.store.idle_workspaces(now - timeout * 1000, limit) if stop_idle else []
        decisions = [policy.reap_decision(w, now, timeout, p.on_idle) for w in idle]
        why = {w.user: WHY_IDLE for w in idle}
        if p.max_age_s:
            # Active or held, it stops all the same: past its age is past its age.
            idle_stops = {d.user for d in decisions if d.action is not ReapAction.KEEP}
            old = await self.store.long_running(now - p.max_age_s * 1000, limit)
            old = [w for w in old if w.user not in idle_stops]
            aged = {w.user for w in old}
            decisions = [d for d in decisions if d.user not in aged]
            decisions += [policy.age_decision(w, now, p.max_age_s, p.on_idle) for w in old]
            idle = [w for w in idle if w.user not in aged] + old
            why.update(dict.fromkeys(aged, WHY_MAX_AGE))
        expired: list[Workspace] = []
        if p.stopped_retention_days:
            cutoff = now - p.stopped_retention_days * 86_400_000
            expired = await self.store.expired_workspaces(cutoff, limit)
            decisions += [
                policy.retention_decision(w, now, p.stopped_retention_days) for w in expired
            ]
        if dry_run:
            return decisions
        by_user = {w.user: w for w in [*idle, *expired]}
        acting = [d for d in decisions if d.action is not ReapAction.KEEP]
        decided = {d.user: d for d in acting}
        outcome: dict[str, ReapDecision] = {}
        # Every step below is one store round trip for the whole batch, not one per
        # workspace: the cost of a cycle follows the number of idle workspaces, cheaply.
        async with self.user_locks([d.user for d in acting]) as held:
            for d in acting:
                if d.user not in held:
                    outcome[d.user] = replace(d, action=ReapAction.KEEP, reason="busy elsewhere")
            mine = [by_user[d.user] for d in acting if d.user in held]
            running = [w for w in mine if w.state is not WorkspaceState.STOPPED]
            marked = await self.store.mark_stopping_many(
                [(w.user, w.instance_id, w.last_seen_ms) for w in running]
            )
            to_stop = [w for w, ok in zip(running, marked, strict=True) if ok]
            for w, ok in zip(running, marked, strict=True):
                if not ok:
                    outcome[w.user] = replace(
                        decided[w.user],
                        action=ReapAction.KEEP,
                        reason="active: pinged during the reap",
                    )
            to_delete: list[Workspace] = []
            for ws in (w for w in mine if w.state is WorkspaceState.STOPPED):
                # Unchanged since read: nobody resumed it meanwhile (few: retention only).
                if await self.store.get_workspace(ws.user) == ws:
                    to_delete.append(ws)
                else:
                    outcome[ws.user] = replace(
                        decided[ws.user], action=ReapAction.KEEP, reason="changed"
                    )
            terminate_idle = p.on_idle == "terminate"
            failed = await self._stop(to_stop, terminate=terminate_idle)
            failed.update(await self._stop(to_delete, terminate=True))
            idle_kind = EventKind.TERMINATE if terminate_idle else EventKind.STOP
            happened = [
                Event(now, idle_kind, w.user, events.REAPER, why[w.user], w.instance_id)
                for w in to_stop
                if w.instance_id not in failed
            ] + [
                Event(now, EventKind.TERMINATE, w.user, events.REAPER, WHY_RETENTION, w.instance_id)
                for w in to_delete
                if w.instance_id not in failed
            ]
            await events.record(self.store, happened)
            for ws in [*to_stop, *to_delete]:
                d = decided[ws.user]
                err = failed.get(ws.instance_id, "")
                outcome[ws.user] = replace(d, done=not err, error=err)
                log.info(
                    "reap user=%s instance=%s action=%s reason=%r error=%r",
                    ws.user,
                    ws.instance_id,
                    d.action.value,
                    d.reason,
                    err,
                )
        if to_stop or to_delete:
            await self._scale_after("reap")
        return [outcome.get(d.user, d) for d in decisions]

    # -- scale ----------------------------------------------------------------------------

    async def scale(self, dry_run: bool = False, share: bool = False) -> ScaleResult:
        """Desired = running assigned boxes + warm spares, clamped; excess spares are
        terminated explicitly (every box is protected, so lowering desired alone would
        terminate nothing). No backend call is made when nothing changes. share: a cycle's
        step, which may use the look its earlier steps took (see _look)."""
        fleet = await self._look(share)
        instances = fleet.instances
        census = Census.of(instances)
        await self.store.add_spares(i.instance_id for i in census.spares)
        pool = await self.store.spares()
        spares = [i for i in census.spares if i.instance_id in pool]
        booting, in_service = census.booting, census.in_service  # booting: spares in a minute
        # Running unowned boxes not in the pool are being claimed right now: assigned.
        assigned = in_service - len(spares) - booting
        cap = fleet.capacity
        p = self.settings.pool
        now = self.clock()
        entry = policy.schedule_entry(p.schedule, now)
        spares_wanted = entry.warm_spares if entry is not None else p.warm_spares
        target = policy.desired_capacity(assigned, spares_wanted, cap.min_size, cap.max_size)
        why = entry.describe() if entry else f"pool.warm_spares: {p.warm_spares} warm spares"
        # A spare launched moments ago is likely an assignment's box about to be claimed:
        # culling it would make that user wait for another. Only older spares are excess.
        young_after = now - p.assign_timeout_s * 1000
        old = [i.instance_id for i in spares if i.launched_at_ms < young_after]
        excess = old[: max(0, len(spares) + booting - max(0, target - assigned))]
        if dry_run:
            desired = min(max(target, in_service - len(excess)), cap.max_size)
            return ScaleResult(cap.desired, desired, tuple(excess), dry_run=True, spares=why)
        taken = [iid for iid in excess if await self.store.take_spare(iid, CLAIMING_TTL_MS)]
        if taken:
            log.info("scale terminate excess spares %s", ", ".join(taken))
            async with self._claimed(taken, ""):
                await self.backend.terminate(taken)
            cap = await self.backend.capacity()
        # Kept boxes stay counted: desired never drops below what is left in service.
        desired = min(max(target, in_service - len(taken)), cap.max_size)
        if cap.desired != desired:
            await self.backend.set_desired(desired)
            log.info("scale desired=%d->%d", cap.desired, desired)
        return ScaleResult(cap.desired, desired, tuple(taken), spares=why)

    async def _scale_after(self, why: str) -> None:
        """Scale after a lifecycle step; its failure must not undo the step that succeeded."""
        try:
            await self.scale()
        except (BackendError, PoolFull) as exc:
            log.warning("scale after %s failed: %s", why, exc)

    def _scale_soon(self, why: str) -> None:
        """Scale after an assignment without making its person wait for it: the spare it
        took is replaced in the background, and assignments that land together share one
        scale (one look at the group for all of them, not one each). close() waits."""
        self._scale_wanted = why
        if self._scaling is None or self._scaling.done():
            self._scaling = asyncio.create_task(self._scale_while_wanted())

    async def scaled(self) -> None:
        """Wait for the scale that assignments asked for, if one is under way. Waiting is
        not cancelled with the waiter, and the scale's own cancellation is not the
        waiter's; what stopped the process in it (never an Exception: those are logged
        there) is raised here."""
        while (task := self._scaling) is not None and not task.done():
            await asyncio.wait([task])
        if task is not None and not task.cancelled() and (exc := task.exception()):
            self._scaling = None  # raised once
            raise exc

    async def _scale_while_wanted(self) -> None:
        while self._scale_wanted:
            why, self._scale_wanted = self._scale_wanted, ""
            try:
                await self._scale_after(why)
            except Exception:  # a task nobody awaits would hide it
                log.exception("scale after %s failed", why)

    # -- extend ---------------------------------------------------------------------------

    async def extend(self, user: str, duration_s: int, actor: str = "") -> Workspace:
        """Hold a running workspace open past idle until duration_s from now, at most
        pool.max_hold_s: each hold replaces the last, so holds never add up beyond that.
        0 ends the hold, and the idle timeout counts from then: "let it stop when idle"
        said of a workspace nobody has used for an hour means in pool.idle_timeout_s, not
        at the next reap (that is what stopping it is for)."""
        policy.check_user(user)
        limit = self.settings.pool.max_hold_s
        if not 0 <= duration_s <= limit:
            raise InvalidInput(
                f"invalid hold {policy.format_duration(duration_s)}: must be from 0s (no "
                f"hold) to {policy.format_duration(limit)} (pool.max_hold_s)"
            )
        ws = await self.store.get_workspace(user)
        if ws is None or ws.state is not WorkspaceState.RUNNING:
            raise NoWorkspace(f"{user} has no running workspace to extend")
        now = self.clock()
        hold = now + duration_s * 1000 if duration_s else 0
        if not await self.store.set_hold(user, ws.instance_id, hold):
            raise NoWorkspace(f"{user}'s workspace stopped or changed; nothing extended")
        if not duration_s:
            await self.store.record_ping(user, ws.instance_id, now)
            ws = replace(ws, last_seen_ms=max(ws.last_seen_ms, now))
        await self._record(EventKind.HOLD, ws, actor or user, str(duration_s))
        return replace(ws, hold_until_ms=hold)

    # -- ping -----------------------------------------------------------------------------

    async def ping(self, user: str, instance_id: str) -> PingResult:
        """Record activity from the user's open tab: one atomic store step."""
        return await self.store.record_ping(user, instance_id, self.clock())

    # -- reconcile ------------------------------------------------------------------------

    async def reconcile(
        self, dry_run: bool = False, seen: Callable[[Workspace], None] | None = None
    ) -> list[ReconcileAction]:
        """Make the store agree with the backend (the truth), in batches. Rebuilt running
        workspaces get a fresh lastSeen: a grace period, not an instant reap. `seen` is
        shown every record of the walk (the leader counts its gauges on it: the one full
        walk of a cycle)."""
        now = self.clock()  # before the list: records written since are newer than it
        instances = (await self._look()).instances
        by_id = {i.instance_id: i for i in instances}
        owned: dict[str, list[Instance]] = defaultdict(list)
        for inst in instances:
            if inst.owner is not None:
                owned[inst.owner].append(inst)
        actions: list[ReconcileAction] = []
        walked: set[str] = set()
        async for batch in self.store.iter_workspaces():
            for ws in batch:
                walked.add(ws.user)
                if seen is not None:
                    seen(ws)
                if max(ws.last_seen_ms, ws.assigned_at_ms, ws.stopped_at_ms) >= now:
                    # Written after the list above was asked for (an assignment finishing,
                    # a ping): the list is older than the record. Judged next cycle.
                    continue
                actions += await self._reconcile_user(
                    ws.user, ws, owned.get(ws.user, []), by_id, now, dry_run
                )
        for user in sorted(set(owned) - walked):
            actions += await self._reconcile_user(user, None, owned[user], by_id, now, dry_run)
        actions += await self._reconcile_spares(instances, dry_run)
        return actions

    async def _reconcile_user(
        self,
        user: str,
        ws: Workspace | None,
        boxes: list[Instance],
        by_id: dict[str, Instance],
        now: int,
        dry_run: bool,
    ) -> list[ReconcileAction]:
        actions: list[ReconcileAction] = []
        # The common case, first and cheap (the walk asks it of every workspace): one box,
        # the one the record names, and the record says what the box says.
        only = boxes[0] if len(boxes) == 1 else None
        if (
            ws is not None
            and only is not None
            and only.instance_id == ws.instance_id
            and not _half_stopped(only)
            and _expected(ws, only, now) is ws
        ):
            return actions
        inst = by_id.get(ws.instance_id) if ws is not None else None
        if inst is not None and inst.owner != user:
            inst = None
        keep = inst or _pick_box(boxes)
        want = _expected(ws, keep, now) if keep is not None else None
        extras = [b for b in boxes if keep is None or b.instance_id != keep.instance_id]
        half = _half_stopped(keep) if keep is not None else ""
        if want == ws and not half and not any(_serving(b) for b in extras):
            return actions  # consistent: no lock, no write
        if want is None and ws is not None:
            actions.append(ReconcileAction("clear", user, f"instance {ws.instance_id} is gone"))
        elif want != ws and keep is not None:
            what = "rebuild" if ws is None else "fix"
            now_state = want.state.value if want else "?"
            actions.append(ReconcileAction(what, user, f"{keep.instance_id} is {now_state}"))
        if half and keep is not None:
            actions.append(ReconcileAction("finish-stop", keep.instance_id, half))
        running_extras = [b for b in extras if _serving(b)]
        for b in extras:
            actions.append(
                ReconcileAction(
                    "duplicate",
                    user,
                    f"{user} also owns {b.instance_id} ({b.state.value}); "
                    + ("stopping it, disk kept" if _serving(b) else "kept, disk untouched"),
                )
            )
        if dry_run:
            return actions
        try:
            async with self.user_lock(user, wait_s=0):
                if await self.store.get_workspace(user) != ws:
                    # An assignment, stop or ping landed after the list was read: this view
                    # is stale for the user. The next cycle looks again.
                    return [replace(a, detail=a.detail + " (skipped: changed)") for a in actions]
                if half and keep is not None:  # a stop or resume cut short: stop it properly
                    await self.backend.stop([keep.instance_id])
                if running_extras:
                    await self.backend.stop([b.instance_id for b in running_extras])
                if want is None and ws is not None:
                    await self.store.delete_workspace(user, ws.instance_id)
                elif want is not None and want != ws:
                    await self.store.put_workspace(want)
                await self._record_found(ws, want)
        except Busy:
            return [replace(a, detail=a.detail + " (skipped: busy)") for a in actions]
        return [replace(a, done=True) for a in actions]

    async def _reconcile_spares(
        self, instances: Iterable[Instance], dry_run: bool
    ) -> list[ReconcileAction]:
        instances = list(instances)
        free = {i.instance_id for i in instances if i.is_spare}
        dead = [i.instance_id for i in instances if i.owner is None and not i.in_service]
        untagged = [i.instance_id for i in instances if not i.tagged and i.owner is None]
        pool = await self.store.spares()
        if pool - free or dead:
            # The list is older than the pool read: a box launched meanwhile is in the pool
            # but not the list, and a box seen starting may be someone's by now. Dropping
            # or deleting on that view would take a box from an assignment under way, so
            # both are decided again on a list taken after the pool was read.
            fresh = {i.instance_id: i for i in await self.backend.list_instances()}
            free |= {iid for iid, i in fresh.items() if i.is_spare}
            dead = [
                d
                for d in dead
                if (i := fresh.get(d)) is not None and i.owner is None and not i.in_service
            ]
        actions = [ReconcileAction("tag-unassigned", iid, "no Owner tag") for iid in untagged]
        actions += [ReconcileAction("add-spare", iid, "running, unowned") for iid in free - pool]
        actions += [
            ReconcileAction("drop-spare", iid, "not a running spare") for iid in pool - free
        ]
        actions += [ReconcileAction("terminate", iid, "unowned and stopped") for iid in dead]
        if dry_run or not actions:
            return actions
        if untagged:
            await self.backend.label_spares(untagged)
        await self.store.remove_spares(pool - free)
        await self.store.add_spares(free - pool)
        if dead:
            log.info("reconcile terminate unowned stopped boxes %s", ", ".join(dead))
            await self.backend.terminate(dead)
        return [replace(a, done=True) for a in actions]

    # -- the event log --------------------------------------------------------------------

    async def report(self, since_ms: int, until_ms: int) -> Report:
        """Usage and savings from since_ms to until_ms, from the event log (the events
        before since_ms say what was running when the period began)."""
        c = self.settings.cost
        shape = await self.backend.box_shape()
        prices = Prices(
            running_hour=c.running_hour_price,
            storage_gb_month=c.storage_gb_month_price,
            disk_gb=c.disk_gb or shape.disk_gb,
            currency=c.currency,
            instance_type=shape.instance_type,
        )
        oldest = until_ms - self.settings.store.events_retention_days * 86_400_000
        found = [e async for e in events.read(self.store, min(oldest, since_ms), until_ms)]
        return usage(found, since_ms, until_ms, prices)

    async def trim_events(self) -> int:
        """Delete the events older than store.events_retention_days; how many."""
        days = self.settings.store.events_retention_days
        return await self.store.trim_events(self.clock() - days * 86_400_000)

    async def _record(self, kind: EventKind, ws: Workspace, actor: str, detail: str) -> None:
        await events.record(
            self.store, [Event(self.clock(), kind, ws.user, actor, detail, ws.instance_id)]
        )

    async def _record_found(self, before: Workspace | None, after: Workspace | None) -> None:
        """What reconcile found, as the report counts it: a workspace that stopped running
        without a stop of ours (its box stopped or vanished), or that runs again."""
        was, now = _running(before), _running(after)
        if was and not now and before is not None:
            kind = EventKind.STOP if after is not None else EventKind.TERMINATE
            await self._record(kind, before, "reconcile", WHY_GONE)
        elif now and not was and after is not None:
            await self._record(EventKind.ASSIGN, after, "reconcile", "found")

    # -- doctor ---------------------------------------------------------------------------

    async def doctor(self) -> list[Check]:
        """Check a deployment: the store answers, the backend answers and is set up safely."""
        found = [Check("config", True, self.settings.source)]
        try:
            await self.store.check()
            found.append(Check("store", True, "answers"))
        except StoreUnavailable as exc:
            found.append(Check("store", False, str(exc)))
        if self.settings.pool.backend == "local" and (
            exposed := _store_open_to_workspaces(self.settings.store_url)
        ):
            found.append(Check("store from workspaces", False, exposed))
        if self.settings.pool.backend == "aws" and self.settings.store_url.startswith("redis://"):
            found.append(
                Check(
                    "store TLS",
                    False,
                    "store.url is redis://: across a network, use rediss:// (TLS), or every "
                    "session and password hash crosses it in clear",
                )
            )
        if self.settings.router.auth == "jwt":
            j = self.settings.jwt
            found.append(Check("jwt", True, f"issuer {j.issuer}, audience {j.audience}"))
        try:
            cap = await self.backend.capacity()
            found.append(
                Check(
                    "backend",
                    True,
                    f"desired {cap.desired} (min {cap.min_size}, max {cap.max_size})",
                )
            )
            found += await self.backend.checks()
        except BackendError as exc:
            found.append(Check("backend", False, str(exc)))
        return found

    async def apply_alarms(self, topic_arn: str, dry_run: bool) -> list[dict[str, object]]:
        """Create the two CloudWatch alarms of `codepool status`'s warnings (AWS only)."""
        apply = getattr(self.backend, "apply_alarms", None)
        if apply is None:
            raise InvalidInput(
                f"alarms are CloudWatch alarms: they need pool.backend = 'aws' "
                f"(this pool is {self.settings.pool.backend!r})"
            )
        result: list[dict[str, object]] = await apply(topic_arn, dry_run)
        return result

    # -- status ---------------------------------------------------------------------------

    async def status(self, walk: bool = True, share: bool = False) -> PoolStatus:
        """Pool numbers, one row per workspace, and the two capacity warnings. walk=False
        leaves out the rows (the store is not read); share: as for scale."""
        fleet = await self._look(share)
        instances, cap = fleet.instances, fleet.capacity
        workspaces: list[Workspace] = []
        if walk:
            async for batch in self.store.iter_workspaces():
                workspaces.extend(batch)
            workspaces.sort(key=lambda w: w.user)
        in_service = sum(1 for i in instances if i.in_service)
        return PoolStatus(
            capacity=cap,
            in_service=in_service,
            pending=sum(1 for i in instances if i.state is InstanceState.PENDING),
            standby=sum(1 for i in instances if i.lifecycle is Lifecycle.STANDBY),
            running=sum(1 for i in instances if i.state is InstanceState.RUNNING),
            stopped=sum(1 for i in instances if i.state is InstanceState.STOPPED),
            spares=sum(1 for i in instances if i.is_spare),
            workspaces=tuple(workspaces),
            warnings=policy.capacity_warnings(cap, in_service),
            now_ms=self.clock(),
        )


def _own_instance(user: str, ws: Workspace | None, instances: list[Instance]) -> Instance | None:
    """The box that holds the user's disk: the one the store names if the backend agrees,
    else any box tagged with the user (the store may have been lost)."""
    boxes = [i for i in instances if i.owner == user]
    if ws is not None:
        for b in boxes:
            if b.instance_id == ws.instance_id:
                return b
    return _pick_box(boxes)


def _half_stopped(box: Instance) -> str:
    """Why a box stands half-way between running and stopped ('' if it does not): a dead
    process still in service, or a box left running in standby by a stop or a resume that
    was cut short. Finishing the stop is always safe: the disk and the owner stay."""
    if box.state is InstanceState.STOPPED and box.lifecycle is Lifecycle.IN_SERVICE:
        return "stopped but still in service"
    if box.state is InstanceState.RUNNING and box.lifecycle is Lifecycle.STANDBY:
        return "running in standby"
    return ""


def _serving(box: Instance) -> bool:
    return box.in_service or box.state is InstanceState.RUNNING


def _pick_box(boxes: list[Instance]) -> Instance | None:
    """Of a user's boxes, the one to keep: a running one first, then the newest."""
    if not boxes:
        return None
    return max(boxes, key=lambda b: (b.state is InstanceState.RUNNING, b.launched_at_ms))


def _expected(ws: Workspace | None, inst: Instance, now: int) -> Workspace:
    """The record the store should hold for the user's box, as the backend sees it."""
    running = inst.state is InstanceState.RUNNING and inst.in_service
    state = WorkspaceState.RUNNING if running else WorkspaceState.STOPPED
    if ws is not None and ws.instance_id == inst.instance_id and ws.state is state:
        return ws
    base = ws if ws is not None and ws.instance_id == inst.instance_id else None
    return Workspace(
        user=inst.owner or "",
        instance_id=inst.instance_id,
        address=inst.address,
        state=state,
        last_seen_ms=now if running else (base.last_seen_ms if base else now),
        assigned_at_ms=base.assigned_at_ms if base else now,
        hold_until_ms=0,
        stopped_at_ms=0
        if running
        else (base.stopped_at_ms if base and base.stopped_at_ms else now),
        started_at_ms=(
            base.started_at_ms
            if base and base.state is not WorkspaceState.STOPPED and base.started_at_ms
            else now
        )
        if running
        else 0,
    )


def _store_open_to_workspaces(url: str) -> str:
    """Why local workspaces could write the store ('' if they cannot): a Redis on this
    machine's loopback without a password is open to every process here, workspaces'
    included (they share the machine's network), and the store holds the accounts."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or parts.password:
        return ""
    if (parts.hostname or "localhost") not in ("localhost", "127.0.0.1", "::1"):
        return ""
    return (
        f"store.url {parts.scheme}://{parts.netloc}: a Redis on this machine without a "
        "password; local workspaces can reach it: set a password (requirepass, and "
        "redis://:PASSWORD@host/0) or use a Unix socket (unix://) in a folder only the "
        "router can enter"
    )


def build_pool(settings: Settings) -> CodePool:
    """The pool the settings describe: its store and backend, nothing started yet. The
    backend first: a setting it refuses (local.isolation, local.network) must leave
    nothing behind, not even a new store file."""
    backend = create_backend(settings)
    store = create_store(
        settings.store_url,
        key_prefix=settings.store.key_prefix,
        batch_size=settings.store.batch_size,
    )
    return CodePool(settings, store, backend)
