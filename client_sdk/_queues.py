"""Queues as the SDK shows them: their limits and task counts (AdminService, no protobuf outside)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from conveyor.v1 import admin_service_pb2

__all__ = ["QueueInfo", "QueueLimits"]


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """Limits that hold for a whole queue, across every broker replica (0 means no limit).

    Attributes:
        max_running: Most tasks of the queue running at once.
        rate_per_second: Most tasks started per second (a token bucket kept in the store).
        rate_burst: How many tasks may start at once after a quiet spell; 0 means
            ``max(1, rate_per_second)``.
    """

    max_running: int = 0
    rate_per_second: float = 0.0
    rate_burst: int = 0

    def __post_init__(self) -> None:
        for name in ("max_running", "rate_burst"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        rate = self.rate_per_second
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate) or rate < 0:
            raise ValueError(f"rate_per_second must be a non-negative number, got {rate!r}")


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """A queue as it stands.

    Attributes:
        name: Queue name.
        limits: Its limits.
        scheduled: Tasks waiting for their run time.
        queued: Tasks ready to run (including those held back by a concurrency key).
        running: Tasks running.
        pending: Workflow nodes waiting for their parents.
        succeeded: Succeeded tasks whose records are still kept.
        failed: Dead-lettered tasks.
        cancelled: Cancelled tasks still kept.
        expired: Expired tasks still kept.
    """

    name: str
    limits: QueueLimits
    scheduled: int = 0
    queued: int = 0
    running: int = 0
    pending: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    expired: int = 0


def limits_request(queue: str, limits: QueueLimits) -> admin_service_pb2.SetQueueLimitsRequest:
    """The SetQueueLimits request of `limits`."""
    return admin_service_pb2.SetQueueLimitsRequest(queue=queue, limits=admin_service_pb2.QueueLimits(
        max_running=limits.max_running, rate_per_second=float(limits.rate_per_second),
        rate_burst=limits.rate_burst))


def queue_info(message: admin_service_pb2.Queue) -> QueueInfo:
    """A QueueInfo of a conveyor.v1.Queue."""
    limits = message.limits
    return QueueInfo(
        name=message.name,
        limits=QueueLimits(max_running=limits.max_running, rate_per_second=limits.rate_per_second,
                           rate_burst=limits.rate_burst),
        scheduled=message.scheduled, queued=message.queued, running=message.running,
        pending=message.pending, succeeded=message.succeeded, failed=message.failed,
        cancelled=message.cancelled, expired=message.expired,
    )
