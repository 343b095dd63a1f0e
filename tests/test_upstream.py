"""The proxy's connections to boxes (codepool/daemon/upstream.py), against real sockets:
kept alive and reused per box, replaced when the box closed one while it sat idle (for
requests that can safely go again), bounded per box, and never reused after an answer
that did not end cleanly. What boxes may answer is tested in test_desync.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from codepool.daemon import upstream
from codepool.daemon.upstream import BadAnswer, BoxPool


class Box:
    """A box that counts its connections and answers each request as told."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.close_after = 0  # close each connection after this many answers (0: never)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        answered = 0
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                body = await reader.readexactly(length) if length else b""
                self.requests.append(head.split(b"\r\n")[0] + b" " + body)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                answered += 1
                if self.close_after and answered >= self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def box_server() -> AsyncIterator[tuple[Box, Callable[[], Awaitable[upstream.Connection]]]]:
    box = Box()
    server = await asyncio.start_server(box.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    target = upstream.Box("127.0.0.1", port)
    async with server:
        yield box, lambda: upstream.connect_tcp(target)


def head(method: str = "GET", path: str = "/", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: box\r\n{extra}\r\n".encode()


async def fetch(pool: BoxPool, connect: Callable[[], Awaitable[upstream.Connection]]) -> bytes:
    answer = await pool.exchange("box", connect, "GET", head(), None)
    try:
        return await answer.read()
    finally:
        answer.release()


async def test_connections_are_kept_alive_and_reused() -> None:
    pool = BoxPool()
    async with box_server() as (box, connect):
        for _ in range(20):
            assert await fetch(pool, connect) == b"ok"
        assert box.connections == 1
        # Twenty at once: twenty connections, all kept (up to the bound) for the next ones.
        assert await asyncio.gather(*(fetch(pool, connect) for _ in range(20))) == [b"ok"] * 20
        opened = box.connections
        await asyncio.gather(*(fetch(pool, connect) for _ in range(20)))
        assert box.connections == opened
    await pool.close()


async def test_idle_connections_per_box_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream, "MAX_IDLE_PER_BOX", 3)
    pool = BoxPool()
    async with box_server() as (_, connect):
        await asyncio.gather(*(fetch(pool, connect) for _ in range(10)))
        assert len(pool._idle["box"]) == 3
    await pool.close()


async def test_a_connection_the_box_closed_while_idle_is_replaced_for_a_get() -> None:
    pool = BoxPool()
    async with box_server() as (box, connect):
        assert await fetch(pool, connect) == b"ok"
        for w in box.writers:  # the box's keep-alive timeout: it closes the idle connection
            w.close()
        await asyncio.sleep(0.05)
        assert await fetch(pool, connect) == b"ok"  # a new connection, no error seen
        assert box.connections == 2
    await pool.close()


async def test_a_post_on_a_connection_closed_under_it_is_not_sent_twice() -> None:
    pool = BoxPool()
    async with box_server() as (box, connect):
        box.close_after = 1
        assert await fetch(pool, connect) == b"ok"
        # The pool does not know yet that the box closed it: a POST with a body must not
        # be replayed on another connection, so it fails (the proxy answers 502).
        conn = pool._idle["box"][0]
        conn.closed = False

        async def body(c: upstream.Connection) -> None:
            c.send(b"x")

        post = head("POST", "/", "Content-Length: 1\r\n")
        with pytest.raises((BadAnswer, OSError)):
            await pool.exchange("box", connect, "POST", post, body)
        assert [r for r in box.requests if r.startswith(b"POST")] == []
    await pool.close()


async def test_idle_connections_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream, "IDLE_S", 0.05)
    pool = BoxPool()
    async with box_server() as (box, connect):
        await fetch(pool, connect)
        await asyncio.sleep(0.1)
        await fetch(pool, connect)
        assert box.connections == 2  # the old one was closed, not used
    await pool.close()


async def test_a_head_answer_ends_with_its_head() -> None:
    pool = BoxPool()
    async with box_server() as (box, connect):
        answer = await pool.exchange("box", connect, "HEAD", head("HEAD"), None)
        assert answer.status == 200 and answer.content_length == 2
        assert await asyncio.wait_for(answer.read(), 2) == b""
        answer.release()
        assert await fetch(pool, connect) == b"ok"  # on a new connection
        assert box.connections == 2
    await pool.close()


async def test_a_box_that_never_answers_times_out_on_connect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(upstream, "CONNECT_S", 0.2)

    async def never() -> upstream.Connection:
        await asyncio.sleep(10)
        raise AssertionError

    with pytest.raises(TimeoutError):
        await BoxPool().exchange("box", never, "GET", head(), None)


def test_the_same_under_uvloop() -> None:
    """The router runs on uvloop, whose transports call connection_made a turn later and
    are not asyncio.Transport subclasses."""
    import uvloop

    async def reuse() -> tuple[list[bytes], int]:
        pool = BoxPool()
        async with box_server() as (box, connect):
            got = [await fetch(pool, connect) for _ in range(5)]
            opened = box.connections
            for w in box.writers:
                w.close()
        await pool.close()
        return got, opened

    assert uvloop.run(reuse()) == ([b"ok"] * 5, 1)
