"""Client sessions (TaskService.OpenSession): batched submits and result waits on one stream.

A session reads batches of calls, validates each on its own (a bad call fails alone), writes
the submits that arrive together, or while a store write is in flight, with one enqueue per
queue, and answers every call as soon as it completes, coalescing the replies that are ready
into one message. Result waits share one event listener per queue, read a task's record when
it reaches a terminal state (or its wait's deadline passes), and end with the stream.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from conveyor.v1 import task_service_pb2 as ts
from google.rpc import status_pb2

from broker_service.api import convert, validate
from broker_service.api.errors import ApiError, from_exception, invalid_argument, not_found, unavailable
from broker_service.dispatch import Dispatcher, enqueue
from broker_service.domain import NewTask, TaskRecord
from broker_service.events import RESYNC, EventHub
from broker_service.metrics import Metrics
from broker_service.store.store import EnqueueResult, Store

Context = Any  # grpc.aio.ServicerContext (grpc ships no type information)

# Calls one session may have in flight before the broker stops reading its stream (the
# client's writes then wait: backpressure instead of memory). One more message can be read.
MAX_IN_FLIGHT = 10_000
MAX_CALLS_PER_MESSAGE = 10_000
MAX_WAIT_MS = 86_400_000
# Events naming tasks that reached a terminal state (see lua/KEYS.md): the only ones worth a read.
_TERMINAL_EVENTS = frozenset({"succeeded", "failed", "cancelled", "expired"})


@dataclass(eq=False, slots=True)
class _Wait:
    call_id: int
    queue: str
    ulid: str
    due: bool = False  # its deadline passed: answer whatever state the next read finds
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class _Submit:
    call_id: int
    task: NewTask
    wait_seconds: float | None  # submit_and_wait: how long to wait once stored
    tell_stored: bool = True  # a submit_and_wait answers `submitted` first unless it skips it


@dataclass(slots=True)
class _Waits:
    """The waits of one queue, by ulid, and the listener that wakes them."""

    by_ulid: dict[str, list[_Wait]] = field(default_factory=dict)
    listener: Any = None


class Sessions:
    """Every client session of this broker: opening, the drain at shutdown, the gauge."""

    def __init__(self, store: Store, hub: EventHub, metrics: Metrics, limits: validate.Limits, *,
                 wait_poll_seconds: float, enabled: bool = True, dispatcher: Dispatcher | None = None) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.hub = hub
        self.metrics = metrics
        self.limits = limits
        self.wait_poll_seconds = wait_poll_seconds
        self.enabled = enabled
        self.known_queues: set[str] = set()
        self._open: set[ClientSession] = set()
        self._draining = False

    async def serve(self, requests: AsyncIterator[ts.SessionRequest],
                    context: Context) -> AsyncIterator[ts.SessionResponse]:
        """The OpenSession handler: runs one session until either side ends it."""
        session: ClientSession | None = None
        try:
            if not self.enabled:
                raise ApiError(grpc.StatusCode.UNIMPLEMENTED, "client sessions are turned off on this broker",
                               "SESSIONS_DISABLED")
            if self._draining:
                raise unavailable("broker is shutting down")
            # Headers at once: the client writes its first calls only once the session is accepted.
            await context.send_initial_metadata(())
            session = ClientSession(self)
            self._open.add(session)
            self.metrics.client_sessions.set(len(self._open))
            async for response in session.run(requests):
                yield response
        except Exception as exc:  # noqa: BLE001 - mapped to a status, never a traceback
            await context.abort_with_status(from_exception(exc).to_status())
        finally:
            if session is not None:
                self._open.discard(session)
                self.metrics.client_sessions.set(len(self._open))

    async def drain(self, grace: float) -> None:
        """Refuses new sessions; ends open ones with UNAVAILABLE once their submits are answered."""
        self._draining = True
        for session in list(self._open):
            session.drain()
        deadline = time.monotonic() + grace
        while self._open and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


class ClientSession:
    """One OpenSession stream: the calls in flight, the submits to write and the waits to wake."""

    def __init__(self, owner: Sessions) -> None:
        self._owner = owner
        self._store = owner.store
        self._metrics = owner.metrics
        self._outbox: list[ts.SessionReply] = []
        self._ready = asyncio.Event()  # something to send, or the session should end
        self._room = asyncio.Event()  # fewer than MAX_IN_FLIGHT calls in flight
        self._room.set()
        self._in_flight: set[int] = set()
        self._submits: list[_Submit] = []
        self._writer: asyncio.Task[None] | None = None
        self._waits: dict[str, _Waits] = {}
        self._to_read: dict[str, set[str]] = defaultdict(set)
        self._reader: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._half_closed = False
        self._draining = False
        self._closed = False  # the stream is over: a store write still in flight starts no wait
        self._error: BaseException | None = None

    def drain(self) -> None:
        self._draining = True
        self._ready.set()

    async def run(self, requests: AsyncIterator[ts.SessionRequest]) -> AsyncIterator[ts.SessionResponse]:
        """Yields reply batches until the client half-closes (every call answered), an error or a drain."""
        reading = asyncio.create_task(self._read(requests), name="session-read")
        reading.add_done_callback(self._read_done)
        try:
            while True:
                if self._outbox:
                    replies, self._outbox = self._outbox, []
                    yield ts.SessionResponse(replies=replies)  # replies ready meanwhile go in the next one
                    continue
                if self._error is not None:
                    raise self._error
                if self._draining:
                    reading.cancel()
                    if self._writer is None and not self._submits:
                        raise unavailable("broker is shutting down")
                elif self._half_closed and not self._in_flight:
                    return
                self._ready.clear()
                await self._ready.wait()
        finally:
            self._closed = True
            reading.cancel()
            for task in (self._reader, self._poller):
                if task is not None:
                    task.cancel()
            for queue in list(self._waits):
                self._drop_queue(queue)

    def _read_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._error = task.exception()
        self._ready.set()

    async def _read(self, requests: AsyncIterator[ts.SessionRequest]) -> None:
        async for message in requests:
            self._metrics.session_messages.inc()
            self._accept(message)
            while len(self._in_flight) >= MAX_IN_FLIGHT:
                self._room.clear()
                await self._room.wait()
        self._half_closed = True

    # --- calls in -------------------------------------------------------------------------------

    def _accept(self, message: ts.SessionRequest) -> None:
        calls = message.calls
        if not calls:
            raise invalid_argument("calls", "at least one call is required")
        if len(calls) > MAX_CALLS_PER_MESSAGE:
            raise invalid_argument("calls", f"{len(calls)} calls is over the limit of {MAX_CALLS_PER_MESSAGE} "
                                   "per message")
        ids = [call.call_id for call in calls]
        if len(set(ids)) < len(ids) or not self._in_flight.isdisjoint(ids):  # checked before any call starts
            seen = set(self._in_flight)
            for i, call_id in enumerate(ids):
                if call_id in seen:
                    raise invalid_argument(f"calls[{i}].call_id", f"call {call_id} is already in flight")
                seen.add(call_id)
        self._in_flight.update(ids)
        now = _now_ms()
        for call in calls:
            kind = call.WhichOneof("kind")
            self._metrics.session_calls.labels(kind or "none").inc()
            try:
                self._start(call, kind, now)
            except ApiError as exc:
                self._answer(call.call_id, error=exc)
        if self._submits and self._writer is None:
            self._writer = asyncio.create_task(self._write(), name="session-write")

    def _start(self, call: ts.SessionCall, kind: str | None, now: int) -> None:
        limits = self._owner.limits
        if kind == "submit":
            task = validate.submitted_task(call.submit, "submit", limits, now)
            self._submits.append(_Submit(call.call_id, task, None))
        elif kind == "submit_and_wait":
            request = call.submit_and_wait
            if not request.HasField("task"):
                raise invalid_argument("submit_and_wait.task", "required")
            seconds = _wait_seconds(request, "submit_and_wait.timeout")
            task = validate.submitted_task(request.task, "submit_and_wait.task", limits, now)
            self._submits.append(_Submit(call.call_id, task, seconds, not request.skip_submitted))
        elif kind == "wait":
            ulid, queue = validate.task_id(call.wait.task_id, "wait.task_id")
            self._wait(call.call_id, queue, ulid, _wait_seconds(call.wait, "wait.timeout"))
        else:
            raise invalid_argument("kind", "one of submit, wait or submit_and_wait is required")

    # --- submits: one store write per queue for everything that arrived since the last one ---

    async def _write(self) -> None:
        try:
            while self._submits:
                batch, self._submits = self._submits, []
                by_queue: dict[str, list[_Submit]] = defaultdict(list)
                for item in batch:
                    by_queue[item.task.queue].append(item)
                size = self._owner.limits.max_batch_size  # the longest script the operator allows
                writes = [(queue, items[i:i + size]) for queue, items in by_queue.items()
                          for i in range(0, len(items), size)]
                if len(writes) == 1:  # the usual case: no gather, no task of its own
                    await self._write_queue(*writes[0])
                else:
                    await asyncio.gather(*(self._write_queue(queue, items) for queue, items in writes))
        finally:
            self._writer = None
            self._ready.set()

    async def _write_queue(self, queue: str, items: list[_Submit]) -> None:
        try:
            if queue not in self._owner.known_queues:
                await self._store.register_queues([queue])
                self._owner.known_queues.add(queue)
            results, handed = await enqueue(self._store, self._owner.dispatcher, queue,
                                            [item.task for item in items])
        except Exception as exc:  # noqa: BLE001 - each call gets the mapped status
            error = from_exception(exc)
            for item in items:
                self._answer(item.call_id, error=error)
            return
        self._metrics.session_enqueue_writes.inc()
        self._metrics.enqueued.labels(queue).inc(sum(not r.duplicate for r in results))
        for item, result in zip(items, results, strict=True):
            if result.duplicate:
                self._metrics.duplicates.labels(queue, result.duplicate_kind).inc()
            if item.wait_seconds is None:
                self._answer(item.call_id, submitted=_submitted(queue, result))
                continue
            if item.tell_stored:
                self._outbox.append(ts.SessionReply(call_id=item.call_id, submitted=_submitted(queue, result)))
                self._ready.set()
            # A task this call leased to a worker here cannot have ended yet: no first read.
            self._wait(item.call_id, queue, result.ulid, item.wait_seconds, read=result.ulid not in handed)

    # --- waits: one listener per queue, a read when a task ends or a deadline passes ---------

    def _wait(self, call_id: int, queue: str, ulid: str, seconds: float, *, read: bool = True) -> None:
        if self._closed:
            return
        waits = self._waits.get(queue)
        if waits is None:
            waits = self._waits[queue] = _Waits()
            waits.listener = self._listener(queue)
            self._owner.hub.add(queue, waits.listener)
        wait = _Wait(call_id, queue, ulid, due=seconds <= 0)
        if not wait.due:
            wait.timer = asyncio.get_running_loop().call_later(seconds, self._deadline, wait)
        if ulid not in waits.by_ulid:
            waits.by_ulid[ulid] = []
            self._owner.hub.ends.watch(queue, ulid, self._ended)
        waits.by_ulid[ulid].append(wait)
        if read:
            self._read_later(queue, [ulid])  # the task may have ended already
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll(), name="session-poll")

    def _listener(self, queue: str) -> Any:
        def on_event(kind: str, ulids: str) -> None:
            waits = self._waits.get(queue)
            if waits is None:
                return
            if kind == RESYNC:
                self._read_later(queue, list(waits.by_ulid))
            elif kind in _TERMINAL_EVENTS:  # an end stored here comes with its record: no read
                ends = self._owner.hub.ends
                self._read_later(queue, [u for u in ulids.split()
                                         if u in waits.by_ulid and not ends.is_storing(queue, u)])

        return on_event

    def _ended(self, queue: str, ulid: str, record: TaskRecord | None) -> None:
        """A worker session of this broker stored the task's end: answer without a read."""
        if record is None:
            self._read_later(queue, [ulid])
            return
        waits = self._pop_waits(queue, ulid, _every)
        if waits:
            message = convert.task(record)
            for wait in waits:
                self._answer(wait.call_id, task=message)

    def _deadline(self, wait: _Wait) -> None:
        wait.due, wait.timer = True, None
        self._read_later(wait.queue, [wait.ulid])

    def _read_later(self, queue: str, ulids: list[str]) -> None:
        if not ulids:
            return
        self._to_read[queue].update(ulids)
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_records(), name="session-wait-read")

    async def _read_records(self) -> None:
        try:
            while self._to_read:
                batch, self._to_read = self._to_read, defaultdict(set)
                await asyncio.gather(*(self._read_queue(queue, list(ulids)) for queue, ulids in batch.items()))
        finally:
            self._reader = None

    async def _read_queue(self, queue: str, ulids: list[str]) -> None:
        try:
            records = await self._store.get_many([(queue, ulid) for ulid in ulids])
        except Exception as exc:  # noqa: BLE001 - the waits fail alone; the client may wait again
            error = from_exception(exc)
            for ulid in ulids:
                for wait in self._pop_waits(queue, ulid, _every):
                    self._answer(wait.call_id, error=error)
            return
        for ulid, record in zip(ulids, records, strict=True):
            if record is None:
                for wait in self._pop_waits(queue, ulid, _every):
                    self._answer(wait.call_id, error=not_found("task", f"{ulid}@{queue}"))
                continue
            waits = self._pop_waits(queue, ulid, _every if record.state.terminal else _due)
            if waits:
                message = convert.task(record)
                for wait in waits:
                    self._answer(wait.call_id, task=message)

    def _pop_waits(self, queue: str, ulid: str, which: Callable[[_Wait], bool]) -> list[_Wait]:
        waits = self._waits.get(queue)
        if waits is None or ulid not in waits.by_ulid:
            return []
        chosen = [w for w in waits.by_ulid[ulid] if which(w)]
        if not chosen:
            return []
        left = [w for w in waits.by_ulid[ulid] if not which(w)]
        if left:
            waits.by_ulid[ulid] = left
        else:
            del waits.by_ulid[ulid]
            self._owner.hub.ends.unwatch(queue, ulid, self._ended)
        for wait in chosen:
            if wait.timer is not None:
                wait.timer.cancel()
        if not waits.by_ulid:
            self._drop_queue(queue)
        return chosen

    def _drop_queue(self, queue: str) -> None:
        waits = self._waits.pop(queue)
        self._owner.hub.remove(queue, waits.listener)
        for ulid, same in waits.by_ulid.items():
            self._owner.hub.ends.unwatch(queue, ulid, self._ended)
            for wait in same:
                if wait.timer is not None:
                    wait.timer.cancel()

    async def _poll(self) -> None:
        """Safety net for a lost event: re-reads every waited task now and then."""
        try:
            while self._waits:
                await asyncio.sleep(self._owner.wait_poll_seconds)
                for queue, waits in list(self._waits.items()):
                    self._read_later(queue, list(waits.by_ulid))
        finally:
            self._poller = None

    # --- replies out ----------------------------------------------------------------------------

    def _answer(self, call_id: int, *, submitted: ts.EnqueueTaskResponse | None = None,
                task: Any = None, error: ApiError | None = None) -> None:
        """Queues a call's last reply and frees its slot."""
        if error is not None:
            reply = ts.SessionReply(call_id=call_id, error=_status(error))
        elif task is not None:
            reply = ts.SessionReply(call_id=call_id, task=task)
        else:
            reply = ts.SessionReply(call_id=call_id, submitted=submitted)
        self._outbox.append(reply)
        self._in_flight.discard(call_id)
        if len(self._in_flight) < MAX_IN_FLIGHT:
            self._room.set()
        self._ready.set()


def _submitted(queue: str, result: EnqueueResult) -> ts.EnqueueTaskResponse:
    # A duplicate whose original record has expired has no state to tell (UNSPECIFIED).
    return ts.EnqueueTaskResponse(task_id=f"{result.ulid}@{queue}", state=0 if result.state is None else
                                  int(result.state), duplicate=result.duplicate)


def _status(error: ApiError) -> status_pb2.Status:
    """The google.rpc.Status of an error, details included (as the unary RPCs send it)."""
    details = dict(error.to_status().trailing_metadata).get("grpc-status-details-bin", b"")
    return status_pb2.Status.FromString(bytes(details))


def _every(wait: _Wait) -> bool:
    return True


def _due(wait: _Wait) -> bool:
    return wait.due


def _wait_seconds(request: ts.SessionWait | ts.SessionSubmitAndWait, path: str) -> float:
    if not request.HasField("timeout"):
        return 0.0
    if request.timeout.seconds < 0 or request.timeout.nanos < 0:
        raise invalid_argument(path, "must not be negative")
    ms = validate.duration_ms(request.timeout)
    if ms > MAX_WAIT_MS:
        raise invalid_argument(path, "at most 1 day")
    return ms / 1000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000

