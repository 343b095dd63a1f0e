"""Group commit: many callers' small writes made in one store round trip.

Every open tab pings; at a thousand users that is a thousand tiny writes a second, and
with one round trip each the router spends its time waiting on the store. Here a caller
adds its item and waits for its own result. The first item starts a flush on the next
turn of the event loop; items that arrive while a flush is in flight wait for the next
one. So nothing waits on a timer: a lone ping is written at once, and under load each
round trip carries everything that arrived during the previous one.

Each item keeps its own check and its own answer (the flush returns one result per
item, in order); only the round trip is shared.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(
        self, flush: Callable[[Sequence[T]], Awaitable[Sequence[R]]], max_batch: int = 500
    ) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None
        self.flushes = 0  # round trips made, for benchmarks and tests

    async def submit(self, item: T) -> R:
        """Write item with whatever else is waiting; its own result, or the flush's error."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="group commit")
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._write(batch)
        except BaseException:  # cancelled at shutdown: nobody is left waiting forever
            for _, future in self._pending:
                future.cancel()
            self._pending.clear()
            raise
        finally:
            self._task = None

    async def _write(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        self.flushes += 1
        try:
            results = await self._flush([item for item, _ in batch])
        except BaseException as exc:
            # Every caller of this batch sees the failure (a cancelled drain, at shutdown,
            # cancels them); the next batch tries again on its own.
            for _, future in batch:
                if not future.done():
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():  # a caller that gave up (cancelled) is skipped
                future.set_result(result)
