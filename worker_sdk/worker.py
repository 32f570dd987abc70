"""The Worker: which tasks a process runs, from where, how many at once, and how it stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import grpc

from client_sdk import TaskDefinition, task
from worker_sdk._engine import WORKER_SHUTDOWN, Engine
from worker_sdk._runner import Free, Report, Runner
from worker_sdk._schedules import put_declared
from worker_sdk._session import Identity, Session, StreamBroken, backoff_delays
from worker_sdk.errors import WorkerError

__all__ = ["Worker"]

logger = logging.getLogger(__name__)

QUEUE_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
MAX_QUEUES = 64
FLUSH_TIMEOUT = 10.0  # after the grace: how long to try to deliver outcomes and releases
CLOSE_TIMEOUT = 10.0  # then: the goodbye, and a fresh stream for releases if one is needed
MAX_MESSAGE_BYTES = 64 << 20
# Redial fast after a broker restart; the worker's own backoff paces the attempts.
CHANNEL_OPTIONS = (("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 5000))


EVENT_LOOPS = ("auto", "uvloop", "asyncio")


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop for `uvloop` (or `auto` where it is installed); None (asyncio's) otherwise."""
    if kind not in EVENT_LOOPS:
        raise ValueError(f"event_loop must be one of {', '.join(EVENT_LOOPS)}, got {kind!r}")
    if kind == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if kind == "uvloop":
            raise ValueError("event_loop='uvloop' needs uvloop installed (pip install uvloop)") from None
        return None
    return uvloop.new_event_loop


def _definitions(tasks: Iterable[TaskDefinition[..., Any] | Callable[..., Any]]) -> dict[str, TaskDefinition[..., Any]]:
    registry: dict[str, TaskDefinition[..., Any]] = {}
    for item in tasks:
        definition = item if isinstance(item, TaskDefinition) else task(item)
        known = registry.get(definition.name)
        if known is not None and known.fn is not definition.fn:
            raise ValueError(f"two different functions share the task name {definition.name!r}")
        registry[definition.name] = definition
    if not registry:
        raise ValueError("a Worker needs at least one task")
    return registry


def _check_queues(queues: Sequence[str]) -> tuple[str, ...]:
    if isinstance(queues, str):
        raise TypeError("queues must be a list of queue names, not a string")
    unique = tuple(dict.fromkeys(queues))
    if not 1 <= len(unique) <= MAX_QUEUES:
        raise ValueError(f"a Worker takes 1 to {MAX_QUEUES} queues, got {len(unique)}")
    for queue in unique:
        if not isinstance(queue, str) or not QUEUE_PATTERN.fullmatch(queue):
            raise ValueError(f"invalid queue name {queue!r}: 1 to 128 of A-Z a-z 0-9 _ . -")
    return unique


class Worker:
    """Runs task functions pushed by a Conveyor broker.

    Plain functions run on a pool of ``concurrency`` threads, ``async def`` functions on the
    worker's event loop; either way at most ``concurrency`` tasks run at once. The worker
    renews the leases of running tasks, reports their outcomes, reconnects (re-claiming its
    leases) whenever the stream breaks, and drains on SIGTERM/SIGINT or :meth:`stop`.

    Args:
        tasks: The tasks this worker runs: `TaskDefinition` objects (from ``@task``) or plain
            functions (registered under their default name).
        queues: Queues to take tasks from, most important first. Default: the queues of
            ``tasks``, in order.
        concurrency: Tasks run at once (threads for sync functions).
        broker: Broker address, ``host:port``.
        worker_id: Stable id of this worker; default ``<hostname>-<pid>-<random>``.
        shutdown_grace: Seconds running tasks get to finish on stop before they are handed back.
        heartbeat_interval: Seconds between heartbeats; None lets the broker decide.
        credentials: ``grpc.ChannelCredentials`` for TLS; None for plaintext.

    Example:
        >>> worker = Worker(tasks=[add], queues=["default"])  # doctest: +SKIP
        >>> worker.run()  # doctest: +SKIP
    """

    def __init__(self, *, tasks: Iterable[TaskDefinition[..., Any] | Callable[..., Any]],
                 queues: Sequence[str] | None = None, concurrency: int = 8, broker: str = "localhost:50051",
                 worker_id: str | None = None, shutdown_grace: float = 30.0,
                 heartbeat_interval: float | None = None, credentials: grpc.ChannelCredentials | None = None,
                 ) -> None:
        self._registry = _definitions(tasks)
        self._queues: tuple[str, ...] = ()
        self._concurrency = 0
        self._broker = ""
        self._worker_id: str | None = None
        self._shutdown_grace = 0.0
        self._heartbeat: float | None = None
        self._credentials = credentials
        self.configure(queues=queues or [d.options.queue for d in self._registry.values()],
                       concurrency=concurrency, broker=broker, worker_id=worker_id,
                       shutdown_grace=shutdown_grace, heartbeat_interval=heartbeat_interval)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._stop_requested = False
        self._interrupted = False
        self._runner: Runner | None = None

    def configure(self, *, queues: Sequence[str] | None = None, concurrency: int | None = None,
                  broker: str | None = None, worker_id: str | None = None, shutdown_grace: float | None = None,
                  heartbeat_interval: float | None = None) -> Worker:
        """Changes settings before the worker runs; None leaves a setting as it is.

        Args:
            queues: Queues to take tasks from.
            concurrency: Tasks run at once.
            broker: Broker address.
            worker_id: Id of this worker.
            shutdown_grace: Seconds running tasks get to finish on stop.
            heartbeat_interval: Seconds between heartbeats.

        Returns:
            The worker itself.

        Raises:
            ValueError: A value is out of range.
        """
        if queues is not None:
            self._queues = _check_queues(queues)
        if concurrency is not None:
            if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= 10_000:
                raise ValueError(f"concurrency must be an int from 1 to 10000, got {concurrency!r}")
            self._concurrency = concurrency
        if broker is not None:
            if not broker:
                raise ValueError("broker address must not be empty")
            self._broker = broker
        if worker_id is not None:
            if not 1 <= len(worker_id) <= 128 or not worker_id.isprintable():
                raise ValueError("worker_id must be 1 to 128 printable characters")
            self._worker_id = worker_id
        if shutdown_grace is not None:
            if shutdown_grace < 0:
                raise ValueError(f"shutdown_grace must be >= 0, got {shutdown_grace!r}")
            self._shutdown_grace = float(shutdown_grace)
        if heartbeat_interval is not None:
            if heartbeat_interval <= 0:
                raise ValueError(f"heartbeat_interval must be > 0, got {heartbeat_interval!r}")
            self._heartbeat = float(heartbeat_interval)
        return self

    @property
    def tasks(self) -> Mapping[str, TaskDefinition[..., Any]]:
        """The tasks this worker runs, by name."""
        return dict(self._registry)

    @property
    def queues(self) -> tuple[str, ...]:
        """The queues this worker takes tasks from, most important first."""
        return self._queues

    @property
    def concurrency(self) -> int:
        """How many tasks run at once."""
        return self._concurrency

    @property
    def broker(self) -> str:
        """The broker address."""
        return self._broker

    def __repr__(self) -> str:
        return (f"<Worker broker={self._broker!r} queues={list(self._queues)} concurrency={self._concurrency} "
                f"tasks={len(self._registry)}>")

    # -- running ---------------------------------------------------------------------------------

    def run(self, *, event_loop: str = "auto") -> None:
        """Runs the worker until it is stopped and drained; blocks.

        In the main thread it handles SIGTERM and SIGINT: stop taking tasks, let running ones
        finish within ``shutdown_grace``, hand back the rest, then return. A second SIGINT
        exits the process at once.

        Args:
            event_loop: ``auto`` runs on uvloop where it is installed (less time per hand-off
                between the worker's tasks), ``uvloop`` insists on it, ``asyncio`` uses asyncio's own.

        Raises:
            WorkerError: The broker refused this worker (e.g. an invalid queue name).
            ValueError: `event_loop` is none of those, or uvloop is asked for and not installed.
        """
        with asyncio.Runner(loop_factory=loop_factory(event_loop)) as runner:
            runner.run(self._run_with_signals())

    async def _run_with_signals(self) -> None:
        loop = asyncio.get_running_loop()
        handled: list[signal.Signals] = []
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self._on_signal, sig)
                except NotImplementedError:  # event loops without signal support (Windows)
                    logger.debug("cannot handle %s on this event loop", sig.name)
                    continue
                handled.append(sig)
        try:
            await self.run_async()
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if sig == signal.SIGINT and self._interrupted:
            logger.warning("second interrupt: exiting now")
            os._exit(130)
        self._interrupted = self._interrupted or sig == signal.SIGINT
        logger.info("received %s: draining (grace %.1fs)", sig.name, self._shutdown_grace)
        self.stop()

    def stop(self) -> None:
        """Asks the worker to drain and return from `run()`; safe from any thread or a signal handler."""
        self._stop_requested = True
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(event.set)

    @property
    def _busy_threads(self) -> int:
        """Threads still running task code (attempts that timed out or were handed back)."""
        return self._runner.busy_threads if self._runner is not None else 0

    async def run_async(self) -> None:
        """Runs the worker on the current event loop until it is stopped and drained.

        Raises:
            WorkerError: The broker refused this worker (e.g. an invalid queue name).
        """
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        if self._stop_requested:
            self._stop_event.set()
        identity = Identity(worker_id=self._worker_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}",
                            queues=self._queues, task_names=tuple(self._registry), concurrency=self._concurrency,
                            hostname=socket.gethostname(), pid=os.getpid())
        def make_runner(report: Report, free: Free) -> Runner:
            self._runner = Runner(report, free, threads=self._concurrency)
            return self._runner

        engine = Engine(registry=self._registry, concurrency=self._concurrency, runner_factory=make_runner)
        closing = asyncio.Event()
        logger.info("worker starting worker_id=%s broker=%s queues=%s concurrency=%d tasks=%d event_loop=%s",
                    identity.worker_id, self._broker, ",".join(self._queues), self._concurrency,
                    len(self._registry), type(asyncio.get_running_loop()).__module__.partition(".")[0])
        connection = asyncio.create_task(self._connect_forever(engine, identity, closing), name="conveyor-connect")
        stopping = asyncio.create_task(self._stop_event.wait(), name="conveyor-stop")
        schedules = asyncio.create_task(put_declared(self._registry, self._broker, self._credentials),
                                        name="conveyor-schedules")
        try:
            await asyncio.wait({connection, stopping, schedules}, return_when=asyncio.FIRST_COMPLETED)
            if schedules.done() and not stopping.done():
                schedules.result()  # a schedule the broker refused: raise it
                await asyncio.wait({connection, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if connection.done():
                connection.result()  # a fatal refusal: raise it
            await self._shutdown(engine, closing, connection)
        finally:
            stopping.cancel()
            connection.cancel()
            schedules.cancel()
            if schedules.done() and not schedules.cancelled():
                schedules.exception()  # retrieved: raised above, or moot once stopping
            engine.runner.shutdown()
            self._loop = self._stop_event = None
            self._stop_requested = False
        logger.info("worker stopped worker_id=%s", identity.worker_id)

    async def _shutdown(self, engine: Engine, closing: asyncio.Event, connection: asyncio.Task[None]) -> None:
        engine.accepting = False
        engine.withhold_unstarted(WORKER_SHUTDOWN)
        engine.changed.set()
        if engine.busy():
            logger.info("waiting up to %.1fs for running tasks to finish", self._shutdown_grace)
        if not await engine.wait_until(lambda: not engine.busy(), time.monotonic() + self._shutdown_grace):
            engine.abandon_running(WORKER_SHUTDOWN)
        if not await engine.wait_until(lambda: not engine.unacked, time.monotonic() + FLUSH_TIMEOUT):
            logger.warning("could not deliver every outcome before leaving unacked=%d", len(engine.unacked))
        closing.set()
        done, _ = await asyncio.wait({connection}, timeout=CLOSE_TIMEOUT)
        if connection in done and not connection.cancelled() and connection.exception() is not None:
            logger.warning("stream ended badly while leaving: %s", connection.exception())
        await engine.close(1.0)

    async def _connect_forever(self, engine: Engine, identity: Identity, closing: asyncio.Event) -> None:
        """Keeps one stream open until `closing` is set and all is said; reconnects with backoff.

        A stream closed on purpose with something still to say (tasks the broker pushed while
        the worker was saying goodbye) is followed by a fresh one that grants no credits, only
        to hand those back.
        """
        delays = backoff_delays()
        failures = 0
        while not (closing.is_set() and engine.quiet()):
            channel = self._channel()
            session = Session(engine, channel, identity, heartbeat=self._heartbeat, closing=closing)
            end = "broken"
            try:
                end = await session.run()
            except StreamBroken as exc:
                failures += 1
                log = logger.warning if failures == 1 or failures % 20 == 0 else logger.debug
                log("stream to broker %s broken (%d in a row): %s", self._broker, failures, exc)
            except WorkerError:
                raise
            except Exception:  # a worker keeps its tasks and reconnects, whatever broke
                failures += 1
                logger.exception("stream to broker %s failed unexpectedly", self._broker)
            finally:
                await channel.close(None)
            if session.welcomed:
                delays, failures = backoff_delays(), 0
            if end == "closed":
                continue
            delay = next(delays)
            logger.debug("reconnecting to %s in %.2fs", self._broker, delay)
            if closing.is_set():
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(closing.wait(), delay)

    def _channel(self) -> Any:
        if self._credentials is not None:
            return grpc.aio.secure_channel(self._broker, self._credentials, options=CHANNEL_OPTIONS)
        return grpc.aio.insecure_channel(self._broker, options=CHANNEL_OPTIONS)
