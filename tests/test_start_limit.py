"""pool.max_concurrent_starts: a crowd arriving at once gets at most that many boxes
booting at a time (by the backend's own count), everyone is served in the end with one
box each, and the people waiting are told their place in line, which only goes down.
Without a limit nothing waits."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import pytest

from codepool.core import pool as pool_module
from codepool.core.pool import CodePool
from codepool.core.store import Store
from tests.fakes import BootingBackend
from tests.helpers import one_box_each

PEOPLE, LIMIT = 50, 5


@pytest.mark.timeout(240)
@pytest.mark.parametrize("store", ["redis"], indirect=True)  # the case of several routers
async def test_a_crowd_starts_at_most_the_limit_at_once_in_the_order_it_came(
    make_pool: Callable[..., CodePool],
    store: Store,
    ready_address: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pool_module, "START_POLL_S", 0.05)
    backend = BootingBackend(ready_address, boot_s=0.3, max_size=PEOPLE + 5)
    pool = make_pool(
        store,
        backend,
        pool={"warm_spares": 0, "max_concurrent_starts": LIMIT, "assign_timeout_s": 60},
    )
    said: dict[str, list[str]] = {f"p{i:02d}": [] for i in range(PEOPLE)}
    results = await asyncio.gather(*(pool.assign(u, said[u].append) for u in said))
    await pool.scaled()  # the scale the assignments asked for, before the store closes
    assert backend.peak_booting <= LIMIT, backend.peak_booting
    assert backend.peak_booting >= 2  # starts did run side by side
    one_box_each(results)
    assert {r.workspace.user for r in results} == set(said)
    places = {
        u: [int(m) for line in lines for m in re.findall(r"number (\d+) in line", line)]
        for u, lines in said.items()
    }
    waited = [p for p in places.values() if p]
    assert len(waited) >= PEOPLE - 2 * LIMIT  # most of the crowd stood in line
    for shown in waited:
        assert shown == sorted(shown, reverse=True) and len(set(shown)) == len(shown), shown
    assert max(max(p) for p in waited) >= PEOPLE - 2 * LIMIT  # the last saw a long line
    # Nothing is left in line or in flight: the next one starts at once.
    assert await store.take_start("next", LIMIT, 10_000) == 0
    await store.give_back_start("next")


async def test_without_a_limit_nobody_waits(
    make_pool: Callable[..., CodePool], store: Store, ready_address: str
) -> None:
    backend = BootingBackend(ready_address, boot_s=0.2, max_size=20)
    pool = make_pool(store, backend, pool={"warm_spares": 0})
    said: list[str] = []
    await asyncio.gather(*(pool.assign(f"q{i}", said.append) for i in range(8)))
    await pool.scaled()  # the scale the assignments asked for, before the store closes
    assert backend.peak_booting == 8
    assert not [m for m in said if "in line" in m]
