"""The event log: what happened to whose workspace or account, when, by whom, and why.
It is the audit log (`codepool events`) and the source of the usage report.

Events are written after the step they record has succeeded. A failure to write one
does not undo the step: it is logged, and the step's own record (the workspace in the
store) stays the truth about the present."""

from __future__ import annotations

import asyncio
import getpass
import logging
from collections.abc import AsyncIterator, Callable, Sequence

from codepool.core.errors import InvalidInput, StoreUnavailable
from codepool.core.models import Event, EventKind
from codepool.core.store import Store

log = logging.getLogger("codepool")

PAGE = 1000  # events read per store round trip
FOLLOW_POLL_S = 1.0
FOLLOW_OVERLAP_MS = 10_000  # re-read this far back: another router's clock may lag ours

# Actors that are not people.
REAPER = "reaper"
ROUTER = "router"


def parse_kinds(text: str) -> set[EventKind]:
    """'stop,assign' -> those kinds; '' -> none named (all)."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    allowed = {k.value: k for k in EventKind}
    if bad := [n for n in names if n not in allowed]:
        raise InvalidInput(
            f"invalid event kind {', '.join(map(repr, bad))}: allowed: {', '.join(allowed)}"
        )
    return {allowed[n] for n in names}


def cli_actor() -> str:
    """Who runs a CLI command: the operator's login on this machine."""
    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):
        return "cli"


async def record(store: Store, events: Sequence[Event]) -> None:
    """Append events; a store that fails here is logged, not raised (the step is done)."""
    try:
        await store.append_events(events)
    except StoreUnavailable as exc:
        kinds = ", ".join(f"{e.kind.value} {e.user}" for e in events)
        log.warning("event log: could not record %s: %s", kinds, exc)


async def read(
    store: Store, since_ms: int, until_ms: int, user: str | None = None
) -> AsyncIterator[Event]:
    """Every event from since_ms to until_ms (inclusive) in order, a page at a time."""
    seen: set[str] = set()  # ids already given at the page boundary's millisecond
    while True:
        page = await store.read_events(since_ms, until_ms, PAGE + len(seen))
        fresh = [e for e in page if e.id not in seen]
        for event in fresh:
            if user is None or event.user == user:
                yield event
        if len(page) < PAGE + len(seen) or not fresh:
            return
        last = page[-1].at_ms
        seen = {e.id for e in page if e.at_ms == last}
        since_ms = last


async def follow(
    store: Store, since_ms: int, now: Callable[[], int], user: str | None = None
) -> AsyncIterator[Event]:
    """The events from since_ms on, then each new one as it comes, until cancelled."""
    given: dict[str, int] = {}  # id -> at_ms of what was yielded in the overlap window
    while True:
        until = now()
        newest = since_ms
        async for event in read(store, since_ms, until, user):
            if event.id in given:
                continue
            given[event.id] = event.at_ms
            newest = max(newest, event.at_ms)
            yield event
        since_ms = max(since_ms, min(newest, until) - FOLLOW_OVERLAP_MS)
        given = {i: at for i, at in given.items() if at >= since_ms}
        await asyncio.sleep(FOLLOW_POLL_S)
