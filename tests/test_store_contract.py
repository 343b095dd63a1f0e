"""One contract, every store: SQLite, fakeredis and a real Redis server run the same tests."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

from codepool.core import events
from codepool.core.models import (
    Account,
    EntryGrant,
    Event,
    EventKind,
    SessionRecord,
    TokenRecord,
    Workspace,
    WorkspaceState,
)
from codepool.core.store import PingResult, Store
from codepool.core.stores.sqlite import SQLiteStore

RUNNING = WorkspaceState.RUNNING
STOPPED = WorkspaceState.STOPPED


def ws(
    user: str, iid: str = "", state: WorkspaceState = RUNNING, seen: int = 1000, **kw: int
) -> Workspace:
    return Workspace(user, iid or f"i-{user}", f"http://127.0.0.1:1/{user}", state, seen, 500, **kw)


async def test_put_get_delete(store: Store) -> None:
    assert await store.get_workspace("alice") is None
    w = ws("alice", hold_until_ms=7, stopped_at_ms=0)
    await store.put_workspace(w)
    assert await store.get_workspace("alice") == w
    assert not await store.delete_workspace("alice", "i-other")
    assert await store.get_workspace("alice") == w
    assert await store.delete_workspace("alice", "i-alice")
    assert await store.get_workspace("alice") is None


async def test_ping_checks_the_instance_and_the_state(store: Store) -> None:
    assert await store.record_ping("alice", "i-alice", 2000) is PingResult.NO_WORKSPACE
    await store.put_workspace(ws("alice"))
    assert await store.record_ping("alice", "i-stale", 2000) is PingResult.STALE_INSTANCE
    assert await store.record_ping("alice", "i-alice", 2000) is PingResult.OK
    got = await store.get_workspace("alice")
    assert got is not None and got.last_seen_ms == 2000
    # Never backwards: a late ping from a slow router does not undo a newer one.
    assert await store.record_ping("alice", "i-alice", 1500) is PingResult.OK
    got = await store.get_workspace("alice")
    assert got is not None and got.last_seen_ms == 2000
    await store.put_workspace(ws("alice", state=STOPPED))
    assert await store.record_ping("alice", "i-alice", 3000) is PingResult.NOT_RUNNING
    got = await store.get_workspace("alice")
    assert got is not None and got.last_seen_ms == 1000  # nothing written


async def test_concurrent_pings_each_get_their_own_answer(store: Store) -> None:
    """Pings that arrive together share round trips (group commit) but each is checked
    on its own: one batch holds every kind of answer, and a user pinging twice in one
    batch keeps the newer time."""
    for i in range(50):
        await store.put_workspace(ws(f"u{i}", seen=1000))
    await store.put_workspace(ws("off", state=STOPPED))
    pings = [(f"u{i}", f"i-u{i}", 2000 + i) for i in range(50)]
    pings += [("u0", "i-u0", 1500), ("u1", "i-nope", 9000), ("nobody", "i-x", 9000)]
    pings += [("off", "i-off", 9000)]
    results = await asyncio.gather(*(store.record_ping(*p) for p in pings))
    assert results == [PingResult.OK] * 51 + [
        PingResult.STALE_INSTANCE,
        PingResult.NO_WORKSPACE,
        PingResult.NOT_RUNNING,
    ]
    for i in range(50):
        got = await store.get_workspace(f"u{i}")
        assert got is not None and got.last_seen_ms == 2000 + i  # u0's 1500 did not win
    idle = await store.idle_workspaces(2025, limit=100)
    assert [w.user for w in idle] == [f"u{i}" for i in range(25)]


async def test_mark_stopping_is_compare_and_set(store: Store) -> None:
    await store.put_workspace(ws("alice", seen=1000))
    await store.record_ping("alice", "i-alice", 1001)  # a ping lands after the reaper read 1000
    assert not await store.mark_stopping("alice", "i-alice", 1000)
    assert await store.mark_stopping("alice", "i-alice", 1001)
    got = await store.get_workspace("alice")
    assert got is not None and got.state is WorkspaceState.STOPPING
    # Once stopping, a ping is refused and the reaper's decision stands.
    assert await store.record_ping("alice", "i-alice", 5000) is PingResult.NOT_RUNNING
    assert not await store.mark_stopping("alice", "i-alice", 1001)


async def test_idle_index_returns_only_old_running_workspaces_oldest_first(store: Store) -> None:
    for i, seen in enumerate([500, 100, 900, 300, 2000]):
        await store.put_workspace(ws(f"u{i}", seen=seen))
    await store.put_workspace(ws("gone", state=STOPPED, seen=50))
    idle = await store.idle_workspaces(1000, limit=10)
    assert [w.user for w in idle] == ["u1", "u3", "u0", "u2"]
    assert [w.user for w in await store.idle_workspaces(1000, limit=2)] == ["u1", "u3"]
    await store.record_ping("u1", "i-u1", 5000)  # the index moves with the ping
    assert [w.user for w in await store.idle_workspaces(1000, limit=10)] == ["u3", "u0", "u2"]
    assert await store.mark_stopping("u3", "i-u3", 300)  # stopping leaves the index
    assert [w.user for w in await store.idle_workspaces(1000, limit=10)] == ["u0", "u2"]


async def test_expired_returns_stopped_workspaces_by_stop_time(store: Store) -> None:
    await store.put_workspace(ws("a", state=STOPPED, stopped_at_ms=300))
    await store.put_workspace(ws("b", state=STOPPED, stopped_at_ms=100))
    await store.put_workspace(ws("c", state=STOPPED, stopped_at_ms=900))
    await store.put_workspace(ws("d", state=RUNNING, seen=1))
    assert [w.user for w in await store.expired_workspaces(500, 10)] == ["b", "a"]
    await store.put_workspace(ws("b", state=RUNNING))  # resumed: leaves the stopped index
    assert [w.user for w in await store.expired_workspaces(500, 10)] == ["a"]


async def test_iter_walks_everything_in_batches(store: Store) -> None:
    users = {f"user{i:02d}" for i in range(25)}
    for u in users:
        await store.put_workspace(ws(u))
    batches = [b async for b in store.iter_workspaces()]
    seen = [w.user for b in batches for w in b]
    assert sorted(seen) == sorted(users)
    assert len(batches) >= 2  # batch_size is 10 in these fixtures
    assert all(len(b) <= 20 for b in batches)


async def test_set_hold_only_on_the_running_instance(store: Store) -> None:
    await store.put_workspace(ws("alice"))
    assert not await store.set_hold("alice", "i-other", 9000)
    assert await store.set_hold("alice", "i-alice", 9000)
    got = await store.get_workspace("alice")
    assert got is not None and got.hold_until_ms == 9000
    await store.put_workspace(ws("alice", state=STOPPED))
    assert not await store.set_hold("alice", "i-alice", 9999)


async def test_each_spare_goes_to_one_claimer_under_concurrency(store: Store) -> None:
    spares = [f"i-{n}" for n in range(20)]
    assert await store.add_spares(spares) == 20
    claims = await asyncio.gather(*(store.claim_spare(f"u{n}", 60_000) for n in range(50)))
    got = [c for c in claims if c is not None]
    assert sorted(got) == sorted(spares)  # every spare once, none twice
    assert claims.count(None) == 30
    assert await store.spares() == set()


async def test_claimed_spares_are_not_put_back(store: Store) -> None:
    await store.add_spares(["i-1", "i-2"])
    first = await store.claim_spare("alice", 60_000)
    assert first is not None
    # A reconcile that listed the box before it was tagged must not re-add it.
    assert await store.add_spares(["i-1", "i-2", "i-3"]) == 1
    assert await store.spares() == {"i-1", "i-2", "i-3"} - {first}
    assert await store.take_spare("i-3", 60_000)
    assert not await store.take_spare("i-3", 60_000)
    # scale took i-3 to terminate it: a stale listing must not bring it back
    assert await store.add_spares(["i-3"]) == 0
    await store.remove_spares(["i-1", "i-2"])
    assert await store.spares() == set()


async def test_a_claim_is_kept_by_its_holder_only_while_it_lives(store: Store) -> None:
    await store.add_spares(["i-1", "i-2"])
    first = await store.claim_spare("alice", 60_000)
    assert first is not None
    assert await store.keep_claim(first, "alice", 60_000)
    assert not await store.keep_claim(first, "bob", 60_000)  # not bob's
    assert await store.add_spares([first]) == 0  # still claimed
    second = await store.claim_spare("bob", 50)
    assert second is not None
    await asyncio.sleep(0.2)
    assert not await store.keep_claim(second, "bob", 60_000)  # expired: not brought back
    assert await store.add_spares([second]) == 1
    assert await store.take_spare(second, 60_000)
    assert await store.keep_claim(second, "", 60_000)  # taken (by scale): nobody's


async def test_claims_expire(store: Store) -> None:
    await store.add_spares(["i-1"])
    assert await store.claim_spare("alice", 50) == "i-1"
    await asyncio.sleep(0.2)
    assert await store.add_spares(["i-1"]) == 1


async def test_leases(store: Store) -> None:
    assert await store.acquire_lease("leader", "a", 10_000)
    assert await store.acquire_lease("leader", "a", 10_000)  # renewal
    assert not await store.acquire_lease("leader", "b", 10_000)
    await store.release_lease("leader", "b")  # not b's to release
    assert not await store.acquire_lease("leader", "b", 10_000)
    await store.release_lease("leader", "a")
    assert await store.acquire_lease("leader", "b", 50)
    await asyncio.sleep(0.2)  # b's lease expires without renewal
    assert await store.acquire_lease("leader", "c", 10_000)


async def test_one_lease_holder_among_many(store: Store) -> None:
    won = await asyncio.gather(*(store.acquire_lease("lock:x", f"h{n}", 10_000) for n in range(30)))
    assert won.count(True) == 1


async def test_check(store: Store) -> None:
    await store.check()


async def test_the_batched_steps_decide_each_item_on_its_own(store: Store) -> None:
    """The reap's batched steps: many leases, compare-and-sets and writes in one round trip,
    each with the answer its single form would give."""
    assert await store.acquire_lease("lock:b", "other", 60_000)
    assert await store.acquire_leases(["lock:a", "lock:b", "lock:c"], "me", 60_000) == [
        True,
        False,
        True,
    ]
    assert await store.acquire_leases(["lock:a"], "me", 60_000) == [True]  # a renewal
    await store.release_leases(["lock:a", "lock:b", "lock:c"], "me")
    assert await store.acquire_leases(["lock:a", "lock:b", "lock:c"], "x", 60_000) == [
        True,
        False,  # still the other holder's: release only gives back one's own
        True,
    ]
    assert await store.acquire_leases([], "me", 1) == []

    await store.put_workspaces([ws("u1", seen=100), ws("u2", seen=200), ws("u3", seen=300)])
    await store.put_workspaces([ws("u4", state=STOPPED, stopped_at_ms=50)])
    assert [w.user for w in await store.idle_workspaces(1000, 10)] == ["u1", "u2", "u3"]
    assert [w.user for w in await store.expired_workspaces(1000, 10)] == ["u4"]
    await store.record_ping("u2", "i-u2", 250)  # lands between the read and the stop
    got = await store.mark_stopping_many(
        [("u1", "i-u1", 100), ("u2", "i-u2", 200), ("u3", "i-wrong", 300), ("u4", "i-u4", 1000)]
    )
    assert got == [True, False, False, False]
    assert [w.user for w in await store.idle_workspaces(1000, 10)] == ["u2", "u3"]
    stopping = await store.get_workspace("u1")
    assert stopping is not None and stopping.state is WorkspaceState.STOPPING
    assert await store.mark_stopping_many([]) == []


# -- accounts, sessions and entry passes -------------------------------------------------------


def session(sid: str, user: str = "alice", expires_ms: int = 0, **kw: str) -> SessionRecord:
    now = int(time.time() * 1000)
    return SessionRecord(sid, user, "csrf-" + sid, now, now, expires_ms or now + 60_000, **kw)


async def test_accounts_add_once_update_and_delete(store: Store) -> None:
    alice = Account("alice", False, "hash-1", 5)
    assert await store.get_account("alice") is None
    assert await store.add_account(alice)
    assert not await store.add_account(Account("alice", True, "other", 6))  # name taken
    assert await store.get_account("alice") == alice
    assert not await store.add_account(Account("root", True, "h", 7), only_if_none=True)
    assert await store.update_account(Account("alice", True, "hash-2", 99), end_sessions=False)
    got = await store.get_account("alice")
    assert got == Account("alice", True, "hash-2", 5)  # created_ms is kept
    assert not await store.update_account(Account("nobody", True, "h", 1), end_sessions=True)
    assert await store.add_account(Account("bob", False, "h", 8))
    assert [a.name for a in await store.list_accounts()] == ["alice", "bob"]
    assert await store.delete_account("alice")
    assert not await store.delete_account("alice")
    assert [a.name for a in await store.list_accounts()] == ["bob"]


async def test_only_one_first_account_when_many_race(store: Store) -> None:
    results = await asyncio.gather(
        *(store.add_account(Account(f"u{i}", True, "h", 1), only_if_none=True) for i in range(20))
    )
    assert results.count(True) == 1
    assert len(await store.list_accounts()) == 1


async def test_sessions_end_with_their_parent_their_user_and_their_expiry(store: Store) -> None:
    await store.put_session(session("main-a"))
    await store.put_session(session("ws-a", owner="alice", host="alice", parent="main-a"))
    await store.put_session(session("main-b", user="bob"))
    await store.put_session(session("old", expires_ms=int(time.time() * 1000) - 1))
    got = await store.get_session("ws-a")
    assert got is not None and (got.owner, got.host, got.parent) == ("alice", "alice", "main-a")
    assert await store.get_session("old") is None
    assert await store.get_session("nope") is None
    await store.touch_session("main-a", 2**42)
    touched = await store.get_session("main-a")
    assert touched is not None and touched.last_seen_ms == 2**42
    assert await store.delete_session("main-a")  # logout: the workspace session goes too
    assert await store.get_session("ws-a") is None
    assert not await store.delete_session("main-a")
    await store.put_session(session("main-a2"))
    await store.put_session(session("main-a3"))
    assert await store.delete_user_sessions("alice") == 2
    assert await store.get_session("main-a2") is None and await store.get_session("main-a3") is None
    assert await store.get_session("main-b") is not None  # bob is untouched


async def test_password_change_and_removal_end_sessions_in_the_same_step(store: Store) -> None:
    await store.add_account(Account("alice", False, "h", 1))
    await store.put_session(session("s1"))
    assert await store.update_account(Account("alice", False, "h2", 1), end_sessions=True)
    assert await store.get_session("s1") is None
    await store.put_session(session("s2"))
    assert await store.update_account(Account("alice", True, "h2", 1), end_sessions=False)
    assert await store.get_session("s2") is not None
    assert await store.delete_account("alice")
    assert await store.get_session("s2") is None


async def test_many_session_lookups_at_once_each_get_their_own(store: Store) -> None:
    for i in range(30):
        await store.put_session(session(f"s{i}", user=f"u{i}"))
    found = await asyncio.gather(*(store.get_session(f"s{i}") for i in range(40)))
    assert [s.user if s else None for s in found] == [f"u{i}" for i in range(30)] + [None] * 10


async def test_an_entry_pass_is_taken_once(store: Store) -> None:
    now = int(time.time() * 1000)
    grant = EntryGrant("root", "alice", "alice", "main-r", "state-hash", now + 60_000, now + 10)
    await store.put_entry("t1", grant)
    await store.put_entry("t-old", replace(grant, expires_ms=now - 1))
    taken = await asyncio.gather(*(store.take_entry("t1") for _ in range(10)))
    assert taken.count(grant) == 1 and taken.count(None) == 9
    assert await store.take_entry("t-old") is None
    assert await store.take_entry("never") is None


async def test_attempts_are_counted_before_and_never_past_the_limit(store: Store) -> None:
    limits = [("client:1.2.3.4", 8), ("user:alice", 5)]
    keys = [key for key, _ in limits]
    results = await asyncio.gather(
        *(store.reserve_attempts(limits, f"a{i}", 60_000) for i in range(40))
    )
    assert results.count(0) == 5  # forty at once: five counted, the rest told to wait
    assert all(0 < wait <= 60_000 for wait in results if wait)
    other = [("client:1.2.3.4", 8), ("user:bob", 5)]  # bob has his own count...
    assert [await store.reserve_attempts(other, f"b{i}", 60_000) for i in range(4)][:3] == [0] * 3
    assert await store.reserve_attempts(other, "b9", 60_000) > 0  # ... the address is full
    await store.release_attempts(keys, "a0")  # one took its attempt back
    assert await store.reserve_attempts(limits, "again", 60_000) == 0
    assert await store.reserve_attempts(limits, "more", 60_000) > 0
    await store.clear_attempts(keys)
    assert await store.reserve_attempts([("user:alice", 5)], "fresh", 60_000) == 0
    assert await store.reserve_attempts([("w", 1)], "x", 50) == 0
    await asyncio.sleep(0.06)  # the window has passed
    assert await store.reserve_attempts([("w", 1)], "y", 50) == 0


async def test_the_event_log_keeps_order_pages_and_trims(store: Store) -> None:
    """Events come back by (time, id), in the order they came within a millisecond, with
    their text as given (odd names and details included); a page boundary inside one
    millisecond loses and repeats nothing; retention deletes only the old ones."""
    odd = 'ünï|code "x"\\n'
    written = [
        Event(1000, EventKind.ASSIGN, "alice", "alice", "spare", "i-1"),
        Event(1000, EventKind.HOLD, "alice", "alice", "3600", "i-1"),
        Event(1000, EventKind.STOP, "bob", "reaper", "idle", "i-2"),
        Event(2000, EventKind.LOGIN, odd, odd, odd),
        Event(3000, EventKind.TERMINATE, "bob", "cli:ops", "retention", "i-2"),
    ]
    await store.append_events(written[:2])
    await store.append_events(written[2:])
    got = await store.read_events(0, 10_000, 100)
    assert [replace(e, id="") for e in got] == written
    assert len({e.id for e in got}) == 5 and all(e.id for e in got)
    assert await store.read_events(1000, 2000, 2) == got[:2]
    assert await store.read_events(2000, 2000, 100) == got[3:4]
    everything = [e async for e in events.read(store, 0, 10_000)]
    assert everything == got
    events_page, events.PAGE = events.PAGE, 2
    try:  # pages of two: the first ends inside millisecond 1000
        assert [e async for e in events.read(store, 0, 10_000)] == got
        assert [e async for e in events.read(store, 0, 10_000, user="bob")] == [got[2], got[4]]
    finally:
        events.PAGE = events_page
    assert await store.trim_events(2000) == 3
    assert await store.read_events(0, 10_000, 100) == got[3:]


async def test_events_appended_at_once_are_all_kept(store: Store) -> None:
    batch = [Event(5000, EventKind.HOLD, f"u{i}", f"u{i}", "60") for i in range(40)]
    await asyncio.gather(*(store.append_events([e]) for e in batch))
    got = await store.read_events(0, 10_000, 1000)
    assert sorted(e.user for e in got) == sorted(e.user for e in batch)
    assert len({e.id for e in got}) == 40


async def test_starts_are_limited_and_given_in_the_order_people_came(store: Store) -> None:
    ttl = 60_000
    assert [await store.take_start(t, 2, ttl) for t in ("a", "b", "c", "d")] == [0, 0, 1, 2]
    assert await store.take_start("a", 2, ttl) == 0  # a renewal keeps it
    assert await store.take_start("d", 2, ttl) == 2  # asking again keeps one's place
    await store.give_back_start("a")
    assert await store.take_start("d", 2, ttl) == 1  # c came first: the free start is c's
    assert await store.take_start("c", 2, ttl) == 0
    assert await store.take_start("d", 2, ttl) == 1
    await store.give_back_start("d")  # d leaves the line
    assert await store.take_start("e", 2, ttl) == 1
    for t in ("b", "c", "e"):
        await store.give_back_start(t)


async def test_a_start_or_a_place_not_renewed_is_lost(store: Store) -> None:
    assert await store.take_start("1-held", 1, 400) == 0
    assert await store.take_start("2-waiting", 1, 400) == 1
    assert await store.take_start("3-late", 1, 400) == 2
    await asyncio.sleep(0.25)
    assert await store.take_start("3-late", 1, 400) == 2  # renewed: still in line
    await asyncio.sleep(0.25)  # neither the holder nor the first in line renewed in time
    assert await store.take_start("3-late", 1, 400) == 0
    await store.give_back_start("3-late")


async def test_many_asking_at_once_get_exactly_the_limit(store: Store) -> None:
    tickets = [f"t{i:02d}" for i in range(20)]
    got = await asyncio.gather(*(store.take_start(t, 5, 60_000) for t in tickets))
    assert got.count(0) == 5
    # once all are in line, each has a place of its own
    waiting = [t for t, place in zip(tickets, got, strict=True) if place]
    places = await asyncio.gather(*(store.take_start(t, 5, 60_000) for t in waiting))
    assert sorted(places) == list(range(1, 16))
    for t in tickets:
        await store.give_back_start(t)


async def test_long_running_workspaces_by_start_time(store: Store) -> None:
    await store.put_workspaces(
        [
            ws("old", started_at_ms=1000),
            ws("new", started_at_ms=9000),
            ws("off", state=STOPPED, started_at_ms=500),
            ws("unknown"),  # started before codepool kept start times: never counted
        ]
    )
    assert [w.user for w in await store.long_running(5000, 10)] == ["old"]
    assert [w.user for w in await store.long_running(10_000, 10)] == ["old", "new"]
    assert await store.mark_stopping_many([("old", "i-old", 1000)]) == [True]
    await store.delete_workspace("new", "i-new")
    assert await store.long_running(10_000, 10) == []


async def test_a_store_file_from_before_start_times_is_brought_up_to_date(tmp_path: Path) -> None:
    """A SQLite store made by an earlier codepool (no started_at_ms column) opens, keeps
    its records, and records start times from then on."""
    import sqlite3

    from codepool.core.stores.sqlite import SQLiteStore

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE workspaces (user TEXT PRIMARY KEY, instance_id TEXT NOT NULL, "
        "address TEXT NOT NULL, state TEXT NOT NULL, last_seen_ms INTEGER NOT NULL, "
        "assigned_at_ms INTEGER NOT NULL, hold_until_ms INTEGER NOT NULL DEFAULT 0, "
        "stopped_at_ms INTEGER NOT NULL DEFAULT 0)"
    )
    db.execute("INSERT INTO workspaces VALUES ('alice', 'i-1', 'http://x', 'running', 5, 1, 0, 0)")
    db.commit()
    db.close()
    store = SQLiteStore(str(path))
    ws_ = await store.get_workspace("alice")
    assert ws_ is not None and ws_.last_seen_ms == 5 and ws_.started_at_ms == 0
    await store.put_workspace(replace(ws_, started_at_ms=7))
    again = await store.get_workspace("alice")
    assert again is not None and again.started_at_ms == 7
    await store.close()


async def test_tokens_are_kept_listed_and_revoked(store: Store) -> None:
    a = TokenRecord("0000aaaa", "d" * 64, "bot", ("read", "users:write"), "", 1, 0, "cli:ops")
    b = TokenRecord("0000bbbb", "e" * 64, "mine", ("self",), "alice", 2, 99, "cli:ops")
    await store.put_token(a)
    await store.put_token(b)
    assert await store.get_token("0000aaaa") == a
    assert await store.get_token("nope") is None
    assert await store.list_tokens() == [a, b]
    assert await store.delete_token("0000aaaa")
    assert not await store.delete_token("0000aaaa")
    assert await store.list_tokens() == [b]


async def test_notes_are_replaced_and_expire(store: Store) -> None:
    assert await store.get_note("gauges") is None
    await store.put_note("gauges", '{"a": 1}', 60_000)
    await store.put_note("gauges", '{"a": 2}', 60_000)  # replaces
    await store.put_note("other", "x", 1)
    assert await store.get_note("gauges") == '{"a": 2}'
    await asyncio.sleep(0.01)
    assert await store.get_note("other") is None  # expired


async def test_a_new_store_file_another_process_is_setting_up_is_waited_for(
    tmp_path: Path,
) -> None:
    """`codepool events --follow` and an `assign` started together on a new state folder
    both set up its store file. While one of them is writing it (a new file is not in WAL
    mode yet), SQLite tells the other "database is locked" at once, without the wait it
    gives writers: the store waits and tries again."""
    import sqlite3

    path = tmp_path / "store.db"
    first = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    first.execute("CREATE TABLE setting_up (a)")
    first.execute("BEGIN IMMEDIATE")
    first.execute("INSERT INTO setting_up VALUES (1)")
    opening = asyncio.create_task(asyncio.to_thread(SQLiteStore.from_url, f"sqlite:///{path}"))
    await asyncio.sleep(0.5)  # the opener's first try meets the write (the old code failed)
    assert not opening.done()
    first.execute("COMMIT")
    first.close()
    store = await opening
    await store.put_note("n", "here", 60_000)
    assert await store.get_note("n") == "here"
    await store.close()
