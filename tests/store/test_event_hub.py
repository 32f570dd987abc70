"""The EventHub's subscription against a real server: events in order, a silent server, a restart."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest
import redis.asyncio

from broker_service import events
from broker_service.events import RESYNC, EventHub
from broker_service.store.keys import GlobalKeys
from tests.redis_process import RedisProcess

KEYS = GlobalKeys("hubtest")


@pytest.fixture
def server() -> Iterator[RedisProcess]:
    process = RedisProcess(appendonly=False)
    process.start()
    yield process
    process.close()


async def _until(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds}s")
        await asyncio.sleep(0.01)


Body = Callable[[EventHub, redis.asyncio.Redis, list[tuple[str, str]]], Awaitable[None]]


def _hub_run(server: RedisProcess, body: Body) -> None:
    """Runs `body(hub, client, heard)` with a started hub; `heard` collects queue q's events."""

    async def main() -> None:
        client = redis.asyncio.Redis.from_url(server.url, socket_timeout=5)
        hub = EventHub(client, KEYS)
        heard: list[tuple[str, str]] = []
        hub.add("q", lambda kind, ulids: heard.append((kind, ulids)))
        await hub.start()
        try:
            await asyncio.wait_for(hub.connected.wait(), 10)
            await asyncio.wait_for(body(hub, client, heard), 30)
        finally:
            await hub.stop()
            await client.aclose()

    asyncio.run(main())


def test_every_event_reaches_the_listeners_of_its_queue_in_order(server: RedisProcess) -> None:
    async def body(hub: EventHub, client: redis.asyncio.Redis, heard: list[tuple[str, str]]) -> None:
        others: list[tuple[str, str]] = []
        hub.add("other", lambda kind, ulids: others.append((kind, ulids)))
        async with client.pipeline(transaction=False) as pipe:  # a burst: many events per read
            for i in range(500):
                pipe.publish(KEYS.queue("q").events, f"succeeded u{i} v{i}")
            pipe.publish(KEYS.queue("other").events, "queued x")
            await pipe.execute()
        await _until(lambda: len(heard) == 501 and len(others) == 1, 10)
        assert heard[0] == (RESYNC, "")  # the subscription's confirmation
        assert heard[1:] == [("succeeded", f"u{i} v{i}") for i in range(500)]
        assert others == [("queued", "x")]

    _hub_run(server, body)


def test_without_a_raw_stream_the_hub_reads_one_reply_at_a_time_through_redis_py(
    server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "raw_stream", lambda conn: None)

    async def body(hub: EventHub, client: redis.asyncio.Redis, heard: list[tuple[str, str]]) -> None:
        for i in range(20):
            await client.publish(KEYS.queue("q").events, f"queued u{i}")
        await _until(lambda: len(heard) == 21, 5)
        assert heard == [(RESYNC, "")] + [("queued", f"u{i}") for i in range(20)]

    _hub_run(server, body)


def test_running_events_are_read_once_a_listener_asks_for_them(server: RedisProcess) -> None:
    async def body(hub: EventHub, client: redis.asyncio.Redis, heard: list[tuple[str, str]]) -> None:
        await client.publish(KEYS.queue("q").running_events, "running a")
        await client.publish(KEYS.queue("q").events, "queued b")
        await _until(lambda: ("queued", "b") in heard, 5)
        assert ("running", "a") not in heard
        hub.add("q", lambda kind, ulids: None, running=True)
        await _until(lambda: heard.count((RESYNC, "")) == 2, 5)  # the new pattern's confirmation
        await client.publish(KEYS.queue("q").running_events, "running c")
        await _until(lambda: ("running", "c") in heard, 5)

    _hub_run(server, body)


def test_a_server_gone_silent_is_left_and_subscribed_to_anew_once_it_answers(
    server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "PING_SECONDS", 0.2)
    assert server.proc is not None
    pid = server.proc.pid

    async def body(hub: EventHub, client: redis.asyncio.Redis, heard: list[tuple[str, str]]) -> None:
        server.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            await _until(lambda: not hub.connected.is_set(), 5)  # two silent pings: connection closed
        finally:
            server.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        await _until(lambda: heard.count((RESYNC, "")) == 2, 10)  # subscribed anew: listeners re-read
        await client.publish(KEYS.queue("q").events, "queued after")
        await _until(lambda: heard[-1] == ("queued", "after"), 5)

    _hub_run(server, body)
    assert server.proc.pid == pid


def test_a_restarted_server_is_subscribed_to_anew(server: RedisProcess) -> None:
    async def body(hub: EventHub, client: redis.asyncio.Redis, heard: list[tuple[str, str]]) -> None:
        await asyncio.to_thread(server.restart, hard=True)
        await _until(lambda: heard.count((RESYNC, "")) == 2, 15)
        await client.publish(KEYS.queue("q").events, "queued again")
        await _until(lambda: heard[-1] == ("queued", "again"), 5)

    _hub_run(server, body)
