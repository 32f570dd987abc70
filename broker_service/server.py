"""Wiring: builds the broker from Settings and owns the start/stop order, in one place."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid

import grpc
from conveyor.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    task_service_pb2,
    task_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from broker_service.api import reflection
from broker_service.api.admin import AdminService
from broker_service.api.tasks import TaskService
from broker_service.api.validate import Limits
from broker_service.api.workers import SessionSettings, WorkerService
from broker_service.api.workflows import WorkflowService
from broker_service.config import Settings
from broker_service.dispatch import Dispatcher
from broker_service.events import EventHub
from broker_service.loops import PeriodicLoop
from broker_service.loops.janitor import Janitor
from broker_service.loops.promoter import Promoter
from broker_service.loops.readiness import Readiness
from broker_service.loops.reaper import Reaper
from broker_service.loops.scheduler import Scheduler
from broker_service.loops.workflows import WorkflowReconciler
from broker_service.metrics import Metrics
from broker_service.store.embedded import EmbeddedRedis
from broker_service.store.store import Store
from broker_service.workflows import Workflows

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    task_service_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name,
    worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
    workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


# The oldest Redis the store's scripts run on (LMPOP is 7.0's).
MIN_REDIS = (7, 0)


class BrokerStartError(RuntimeError):
    """The broker could not start (port taken, store unreachable...)."""


class Broker:
    """One broker replica: gRPC server, store, event hub, background loops and metrics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.broker_id = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.metrics = Metrics()
        self.port = 0
        self.metrics_port = 0
        self._embedded: EmbeddedRedis | None = None
        self._redis: Redis | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._loops: list[PeriodicLoop] = []
        self._hub: EventHub | None = None
        self._dispatcher: Dispatcher | None = None
        self._tasks: TaskService | None = None
        self._metrics_server: object | None = None
        self._workflows: Workflows | None = None

    async def start(self) -> None:
        s = self.settings
        url = s.redis_url
        if not url:
            self._embedded = EmbeddedRedis(s.data_dir)
            url = await self._embedded.start()
        # After a Redis restart every idle pooled connection is dead and fails its next command
        # once: retry such a failure at once on a fresh connection (from_url sets no retry).
        # A bounded pool that makes a call wait for a free connection (up to the Redis timeout)
        # instead of failing with "too many connections" under a burst of concurrent RPCs.
        pool = BlockingConnectionPool.from_url(
            url, decode_responses=False, socket_timeout=s.redis_timeout_seconds,
            socket_connect_timeout=s.redis_timeout_seconds, health_check_interval=30,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            max_connections=s.redis_max_connections, timeout=s.redis_timeout_seconds)
        self._redis = Redis.from_pool(pool)
        store = Store(self._redis, namespace=s.namespace, dead_letter_ttl_ms=int(s.dead_letter_ttl_seconds * 1000),
                      dead_letter_max=s.dead_letter_max)
        try:
            await store.load_scripts()
        except Exception as exc:
            await self._close_store()
            raise BrokerStartError(f"cannot reach the store at {_redact(url)}: {exc}") from exc
        await self._check_server_version(store)
        await self._check_eviction_policy(store)

        self._hub = EventHub(self._redis, store.keys)
        await self._hub.start()
        self._dispatcher = Dispatcher(self._hub, self.metrics)
        limits = Limits(max_payload_bytes=s.max_payload_bytes, max_batch_size=s.max_batch_size,
                        lease_ms=int(s.lease_seconds * 1000), result_ttl_ms=int(s.result_ttl_seconds * 1000),
                        max_attempts=s.default_max_attempts)
        session = SessionSettings(broker_id=self.broker_id, heartbeat_seconds=s.heartbeat_interval,
                                  poll_seconds=s.dispatch_poll_seconds, redis_timeout_seconds=s.redis_timeout_seconds)

        self._server = grpc.aio.server(options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.http2.max_pings_without_data", 0),
        ])
        self._tasks = TaskService(store, self._hub, self.metrics, limits, wait_poll_seconds=s.wait_poll_seconds,
                                  client_sessions=s.client_sessions, dispatcher=self._dispatcher)
        task_service_pb2_grpc.add_TaskServiceServicer_to_server(self._tasks, self._server)
        worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(
            WorkerService(store, self.metrics, self._dispatcher, session), self._server)
        self._workflows = Workflows(store, self.metrics, fast_path=bool(s.workflow_fast_path),
                                    pending_grace_ms=int(s.workflow_pending_grace_seconds * 1000))
        self._workflows.attach(self._hub)
        workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server(
            WorkflowService(store, self._hub, self.metrics, limits, self._workflows,
                            max_nodes=s.max_workflow_nodes, wait_poll_seconds=s.wait_poll_seconds), self._server)
        admin_service_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminService(store, self.metrics, limits), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable((*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), self._server)
        try:
            self.port = self._server.add_insecure_port(s.listen)
        except RuntimeError as exc:
            self.port = 0
            cause: Exception | None = exc
        else:
            cause = None
        if not self.port:
            await self._abort_start()
            raise BrokerStartError(f"cannot listen on {s.listen} (address in use?)") from cause
        if s.metrics_port:
            try:
                self._metrics_server, _ = start_http_server(s.metrics_port, addr=s.metrics_host,
                                                            registry=self.metrics.registry)
            except OSError as exc:
                await self._abort_start()
                raise BrokerStartError(f"cannot serve metrics on {s.metrics_host}:{s.metrics_port}: {exc}") from exc
            self.metrics_port = self._metrics_server.server_port
        await self._server.start()

        self._loops = [
            Readiness(store, self._health, SERVICE_NAMES, interval=1.0, metrics=self.metrics),
            Reaper(store, self.metrics, s.reap_interval_seconds),
            Promoter(store, s.promote_interval_seconds),
            Janitor(store, self.metrics, interval=5.0),
            Scheduler(store, self.metrics, s.schedule_interval_seconds, s.schedule_grace_seconds),
            WorkflowReconciler(self._workflows, s.workflow_reconcile_seconds),
        ]
        for loop in self._loops:
            loop.start()
        log.info("broker %s listening on port %d (metrics %s)", self.broker_id, self.port,
                 self.metrics_port or "off")

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, drain workers, finish in-flight RPCs within the grace period, release everything."""
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        started = time.monotonic()
        await self._health.enter_graceful_shutdown()
        # Client sessions end (UNAVAILABLE, so their clients reconnect) once their submits are answered.
        sessions_drained = asyncio.create_task(self._tasks.sessions.drain(grace)) if self._tasks else None
        if self._dispatcher is not None:
            await self._dispatcher.drain(grace)
        if sessions_drained is not None:
            await sessions_drained
        # One budget for the whole stop: in-flight RPCs ran during the drain and get what is left.
        # The metrics endpoint needs up to its poll interval (0.5 s) to stop: it stops meanwhile.
        metrics_stopped = asyncio.create_task(asyncio.to_thread(self._stop_metrics))
        if self._server is not None:
            await self._server.stop(max(0.1, grace - (time.monotonic() - started)))
        for loop in self._loops:
            await loop.stop()
        if self._workflows is not None:
            await self._workflows.stop()
        if self._hub is not None:
            await self._hub.stop()
        await metrics_stopped
        await self._close_store()
        log.info("broker %s stopped", self.broker_id)

    def _stop_metrics(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.shutdown()  # type: ignore[attr-defined]
            self._metrics_server.server_close()  # type: ignore[attr-defined]

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def _abort_start(self) -> None:
        """Undoes a start that failed before the server started."""
        if self._hub is not None:
            await self._hub.stop()
            self._hub = None
        await self._close_store()

    async def _close_store(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        if self._embedded is not None:
            await self._embedded.stop()
            self._embedded = None

    async def _check_server_version(self, store: Store) -> None:
        try:
            require_redis(await store.server_version())
        except BrokerStartError:
            await self._close_store()
            raise

    async def _check_eviction_policy(self, store: Store) -> None:
        if self._embedded is not None:
            return
        policy = await store.eviction_policy()
        if policy is not None and policy != "noeviction":
            log.warning("Redis maxmemory-policy is %r: under memory pressure it may evict queued tasks. "
                        "Set maxmemory-policy noeviction.", policy)


def require_redis(version: tuple[int, ...] | None) -> None:
    """Raises BrokerStartError for a server older than MIN_REDIS (the lease script pops with
    LMPOP); an unknown version (INFO not allowed) is let through."""
    if version is not None and version < MIN_REDIS:
        raise BrokerStartError(f"Redis {'.'.join(map(str, version))} is too old: Conveyor needs Redis "
                               f"{'.'.join(map(str, MIN_REDIS))} or newer, or Valkey")


def _redact(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
