"""WorkerService: one Connect stream per worker process, and the session that lives on it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from conveyor.v1 import worker_service_pb2 as ws
from conveyor.v1 import worker_service_pb2_grpc as ws_grpc

from broker_service.api import convert, validate
from broker_service.api.errors import ApiError, from_exception, invalid_argument
from broker_service.dispatch import Dispatcher
from broker_service.domain import (
    Completion,
    FailOutcome,
    Failure,
    Lease,
    LeasedTask,
    LeaseState,
    RedeliveryReason,
    TaskError,
    TaskRecord,
    parse_task_id,
)
from broker_service.metrics import Metrics
from broker_service.store.store import LeaseBatch, Store

log = logging.getLogger(__name__)
Context = Any  # grpc.aio.ServicerContext (grpc ships no type information)
T = TypeVar("T")

HELLO_TIMEOUT = 10.0
MAX_PUSH = 256  # most tasks in one Assignments message
# Longest an Outcomes message's acknowledgements wait for Assignments to ride along with, for a
# worker that takes them so (Hello.acks_ride): a busy worker gets a task back for every outcome,
# so its acks cost no message of their own; an idle one gets them alone this much later.
ACK_RIDE_SECONDS = 0.005
MAX_CONCURRENCY = 100_000
_RELEASE_REASONS = {r.value for r in RedeliveryReason} - {RedeliveryReason.LEASE_EXPIRED.value}


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """What a session needs from the broker's settings."""

    broker_id: str
    heartbeat_seconds: float
    poll_seconds: float
    redis_timeout_seconds: float = 5.0


_background_tasks: set[asyncio.Task[None]] = set()


def _background(work: Coroutine[Any, Any, None]) -> None:
    """Runs `work` to its end even though the RPC that started it is over."""
    task = asyncio.get_running_loop().create_task(work)
    _background_tasks.add(task)
    task.add_done_callback(_background_tasks.discard)


def _group(task_ids: Sequence[str]) -> dict[str, list[tuple[int, str]]]:
    """Groups positions by queue; malformed ids are left out (they answer as stale)."""
    groups: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for index, task_id in enumerate(task_ids):
        try:
            ulid, queue = parse_task_id(task_id)
        except ValueError:
            continue
        groups[queue].append((index, ulid))
    return groups


class WorkerSession:
    """The conversation with one worker: credits in, tasks out, outcomes and heartbeats in between."""

    def __init__(self, hello: ws.Hello, store: Store, metrics: Metrics, dispatcher: Dispatcher,
                 settings: SessionSettings) -> None:
        self.worker_id: str = hello.worker_id
        self.queues = list(dict.fromkeys(hello.queues))
        self.concurrency = hello.concurrency
        self.held: dict[str, int] = {}  # task id -> lease token, for cancel routing
        self._store = store
        self._metrics = metrics
        self._dispatcher = dispatcher
        self._settings = settings
        self._credits = 0
        self._wake = asyncio.Event()
        self._outbox: asyncio.Queue[ws.BrokerMessage | None] = asyncio.Queue()
        self._draining = False
        self._closed = False
        self._error: BaseException | None = None
        self._unsent: list[ws.Assignment] = []
        self._acks_ride = hello.acks_ride
        self._held_acks: list[ws.OutcomeAcks] = []  # waiting for Assignments to ride along with
        self._acks_timer: asyncio.TimerHandle | None = None
        self._slot_waits: set[str] = set()  # queues at their max_running with tasks left
        # Queues whose last lease found nothing left: a credit alone does not lease them again,
        # a wake-up for the queue does (every script that makes tasks ready publishes one).
        self._empty: dict[str, float] = {}  # queue -> when its lease came back short (loop time)
        self._wakes: dict[str, int] = defaultdict(int)  # wake-ups per queue, to spot one during a lease

    # Called from the dispatcher (event loop thread, never awaits).
    def wake(self, queue: str) -> None:
        """Tasks may be ready in `queue`."""
        self._wakes[queue] += 1
        self._empty.pop(queue, None)
        self._wake.set()

    @property
    def spare(self) -> int:
        """Credits a submit may take (none while the session drains or ends)."""
        return 0 if self._closed or self._draining else self._credits

    def take_credits(self, most: int) -> int:
        """Takes up to `most` credits for a submit that leases for this worker (see handed)."""
        taken = min(most, self.spare, MAX_PUSH)
        self._credits -= taken
        return taken

    def handed(self, queue: str, credits: int, batch: LeaseBatch | None) -> None:
        """What a submit leased with `credits` taken from this session: pushed now, the rest of
        the credits given back. Leased after the stream ended: released at once."""
        leased = batch.leased if batch is not None else []
        self._credits += credits - len(leased)
        if batch is not None and batch.expired:
            self._metrics.expired.labels(queue).inc(len(batch.expired))
        if leased and self._closed:
            _background(self._release_unsent([convert.assignment(task) for task in leased]))
        elif leased:
            self._push(queue, leased)
        if credits > len(leased):
            self._wake.set()

    def slot_freed(self, queue: str) -> None:
        """A task of `queue` left running: lease again if the queue's max_running held us back."""
        if queue in self._slot_waits:
            self._wake.set()

    def cancel_held(self, queue: str, ulids: set[str]) -> None:
        ids = [task_id for ulid in ulids if (task_id := f"{ulid}@{queue}") in self.held]
        if ids:
            self._outbox.put_nowait(ws.BrokerMessage(cancel=ws.CancelTasks(task_ids=ids)))

    def drain(self, reason: str, grace: float) -> None:
        if self._draining:
            return
        self._draining = True
        self._wake.set()
        self._send_held_acks()
        self._outbox.put_nowait(ws.BrokerMessage(drain=ws.Drain(reason=reason, grace=convert.duration(
            int(grace * 1000)))))

    async def welcome(self, claims: Sequence[ws.LeaseRef]) -> ws.BrokerMessage:
        """Re-claims the leases a reconnecting worker still holds; answers Hello."""
        states = await self._extend(claims)
        return ws.BrokerMessage(welcome=ws.Welcome(
            broker_id=self._settings.broker_id,
            heartbeat_interval=convert.duration(int(self._settings.heartbeat_seconds * 1000)),
            claims=[ws.LeaseStatus(task_id=c.task_id, state=s) for c, s in zip(claims, states, strict=True)],
            outcome_credits=True))

    async def run(self, requests: AsyncIterator[ws.WorkerMessage]) -> AsyncIterator[ws.BrokerMessage]:
        """Yields what to send until the worker closes its side or an error ends the session.

        Tasks leased for this worker but never written to its stream (the stream ended first)
        are released at once, so they do not wait out their lease.
        """
        reader = asyncio.create_task(self._guard(self._read(requests)), name=f"read-{self.worker_id}")
        dispatcher = asyncio.create_task(self._guard(self._dispatch()), name=f"dispatch-{self.worker_id}")
        try:
            while (message := await self._outbox.get()) is not None:
                yield message
            if self._error is not None:
                raise self._error
        finally:
            self._closed = True
            self._wake.set()
            if self._acks_timer is not None:
                self._acks_timer.cancel()
            reader.cancel()
            # The dispatcher is not cancelled mid-lease: a lease whose reply is lost would leave
            # tasks RUNNING for nobody until their lease expires.
            done, _ = await asyncio.wait({dispatcher}, timeout=self._settings.redis_timeout_seconds + 1)
            if not done:
                dispatcher.cancel()
            while not self._outbox.empty():
                message = self._outbox.get_nowait()
                if message is not None and message.WhichOneof("kind") == "assignments":
                    self._unsent.extend(message.assignments.assignments)
            if self._unsent:
                _background(self._release_unsent(self._unsent))

    async def _release_unsent(self, assignments: list[ws.Assignment]) -> None:
        release = ws.Release(leases=[ws.LeaseRef(task_id=a.task_id, lease_token=a.lease_token) for a in assignments],
                             reason=RedeliveryReason.WORKER_SHUTDOWN.value, started=False)
        try:
            await self._release(release)
        except Exception as exc:  # noqa: BLE001 - their leases will expire instead
            log.warning("could not release %d unsent tasks of worker=%s: %s", len(assignments), self.worker_id, exc)

    async def _guard(self, work: Awaitable[None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - ends the session with a mapped status
            self._error = exc
        self._send_held_acks()
        self._outbox.put_nowait(None)

    async def _read(self, requests: AsyncIterator[ws.WorkerMessage]) -> None:
        async for message in requests:
            kind = message.WhichOneof("kind")
            if kind == "credit":
                self._credits = min(self._credits + message.credit.credits, self.concurrency)
                self._wake.set()
            elif kind == "heartbeat":
                states = await self._extend(message.heartbeat.leases)
                self._outbox.put_nowait(ws.BrokerMessage(lease_statuses=ws.LeaseStatuses(statuses=[
                    ws.LeaseStatus(task_id=lease.task_id, state=state)
                    for lease, state in zip(message.heartbeat.leases, states, strict=True)])))
            elif kind == "outcomes":
                if message.outcomes.credits:  # granted first, so the next lease overlaps this write
                    self._credits = min(self._credits + message.outcomes.credits, self.concurrency)
                    self._wake.set()
                await self._outcomes(message.outcomes.outcomes)
            elif kind == "release":
                await self._release(message.release)
            elif kind == "progress":
                await self._progress(message.progress.updates)
            else:
                raise invalid_argument(kind or "kind", "only the first message of a stream may be a hello")

    async def _dispatch(self) -> None:
        clock = asyncio.get_running_loop()
        while not self._closed:
            if self._credits <= 0 or self._draining:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._wake.clear()
            leased_any = False
            retry_at: float | None = None
            for queue in self.queues:
                if self._credits <= 0 or self._draining:
                    break
                if clock.time() - self._empty.get(queue, -math.inf) < self._settings.poll_seconds:
                    continue  # a lost wake-up costs at most one poll, as for an idle worker
                batch = await self._lease(queue)
                retry_at = self._limited(queue, batch, retry_at, clock.time())
                if not batch.leased:
                    continue
                if self._closed:
                    self._unsent.extend(convert.assignment(task) for task in batch.leased)
                    return
                leased_any = True
                self._credits -= len(batch.leased)
                self._push(queue, batch.leased)
            if not leased_any:
                timeout = self._idle_timeout(retry_at, clock.time())
                if timeout > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout)

    async def _lease(self, queue: str) -> LeaseBatch:
        """Leases up to the credits left; marks the queue drained when the lease came back short."""
        wanted, wakes = min(self._credits, MAX_PUSH), self._wakes[queue]
        batch = await self._store.lease(queue, wanted, self.worker_id)
        if (len(batch.leased) < wanted and batch.retry_ms < 0 and not batch.slots_full
                and self._wakes[queue] == wakes):  # no limit held tasks back, no wake-up came in meanwhile
            self._empty[queue] = asyncio.get_running_loop().time()
        if batch.expired:
            self._metrics.expired.labels(queue).inc(len(batch.expired))
        return batch

    def _push(self, queue: str, leased: Sequence[LeasedTask]) -> None:
        wait = self._metrics.wait_seconds.labels(queue)
        for task in leased:
            self.held[task.task_id] = task.lease_token
            wait.observe(max(0, task.started_ms - task.queued_at_ms) / 1000)
        assignments = ws.Assignments(assignments=[convert.assignment(task) for task in leased])
        self._outbox.put_nowait(ws.BrokerMessage(assignments=assignments, acks=self._take_held_acks()))

    def _acknowledge(self, acks: ws.OutcomeAcks) -> None:
        """Sends an Outcomes message's acks, or holds them for the next Assignments (acks_ride)."""
        if not self._acks_ride:
            self._outbox.put_nowait(ws.BrokerMessage(outcome_acks=acks))
            return
        self._held_acks.append(acks)
        if self._acks_timer is None:
            self._acks_timer = asyncio.get_running_loop().call_later(ACK_RIDE_SECONDS, self._send_held_acks)

    def _take_held_acks(self) -> list[ws.OutcomeAcks]:
        if not self._held_acks:
            return []
        if self._acks_timer is not None:
            self._acks_timer.cancel()
            self._acks_timer = None
        held, self._held_acks = self._held_acks, []
        return held

    def _send_held_acks(self) -> None:
        """Sends the held acks on their own, in order (no Assignments came in time)."""
        for acks in self._take_held_acks():
            self._outbox.put_nowait(ws.BrokerMessage(outcome_acks=acks))

    def _idle_timeout(self, retry_at: float | None, now: float) -> float:
        """How long to wait for a wake-up when nothing was leased."""
        timeout = self._settings.poll_seconds
        if self._empty:  # look at a drained queue again one poll after its lease came back short
            timeout = min(timeout, min(self._empty.values()) + timeout - now)
        if retry_at is not None:  # a rate limit's next token comes sooner than a wake-up
            timeout = min(timeout, retry_at - now)
        return timeout

    def _limited(self, queue: str, batch: LeaseBatch, retry_at: float | None, now: float) -> float | None:
        """Notes what the queue's limits held back; answers the earliest time to lease again."""
        if batch.slots_full:
            self._slot_waits.add(queue)
            self._metrics.lease_deferrals.labels(queue, "max_running").inc()
        else:
            self._slot_waits.discard(queue)
        if batch.retry_ms > 0:
            self._metrics.lease_deferrals.labels(queue, "rate").inc()
        if batch.retry_ms < 0:
            return retry_at
        at = now + batch.retry_ms / 1000
        return at if retry_at is None else min(retry_at, at)

    async def _per_queue(self, task_ids: Sequence[str], default: T,
                         call: Callable[[str, list[tuple[int, str]]], Awaitable[Sequence[T]]]) -> list[T]:
        """Runs one batched store call per queue; answers in the callers' order."""
        answers = [default] * len(task_ids)
        for queue, items in _group(task_ids).items():
            for (index, _), answer in zip(items, await call(queue, items), strict=True):
                answers[index] = answer
        return answers

    async def _extend(self, leases: Sequence[ws.LeaseRef]) -> list[LeaseState]:
        tokens = [lease.lease_token for lease in leases]

        async def call(queue: str, items: list[tuple[int, str]]) -> list[LeaseState]:
            states = await self._store.extend(queue, [Lease(u, tokens[i]) for i, u in items], self.worker_id)
            stale = sum(1 for s in states if s is LeaseState.STALE)
            if stale:
                self._metrics.stale_rejections.labels(queue).inc(stale)
            return states

        states = await self._per_queue([lease.task_id for lease in leases], LeaseState.STALE, call)
        for lease, state in zip(leases, states, strict=True):
            if state is LeaseState.STALE:
                self.held.pop(lease.task_id, None)
            else:
                self.held[lease.task_id] = lease.lease_token
        return states

    async def _outcomes(self, outcomes: Sequence[ws.Outcome]) -> None:
        accepted = [False] * len(outcomes)
        for queue, items in _group([o.task_id for o in outcomes]).items():
            by_kind: dict[str, list[tuple[int, str]]] = defaultdict(list)
            for index, ulid in items:
                by_kind[outcomes[index].WhichOneof("result") or "failure"].append((index, ulid))
            for kind, group in by_kind.items():
                for (index, _), ok in zip(group, await self._apply(queue, kind, group, outcomes), strict=True):
                    accepted[index] = ok
        for outcome, ok in zip(outcomes, accepted, strict=True):
            self.held.pop(outcome.task_id, None)
            if not ok:
                log.info("outcome refused: stale lease task_id=%s worker=%s", outcome.task_id, self.worker_id)
        stale = ws.OUTCOME_STATUS_STALE
        self._acknowledge(ws.OutcomeAcks(acks=[
            ws.OutcomeAck(task_id=o.task_id, status=ws.OUTCOME_STATUS_ACCEPTED if ok else stale)
            for o, ok in zip(outcomes, accepted, strict=True)]))

    async def _apply(self, queue: str, kind: str, group: list[tuple[int, str]],
                     outcomes: Sequence[ws.Outcome]) -> list[bool]:
        m = self._metrics
        if kind == "success":
            completions = [Completion(u, outcomes[i].lease_token, outcomes[i].success.payload,
                                      outcomes[i].success.content_type) for i, u in group]
            ends = self._dispatcher.ends
            watched = ends.watched(queue, [u for _, u in group])  # waited for here: read back at once
            records: list[TaskRecord | None] = [None] * len(watched)
            ends.storing(queue, watched)
            try:
                run_ms, records = await self._store.complete_and_read(queue, completions, watched)
            finally:
                for ulid, record in zip(watched, records, strict=True):
                    ends.stored(queue, ulid, record if record is not None and record.state.terminal else None)
            if watched:  # let the waiters' streams answer before this session's bookkeeping
                await asyncio.sleep(0)
            accepted = [ms is not None for ms in run_ms]
            m.completed.labels(queue).inc(sum(accepted))
            histogram = m.run_seconds.labels(queue)
            for ms in run_ms:
                if ms is not None:
                    histogram.observe(ms / 1000)
        elif kind == "cancelled":
            accepted = await self._store.cancelled(queue, [Lease(u, outcomes[i].lease_token) for i, u in group])
            m.cancelled.labels(queue).inc(sum(accepted))
        else:
            failures = [self._failure(u, outcomes[i]) for i, u in group]
            results = await self._store.fail(queue, failures, [random.random() for _ in failures])
            accepted = [r is not FailOutcome.STALE for r in results]
            m.retried.labels(queue).inc(sum(r is FailOutcome.RETRYING for r in results))
            m.failed.labels(queue).inc(sum(r is FailOutcome.DEAD for r in results))
            m.cancelled.labels(queue).inc(sum(r is FailOutcome.CANCELLED for r in results))
        refused = len(accepted) - sum(accepted)
        if refused:
            m.stale_rejections.labels(queue).inc(refused)
        return accepted

    @staticmethod
    def _failure(ulid: str, outcome: ws.Outcome) -> Failure:
        failure = outcome.failure
        error = TaskError(type=failure.error.type[:256] or "Error", message=failure.error.message[:65536],
                          traceback=failure.error.traceback[:65536], retryable=failure.error.retryable)
        retry_after = validate.duration_ms(failure.retry_after) if failure.HasField("retry_after") else -1
        return Failure(ulid, outcome.lease_token, error, max(-1, retry_after))

    async def _release(self, release: ws.Release) -> None:
        reason = release.reason if release.reason in _RELEASE_REASONS else RedeliveryReason.NACK.value
        tokens = [lease.lease_token for lease in release.leases]

        async def call(queue: str, items: list[tuple[int, str]]) -> list[bool]:
            done = await self._store.release(queue, [Lease(u, tokens[i]) for i, u in items], reason,
                                             release.started)
            self._metrics.redeliveries.labels(queue, reason).inc(sum(done))
            return done

        await self._per_queue([lease.task_id for lease in release.leases], False, call)
        for lease in release.leases:
            self.held.pop(lease.task_id, None)

    async def _progress(self, updates: Sequence[ws.ProgressUpdate]) -> None:
        values = [(min(1.0, max(0.0, u.progress)), u.message[:1024]) for u in updates]

        async def call(queue: str, items: list[tuple[int, str]]) -> list[bool]:
            return await self._store.progress(queue, [Lease(u, updates[i].lease_token) for i, u in items],
                                              [values[i] for i, _ in items])

        await self._per_queue([u.task_id for u in updates], False, call)


class WorkerService(ws_grpc.WorkerServiceServicer):
    """conveyor.v1.WorkerService."""

    def __init__(self, store: Store, metrics: Metrics, dispatcher: Dispatcher, settings: SessionSettings) -> None:
        self._store = store
        self._metrics = metrics
        self._dispatcher = dispatcher
        self._settings = settings

    async def Connect(self, request_iterator: AsyncIterator[ws.WorkerMessage],
                      context: Context) -> AsyncIterator[ws.BrokerMessage]:
        session: WorkerSession | None = None
        try:
            if self._dispatcher.draining:
                raise ApiError(grpc.StatusCode.UNAVAILABLE, "broker is shutting down", "DRAINING")
            try:
                first = await asyncio.wait_for(anext(request_iterator), HELLO_TIMEOUT)
            except (StopAsyncIteration, TimeoutError):
                raise invalid_argument("hello", f"a hello must arrive within {HELLO_TIMEOUT:g}s") from None
            hello = _check_hello(first)
            session = WorkerSession(hello, self._store, self._metrics, self._dispatcher, self._settings)
            yield await session.welcome(hello.claims)
            self._dispatcher.register(session)
            log.info("worker connected worker=%s queues=%s concurrency=%d peer=%s", session.worker_id,
                     ",".join(session.queues), session.concurrency, context.peer())
            async for message in session.run(request_iterator):
                yield message
        except Exception as exc:  # noqa: BLE001 - mapped to a status, never a traceback
            await context.abort_with_status(from_exception(exc).to_status())
        finally:
            if session is not None:
                self._dispatcher.unregister(session)
                log.info("worker disconnected worker=%s", session.worker_id)


def _check_hello(message: ws.WorkerMessage) -> ws.Hello:
    if message.WhichOneof("kind") != "hello":
        raise invalid_argument("hello", "the first message of a stream must be a hello")
    hello = message.hello
    if not 1 <= len(hello.worker_id) <= 128 or not hello.worker_id.isprintable():
        raise invalid_argument("hello.worker_id", "must be 1 to 128 printable characters")
    if not 1 <= len(hello.queues) <= 64:
        raise invalid_argument("hello.queues", "1 to 64 queues are required")
    for i, queue in enumerate(hello.queues):
        validate.queue_name(queue, f"hello.queues[{i}]")
    if not 1 <= hello.concurrency <= MAX_CONCURRENCY:
        raise invalid_argument("hello.concurrency", f"must be between 1 and {MAX_CONCURRENCY}")
    return hello
