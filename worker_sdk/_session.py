"""The Connect stream: Hello/Welcome, pushes, credits, heartbeats, outcomes, drain, reconnects.

Protobuf stops here: assignments become Jobs and the engine's batches become messages.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc
from conveyor.v1 import worker_service_pb2 as wpb
from conveyor.v1 import worker_service_pb2_grpc

from worker_sdk._engine import BROKER_DRAINED, Batch, Engine, LeaseKey
from worker_sdk._jobs import Cancelled, Failed, Job, Result, Succeeded
from worker_sdk.errors import WorkerError

logger = logging.getLogger(__name__)

SDK = "conveyor-python/0.8.0"
WELCOME_TIMEOUT = 10.0
DEFAULT_HEARTBEAT = 10.0
DRAIN_FLUSH_MAX = 10.0
CLOSE_TIMEOUT = 3.0
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
MAX_BATCH_BYTES = 1 << 20
MAX_BATCH_ITEMS = 500
FLUSH_LINGER = 0.001  # seconds a flush waits for the rest of a burst while tasks still run
# Codes that a retry cannot fix: the worker stops instead of knocking forever.
FATAL_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED,
                         grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})

LeaseState = wpb.LeaseState


@dataclass(frozen=True, slots=True)
class Identity:
    """How a worker introduces itself in Hello."""

    worker_id: str
    queues: tuple[str, ...]
    task_names: tuple[str, ...]
    concurrency: int
    hostname: str
    pid: int


class StreamBroken(Exception):
    """The stream ended without a goodbye; the worker reconnects."""


def _seconds(duration: Any) -> float:
    return float(duration.seconds) + float(duration.nanos) / 1e9


def job_from_assignment(a: wpb.Assignment) -> Job:
    """An Assignment as the SDK's Job."""
    headers = a.headers
    job = Job(task_id=a.task_id, lease_token=a.lease_token, name=a.name, queue=a.queue,
              payload=a.payload, content_type=a.content_type, headers=dict(headers) if headers else {},
              attempt=a.attempt, max_attempts=a.max_attempts,
              lease_duration=_seconds(a.lease_duration) if a.HasField("lease_duration") else None,
              timeout=_seconds(a.execution_timeout) if a.HasField("execution_timeout") else None)
    if a.result_passing:  # a workflow node
        job.result_passing = a.result_passing
        job.parent_results = tuple((p.payload, p.content_type) for p in a.parent_results)
    return job


def _fill_outcome(outcome: wpb.Outcome, result: Result) -> None:
    if isinstance(result, Succeeded):
        success = outcome.success
        success.payload = result.payload
        success.content_type = result.content_type
    elif isinstance(result, Failed):
        error = outcome.failure.error
        error.type = result.type
        error.message = result.message
        error.traceback = result.traceback
        error.retryable = result.retryable
        if result.retry_after is not None:
            outcome.failure.retry_after.FromTimedelta(datetime.timedelta(seconds=result.retry_after))
    elif isinstance(result, Cancelled):
        outcome.cancelled.SetInParent()


def outcome_message(key: LeaseKey, result: Result) -> wpb.Outcome:
    """A Result as the Outcome of the attempt holding `key`."""
    outcome = wpb.Outcome(task_id=key[0], lease_token=key[1])
    _fill_outcome(outcome, result)
    return outcome


def outcomes_message(outcomes: list[tuple[LeaseKey, Result]]) -> wpb.WorkerMessage:
    """Results as one Outcomes message, built in place (no per-outcome copies)."""
    message = wpb.WorkerMessage()
    add = message.outcomes.outcomes.add
    for (task_id, token), result in outcomes:
        _fill_outcome(add(task_id=task_id, lease_token=token), result)
    return message


def _encoded_size(result: Result) -> int:
    """An upper bound of the bytes `result` takes in an Outcome, without building it."""
    if isinstance(result, Succeeded):
        return len(result.payload) + len(result.content_type)
    if isinstance(result, Failed):
        return sum(len(text.encode()) for text in (result.type, result.message, result.traceback))
    return 0


def _chunks(outcomes: list[tuple[LeaseKey, Result]]) -> Iterator[list[tuple[LeaseKey, Result]]]:
    chunk: list[tuple[LeaseKey, Result]] = []
    size = 0
    for item in outcomes:
        n = len(item[0][0]) + _encoded_size(item[1]) + 48  # ids, tokens, tags and lengths
        if chunk and (size + n > MAX_BATCH_BYTES or len(chunk) >= MAX_BATCH_ITEMS):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += n
    if chunk:
        yield chunk


class Outgoing(NamedTuple):
    """One message to write and, for those the broker answers, the leases it names, in order."""

    message: wpb.WorkerMessage
    outcomes: list[LeaseKey] | None = None
    heartbeat: list[LeaseKey] | None = None


def batch_messages(batch: Batch, heartbeat: list[LeaseKey] | None, *,
                   outcome_credits: bool = False) -> list[Outgoing]:
    """One flush as messages: releases, credits, outcomes, progress, then the heartbeat.

    Releases go before credits so the broker never pushes a released task back on a credit
    granted with it; credits go before outcomes so the broker can lease the next tasks while
    it stores the outcomes. A broker that reads `Outcomes.credits` (`outcome_credits`) gets
    the credits in the first Outcomes message instead of one of their own.
    """
    messages = [Outgoing(wpb.WorkerMessage(release=wpb.Release(
        leases=[wpb.LeaseRef(task_id=t, lease_token=k) for t, k in release.leases],
        reason=release.reason, started=release.started))) for release in batch.releases]
    outcomes = [Outgoing(outcomes_message(chunk), outcomes=[key for key, _ in chunk])
                for chunk in _chunks(batch.outcomes)]
    if batch.credits and outcomes and outcome_credits:
        outcomes[0].message.outcomes.credits = batch.credits
    elif batch.credits:
        messages.append(Outgoing(wpb.WorkerMessage(credit=wpb.Credit(credits=batch.credits))))
    messages += outcomes
    if batch.progress:
        messages.append(Outgoing(wpb.WorkerMessage(progress=wpb.Progress(updates=[
            wpb.ProgressUpdate(task_id=t, lease_token=k, progress=fraction, message=message)
            for (t, k), fraction, message in batch.progress]))))
    if heartbeat is not None:
        messages.append(Outgoing(wpb.WorkerMessage(heartbeat=wpb.Heartbeat(
            leases=[wpb.LeaseRef(task_id=t, lease_token=k) for t, k in heartbeat])), heartbeat=heartbeat))
    return messages


class Session:
    """One Connect stream, from Hello to its end.

    `run()` returns "closed" after a requested goodbye or "drained" after the broker's
    Drain, and raises StreamBroken when the stream fails.
    """

    def __init__(self, engine: Engine, channel: Any, identity: Identity, *,
                 heartbeat: float | None, closing: asyncio.Event) -> None:
        self._engine = engine
        self._channel = channel
        self._identity = identity
        self._heartbeat_override = heartbeat
        self._closing = closing
        self.welcomed = False
        self._interval = heartbeat or DEFAULT_HEARTBEAT
        self._grant = True
        self._granted_any = False
        self._beats: deque[list[LeaseKey]] = deque()
        self._outcome_batches: deque[list[LeaseKey]] = deque()
        self._heartbeat_due = False
        self._finish_writing = False
        self._drain = asyncio.Event()
        self._drain_grace = DRAIN_FLUSH_MAX
        self._last_received = time.monotonic()
        self._unanswered_since: float | None = None
        self._outcome_credits = False  # the broker reads Outcomes.credits (told in Welcome)

    async def run(self) -> str:
        call = worker_service_pb2_grpc.WorkerServiceStub(self._channel).Connect()
        tasks: list[asyncio.Task[Any]] = []
        try:
            await self._hello(call)
            tasks = [asyncio.create_task(self._read(call), name="conveyor-read"),
                     asyncio.create_task(self._write(call), name="conveyor-write"),
                     asyncio.create_task(self._beat(call), name="conveyor-heartbeat"),
                     asyncio.create_task(self._drain.wait(), name="conveyor-drain"),
                     asyncio.create_task(self._closing.wait(), name="conveyor-closing")]
            reader, writer, beat, drain, _ = tasks
            reader.add_done_callback(lambda _: self._engine.settled.set())
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if drain.done():
                await self._leave(reader, writer, drained=True)
                return "drained"
            for task in (reader, writer, beat):
                if task.done():
                    task.result()  # raises what broke the stream
                    raise StreamBroken("the broker closed the stream")
            await self._leave(reader, writer, drained=False)
            return "closed"
        except grpc.aio.AioRpcError as exc:
            if exc.code() in FATAL_CODES and not self.welcomed:
                raise WorkerError(f"broker refused the worker: {exc.code().name}: {exc.details()}") from None
            raise StreamBroken(f"{exc.code().name}: {exc.details()}") from None
        except asyncio.InvalidStateError as exc:  # a write after the call ended
            raise StreamBroken(str(exc)) from None
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)
            call.cancel()

    async def _hello(self, call: Any) -> None:
        me = self._identity
        claims = self._engine.claims()
        await call.write(wpb.WorkerMessage(hello=wpb.Hello(
            worker_id=me.worker_id, queues=me.queues, task_names=me.task_names, concurrency=me.concurrency,
            claims=[wpb.LeaseRef(task_id=t, lease_token=k) for t, k in claims],
            hostname=me.hostname, pid=me.pid, sdk=SDK, acks_ride=True)))
        try:
            first = await asyncio.wait_for(call.read(), WELCOME_TIMEOUT)
        except TimeoutError:
            raise StreamBroken(f"no Welcome within {WELCOME_TIMEOUT:g}s") from None
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "welcome":
            raise StreamBroken("the broker did not answer Hello with Welcome")
        welcome = first.welcome
        self._outcome_credits = welcome.outcome_credits
        if self._heartbeat_override is None and welcome.HasField("heartbeat_interval"):
            self._interval = _seconds(welcome.heartbeat_interval) or DEFAULT_HEARTBEAT
        self._statuses(welcome.claims, claims)
        self._engine.begin_stream()
        self.welcomed = True
        logger.info("connected broker_id=%s worker_id=%s heartbeat=%.2fs claims=%d",
                    welcome.broker_id, me.worker_id, self._interval, len(welcome.claims))

    def _statuses(self, statuses: Any, keys: list[LeaseKey]) -> None:
        """Applies lease statuses; they answer `keys` in order (a status names no token)."""
        if len(statuses) != len(keys):
            logger.warning("lease statuses do not match the leases sent sent=%d answered=%d",
                           len(keys), len(statuses))
            return
        for status, key in zip(statuses, keys, strict=True):
            if status.task_id != key[0]:
                logger.warning("lease status out of order task_id=%s expected=%s", status.task_id, key[0])
            elif status.state == LeaseState.LEASE_STATE_STALE:
                self._engine.lost(key)
            elif status.state == LeaseState.LEASE_STATE_CANCEL_REQUESTED:
                self._engine.cancel_lease(key)

    async def _read(self, call: Any) -> None:
        handlers: dict[str, Callable[[Any], None]] = {
            "assignments": lambda m: self._engine.accept(
                [job_from_assignment(a) for a in m.assignments.assignments],
                refuse_reason=BROKER_DRAINED if self._drain.is_set() else None),
            "cancel": lambda m: self._engine.cancel(m.cancel.task_ids),
            "lease_statuses": lambda m: self._statuses(m.lease_statuses.statuses, self._pop(self._beats)),
            "outcome_acks": lambda m: self._acks(m.outcome_acks.acks, self._pop(self._outcome_batches)),
            "drain": self._on_drain,
        }
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                return
            self._last_received = time.monotonic()
            self._unanswered_since = None
            kind = message.WhichOneof("kind")
            logger.debug("received %s", kind)
            handler = handlers.get(kind or "")
            if handler is not None:
                handler(message)
            elif kind is not None or not message.acks:
                logger.warning("unexpected message from the broker kind=%s", kind)
            # Answers to earlier Outcomes riding along: after the tasks, which are waiting to start.
            for acks in message.acks:
                self._acks(acks.acks, self._pop(self._outcome_batches))

    @staticmethod
    def _pop(sent: deque[list[LeaseKey]]) -> list[LeaseKey]:
        return sent.popleft() if sent else []

    def _acks(self, acks: Any, keys: list[LeaseKey]) -> None:
        """Applies outcome acks; they answer `keys` (one Outcomes message) in order."""
        if len(acks) != len(keys):
            logger.warning("outcome acks do not match the outcomes sent sent=%d answered=%d", len(keys), len(acks))
            return
        acked, accepted = self._engine.acked, wpb.OUTCOME_STATUS_ACCEPTED
        for ack, key in zip(acks, keys, strict=True):
            acked(key, ack.status == accepted)

    def _on_drain(self, message: Any) -> None:
        grace = _seconds(message.drain.grace) if message.drain.HasField("grace") else DRAIN_FLUSH_MAX
        self._drain_grace = max(0.5, min(grace * 0.8, DRAIN_FLUSH_MAX))
        logger.info("broker asked to drain reason=%r grace=%.1fs", message.drain.reason, grace)
        self._grant = False
        self._drain.set()

    async def _write(self, call: Any) -> None:
        engine = self._engine
        while True:
            await engine.changed.wait()
            if engine.jobs and not self._heartbeat_due and not self._finish_writing:
                # More outcomes are on their way: one message for the burst costs both sides far
                # less than one per completion (the last task of a burst is never held back).
                await asyncio.sleep(FLUSH_LINGER)
            engine.changed.clear()
            batch = engine.take(grant=self._grant, hold_releases=self._holds_releases())
            self._granted_any = self._granted_any or batch.credits > 0
            heartbeat = engine.running_leases() if self._heartbeat_due else None
            self._heartbeat_due = False
            try:
                for message, outcomes, beat in batch_messages(batch, heartbeat,
                                                              outcome_credits=self._outcome_credits):
                    # Answers name no lease token: remember what each one answers, in order.
                    if outcomes is not None:
                        self._outcome_batches.append(outcomes)
                    elif beat is not None:
                        self._beats.append(beat)
                    await call.write(message)
            except BaseException:
                engine.restore(batch)
                raise
            if self._finish_writing and not engine.changed.is_set():
                logger.debug("half-closing the stream")
                await call.done_writing()
                return

    def _holds_releases(self) -> bool:
        """While the worker stops, a stream that granted credits writes no releases.

        The broker would push a released task straight back to this worker with a credit it
        still holds, possibly after the worker has said goodbye; a fresh stream that grants
        nothing hands them back instead.
        """
        return self._granted_any and not self._engine.accepting and not self._drain.is_set()

    def _settled(self) -> bool:
        engine = self._engine
        return not engine.unacked and (not engine.releases or self._holds_releases())

    async def _beat(self, call: Any) -> None:
        while True:
            shortest = self._engine.shortest_lease()
            interval = min(self._interval, shortest / 3) if shortest else self._interval
            await asyncio.sleep(max(0.05, interval))
            now = time.monotonic()
            if self._unanswered_since is not None and now - self._unanswered_since > 2 * self._interval + 5:
                raise StreamBroken(f"no answer from the broker for {now - self._last_received:.1f}s")
            if self._unanswered_since is None:
                self._unanswered_since = now
            self._heartbeat_due = True
            self._engine.changed.set()

    async def _leave(self, reader: asyncio.Task[None], writer: asyncio.Task[None], *, drained: bool) -> None:
        """Says goodbye: hands back unstarted jobs, waits for acks, half-closes, awaits the broker's end."""
        self._grant = False
        engine = self._engine
        if drained:
            engine.withhold_unstarted(BROKER_DRAINED)
        engine.changed.set()
        wait = self._drain_grace if drained else CLOSE_TIMEOUT
        await engine.wait_until(lambda: self._settled() or reader.done(), time.monotonic() + wait)
        self._finish_writing = True
        engine.changed.set()
        # Tasks pushed before the broker sees the half-close still arrive: the reader hands
        # them to the engine, which releases them on a fresh stream.
        await asyncio.wait({writer, reader}, timeout=CLOSE_TIMEOUT, return_when=asyncio.ALL_COMPLETED)
        if not reader.done():
            logger.debug("the broker did not end the stream after our half-close")


def backoff_delays() -> Iterator[float]:
    """Exponential reconnect delays with full jitter: 0.1 s doubling up to 5 s."""
    attempt = 0
    while True:
        ceiling = min(BACKOFF_MAX, BACKOFF_FIRST * 2**attempt)
        yield random.uniform(ceiling / 2, ceiling)
        attempt += 1
