"""The task pool: calls on threads, completions delivered to the loop in bursts, threads on demand."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

import pytest

from worker_sdk._pool import TaskPool


class CountingPool(TaskPool[int, int]):
    """Counts the loop callbacks that deliver completions."""

    deliveries = 0

    def _deliver(self) -> None:
        self.deliveries += 1
        super()._deliver()


def with_pool(body: Callable[[CountingPool, list[tuple[int, int | None, str]]], Awaitable[None]],
              size: int = 4) -> None:
    async def main() -> None:
        done: list[tuple[int, int | None, str]] = []
        pool = CountingPool(size, asyncio.get_running_loop(),
                            lambda key, value: done.append((key, value, threading.current_thread().name)))
        try:
            await asyncio.wait_for(body(pool, done), 10)
        finally:
            pool.shutdown()

    asyncio.run(main())


async def until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.005)


def test_each_call_runs_on_a_pool_thread_and_completes_on_the_loop() -> None:
    async def body(pool: CountingPool, done: list[tuple[int, int | None, str]]) -> None:
        ran_on: list[str] = []

        def call() -> int:
            ran_on.append(threading.current_thread().name)
            return 42

        pool.submit(1, call)
        await until(lambda: len(done) == 1)
        assert done == [(1, 42, threading.current_thread().name)]
        assert ran_on[0].startswith("conveyor-task") and ran_on[0] != threading.current_thread().name

    with_pool(body)


def test_completions_of_a_burst_reach_the_loop_in_one_callback() -> None:
    async def body(pool: CountingPool, done: list[tuple[int, int | None, str]]) -> None:
        gate = threading.Event()
        for i in range(4):
            pool.submit(i, lambda i=i: gate.wait(5) and i)  # type: ignore[misc]
        await until(lambda: pool.busy == 4)
        # Block the loop while every thread finishes, so all four completions wait together.
        gate.set()
        deadline = time.monotonic() + 5
        while pool.busy and time.monotonic() < deadline:
            time.sleep(0.001)
        await until(lambda: len(done) == 4)
        assert sorted(key for key, _, _ in done) == [0, 1, 2, 3]
        assert pool.deliveries == 1

    with_pool(body)


def test_threads_start_on_demand_and_never_exceed_the_size() -> None:
    async def body(pool: CountingPool, done: list[tuple[int, int | None, str]]) -> None:
        for i in range(3):  # one at a time: one thread is enough
            pool.submit(i, lambda: 0)
            await until(lambda i=i: len(done) == i + 1)  # type: ignore[misc]
        assert len(pool._threads) == 1
        gate = threading.Event()
        for i in range(6):
            pool.submit(10 + i, lambda: 1 if gate.wait(5) else 0)
        await until(lambda: pool.busy == 4)
        await asyncio.sleep(0.05)
        assert pool.busy == 4 and len(pool._threads) == 4  # two calls wait for a thread
        gate.set()
        await until(lambda: len(done) == 9)
        assert pool.busy == 0

    with_pool(body)


def test_a_call_that_raises_is_logged_and_completes_with_none(caplog: pytest.LogCaptureFixture) -> None:
    async def body(pool: CountingPool, done: list[tuple[int, int | None, str]]) -> None:
        def explode() -> int:
            raise RuntimeError("boom")

        pool.submit(7, explode)
        pool.submit(8, lambda: 8)
        await until(lambda: len(done) == 2)
        assert sorted((key, value) for key, value, _ in done) == [(7, None), (8, 8)]

    with_pool(body, size=1)
    assert "task pool call failed" in caplog.text


def test_shutdown_drops_queued_calls_and_lets_idle_threads_end() -> None:
    async def body(pool: CountingPool, done: list[tuple[int, int | None, str]]) -> None:
        gate = threading.Event()
        ran: list[int] = []
        pool.submit(1, lambda: 1 if gate.wait(5) else 0)
        pool.submit(2, lambda: ran.append(2) or 2)  # type: ignore[func-returns-value]
        await until(lambda: pool.busy == 1)
        pool.shutdown()
        with pytest.raises(RuntimeError):
            pool.submit(3, lambda: 3)
        gate.set()
        await until(lambda: len(done) == 1)
        for thread in pool._threads:
            thread.join(2)
        assert ran == [] and not any(t.is_alive() for t in pool._threads)

    with_pool(body, size=1)
