"""Broker settings: the one reader of command-line flags and CONVEYOR_* environment variables."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

_ENV_PREFIX = "CONVEYOR_"
EVENT_LOOPS = ("auto", "uvloop", "asyncio")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the broker can be told. Durations are in seconds unless the name says otherwise."""

    listen: str = "127.0.0.1:50051"
    redis_url: str = ""  # empty: start a private embedded server
    data_dir: str = ".conveyor"  # where the embedded server keeps its append-only file
    namespace: str = "conveyor"
    metrics_port: int = 9464  # 0 disables the metrics endpoint
    metrics_host: str = "127.0.0.1"
    max_payload_bytes: int = 1 << 20
    max_batch_size: int = 10_000
    max_message_bytes: int = 64 << 20
    lease_seconds: float = 30.0
    result_ttl_seconds: float = 86_400.0
    dead_letter_ttl_seconds: float = 7 * 86_400.0
    dead_letter_max: int = 10_000
    default_max_attempts: int = 3
    heartbeat_seconds: float = 0.0  # 0: a third of the lease
    reap_interval_seconds: float = 1.0
    promote_interval_seconds: float = 0.5
    dispatch_poll_seconds: float = 5.0  # safety net when no wake-up arrives
    wait_poll_seconds: float = 60.0  # safety net for WaitTask streams
    shutdown_grace_seconds: float = 10.0
    redis_timeout_seconds: float = 5.0
    redis_max_connections: int = 256
    log_level: str = "INFO"
    event_loop: str = "auto"  # auto: uvloop where it is installed, else asyncio's own
    schedule_interval_seconds: float = 0.25
    schedule_grace_seconds: float = 5.0
    # Workflows.
    max_workflow_nodes: int = 1_000
    workflow_reconcile_seconds: float = 5.0
    workflow_pending_grace_seconds: float = 30.0
    workflow_fast_path: int = 1
    client_sessions: bool = True  # serve TaskService.OpenSession (off: clients use the unary RPCs)

    @property
    def heartbeat_interval(self) -> float:
        return self.heartbeat_seconds or self.lease_seconds / 3


_HELP = {
    "listen": "gRPC listen address, host:port (port 0 picks a free one)",
    "redis_url": "redis:// or rediss:// URL (password and db in the URL); empty starts an embedded server",
    "data_dir": "folder of the embedded server's data (append-only file)",
    "namespace": "prefix of every Redis key",
    "metrics_port": "Prometheus /metrics port; 0 disables it",
    "metrics_host": "Prometheus /metrics bind address",
    "max_payload_bytes": "largest task payload accepted",
    "max_batch_size": "most tasks in one BatchEnqueueTasks call",
    "max_message_bytes": "largest gRPC message accepted",
    "lease_seconds": "default lease: how long a silent worker keeps a task",
    "result_ttl_seconds": "default time a finished task's result is kept",
    "dead_letter_ttl_seconds": "time a dead-lettered task is kept",
    "dead_letter_max": "most tasks kept in each queue's dead-letter set",
    "default_max_attempts": "attempts (first included) when a task sets none",
    "heartbeat_seconds": "heartbeat interval told to workers; 0 means lease/3",
    "reap_interval_seconds": "how often expired leases are swept",
    "promote_interval_seconds": "how often due delayed tasks are moved to their queue",
    "dispatch_poll_seconds": "safety-net poll of idle dispatchers",
    "wait_poll_seconds": "safety-net poll of WaitTask streams",
    "shutdown_grace_seconds": "SIGTERM: how long workers get to drain and RPCs to finish",
    "redis_timeout_seconds": "socket timeout of Redis calls",
    "redis_max_connections": "Redis connections per broker; calls beyond wait for one (up to the Redis timeout)",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "event_loop": "auto (uvloop where installed), uvloop or asyncio",
    "schedule_interval_seconds": "how often due schedules are looked for",
    "schedule_grace_seconds": "a schedule tick later than this (brokers down) counts as missed and follows the "
                              "schedule's missed-tick policy",
    "max_workflow_nodes": "most nodes in one workflow",
    "workflow_reconcile_seconds": "how often the reconciler finishes workflow steps a crash interrupted",
    "workflow_pending_grace_seconds": "age after which the reconciler checks a pending workflow node",
    "workflow_fast_path": "1 advances a workflow as soon as a node ends; 0 leaves it to the reconciler",
    "client_sessions": "serve client sessions (OpenSession: SDK submits and waits batched on one stream); "
                       "--no-client-sessions or 0 turns them off",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one --flag per setting; each defaults to CONVEYOR_<NAME> or the built-in default."""
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        env = _ENV_PREFIX + f.name.upper()
        if isinstance(f.default, bool):  # --flag / --no-flag
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{_HELP[f.name]} [env {env}, default {f.default!r}]")
            continue
        parser.add_argument(flag, dest=f.name, type=type(f.default), default=None,
                            help=f"{_HELP[f.name]} [env {env}, default {f.default!r}]")


def load(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Builds Settings: flags win over CONVEYOR_* variables, which win over defaults."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for f in fields(Settings):
        given = getattr(args, f.name, None) if args is not None else None
        if given is None and (_ENV_PREFIX + f.name.upper()) in environ:
            raw = environ[_ENV_PREFIX + f.name.upper()]
            kind: Callable[[str], object] = _parse_bool if isinstance(f.default, bool) else type(f.default)
            try:
                given = kind(raw)
            except ValueError as exc:
                raise SystemExit(f"{_ENV_PREFIX}{f.name.upper()}={raw!r}: {exc}") from exc
        if given is not None:
            values[f.name] = given
    settings = Settings(**values)  # type: ignore[arg-type]
    if settings.event_loop not in EVENT_LOOPS:
        raise SystemExit(f"event loop {settings.event_loop!r}: expected one of {', '.join(EVENT_LOOPS)}")
    return settings


def parse(argv: Sequence[str] | None = None) -> Settings:
    """Parses `conveyor serve` arguments."""
    parser = argparse.ArgumentParser(prog="conveyor serve", description="Run the Conveyor broker.")
    add_arguments(parser)
    return load(parser.parse_args(argv))


def _parse_bool(raw: str) -> bool:
    """A boolean variable: 1/true/yes/on or 0/false/no/off, any case."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1/true/yes/on or 0/false/no/off")
