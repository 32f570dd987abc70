"""Schedules whose tick has come submit their task, exactly once per tick however many replicas run.

Every replica runs this loop. For a due schedule a pass (1) submits the tick's task into its queue
under a ulid derived from (schedule, tick), so a second submit of the same tick finds the first
task and adds nothing, then (2) advances the schedule with a compare-and-set on its next fire
time. Replicas racing over one tick submit one task and one of them advances; a replica that
dies between (1) and (2) leaves the tick due, and the next pass repeats (1) harmlessly and does
(2). The two steps touch two slots (the queue's and the schedules'), never one script across both.
"""

from __future__ import annotations

import asyncio
import logging
import time

from broker_service.domain import StoreUnavailableError
from broker_service.loops import PeriodicLoop
from broker_service.metrics import Metrics
from broker_service.schedule import Schedule, ScheduleNotFoundError, plan, tick_task
from broker_service.store.store import Store

log = logging.getLogger(__name__)

BATCH = 100
CONCURRENCY = 16
FAILURE_LOG_SECONDS = 60.0


class Scheduler(PeriodicLoop):
    name = "scheduler"

    def __init__(self, store: Store, metrics: Metrics, interval: float, grace_seconds: float) -> None:
        super().__init__(interval)
        self._store = store
        self._metrics = metrics
        self._grace_ms = int(grace_seconds * 1000)
        self._known_queues: set[str] = set()
        self._failures: dict[str, float] = {}  # schedule id -> monotonic time its failure was last logged

    async def tick(self) -> None:
        now = await self._store.now_ms()
        while True:
            due = await self._store.due_schedules(now, BATCH)
            # Schedules are independent: a batch goes CONCURRENCY at a time (round trips overlap)
            # without taking more than that many of the broker's Redis connections.
            for start in range(0, len(due), CONCURRENCY):
                await asyncio.gather(*(self._fire_logged(schedule_id, now)
                                       for schedule_id in due[start:start + CONCURRENCY]))
            if len(due) < BATCH:
                break
            now = await self._store.now_ms()
        self._metrics.schedules.set(await self._store.schedule_count())

    async def _fire_logged(self, schedule_id: str, now: int) -> None:
        try:
            await self._fire(schedule_id, now)
            self._failures.pop(schedule_id, None)
        except ScheduleNotFoundError:
            pass  # deleted meanwhile
        except StoreUnavailableError:
            raise
        except Exception:  # one broken schedule must not hold back the others
            if self._failures.get(schedule_id, 0) < time.monotonic() - FAILURE_LOG_SECONDS:
                self._failures[schedule_id] = time.monotonic()
                log.exception("schedule %s: pass failed (logged once a minute while it fails)", schedule_id)

    async def _fire(self, schedule_id: str, now: int) -> None:
        schedule = await self._store.get_schedule(schedule_id)
        if schedule.paused or schedule.next_fire_ms > now:
            return
        step = plan(schedule, now, self._grace_ms)
        tasks = [tick_task(schedule.spec, tick) for tick in step.fire]
        if tasks:
            queue = schedule.spec.task.queue
            if queue not in self._known_queues:
                await self._store.register_queues([queue])
                self._known_queues.add(queue)
            await self._store.enqueue(queue, tasks)
        last_task = tasks[-1].task_id if tasks else ""
        if not await self._store.advance_schedule(schedule_id, schedule.next_fire_ms, step.next_fire_ms,
                                                  step.fire, last_task):
            return  # another replica advanced it first: it counted these ticks
        self._count(schedule, step.fire, step.skipped, now)

    def _count(self, schedule: Schedule, fired: list[int], skipped: int, now: int) -> None:
        m = self._metrics
        queue = schedule.spec.task.queue
        m.schedule_ticks_fired.labels(queue).inc(len(fired))
        if skipped:
            m.schedule_ticks_skipped.labels(queue).inc(skipped)
            log.info("schedule %s: %d missed ticks skipped (policy %s)", schedule.id, skipped,
                     schedule.spec.missed.label)
        if fired:
            self._metrics.enqueued.labels(queue).inc(len(fired))
        for tick in fired:
            m.schedule_fire_lag.observe(max(0, now - tick) / 1000)
