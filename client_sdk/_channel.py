"""Channel settings shared by the sync and asyncio clients: keepalive, message size and retries."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

__all__ = ["MAX_MESSAGE_BYTES", "channel_options", "service_config"]

SDK_VERSION = "0.8.0"
MAX_MESSAGE_BYTES = 64 << 20
_SERVICE = "conveyor.v1.TaskService"
# Reads are safe to repeat. EnqueueTask and BatchEnqueueTasks are not (a retry after a lost
# response would submit twice), nor is CancelTask (a repeat turns success into
# FAILED_PRECONDITION).
_IDEMPOTENT = ("GetTask", "ListTasks", "WaitTask")


def service_config() -> str:
    """The gRPC service config: idempotent reads are retried on UNAVAILABLE, with backoff."""
    return json.dumps({
        "methodConfig": [{
            "name": [{"service": _SERVICE, "method": method} for method in _IDEMPOTENT],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }],
    })


def channel_options(extra: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """Options of every client channel; `extra` entries override the defaults by name.

    Keepalive pings every 60 s while a call is open (WaitTask streams can be silent for
    minutes), so a dead connection or a silently dropped NAT entry is noticed within a
    minute and a half instead of hanging until the call's deadline.
    """
    options: dict[str, Any] = {
        "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
        "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
        "grpc.keepalive_time_ms": 60_000,
        "grpc.keepalive_timeout_ms": 20_000,
        "grpc.keepalive_permit_without_calls": 0,
        "grpc.http2.max_pings_without_data": 0,
        "grpc.enable_retries": 1,
        "grpc.service_config": service_config(),
        "grpc.primary_user_agent": f"conveyor-python/{SDK_VERSION}",
    }
    options.update(dict(extra))
    return list(options.items())
