"""Store methods that are plain commands, script loading, and the mapping of Redis errors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from broker_service.domain import (
    StaleLeaseError,
    StoreError,
    StoreUnavailableError,
    TaskNotFoundError,
    TaskState,
    TaskTerminalError,
)
from broker_service.server import MIN_REDIS
from broker_service.store.errors import translate
from broker_service.store.store import Store
from tests.redis_process import RedisProcess, free_port
from tests.store.conftest import StoreHarness


def test_get_reads_the_whole_record(harness: StoreHarness) -> None:
    task = harness.task(payload=b"\x00\xffbytes", headers={"a": "b"}, priority=3, timeout_ms=9_000)
    harness.enqueue(task)

    record = harness.run(harness.store.get(harness.queue, task.ulid))

    assert (record.ulid, record.queue, record.task_id) == (task.ulid, harness.queue, task.task_id)
    assert (record.state, record.payload, record.headers, record.priority) == (
        TaskState.QUEUED, b"\x00\xffbytes", {"a": "b"}, 3)
    assert (record.timeout_ms, record.attempt, record.error, record.lease_token) == (9_000, 0, None, 0)
    assert record.retry == task.retry
    assert record.created_ms == record.scheduled_ms > 0


def test_get_of_an_unknown_task_raises_not_found(harness: StoreHarness) -> None:
    with pytest.raises(TaskNotFoundError):
        harness.run(harness.store.get(harness.queue, "01HZZZZZZZZZZZZZZZZZZZZZZZ"))


def test_depths_counts_every_index(harness: StoreHarness) -> None:
    harness.submit(3)
    harness.submit(2, delay_ms=60_000)
    harness.lease(1)

    depths = harness.run(harness.store.depths(harness.queue))

    assert depths[TaskState.QUEUED] == 2
    assert depths[TaskState.SCHEDULED] == 2
    assert depths[TaskState.RUNNING] == 1
    assert set(depths) == set(TaskState)
    assert sum(depths.values()) == 5


def test_register_queues_is_idempotent_and_queues_are_sorted(harness: StoreHarness) -> None:
    store = Store(harness.store.redis, namespace=f"ns-{harness.queue}")

    harness.run(store.register_queues(["b", "a"]))
    harness.run(store.register_queues(["a", "c"]))
    harness.run(store.register_queues([]))

    assert harness.run(store.queues()) == ["a", "b", "c"]


def test_ping_and_eviction_policy(harness: StoreHarness) -> None:
    harness.run(harness.store.ping())

    assert harness.run(harness.store.eviction_policy()) == "noeviction"


def test_the_server_speaks_redis_7_or_newer_as_the_broker_needs(harness: StoreHarness) -> None:
    version = harness.run(harness.store.server_version())

    assert version is not None and version >= MIN_REDIS
    info: Any = harness.redis.info("server")
    assert ".".join(map(str, version)) == info["redis_version"]


def test_scripts_are_reloaded_when_the_server_forgot_them(harness: StoreHarness) -> None:
    harness.redis.script_flush()

    [result] = harness.enqueue(harness.task())

    assert result.state is TaskState.QUEUED
    assert harness.redis.script_exists(harness.store.scripts._scripts["lease"].sha) == [True]

    harness.redis.script_flush()  # the composed script too
    [queued], batch = harness.run(harness.store.enqueue_and_lease(harness.queue, [harness.task()], 2, "w1"))
    assert queued.state is TaskState.QUEUED and len(batch.leased) == 2


def test_the_store_keeps_working_across_a_server_restart() -> None:
    server = RedisProcess()
    server.start()
    loop = asyncio.new_event_loop()
    client = redis.asyncio.Redis.from_url(server.url, socket_timeout=5)
    store = Store(client)
    try:
        run = loop.run_until_complete
        run(store.load_scripts())
        from tests.store.helpers import new_task

        task = new_task("restart")
        run(store.enqueue("restart", [task]))
        server.restart()

        for _ in range(50):  # the first calls may meet the dropped connection
            try:
                leased, *_ = run(store.lease("restart", 1, "w"))
                break
            except StoreUnavailableError:
                loop.run_until_complete(asyncio.sleep(0.05))
        assert [t.ulid for t in leased] == [task.ulid]
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()
        server.close()


def test_an_unreachable_server_raises_store_unavailable() -> None:
    loop = asyncio.new_event_loop()
    client = redis.asyncio.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1,
                                  retry=Retry(NoBackoff(), 0))
    store = Store(client)
    from tests.store.helpers import new_task

    try:
        for call in (store.ping(), store.get("q", "01HZZZZZZZZZZZZZZZZZZZZZZZ"), store.depths("q"),
                     store.enqueue("q", [new_task("q")]), store.load_scripts()):
            with pytest.raises(StoreUnavailableError):
                loop.run_until_complete(call)
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()


@pytest.mark.parametrize(("error", "expected"), [
    (RedisConnectionError("gone"), StoreUnavailableError),
    (RedisTimeoutError("slow"), StoreUnavailableError),
    (BusyLoadingError("LOADING"), StoreUnavailableError),
    (ReadOnlyError("READONLY You can't write against a read only replica."), StoreUnavailableError),
    (ConnectionResetError("reset"), StoreUnavailableError),
    (ResponseError("BUSY Redis is busy running a script"), StoreUnavailableError),
    (ResponseError("OOM command not allowed when used memory > 'maxmemory'."), StoreUnavailableError),
    (ResponseError("NOT_FOUND task x"), TaskNotFoundError),
    (ResponseError("TERMINAL task x is succeeded"), TaskTerminalError),
    (ResponseError("STALE lease of x"), StaleLeaseError),
    (ResponseError("ERR something broke"), StoreError),
])
def test_redis_errors_map_to_domain_errors(error: Exception, expected: type[Exception]) -> None:
    mapped = translate(error)

    assert type(mapped) is expected


def test_script_error_detail_is_kept(harness: StoreHarness) -> None:
    with pytest.raises(TaskNotFoundError, match="task 01HZZZZZZZZZZZZZZZZZZZZZZZ"):
        harness.run(harness.store.cancel(harness.queue, "01HZZZZZZZZZZZZZZZZZZZZZZZ", ""))
