"""Assignments running in the background of the router, one per user, so a browser can
watch their progress (the "starting your workspace" page) and double clicks, two tabs or
a page reload join the same assignment instead of starting another."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
from collections import deque
from dataclasses import dataclass, field

from codepool.core.errors import CodepoolError
from codepool.core.models import Assignment
from codepool.core.pool import IN_LINE, LOCKED, CodePool

log = logging.getLogger("codepool.dispatch")

KEEP_FINISHED_S = 60.0  # a finished job answers status polls this long
WAITING = (IN_LINE, LOCKED)  # messages about waiting, not about the start itself
RECENT_STARTS = 20  # how many recent starts of each kind the estimate is taken from


@dataclass
class Job:
    user: str
    task: asyncio.Task[None] | None = None
    messages: list[str] = field(default_factory=list)
    result: Assignment | None = None
    error: CodepoolError | None = None
    started_at: float = field(default_factory=time.monotonic)
    finished_at: float = 0.0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def done(self) -> bool:
        return self.finished_at > 0

    @property
    def kind(self) -> str:
        """What sort of start this is, by its first message that is not about waiting
        ("Waking up your workspace", "Preparing a new workspace", ...; "" until then)."""
        return next((m for m in self.messages if not m.startswith(WAITING)), "")

    def say(self, message: str) -> None:
        self.messages.append(message)
        self._wake()

    def finish(self) -> None:
        self.finished_at = time.monotonic()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()  # everyone waiting on this one returns...
        self._changed = asyncio.Event()  # ... and later waiters wait for the next change

    async def wait_change(self, seen: int, timeout_s: float) -> None:
        """Return when the job has finished or said more than `seen` messages, or after
        timeout_s: the long poll of the starting page (it learns of the ready workspace
        at once, not at its next poll)."""
        if self.done or len(self.messages) > seen:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)


class Dispatcher:
    """Runs pool.assign for users in the background, at most one job per user here.
    Across routers the store's per-user lock makes a second job wait for the first."""

    def __init__(self, pool: CodePool) -> None:
        self.pool = pool
        self.jobs: dict[str, Job] = {}
        # How long the recent successful starts took, by kind: the starting page's estimate.
        self.recent: dict[str, deque[float]] = {}

    def start(self, user: str) -> Job:
        """The user's running job, or a new one. A finished job is never reused: the
        workspace it found may have stopped since."""
        self._forget_old()
        job = self.jobs.get(user)
        if job is not None and not job.done:
            return job
        job = Job(user)
        job.task = asyncio.create_task(self._run(job), name=f"assign {user}")
        self.jobs[user] = job
        return job

    async def _run(self, job: Job) -> None:
        """Run the assignment; its outcome is kept on the job, for the status polls."""
        try:
            job.result = await self.pool.assign(job.user, job.say)
            took = time.monotonic() - job.started_at
            self.recent.setdefault(job.kind, deque(maxlen=RECENT_STARTS)).append(took)
        except CodepoolError as exc:
            job.error = exc
        except Exception as exc:  # a bug: logged with its traceback, reported plainly
            log.exception("assign of %s failed", job.user)
            job.error = CodepoolError(f"could not start the workspace: {exc}")
        finally:
            job.finish()

    def _forget_old(self) -> None:
        now = time.monotonic()
        for user, job in list(self.jobs.items()):
            if job.done and now - job.finished_at > KEEP_FINISHED_S:
                del self.jobs[user]

    def estimate_s(self, job: Job) -> float | None:
        """How long a start of this job's kind usually takes here (the median of the
        recent ones), or None before the first."""
        recent = self.recent.get(job.kind)
        return statistics.median(recent) if recent else None

    def current(self, user: str) -> Job | None:
        """The user's job, running or recently finished (for status polls)."""
        self._forget_old()
        return self.jobs.get(user)

    async def close(self) -> None:
        for job in self.jobs.values():
            if job.task is not None and not job.task.done():
                job.task.cancel()
        for job in self.jobs.values():
            if job.task is not None:
                with contextlib.suppress(BaseException):
                    await job.task
