"""GroupCommit: items that arrive together are written in one flush, each caller gets
its own result, a failure reaches every caller of that flush and no other."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from codepool.core.batching import GroupCommit
from codepool.core.errors import StoreUnavailable


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next = False

    async def flush(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise StoreUnavailable("store unavailable: test")
        return [i * 10 for i in items]


async def test_a_lone_item_is_written_at_once() -> None:
    r = Recorder()
    gc = GroupCommit(r.flush)
    assert await asyncio.wait_for(gc.submit(1), 1) == 10
    assert r.batches == [[1]]


async def test_items_that_arrive_together_share_a_flush() -> None:
    r = Recorder()
    gc = GroupCommit(r.flush)
    assert await asyncio.gather(*(gc.submit(i) for i in range(100))) == [i * 10 for i in range(100)]
    assert r.batches == [list(range(100))]


async def test_items_arriving_during_a_flush_go_in_the_next_one() -> None:
    r = Recorder()
    gc = GroupCommit(r.flush, max_batch=3)
    r.gate.clear()
    first = asyncio.gather(*(gc.submit(i) for i in range(2)))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert r.batches == [[0, 1]]  # in flight
    later = asyncio.gather(*(gc.submit(i) for i in range(2, 7)))
    await asyncio.sleep(0)
    assert r.batches == [[0, 1]]  # they wait for the round trip in flight
    r.gate.set()
    assert await first == [0, 10]
    assert await later == [20, 30, 40, 50, 60]
    assert r.batches == [[0, 1], [2, 3, 4], [5, 6]]  # at most max_batch per flush
    assert gc.flushes == 3


async def test_a_failed_flush_fails_its_callers_only() -> None:
    r = Recorder()
    gc = GroupCommit(r.flush)
    r.fail_next = True
    got = await asyncio.gather(*(gc.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(g, StoreUnavailable) for g in got)
    assert await gc.submit(4) == 40  # the next flush is unaffected


async def test_a_caller_that_gives_up_does_not_disturb_the_others() -> None:
    r = Recorder()
    gc = GroupCommit(r.flush)
    r.gate.clear()
    quitter = asyncio.create_task(gc.submit(1))
    stayer = asyncio.create_task(gc.submit(2))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    quitter.cancel()
    r.gate.set()
    assert await stayer == 20
    with pytest.raises(asyncio.CancelledError):
        await quitter
