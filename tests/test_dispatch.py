"""The dispatcher's long poll: /dispatch/status?seen=N answers as soon as the assignment
says something new or finishes, and after STATUS_WAIT_S at the latest; without `seen` it
answers at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from codepool.core.models import Assignment, Workspace, WorkspaceState
from codepool.daemon.dispatch import Dispatcher


class StepByStep:
    """A pool whose assignment says a message, then finishes, each when the test says."""

    def __init__(self) -> None:
        self.step = asyncio.Event()
        self.finish = asyncio.Event()

    async def assign(self, user: str, progress: Any) -> Assignment:
        await self.step.wait()
        progress("launching a box")
        await self.finish.wait()
        ws = Workspace(user, "i-1", "http://127.0.0.1:1", WorkspaceState.RUNNING, 1, 1)
        return Assignment(ws, "launched")


async def test_a_status_poll_waits_for_news() -> None:
    pool = StepByStep()
    dispatcher = Dispatcher(pool)  # type: ignore[arg-type]
    job = dispatcher.start("alice")
    waiting = asyncio.create_task(job.wait_change(0, 5))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # nothing new yet: the answer is held
    pool.step.set()
    await asyncio.wait_for(waiting, 1)  # the message wakes it at once
    assert job.messages == ["launching a box"]
    again = asyncio.create_task(job.wait_change(1, 5))
    await asyncio.sleep(0.05)
    assert not again.done()
    pool.finish.set()
    await asyncio.wait_for(again, 1)  # so does the end
    assert job.result is not None
    started = time.monotonic()
    await job.wait_change(1, 5)  # a finished job never holds a poll
    assert time.monotonic() - started < 0.5
    await dispatcher.close()


async def test_a_status_poll_gives_up_after_its_timeout() -> None:
    pool = StepByStep()
    dispatcher = Dispatcher(pool)  # type: ignore[arg-type]
    job = dispatcher.start("alice")
    started = time.monotonic()
    await job.wait_change(0, 0.2)
    assert 0.15 < time.monotonic() - started < 2
    await dispatcher.close()


@pytest.mark.parametrize("seen", ["", "x", "-1", "9999999"])
async def test_status_without_a_usable_seen_answers_at_once(make_served: Any, seen: str) -> None:
    from tests.router_fixtures import Served

    served: Served = await make_served()
    c = await served.client("alice")
    await c.get("/dispatch", allow_redirects=False)
    started = time.monotonic()
    resp = await c.get(f"/dispatch/status?seen={seen}")
    assert resp.status == 200
    assert time.monotonic() - started < 3  # not held for STATUS_WAIT_S
