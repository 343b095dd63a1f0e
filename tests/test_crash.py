"""A router dies in the middle of an assignment, a resume, a reap or a scale, at every
step of the AWS sequence (on moto): the k-th AWS call kills the work in flight, then a new
router (a new pool on the same store and group) runs one reconcile cycle. Afterwards:
no box without a record, nobody with two boxes, no stopped box without its owner, no
workspace lost, and the next visit of everyone works.

The kill is an exception that nothing in codepool catches (a BaseException), raised as the
k-th call leaves; like SIGKILL it stops the task there. Unlike SIGKILL, `finally` blocks
still run (the per-user lock is given back early instead of expiring after 10 s), which
only makes the next attempt sooner, not the end state different."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.moto_api._internal.models import moto_api_backend

from codepool.core.models import Instance, InstanceState, WorkspaceState
from codepool.core.pool import CodePool
from codepool.core.stores.sqlite import SQLiteStore
from tests.aws_fixtures import LoopbackAwsBackend, aws_settings, create_group, record


class Killed(BaseException):
    """The router process is gone."""


class Killer:
    """Names the backend's AWS calls in order; the k-th one (1-based) kills the caller
    before it reaches AWS."""

    def __init__(self, backend: LoopbackAwsBackend, at: int | None = None) -> None:
        self.at, self.calls = at, list[str]()
        backend.asg.meta.events.register("before-call.*.*", self)
        backend.ec2.meta.events.register("before-call.*.*", self)

    def __call__(self, model: Any, **_: Any) -> None:
        self.calls.append(model.name)
        if len(self.calls) == self.at:
            raise Killed

    def kill_points(self) -> list[int]:
        """Where to die: at each call that changes something (it never happens) and at the
        call after it (it happened, and nothing since). Dying at any other Describe call
        leaves the same state as one of these."""
        changes = [k for k, name in enumerate(self.calls, 1) if not name.startswith("Describe")]
        after = [k + 1 for k in changes if k < len(self.calls)]
        return sorted(set(changes + after))


def router(
    session: boto3.Session, store_path: Path, make_pool: Callable[..., CodePool], address: str
) -> tuple[CodePool, LoopbackAwsBackend]:
    backend = LoopbackAwsBackend(aws_settings(), address, session=session)
    record(backend, session)  # AWS's own rules checked at every call, across the crash too
    return make_pool(SQLiteStore(str(store_path)), backend, pool={"warm_spares": 1}), backend


def owners(boxes: list[Instance]) -> dict[str, list[Instance]]:
    by: dict[str, list[Instance]] = {}
    for b in boxes:
        if b.owner:
            by.setdefault(b.owner, []).append(b)
    return by


async def check_invariants(pool: CodePool, people: set[str]) -> None:
    boxes = await pool.backend.list_instances()
    by_owner = owners(boxes)
    assert all(len(v) == 1 for v in by_owner.values()), by_owner  # nobody with two
    assert set(by_owner) >= people, (by_owner, people)  # no workspace lost
    for box in boxes:
        if box.state is InstanceState.STOPPED:
            assert box.owner, box  # no stopped box without its owner
    for user, (box,) in by_owner.items():  # no box without its record
        ws = await pool.store.get_workspace(user)
        assert ws is not None and ws.instance_id == box.instance_id, (user, ws, box)


# Each scenario: what is there before, then the step that the kill interrupts.
# An assignment's scale runs after it returns: the router may die in either.
async def assign_new(pool: CodePool) -> None:
    await pool.assign("carol")
    await pool.scaled()


async def resume(pool: CodePool) -> None:
    await pool.assign("alice")  # alice's box was stopped in the set-up
    await pool.scaled()


async def reap(pool: CodePool) -> None:
    await pool.reap(idle_timeout_s=1)


async def release_terminate(pool: CodePool) -> None:
    await pool.release("bob", terminate=True)


SCENARIOS: dict[str, Callable[[CodePool], Awaitable[None]]] = {
    "assign": assign_new,
    "resume": resume,
    "reap": reap,
    "release --terminate": release_terminate,
}


def an_hour_later() -> int:
    """Bob's running box is idle then; alice's stopped one is far from retention."""
    return int(time.time() * 1000) + 3_600_000


async def set_up(pool: CodePool) -> None:
    """alice: stopped box; bob: running; one warm spare."""
    await pool.assign("alice")
    await pool.release("alice")
    await pool.assign("bob")
    await pool.scaled()


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_a_router_killed_at_any_aws_call_leaves_nothing_lost(
    scenario: str,
    moto_aws: boto3.Session,
    make_pool: Callable[..., CodePool],
    ready_address: str,
    tmp_path: Path,
) -> None:
    step = SCENARIOS[scenario]
    # First, the whole step uninterrupted, to count its AWS calls.
    first, backend = router(moto_aws, tmp_path / "count.db", make_pool, ready_address)
    await set_up(first)
    if scenario == "reap":
        first.clock = an_hour_later  # everyone is idle: the reap has work to do
    counter = Killer(backend)
    await step(first)
    points = counter.kill_points()
    assert len(points) >= 2, f"{scenario} changed only {counter.calls}"
    print(
        f"{scenario}: {len(counter.calls)} AWS calls, killed at {len(points)} of them: "
        + ", ".join(f"{k}:{counter.calls[k - 1]}" for k in points)
    )
    await first.close()

    for k in points:
        moto_api_backend.reset()  # an empty AWS again: the same group as counted
        create_group(moto_aws)
        await die_at(k, scenario, moto_aws, make_pool, ready_address, tmp_path)


async def die_at(
    k: int,
    scenario: str,
    session: boto3.Session,
    make_pool: Callable[..., CodePool],
    address: str,
    tmp_path: Path,
) -> None:
    db = tmp_path / f"k{k}.db"
    pool, backend = router(session, db, make_pool, address)
    await set_up(pool)
    if scenario == "reap":
        pool.clock = an_hour_later
    Killer(backend, at=k)
    with pytest.raises(Killed):
        await SCENARIOS[scenario](pool)
    await pool.close()

    # A new router on the same store and group: one reconcile cycle, then visits.
    survivor, _ = router(session, db, make_pool, address)
    await survivor.reconcile()
    people = {"alice"} if scenario == "release --terminate" else {"alice", "bob"}
    await check_invariants(survivor, people)
    for user in ("alice", "bob", "carol"):
        a = await survivor.assign(user)
        assert a.workspace.state is WorkspaceState.RUNNING, (k, user)
    await check_invariants(survivor, {"alice", "bob", "carol"})
    await survivor.close()
