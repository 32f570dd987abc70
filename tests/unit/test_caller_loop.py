"""CallerLoop: the event loop the sync client's session runs on, driven by the calling threads."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from client_sdk import _loop


@pytest.fixture
def loop() -> Iterator[_loop.CallerLoop]:
    caller_loop = _loop.CallerLoop()
    yield caller_loop
    caller_loop.close()


async def _echo(value: int, seconds: float = 0.0) -> tuple[int, int]:
    await asyncio.sleep(seconds)
    return value, threading.get_ident()


def _until_running(loop: _loop.CallerLoop) -> None:
    deadline = time.monotonic() + 5
    while loop._runner is None:
        assert time.monotonic() < deadline, "nobody took the loop"
        time.sleep(0.001)


def test_a_lone_caller_runs_the_coroutine_on_its_own_thread(loop: _loop.CallerLoop) -> None:
    assert loop.run(_echo(7), 5) == (7, threading.get_ident())


def test_the_coroutines_exception_reaches_its_caller(loop: _loop.CallerLoop) -> None:
    async def boom() -> None:
        raise KeyError("lost")

    with pytest.raises(KeyError, match="lost"):
        loop.run(boom(), 5)


def test_a_call_joining_a_running_loop_returns_as_soon_as_it_is_done(loop: _loop.CallerLoop) -> None:
    with ThreadPoolExecutor(1) as pool:
        long = pool.submit(loop.run, _echo(1, 1.0), 5)
        _until_running(loop)  # the pool's thread runs the loop
        started = time.monotonic()
        value, ran_on = loop.run(_echo(2, 0.05), 5)
        took = time.monotonic() - started
        assert not long.done()
        assert long.result(5)[0] == 1
    assert value == 2
    assert ran_on != threading.get_ident()  # the other thread ran it
    assert took < 0.9


def test_a_waiting_caller_takes_the_loop_over_when_its_runner_returns(loop: _loop.CallerLoop) -> None:
    with ThreadPoolExecutor(1) as pool:
        short = pool.submit(loop.run, _echo(1, 0.2), 5)
        _until_running(loop)
        value, ran_on = loop.run(_echo(2, 1.0), 5)
        assert short.result(5)[0] == 1
    assert value == 2
    assert ran_on == threading.get_ident()  # resumed here once the pool's thread left


def test_many_threads_share_the_loop_and_each_gets_its_own_result(loop: _loop.CallerLoop) -> None:
    barrier = threading.Barrier(8)

    def calls(worker: int) -> list[int]:
        barrier.wait(5)
        return [loop.run(_echo(worker * 1000 + i, 0.001 * (i % 3)), 5)[0] for i in range(50)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(calls, range(8)))
    assert results == [[w * 1000 + i for i in range(50)] for w in range(8)]


def test_a_thread_running_an_event_loop_of_its_own_still_gets_its_result(loop: _loop.CallerLoop) -> None:

    async def from_a_coroutine() -> tuple[int, int]:
        return loop.run(_echo(3), 5)

    value, ran_on = asyncio.run(from_a_coroutine())
    assert value == 3
    assert ran_on != threading.get_ident()


def test_a_coroutine_past_its_deadline_and_grace_is_cancelled(loop: _loop.CallerLoop,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_loop, "GRACE", 0.2)
    cancelled = threading.Event()

    async def stuck() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        loop.run(stuck(), 0.1)
    assert time.monotonic() - started < 5
    assert cancelled.is_set()
    assert loop.run(_echo(4), 5)[0] == 4  # the loop serves the next call


def test_every_sync_client_of_a_process_shares_one_loop() -> None:
    assert _loop.shared() is _loop.shared()
