"""Store fixtures: an async Store on the session server, driven from sync tests by its own loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio

from broker_service.domain import Lease, LeasedTask, NewTask
from broker_service.store.store import EnqueueResult, Store
from tests.redis_process import RedisProcess
from tests.store.helpers import EventWatcher, dump_queue, new_task

T = TypeVar("T")


@dataclass
class StoreHarness:
    """A Store, its queue for this test, a sync client for seeding and reading, and the loop."""

    store: Store
    queue: str
    redis: redis.Redis
    loop: asyncio.AbstractEventLoop

    def run(self, awaitable: Awaitable[T]) -> T:
        async def wrapper() -> T:
            return await asyncio.wait_for(awaitable, 10)

        return self.loop.run_until_complete(wrapper())

    def dump(self) -> dict[str, Any]:
        return dump_queue(self.redis, self.queue)

    def task(self, **options: Any) -> NewTask:
        return new_task(self.queue, **options)

    def drop_record(self, ulid: str) -> None:
        """Deletes a task's record wherever it is (its hash, or its packed record when ready), as
        its expiry would, leaving its index entries behind."""
        keys = self.store.queue_keys(self.queue)
        self.redis.delete(keys.task(ulid))
        self.redis.hdel(keys.ready, ulid)

    def enqueue(self, *tasks: NewTask) -> list[EnqueueResult]:
        return self.run(self.store.enqueue(self.queue, list(tasks)))

    def submit(self, count: int = 1, **options: Any) -> list[str]:
        """Enqueues `count` tasks with the same options; their ulids, in order."""
        tasks = [self.task(**options) for _ in range(count)]
        self.enqueue(*tasks)
        return [t.ulid for t in tasks]

    def lease(self, count: int = 1, worker: str = "w1") -> list[LeasedTask]:
        leased, *_ = self.run(self.store.lease(self.queue, count, worker))
        return leased

    def leased_after_delay(self, delay_ms: int = 30) -> LeasedTask:
        """Submits a task `delay_ms` ahead, promotes it once due and leases it (its `due` is
        then `delay_ms` past its `created`)."""
        self.enqueue(self.task(delay_ms=delay_ms))
        time.sleep(delay_ms / 1000 + 0.02)
        assert self.run(self.store.promote(self.queue, 10)) == 1
        [leased] = self.lease(1)
        return leased

    def running(self, count: int = 1, **options: Any) -> list[Lease]:
        """Submits and leases `count` tasks; their leases."""
        self.submit(count, **options)
        return [Lease(t.ulid, t.lease_token) for t in self.lease(count)]

    def events(self) -> EventWatcher:
        watcher = EventWatcher(self.redis, self.queue)
        self._watchers.append(watcher)
        return watcher

    def __post_init__(self) -> None:
        self._watchers: list[EventWatcher] = []

    def close(self) -> None:
        for watcher in self._watchers:
            watcher.close()


@pytest.fixture
def harness(redis_server: RedisProcess, redis_client: redis.Redis, queue_name: str) -> Iterator[StoreHarness]:
    loop = asyncio.new_event_loop()
    client = redis.asyncio.Redis.from_url(redis_server.url, socket_timeout=5)
    store = Store(client, dead_letter_ttl_ms=3_600_000, dead_letter_max=100)
    h = StoreHarness(store, queue_name, redis_client, loop)
    try:
        h.run(store.load_scripts())
        yield h
    finally:
        h.close()
        loop.run_until_complete(client.aclose())
        loop.close()


# --- Schedules -----------------------------------------------------------------------------------

_schedule_namespaces = iter(range(1_000_000))


@dataclass
class ScheduleHarness:
    """A Store on a key namespace of this test alone (schedules share one slot per namespace)."""

    store: Store
    redis: redis.Redis
    loop: asyncio.AbstractEventLoop

    def run(self, awaitable: Awaitable[T]) -> T:
        async def wrapper() -> T:
            return await asyncio.wait_for(awaitable, 10)

        return self.loop.run_until_complete(wrapper())

    def hash(self, schedule_id: str) -> dict[str, str]:
        raw: Any = self.redis.hgetall(self.store.schedule_keys.schedule(schedule_id))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def due(self) -> list[tuple[str, int]]:
        raw: Any = self.redis.zrange(self.store.schedule_keys.due, 0, -1, withscores=True)
        return [(m.decode(), int(s)) for m, s in raw]

    def ids(self) -> list[str]:
        raw: Any = self.redis.zrange(self.store.schedule_keys.ids, 0, -1)
        return [m.decode() for m in raw]


@pytest.fixture
def schedules(redis_server: RedisProcess, redis_client: redis.Redis) -> Iterator[ScheduleHarness]:
    loop = asyncio.new_event_loop()
    client = redis.asyncio.Redis.from_url(redis_server.url, socket_timeout=5)
    store = Store(client, namespace=f"sched{next(_schedule_namespaces)}")
    h = ScheduleHarness(store, redis_client, loop)
    try:
        h.run(store.load_scripts())
        yield h
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()
