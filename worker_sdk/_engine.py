"""The worker's state across streams: jobs and their slots, credits, outcomes awaiting acks, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from client_sdk import TaskDefinition
from worker_sdk._jobs import Cancelled, Job, Result
from worker_sdk._runner import Free, ProgressSink, Report, Runner

logger = logging.getLogger(__name__)

WORKER_SHUTDOWN = "worker_shutdown"
BROKER_DRAINED = "broker_drained"

LeaseKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class PendingRelease:
    """Leases to hand back, not yet written to a stream."""

    leases: tuple[LeaseKey, ...]
    reason: str
    started: bool


@dataclass(slots=True)
class Batch:
    """Everything to write at one flush, already de-duplicated; the session turns it into messages."""

    releases: list[PendingRelease] = field(default_factory=list)
    outcomes: list[tuple[LeaseKey, Result]] = field(default_factory=list)
    progress: list[tuple[LeaseKey, float, str]] = field(default_factory=list)
    credits: int = 0


class Engine:
    """Owns the jobs of one worker process and what must still be said about them.

    Everything here runs on the event loop thread; threads reach it through
    `call_soon_threadsafe`. Streams come and go (see `_session.py`); the engine outlives
    them, so running tasks, unacknowledged outcomes and pending releases survive a reconnect.
    """

    def __init__(self, *, registry: Mapping[str, TaskDefinition[..., Any]], concurrency: int,
                 runner_factory: Callable[[Report, Free], Runner]) -> None:
        self.registry = registry
        self.concurrency = concurrency
        self.runner: Runner = runner_factory(self.report, self._freed)
        self.jobs: dict[LeaseKey, Job] = {}
        self.unacked: dict[LeaseKey, Result] = {}
        self.sent: set[LeaseKey] = set()
        self._unsent: list[LeaseKey] = []  # unacked outcomes not yet written on this stream, in order
        self.releases: list[PendingRelease] = []
        self.progress: dict[LeaseKey, tuple[float, str]] = {}
        self.granted = 0
        self.accepting = True
        self.changed = asyncio.Event()
        self.settled = asyncio.Event()  # set whenever a job is reported, released or acked
        self._loop = asyncio.get_running_loop()

    # -- what the broker sends ---------------------------------------------------------------

    def begin_stream(self) -> None:
        """A new stream starts: the broker holds no credits, nothing was sent on it."""
        self.granted = 0
        self.sent.clear()
        self._unsent = list(self.unacked)
        self.changed.set()

    def accept(self, jobs: Iterable[Job], *, refuse_reason: str | None) -> None:
        """Starts pushed jobs, or hands them straight back when `refuse_reason` is given."""
        refused: list[LeaseKey] = []
        reason = refuse_reason or (None if self.accepting else WORKER_SHUTDOWN)
        start, known = self.runner.start, self.registry.keys()
        for job in jobs:
            self.granted = max(0, self.granted - 1)
            key = (job.task_id, job.lease_token)
            if key in self.jobs:
                logger.warning("duplicate assignment ignored task_id=%s", job.task_id)
                continue
            if reason is not None:
                job.withhold()
                refused.append(key)
                continue
            if len(self.jobs) >= self.concurrency:
                logger.warning("broker pushed more tasks than credits granted task_id=%s", job.task_id)
            self.jobs[key] = job
            try:
                start(job, self.registry.get(job.name), known, self._progress_threadsafe)
            except Exception:
                logger.exception("worker error while starting task task_id=%s", job.task_id)
                self._freed(job)
        if refused:
            logger.info("handing back tasks that were not started reason=%s count=%d", reason, len(refused))
            self.releases.append(PendingRelease(tuple(refused), reason or WORKER_SHUTDOWN, False))
            self.changed.set()

    def cancel(self, task_ids: Iterable[str]) -> None:
        """The broker asks these tasks to stop; each reports Cancelled once it does."""
        wanted = set(task_ids)
        for job in list(self.jobs.values()):
            if job.task_id in wanted and job.running:
                logger.info("cancelling task task_id=%s name=%s", job.task_id, job.name)
                job.request_cancel()

    def lost(self, key: LeaseKey) -> None:
        """The lease `key` is stale: stop its attempt and never send (or resend) its outcome."""
        job = self.jobs.get(key)
        if job is not None and job.running:
            logger.warning("lease lost; abandoning task task_id=%s name=%s", key[0], job.name)
            job.lost = True
            job.request_cancel()
            self.progress.pop(key, None)
        if self.unacked.pop(key, None) is not None:
            logger.warning("lease lost before the outcome was acknowledged task_id=%s", key[0])
        self.settled.set()

    def cancel_lease(self, key: LeaseKey) -> None:
        """The lease `key` is current but its task was cancelled: stop the attempt."""
        job = self.jobs.get(key)
        if job is not None and job.running:
            logger.info("cancelling task task_id=%s name=%s", key[0], job.name)
            job.request_cancel()

    def acked(self, key: LeaseKey, accepted: bool) -> None:
        """The broker answered the outcome of the attempt holding `key`."""
        if key not in self.sent or self.unacked.pop(key, None) is None:
            logger.debug("acknowledgement of an unknown outcome task_id=%s", key[0])
            return
        self.sent.discard(key)
        if not accepted:
            logger.warning("outcome refused: the lease was stale task_id=%s", key[0])
        self.settled.set()

    # -- what the jobs produce ---------------------------------------------------------------

    def report(self, job: Job, result: Result) -> None:
        """Records an attempt's outcome, to be sent and kept until acknowledged."""
        if job.reported or job.lost:
            logger.debug("outcome dropped task_id=%s lost=%s", job.task_id, job.lost)
            return
        job.reported = True
        key = (job.task_id, job.lease_token)
        self.progress.pop(key, None)
        self.unacked[key] = result
        self._unsent.append(key)
        if isinstance(result, Cancelled):
            logger.info("task cancelled task_id=%s name=%s", job.task_id, job.name)
        self.changed.set()
        self.settled.set()

    def progress_sink(self, job: Job) -> ProgressSink:
        """A thread-safe callable that records `job`'s latest progress for the next flush."""
        return partial(self._progress_threadsafe, job)

    def _progress_threadsafe(self, job: Job, fraction: float, message: str) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the worker has stopped
            self._loop.call_soon_threadsafe(self._record_progress, job, fraction, message)

    def _record_progress(self, job: Job, fraction: float, message: str) -> None:
        if job.running:
            self.progress[(job.task_id, job.lease_token)] = (fraction, message)
            self.changed.set()

    def _freed(self, job: Job) -> None:
        """The function of `job` has returned (or never started): its slot is free."""
        key = (job.task_id, job.lease_token)
        if self.jobs.get(key) is job:
            del self.jobs[key]
        self.changed.set()
        self.settled.set()

    # -- what the streams write ---------------------------------------------------------------

    def claims(self) -> list[LeaseKey]:
        """Leases to re-claim in Hello: running tasks and outcomes not yet acknowledged."""
        running = [key for key, job in self.jobs.items() if job.running]
        return running + [key for key in self.unacked if key not in running]

    def running_leases(self) -> list[LeaseKey]:
        return [key for key, job in self.jobs.items() if job.running]

    def shortest_lease(self) -> float | None:
        durations = [job.lease_duration for job in self.jobs.values() if job.running and job.lease_duration]
        return min(durations) if durations else None

    def take(self, *, grant: bool, hold_releases: bool = False) -> Batch:
        """Collects what is pending into one batch and marks it sent.

        With `hold_releases` the releases stay pending (for a stream that grants no credits).
        """
        batch = Batch()
        if self.releases and not hold_releases:
            batch.releases, self.releases = self.releases, []
            self.settled.set()
        unsent, self._unsent = self._unsent, []
        for key in unsent:
            result = self.unacked.get(key)
            if result is not None and key not in self.sent:
                batch.outcomes.append((key, result))
                self.sent.add(key)
        batch.progress = [(key, fraction, message) for key, (fraction, message) in self.progress.items()
                          if key in self.jobs and self.jobs[key].running]
        self.progress.clear()
        if grant and self.accepting:
            free = self.concurrency - len(self.jobs) - self.granted
            if free > 0:
                batch.credits = free
                self.granted += free
        return batch

    def restore(self, batch: Batch) -> None:
        """Puts back what a broken stream may not have delivered (releases only: outcomes are resent)."""
        self.releases = batch.releases + self.releases

    # -- leaving -------------------------------------------------------------------------------

    def withhold_unstarted(self, reason: str) -> None:
        """Hands back pushed jobs whose function has not started."""
        keys = [key for key, job in self.jobs.items() if job.running and job.withhold()]
        for key in keys:
            job = self.jobs.pop(key)
            job.lost = True
        if keys:
            self.releases.append(PendingRelease(tuple(keys), reason, False))
            self.changed.set()

    def busy(self) -> bool:
        """True while some attempt runs unreported."""
        return any(job.running for job in self.jobs.values())

    def quiet(self) -> bool:
        """True when nothing remains to be said: no release or outcome waits for the broker."""
        return not self.releases and not self.unacked

    def abandon_running(self, reason: str) -> None:
        """Gives up the attempts still running: released (counted as started) and asked to stop."""
        keys: list[LeaseKey] = []
        for key, job in self.jobs.items():
            if job.running:
                job.lost = True
                job.request_cancel()
                keys.append(key)
                self.progress.pop(key, None)
        if keys:
            logger.warning("releasing unfinished tasks reason=%s count=%d", reason, len(keys))
            self.releases.append(PendingRelease(tuple(keys), reason, True))
            self.changed.set()

    async def wait_until(self, predicate: Callable[[], bool], deadline: float) -> bool:
        """Waits until `predicate()` holds or the monotonic `deadline` passes; True if it holds."""
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.settled.clear()
            try:
                await asyncio.wait_for(self.settled.wait(), remaining)
            except TimeoutError:
                return bool(predicate())
        return True

    async def close(self, timeout: float) -> None:
        """Waits briefly for abandoned async tasks to unwind (threads cannot be waited for)."""
        unwinding = {job.aio_task for job in self.jobs.values() if job.aio_task is not None}
        if unwinding:
            await asyncio.wait(unwinding, timeout=timeout)
