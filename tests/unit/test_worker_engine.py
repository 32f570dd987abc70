"""The worker's state across streams: credits, batched outcomes kept until acked, leases lost, leaving."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tests.unit.test_worker_runner import make_job
from worker_sdk import current_task, task
from worker_sdk._engine import BROKER_DRAINED, WORKER_SHUTDOWN, Engine, PendingRelease
from worker_sdk._jobs import Cancelled, Job, Succeeded
from worker_sdk._runner import Runner

gate = threading.Event()


@task(name="add")
def add(x: int, y: int) -> int:
    return x + y


@task(name="wait")
def wait() -> str:
    ctx = current_task()
    while not gate.is_set() and not ctx.cancelled:
        time.sleep(0.01)
    return "done"


@task(name="report")
def report(fraction: float) -> None:
    current_task().report_progress(fraction, f"at {fraction}")


def with_engine(body: Callable[[Engine], Awaitable[None]], concurrency: int = 3) -> None:
    gate.clear()

    async def main() -> None:
        engine = Engine(registry={d.name: d for d in (add, wait, report)}, concurrency=concurrency,
                        runner_factory=lambda rep, free: Runner(rep, free, threads=concurrency))
        try:
            await asyncio.wait_for(body(engine), 10)
        finally:
            gate.set()
            await asyncio.sleep(0.05)
            engine.runner.shutdown()

    asyncio.run(main())


def job(name: str, *args: Any, n: int = 0) -> Job:
    j = make_job(name, *args)
    j.task_id = f"{n:026d}@q"
    return j


async def until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.005)


def test_credits_fill_free_slots_once_and_come_back_as_slots_free() -> None:
    async def body(engine: Engine) -> None:
        assert engine.take(grant=True).credits == 3
        assert engine.take(grant=True).credits == 0
        engine.accept([job("add", 1, 2, n=1), job("wait", n=2)], refuse_reason=None)
        assert engine.take(grant=True).credits == 0  # one credit still held by the broker
        await until(lambda: len(engine.jobs) == 1)
        assert engine.take(grant=True).credits == 1
        assert engine.take(grant=False).credits == 0

    with_engine(body)


def test_a_new_stream_starts_with_no_credits_held() -> None:
    async def body(engine: Engine) -> None:
        assert engine.take(grant=True).credits == 3
        engine.begin_stream()
        assert engine.take(grant=True).credits == 3

    with_engine(body)


def test_no_credits_once_the_worker_stops_accepting() -> None:
    async def body(engine: Engine) -> None:
        engine.accepting = False
        assert engine.take(grant=True).credits == 0

    with_engine(body)


def test_outcomes_finished_together_go_out_in_one_batch_and_stay_until_acked() -> None:
    async def body(engine: Engine) -> None:
        engine.take(grant=True)
        engine.accept([job("add", i, i, n=i) for i in range(3)], refuse_reason=None)
        await until(lambda: len(engine.unacked) == 3)
        batch = engine.take(grant=True)
        assert [(key[0], result) for key, result in batch.outcomes] == [
            (f"{i:026d}@q", Succeeded(str(2 * i).encode(), "application/json")) for i in range(3)]
        assert batch.credits == 3
        assert engine.take(grant=True).outcomes == []  # sent once per stream
        engine.acked((f"{0:026d}@q", 7), accepted=True)
        engine.acked((f"{1:026d}@q", 7), accepted=False)
        engine.acked((f"{2:026d}@q", 8), accepted=True)  # another attempt's token: not this outcome
        assert [key[0] for key in engine.unacked] == [f"{2:026d}@q"]
        engine.begin_stream()  # reconnect: the unacked one is sent again
        assert [key[0] for key, _ in engine.take(grant=False).outcomes] == [f"{2:026d}@q"]

    with_engine(body)


def test_claims_list_running_leases_and_unacked_outcomes() -> None:
    async def body(engine: Engine) -> None:
        engine.accept([job("add", 1, 1, n=1), job("wait", n=2)], refuse_reason=None)
        await until(lambda: len(engine.unacked) == 1)
        assert sorted(t for t, _ in engine.claims()) == [f"{1:026d}@q", f"{2:026d}@q"]
        assert [t for t, _ in engine.running_leases()] == [f"{2:026d}@q"]

    with_engine(body)


def test_a_stale_lease_stops_the_task_and_drops_its_outcome() -> None:
    async def body(engine: Engine) -> None:
        engine.accept([job("wait", n=1)], refuse_reason=None)
        await asyncio.sleep(0.05)
        running = next(iter(engine.jobs.values()))
        engine.lost((running.task_id, 8))  # another attempt's lease: this one runs on
        assert not running.lost
        engine.lost((running.task_id, running.lease_token))
        assert running.cancel_event.is_set() and running.lost
        await until(lambda: not engine.jobs)
        assert engine.unacked == {}
        assert engine.running_leases() == []

    with_engine(body)


def test_a_cancel_request_ends_the_attempt_as_cancelled() -> None:
    async def body(engine: Engine) -> None:
        engine.accept([job("wait", n=1), job("wait", n=2)], refuse_reason=None)
        await asyncio.sleep(0.05)
        engine.cancel([f"{1:026d}@q", "unknown@q"])
        engine.cancel_lease((f"{2:026d}@q", 7))
        await until(lambda: len(engine.unacked) == 2)
        assert list(engine.unacked.values()) == [Cancelled(), Cancelled()]

    with_engine(body)


def test_tasks_pushed_while_stopping_are_handed_back_unstarted() -> None:
    async def body(engine: Engine) -> None:
        engine.accepting = False
        engine.accept([job("add", 1, 2, n=1)], refuse_reason=None)
        engine.accept([job("add", 1, 2, n=2)], refuse_reason=BROKER_DRAINED)
        assert engine.jobs == {}
        assert engine.take(grant=True).releases == [
            PendingRelease(((f"{1:026d}@q", 7),), WORKER_SHUTDOWN, False),
            PendingRelease(((f"{2:026d}@q", 7),), BROKER_DRAINED, False)]

    with_engine(body)


def test_unfinished_tasks_are_released_as_started_when_abandoned() -> None:
    async def body(engine: Engine) -> None:
        engine.accept([job("wait", n=1), job("add", 2, 2, n=2)], refuse_reason=None)
        await until(lambda: len(engine.unacked) == 1)
        assert engine.busy()
        engine.abandon_running(WORKER_SHUTDOWN)
        assert not engine.busy()
        batch = engine.take(grant=False)
        assert batch.releases == [PendingRelease(((f"{1:026d}@q", 7),), WORKER_SHUTDOWN, True)]
        await until(lambda: not engine.jobs)
        assert len(engine.unacked) == 1  # the abandoned one reports nothing

    with_engine(body)


def test_releases_can_be_held_for_another_stream() -> None:
    async def body(engine: Engine) -> None:
        engine.accepting = False
        engine.accept([job("add", 1, 2, n=1)], refuse_reason=None)
        assert engine.take(grant=False, hold_releases=True).releases == []
        assert not engine.quiet()
        assert len(engine.take(grant=False).releases) == 1
        assert engine.quiet()

    with_engine(body)


def test_progress_is_coalesced_to_the_latest_report_of_each_running_task() -> None:
    async def body(engine: Engine) -> None:
        j = job("wait", n=1)
        engine.accept([j], refuse_reason=None)
        sink = engine.progress_sink(j)
        sink(0.1, "a")
        sink(0.2, "b")
        await asyncio.sleep(0)
        assert engine.take(grant=False).progress == [((j.task_id, 7), 0.2, "b")]
        assert engine.take(grant=False).progress == []

    with_engine(body)


def test_wait_until_returns_when_the_predicate_holds_or_the_deadline_passes() -> None:
    async def body(engine: Engine) -> None:
        engine.accept([job("add", 1, 2, n=1)], refuse_reason=None)
        assert await engine.wait_until(lambda: not engine.jobs, time.monotonic() + 5)
        started = time.monotonic()
        assert not await engine.wait_until(lambda: False, time.monotonic() + 0.1)
        assert time.monotonic() - started < 1

    with_engine(body)
