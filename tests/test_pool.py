"""The CodePool core against named fakes (MemoryBackend and friends), with a controlled
clock. Each lifecycle invariant of the issue has a test that fails when it breaks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from codepool.core.errors import (
    AssignTimeout,
    BackendError,
    Busy,
    InvalidInput,
    NoWorkspace,
    PoolFull,
)
from codepool.core.models import (
    Capacity,
    Fleet,
    Instance,
    InstanceState,
    Lifecycle,
    ReapAction,
    WorkspaceState,
)
from codepool.core.pool import CodePool
from codepool.core.store import PingResult, Store
from codepool.core.stores.sqlite import SQLiteStore
from tests.aws_fixtures import GROUP, LoopbackAwsBackend, aws_settings, record
from tests.fakes import (
    BootingBackend,
    FailingStopBackend,
    MemoryBackend,
    NeverReadyBackend,
    SlowBackend,
)
from tests.helpers import one_box_each

MIN = 60_000


class Clock:
    """Epoch ms that moves only when a test says so."""

    def __init__(self, now: int = 1_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


@pytest.fixture
async def sqlite(tmp_path: Path) -> SQLiteStore:
    return SQLiteStore(str(tmp_path / "pool.db"))


@pytest.fixture
def clock() -> Clock:
    return Clock(int(time.time() * 1000))


class MotoBackend(LoopbackAwsBackend):
    """The real AWS backend on moto, readable the way these tests read MemoryBackend."""

    @property
    def boxes(self) -> dict[str, Instance]:
        return {i.instance_id: i for i in self._instances()}

    @property
    def desired(self) -> int:
        return self._group()["DesiredCapacity"]


Group = MemoryBackend | MotoBackend


@pytest.fixture(params=["memory", "aws"])
def backend(request: pytest.FixtureRequest, ready_address: str) -> Group:
    """The core's lifecycle tests run on the in-memory fake and on the AWS backend (moto,
    with every AWS call checked against AWS's rules)."""
    if request.param == "memory":
        return MemoryBackend(ready_address, max_size=4)
    session = request.getfixturevalue("moto_aws")
    session.client("autoscaling").update_auto_scaling_group(AutoScalingGroupName=GROUP, MaxSize=4)
    moto = MotoBackend(aws_settings(), ready_address, session=session)
    record(moto, session)
    return moto


@pytest.fixture
def memory_backend(ready_address: str) -> MemoryBackend:
    """For tests that look at the fake's own records (its call log) or change it by hand."""
    return MemoryBackend(ready_address, max_size=4)


@pytest.fixture
async def pool(
    make_pool: Callable[..., CodePool], sqlite: SQLiteStore, backend: Group, clock: Clock
) -> AsyncIterator[CodePool]:
    """The pool, whose scale in the background (after an assignment) ends before the
    backend does: on moto, a scale still running when the mock ended failed inside it."""
    pool = make_pool(sqlite, backend, clock)
    yield pool
    await pool.scaled()


@pytest.fixture
async def memory_pool(
    make_pool: Callable[..., CodePool],
    sqlite: SQLiteStore,
    memory_backend: MemoryBackend,
    clock: Clock,
) -> AsyncIterator[CodePool]:
    pool = make_pool(sqlite, memory_backend, clock)
    yield pool
    await pool.scaled()


def running_boxes(backend: Group, user: str) -> list[str]:
    return [
        b.instance_id
        for b in backend.boxes.values()
        if b.owner == user and b.state is InstanceState.RUNNING
    ]


async def test_assign_launches_then_keeps_a_warm_spare(pool: CodePool, backend: Group) -> None:
    a = await pool.assign("alice")
    assert a.how == "launched"
    assert a.workspace.state is WorkspaceState.RUNNING
    assert backend.boxes[a.workspace.instance_id].owner == "alice"
    await pool.scaled()  # the spare is replaced after the assignment returns
    spares = [b for b in backend.boxes.values() if b.is_spare]
    assert len(spares) == 1 and backend.desired == 2  # running assigned + 1 warm spare
    b = await pool.assign("bob")
    assert b.how == "spare" and b.workspace.instance_id == spares[0].instance_id


async def test_assign_twice_returns_the_same_running_workspace(pool: CodePool) -> None:
    first = await pool.assign("alice")
    second = await pool.assign("alice")
    assert second.how == "running"
    assert second.workspace.instance_id == first.workspace.instance_id


async def test_release_then_assign_resumes_the_same_box(pool: CodePool, backend: Group) -> None:
    first = await pool.assign("alice")
    iid = first.workspace.instance_id
    stopped = await pool.release("alice")
    assert stopped.instance_id == iid
    box = backend.boxes[iid]
    assert box.owner == "alice" and box.lifecycle is Lifecycle.STANDBY  # disk kept, owner kept
    again = await pool.assign("alice")
    assert again.how == "resumed" and again.workspace.instance_id == iid
    assert again.workspace.assigned_at_ms == first.workspace.assigned_at_ms


async def test_release_terminate_deletes_the_box(pool: CodePool, backend: Group) -> None:
    iid = (await pool.assign("alice")).workspace.instance_id
    await pool.release("alice", terminate=True)
    assert iid not in backend.boxes
    assert await pool.store.get_workspace("alice") is None
    with pytest.raises(NoWorkspace):
        await pool.release("alice")


async def test_a_stopped_disk_is_never_given_to_another_user(
    make_pool: Callable[..., CodePool], sqlite: SQLiteStore, ready_address: str
) -> None:
    backend = MemoryBackend(ready_address, max_size=2)
    pool = make_pool(sqlite, backend, pool={"warm_spares": 0})
    alice = (await pool.assign("alice")).workspace.instance_id
    await pool.release("alice")
    bob = (await pool.assign("bob")).workspace.instance_id
    assert bob != alice
    assert backend.boxes[alice].owner == "alice"
    # Even when the store forgets alice entirely, her box is not a spare for carol.
    await sqlite.delete_workspace("alice", alice)
    await sqlite.add_spares([alice])
    carol = (await pool.assign("carol")).workspace.instance_id
    assert carol not in (alice, bob)
    assert backend.boxes[alice].owner == "alice"


async def test_pool_full_at_max(
    make_pool: Callable[..., CodePool], sqlite: SQLiteStore, ready_address: str
) -> None:
    pool = make_pool(sqlite, MemoryBackend(ready_address, max_size=2))
    await pool.assign("alice")
    await pool.assign("bob")
    with pytest.raises(PoolFull) as info:
        await pool.assign("carol")
    assert info.value.retry_after_s > 0
    assert await sqlite.get_workspace("carol") is None


class LaunchedElsewhereBackend(BootingBackend):
    """Another router raises desired to the group's maximum just after this one looked at
    the group, before it reads the capacity: the box launched is booting, and this
    router's look does not show it."""

    def __init__(self, address: str, boot_s: float, **kw: int) -> None:
        super().__init__(address, boot_s, **kw)
        self.looking = False
        self.launched_elsewhere = False

    async def fleet(self) -> Fleet:
        self.looking = True
        try:
            return await super().fleet()
        finally:
            self.looking = False

    async def capacity(self) -> Capacity:
        if not self.looking and not self.launched_elsewhere:
            self.launched_elsewhere = True
            await self.set_desired(self.max_size)
        return await super().capacity()


async def test_a_box_launched_elsewhere_since_the_look_is_waited_for_not_pool_full(
    make_pool: Callable[..., CodePool], sqlite: SQLiteStore, ready_address: str
) -> None:
    """At the group's maximum with nothing booting in its look, an assignment says "pool
    full" only after a fresh look shows nothing booting and no spare: a look taken before
    another router's launch must not turn a person away from the box about to be free
    (seen under load: eight people, ten boxes at most, and one of them told "pool full")."""
    backend = LaunchedElsewhereBackend(ready_address, boot_s=0.3, max_size=1)
    pool = make_pool(sqlite, backend, pool={"warm_spares": 0})
    got = await pool.assign("alice")
    assert backend.launched_elsewhere and got.workspace.state is WorkspaceState.RUNNING
    with pytest.raises(PoolFull):  # and a pool that is full still says so
        await pool.assign("bob")
    await pool.scaled()


async def test_resume_at_max_gives_up_a_spare(
    make_pool: Callable[..., CodePool], sqlite: SQLiteStore, ready_address: str
) -> None:
    backend = MemoryBackend(ready_address, max_size=2)
    pool = make_pool(sqlite, backend)
    await pool.assign("alice")
    await pool.release("alice")
    await pool.assign("bob")  # bob takes the spare; scale launches another: desired 2 = max
    await pool.scaled()
    assert backend.desired == 2
    a = await pool.assign("alice")  # resume needs room: the spare is terminated for it
    assert a.how == "resumed"
    assert backend.desired == 2
    assert not [b for b in backend.boxes.values() if b.is_spare]


async def test_assign_times_out_when_the_box_never_answers(
    make_pool: Callable[..., CodePool], sqlite: SQLiteStore, ready_address: str
) -> None:
    pool = make_pool(sqlite, NeverReadyBackend(ready_address), pool={"assign_timeout_s": 1})
    with pytest.raises(AssignTimeout, match="did not answer"):
        await pool.assign("alice")
    # The box is alice's (tagged first), so her next assign finds it instead of another.
    ws = await sqlite.get_workspace("alice")
    assert ws is not None and ws.state is WorkspaceState.STARTING


async def test_invalid_user_changes_nothing(
    memory_pool: CodePool, memory_backend: MemoryBackend
) -> None:
    for bad in ["", "Alice", "../etc", "a b", "x" * 65, "a;rm -rf /", "-lead", "é"]:
        with pytest.raises(InvalidInput, match="invalid user name"):
            await memory_pool.assign(bad)
    assert memory_backend.calls == []


async def test_reap_stops_only_idle_workspaces(
    memory_pool: CodePool, memory_backend: MemoryBackend, clock: Clock
) -> None:
    alice = (await memory_pool.assign("alice")).workspace
    clock.advance(2 * MIN)
    bob = (await memory_pool.assign("bob")).workspace
    clock.advance(4 * MIN)  # alice idle 6 min, bob 4 min
    dry = await memory_pool.reap(dry_run=True)
    assert [(d.user, d.action) for d in dry] == [("alice", ReapAction.STOP)]
    assert "idle 6m00s > 5m00s" in dry[0].reason and not dry[0].done
    assert (
        memory_backend.boxes[alice.instance_id].state is InstanceState.RUNNING
    )  # dry: nothing done
    done = await memory_pool.reap()
    assert [(d.user, d.action, d.done) for d in done] == [("alice", ReapAction.STOP, True)]
    assert memory_backend.boxes[alice.instance_id].lifecycle is Lifecycle.STANDBY
    assert memory_backend.boxes[bob.instance_id].state is InstanceState.RUNNING
    stopped = await memory_pool.store.get_workspace("alice")
    assert stopped is not None and stopped.state is WorkspaceState.STOPPED
    # Idle stop on AWS order: standby happens inside stop(); the group shrinks afterwards.
    assert ("stop", (alice.instance_id,)) in memory_backend.calls


async def test_reap_respects_a_hold(pool: CodePool, clock: Clock) -> None:
    await pool.assign("alice")
    await pool.extend("alice", 3600)
    clock.advance(30 * MIN)
    [d] = await pool.reap()
    assert d.action is ReapAction.KEEP and d.reason.startswith("held for another 30m")
    clock.advance(31 * MIN)
    [d] = await pool.reap()
    assert d.action is ReapAction.STOP and d.done


async def test_ending_a_hold_counts_idle_from_then(pool: CodePool, clock: Clock) -> None:
    """A workspace held through an hour with no tab open is not stopped at the next reap
    when its hold is ended ("let it stop when idle"): idle counts from the end of the hold."""
    await pool.assign("alice")
    await pool.extend("alice", 3600)
    clock.advance(50 * MIN)  # no tab all along: last seen 50 minutes ago
    ws = await pool.extend("alice", 0)
    assert ws.last_seen_ms == pool.clock()
    clock.advance(4 * MIN)
    assert await pool.reap() == []  # not idle long enough: nothing to do
    clock.advance(2 * MIN)  # five minutes (the idle timeout) after the hold ended
    [d] = await pool.reap()
    assert d.action is ReapAction.STOP and d.done


async def test_a_hold_is_bounded_from_now_and_never_adds_up(pool: CodePool, clock: Clock) -> None:
    with pytest.raises(NoWorkspace):
        await pool.extend("alice", 60)
    await pool.assign("alice")
    with pytest.raises(InvalidInput, match="to 8h00m"):
        await pool.extend("alice", 9 * 3600)
    with pytest.raises(InvalidInput):
        await pool.extend("alice", -1)
    ws = await pool.extend("alice", 8 * 3600)
    assert ws.hold_until_ms == pool.clock() + 8 * 3600 * 1000
    clock.advance(3600 * 1000)
    ws = await pool.extend("alice", 8 * 3600)  # again an hour later: from now, not added
    assert ws.hold_until_ms == pool.clock() + 8 * 3600 * 1000
    ws = await pool.extend("alice", 0)  # no hold
    assert ws.hold_until_ms == 0
    stored = await pool.store.get_workspace("alice")
    assert stored is not None and stored.hold_until_ms == 0


async def test_reap_idle_timeout_override_and_bad_value(pool: CodePool, clock: Clock) -> None:
    await pool.assign("alice")
    clock.advance(61_000)
    assert await pool.reap(dry_run=True) == []
    [d] = await pool.reap(dry_run=True, idle_timeout_s=60)
    assert d.action is ReapAction.STOP
    with pytest.raises(InvalidInput):
        await pool.reap(idle_timeout_s=0)


class PingDuringReap:
    """A store whose mark_stopping lets a ping land first: the ping-vs-reap race, on purpose."""

    def __init__(self, inner: Store, clock: Clock) -> None:
        self.inner = inner
        self.clock = clock

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def mark_stopping_many(self, items: Sequence[tuple[str, str, int]]) -> list[bool]:
        for user, instance_id, _ in items:
            assert await self.inner.record_ping(user, instance_id, self.clock()) is PingResult.OK
        return await self.inner.mark_stopping_many(items)


async def test_a_ping_racing_a_reap_wins(
    make_pool: Callable[..., CodePool], store: Store, memory_backend: MemoryBackend, clock: Clock
) -> None:
    pool = make_pool(PingDuringReap(store, clock), memory_backend, clock)
    alice = (await pool.assign("alice")).workspace
    clock.advance(10 * MIN)
    [d] = await pool.reap()
    assert d.action is ReapAction.KEEP and "pinged during the reap" in d.reason
    assert memory_backend.boxes[alice.instance_id].state is InstanceState.RUNNING
    assert not [c for c in memory_backend.calls if c[0] == "stop"]
    ws = await store.get_workspace("alice")
    assert ws is not None and ws.state is WorkspaceState.RUNNING


async def test_a_ping_after_the_reap_decision_is_refused(pool: CodePool, clock: Clock) -> None:
    alice = (await pool.assign("alice")).workspace
    clock.advance(10 * MIN)
    await pool.reap()
    # The tab pings after its box was stopped: 409 in the router, never a revival.
    assert await pool.ping("alice", alice.instance_id) is PingResult.NOT_RUNNING


async def test_reap_skips_a_user_whose_lock_is_held(pool: CodePool, clock: Clock) -> None:
    await pool.assign("alice")
    clock.advance(10 * MIN)
    async with pool.user_lock("alice", wait_s=0):
        [d] = await pool.reap()
    assert d.action is ReapAction.KEEP and d.reason == "busy elsewhere"
    with pytest.raises(Busy):
        async with pool.user_lock("alice", wait_s=0), pool.user_lock("alice", wait_s=0.3):
            pass


async def test_retention_deletes_old_stopped_boxes(
    pool: CodePool, backend: Group, clock: Clock
) -> None:
    iid = (await pool.assign("alice")).workspace.instance_id
    await pool.release("alice")
    clock.advance(29 * 86_400_000)
    assert [d.action for d in await pool.reap()] == []
    clock.advance(2 * 86_400_000)
    [d] = await pool.reap()
    assert d.action is ReapAction.TERMINATE and d.done and "retention 30d" in d.reason
    assert iid not in backend.boxes
    assert await pool.store.get_workspace("alice") is None


async def test_failed_stop_is_reported_and_left_for_reconcile(
    make_pool: Callable[..., CodePool], sqlite: SQLiteStore, ready_address: str, clock: Clock
) -> None:
    backend = FailingStopBackend(ready_address, fail=set())
    pool = make_pool(sqlite, backend, clock)
    a = (await pool.assign("alice")).workspace
    b = (await pool.assign("bob")).workspace
    backend.fail = {a.instance_id}
    clock.advance(10 * MIN)
    decisions = {d.user: d for d in await pool.reap()}
    assert decisions["alice"].error == "injected failure" and not decisions["alice"].done
    assert decisions["bob"].done  # one failure does not stop the others
    stuck = await sqlite.get_workspace("alice")
    assert stuck is not None and stuck.state is WorkspaceState.STOPPING
    actions = await pool.reconcile()
    assert [(x.kind, x.subject) for x in actions] == [("fix", "alice")]
    fixed = await sqlite.get_workspace("alice")
    assert fixed is not None and fixed.state is WorkspaceState.RUNNING
    assert fixed.last_seen_ms == clock.now  # a grace period, not an instant reap
    assert b.instance_id in backend.boxes


async def test_scale_terminates_excess_spares_and_makes_no_call_when_settled(
    make_pool: Callable[..., CodePool], sqlite: SQLiteStore, memory_backend: MemoryBackend
) -> None:
    pool = make_pool(sqlite, memory_backend, pool={"warm_spares": 1})
    await memory_backend.set_desired(3)  # three spares where one is wanted
    result = await pool.scale(dry_run=True)
    assert (result.desired_before, result.desired_after, len(result.terminated_spares)) == (3, 1, 2)
    assert len(memory_backend.boxes) == 3
    result = await pool.scale()
    assert result.desired_after == 1 and len(result.terminated_spares) == 2
    assert len(memory_backend.boxes) == 1 and memory_backend.desired == 1
    memory_backend.calls.clear()
    result = await pool.scale()
    assert not result.changed
    assert [c[0] for c in memory_backend.calls] == ["list"]


async def test_reconcile_rebuilds_a_lost_store_with_a_grace_period(
    make_pool: Callable[..., CodePool],
    backend: Group,
    clock: Clock,
    tmp_path: Path,
) -> None:
    pool = make_pool(SQLiteStore(str(tmp_path / "a.db")), backend, clock)
    alice = (await pool.assign("alice")).workspace
    bob = (await pool.assign("bob")).workspace
    await pool.release("bob")
    clock.advance(60 * MIN)
    lost = make_pool(SQLiteStore(str(tmp_path / "empty.db")), backend, clock)  # Redis flushed
    dry = await lost.reconcile(dry_run=True)
    assert {(a.kind, a.subject) for a in dry} >= {("rebuild", "alice"), ("rebuild", "bob")}
    assert await lost.store.get_workspace("alice") is None
    await lost.reconcile()
    a = await lost.store.get_workspace("alice")
    b = await lost.store.get_workspace("bob")
    assert a is not None and a.instance_id == alice.instance_id
    assert a.state is WorkspaceState.RUNNING and a.last_seen_ms == clock.now
    assert b is not None and b.instance_id == bob.instance_id and b.state is WorkspaceState.STOPPED
    assert await lost.reap() == []  # grace: nothing reaped right after the rebuild
    spare = [x.instance_id for x in backend.boxes.values() if x.is_spare]
    assert await lost.store.spares() == set(spare)
    assert await lost.reconcile() == []  # and then it is settled
    await pool.scaled()  # ended before the backend is (on moto, before the mock ends)
    await lost.scaled()


async def test_reconcile_clears_vanished_and_resolves_two_boxes_without_losing_either(
    memory_pool: CodePool, memory_backend: MemoryBackend, clock: Clock
) -> None:
    first = (await memory_pool.assign("alice")).workspace.instance_id
    await memory_pool.scaled()
    # A crash mid-assign left alice a second box (tagged, never recorded).
    spare = next(b.instance_id for b in memory_backend.boxes.values() if b.is_spare)
    await memory_backend.claim(spare, "alice")
    clock.advance(1000)  # reconcile judges records older than its list of boxes
    actions = await memory_pool.reconcile()
    dup = [a for a in actions if a.kind == "duplicate"]
    assert len(dup) == 1 and spare in dup[0].detail and dup[0].done
    assert memory_backend.boxes[spare].owner == "alice"  # disk kept
    assert memory_backend.boxes[spare].lifecycle is Lifecycle.STANDBY  # no longer running
    assert memory_backend.boxes[first].state is InstanceState.RUNNING
    assert running_boxes(memory_backend, "alice") == [first]
    # A box that vanished (deleted outside codepool) is cleared from the store.
    del memory_backend.boxes[first]
    actions = await memory_pool.reconcile()
    assert ("rebuild", "alice") in [(a.kind, a.subject) for a in actions] or (
        "fix",
        "alice",
    ) in [(a.kind, a.subject) for a in actions]
    ws = await memory_pool.store.get_workspace("alice")
    assert ws is not None and ws.instance_id == spare and ws.state is WorkspaceState.STOPPED


async def test_crash_between_tag_and_store_write_is_finished_by_the_next_assign(
    pool: CodePool, backend: Group, sqlite: SQLiteStore
) -> None:
    await pool.assign("bob")
    await pool.scaled()
    spare = next(b.instance_id for b in backend.boxes.values() if b.is_spare)
    await sqlite.claim_spare("alice", 60_000)
    await backend.claim(spare, "alice")  # ...and the process died here
    a = await pool.assign("alice")
    assert a.workspace.instance_id == spare and a.how == "running"
    assert running_boxes(backend, "alice") == [spare]


async def test_status_counts_and_warnings(
    make_pool: Callable[..., CodePool], sqlite: SQLiteStore, ready_address: str
) -> None:
    backend = MemoryBackend(ready_address, max_size=3)
    pool = make_pool(sqlite, backend)
    await pool.assign("alice")
    await pool.assign("bob")
    await pool.release("bob")
    await pool.scaled()
    s = await pool.status()
    assert (s.capacity.desired, s.in_service, s.standby, s.spares) == (2, 2, 1, 1)
    assert [w.user for w in s.workspaces] == ["alice", "bob"]
    assert s.warnings == ()
    await pool.assign("carol")
    await pool.scaled()
    s = await pool.status()
    assert any("90% of max" in w for w in s.warnings)
    backend.desired += 1  # a launch that does not come up
    s = await pool.status()
    assert any("exceeds in service" in w for w in s.warnings)


async def test_concurrent_assigns_give_each_user_exactly_one_box(
    make_pool: Callable[..., CodePool], store: Store, ready_address: str
) -> None:
    """50 concurrent assigns for 10 users, on every store: one box per user, none shared."""
    backend = SlowBackend(ready_address, delay_s=0.01, max_size=20)
    pool = make_pool(store, backend)
    users = [f"user{n}" for n in range(10)]
    boxes = one_box_each(await asyncio.gather(*(pool.assign(users[n % 10]) for n in range(50))))
    assert sorted(boxes) == sorted(users)
    owners = [b.owner for b in backend.boxes.values() if b.owner]
    assert sorted(owners) == sorted(users)  # nobody holds two, no box has two owners


async def test_an_assignment_returns_before_its_scale_and_a_crowd_shares_one(
    make_pool: Callable[..., CodePool], sqlite: SQLiteStore, ready_address: str
) -> None:
    """The spare a person takes is replaced after they have their workspace, and people
    who arrive together share the scale (one look at the group, not one each)."""
    backend = SlowBackend(ready_address, delay_s=0.02, max_size=40)
    pool = make_pool(sqlite, backend, pool={"warm_spares": 10})
    await pool.scale()
    await sqlite.add_spares(backend.boxes)
    backend.calls.clear()
    assert (await pool.assign("alice")).how == "spare"
    assert [op for op, _ in backend.calls] == ["list", "claim"]  # not scaled yet
    await pool.scaled()
    assert backend.desired == 11  # alice's box and ten warm spares
    backend.calls.clear()
    results = await asyncio.gather(*(pool.assign(f"user{n}") for n in range(10)))
    assert {r.how for r in results} == {"spare"}
    await pool.scaled()
    assert backend.desired == 21  # eleven people and ten warm spares again
    looks = [op for op, _ in backend.calls].count("list") - 10  # less the assignments'
    assert looks <= 3, backend.calls  # ten scales asked for, at most three made
    await pool.scaled()  # nothing under way: returns at once


async def test_a_cycle_looks_at_the_group_once_unless_it_changed_something(
    make_pool: Callable[..., CodePool], sqlite: SQLiteStore, ready_address: str, clock: Clock
) -> None:
    from codepool.daemon.loops import Loops
    from codepool.daemon.metrics import Metrics

    backend = MemoryBackend(ready_address, max_size=5)
    pool = make_pool(sqlite, backend, clock, pool={"warm_spares": 1})
    await pool.assign("alice")
    await pool.scaled()
    loops = Loops(pool, Metrics(), 30)
    backend.calls.clear()
    assert await loops.cycle()
    assert backend.calls == [("list", ())]  # reconcile's look served scale and status
    # A cycle that stops someone has changed the group: its scale looks again.
    clock.advance(3_600_000)
    backend.calls.clear()
    assert await loops.cycle()
    ops = [op for op, _ in backend.calls]
    assert ops[0] == "list" and "stop" in ops
    assert "list" in ops[ops.index("stop") :], ops
    # Outside a cycle, status and scale always look for themselves.
    backend.calls.clear()
    await pool.status()
    await pool.scale()
    assert [op for op, _ in backend.calls] == ["list", "list"]


async def test_store_record_matches_the_backend_after_assign(
    pool: CodePool, backend: Group
) -> None:
    ws = (await pool.assign("alice")).workspace
    stored = await pool.store.get_workspace("alice")
    assert stored == replace(ws)
    assert backend.boxes[ws.instance_id].owner == "alice"


async def test_scale_keeps_a_just_launched_spare_an_assignment_is_about_to_claim(
    make_pool: Callable[..., CodePool],
    sqlite: SQLiteStore,
    memory_backend: MemoryBackend,
    clock: Clock,
) -> None:
    pool = make_pool(sqlite, memory_backend, clock, pool={"warm_spares": 0})
    memory_backend.now_ms = clock.now  # boxes launch "now" on the pool's clock
    await memory_backend.set_desired(1)  # an assign asked for a box for its user...
    result = await pool.scale()  # ...and the leader's scale runs before the claim
    assert result.terminated_spares == ()
    assert len(memory_backend.boxes) == 1 and memory_backend.desired == 1
    clock.advance(pool.settings.pool.assign_timeout_s * 1000 + 1)  # nobody claimed it
    result = await pool.scale()
    assert len(result.terminated_spares) == 1 and memory_backend.boxes == {}
    assert memory_backend.desired == 0


async def test_new_users_arriving_together_boot_in_parallel(
    make_pool: Callable[..., CodePool], sqlite: SQLiteStore, ready_address: str
) -> None:
    """Five new users and no spare: five boxes boot at once, not one after another, and
    a booting box is never handed out (or lost from the pool) before it runs."""
    backend = BootingBackend(ready_address, boot_s=1.0, max_size=10)
    pool = make_pool(sqlite, backend, pool={"warm_spares": 0})
    users = [f"new{n}" for n in range(5)]
    results = await asyncio.gather(*(pool.assign(u) for u in users))
    assert backend.peak_booting >= 5
    assert sorted(r.workspace.user for r in results) == users
    assert len({r.workspace.instance_id for r in results}) == 5
    assert all(b.state is InstanceState.RUNNING for b in backend.boxes.values())


class FailingClaimBackend(MemoryBackend):
    """Tagging fails (the backend is down), though the box is a fine spare."""

    async def claim(self, instance_id: str, owner: str, seen: Instance | None = None) -> Any:
        raise BackendError("aws: RequestLimitExceeded (after retries)")


async def test_a_failing_backend_does_not_drain_the_spare_pool(
    make_pool: Callable[..., CodePool], sqlite: SQLiteStore, ready_address: str
) -> None:
    backend = FailingClaimBackend(ready_address)
    pool = make_pool(sqlite, backend, pool={"warm_spares": 3})
    await pool.scale()
    await sqlite.add_spares(b.instance_id for b in backend.boxes.values())
    with pytest.raises(BackendError, match="RequestLimitExceeded"):
        await pool.assign("alice")
    assert len(await sqlite.spares()) == 2  # one popped and set aside, the rest untouched


class AssignDuringList(MemoryBackend):
    """A group whose list of boxes is taken, then an assignment runs to its end before
    the list reaches the caller: reconcile works from a list older than the store."""

    during: Callable[[], Awaitable[object]] | None = None

    async def fleet(self) -> Fleet:
        snapshot = await super().fleet()
        hook, self.during = self.during, None
        if hook is not None:
            await hook()
        return snapshot


async def test_reconcile_does_not_undo_an_assignment_that_finished_during_its_list(
    make_pool: Callable[..., CodePool], store: Store, ready_address: str, clock: Clock
) -> None:
    backend = AssignDuringList(ready_address, max_size=4)
    pool = make_pool(store, backend, clock)
    await pool.scale()  # a warm spare, unowned in the list reconcile will see

    async def alice_arrives() -> None:
        clock.advance(1000)
        await pool.assign("alice")

    backend.during = alice_arrives
    await pool.reconcile()
    ws = await store.get_workspace("alice")
    assert ws is not None and ws.state is WorkspaceState.RUNNING  # not cleared as "gone"
    assert [b.owner for b in backend.boxes.values()].count("alice") == 1
    clock.advance(1000)
    assert [a.kind for a in await pool.reconcile() if a.kind != "add-spare"] == []


class SwallowsCancel:
    """A store whose lease renewal swallows a cancel that lands inside it, as a store
    client can (Python 3.11's timeouts inside redis-py's retries)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def acquire_leases(self, names: Sequence[str], holder: str, ttl_ms: int) -> list[bool]:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.05)
        return await self.inner.acquire_leases(names, holder, ttl_ms)


async def test_a_user_lock_is_given_back_even_if_its_renewal_swallows_a_cancel(
    make_pool: Callable[..., CodePool], store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("codepool.core.pool.LOCK_TTL_MS", 300)  # renew every 0.1 s
    pool = make_pool(SwallowsCancel(store))
    async with asyncio.timeout(5):  # the old cancel-based renewer never ended here
        for _ in range(10):
            async with pool.user_lock("alice", wait_s=1):
                await asyncio.sleep(0.12)  # leave while a renewal is in flight
    assert await store.acquire_lease("lock:alice", "someone-else", 1000)
