"""Domain records to protobuf messages (the only place the two meet on the way out)."""

from __future__ import annotations

from conveyor.v1 import admin_service_pb2 as adm
from conveyor.v1 import task_pb2
from conveyor.v1 import worker_service_pb2 as ws
from google.protobuf import duration_pb2, timestamp_pb2

from broker_service.domain import LeasedTask, QueueInfo, TaskRecord, TaskState


def timestamp(ms: int) -> timestamp_pb2.Timestamp | None:
    if not ms:
        return None
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def duration(ms: int) -> duration_pb2.Duration | None:
    if not ms:
        return None
    return duration_pb2.Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def task(record: TaskRecord, *, with_data: bool = True) -> task_pb2.Task:
    """A Task message; `with_data` False leaves out payload and result (listings)."""
    retry = record.retry
    msg = task_pb2.Task(
        id=record.task_id,
        queue=record.queue,
        name=record.name,
        content_type=record.content_type,
        headers=record.headers,
        priority=record.priority,
        state=int(record.state),
        attempt=record.attempt,
        retry_policy=task_pb2.RetryPolicy(
            max_attempts=retry.max_attempts,
            initial_backoff=duration(retry.initial_backoff_ms),
            max_backoff=duration(retry.max_backoff_ms),
            multiplier=retry.multiplier,
            jitter=retry.jitter,
        ),
        execution_timeout=duration(record.timeout_ms),
        lease_duration=duration(record.lease_ms),
        created_at=timestamp(record.created_ms),
        scheduled_at=timestamp(record.scheduled_ms),
        started_at=timestamp(record.started_ms),
        finished_at=timestamp(record.finished_ms),
        start_deadline=timestamp(record.start_by_ms),
        result_content_type=record.result_content_type,
        reason=record.reason,
        cancel_requested=record.cancel_requested,
        progress=record.progress,
        progress_message=record.progress_message,
        worker_id=record.worker_id,
        result_ttl=duration(record.result_ttl_ms),
        idempotency_key=record.idempotency_key,
        unique_key=record.unique_key,
        concurrency_key=record.concurrency_key,
        concurrency_limit=record.concurrency_limit,
        workflow_id=record.workflow_id,
        workflow_node=record.workflow_node,
        parent_ids=record.parent_ids,
        schedule_id=record.schedule_id,
    )
    if with_data:
        msg.payload = record.payload
        msg.result = record.result
    if record.error is not None:
        msg.error.CopyFrom(task_pb2.TaskError(type=record.error.type, message=record.error.message,
                                              traceback=record.error.traceback,
                                              retryable=record.error.retryable))
    return msg


def assignment(leased: LeasedTask) -> ws.Assignment:
    return ws.Assignment(
        task_id=leased.task_id,
        queue=leased.queue,
        name=leased.name,
        payload=leased.payload,
        content_type=leased.content_type,
        headers=leased.headers,
        attempt=leased.attempt,
        max_attempts=leased.max_attempts,
        lease_token=leased.lease_token,
        lease_duration=duration(leased.lease_ms),
        execution_timeout=duration(leased.timeout_ms),
        parent_results=[ws.ParentResult(task_id=p.task_id, node=p.node, payload=p.payload,
                                        content_type=p.content_type) for p in leased.parent_results],
        result_passing=leased.result_passing,
    )


# Queues and their limits.

def queue(info: QueueInfo) -> adm.Queue:
    """A Queue message: limits and counts (held tasks count as queued)."""
    counts = info.counts
    limits = info.limits
    return adm.Queue(
        name=info.name,
        limits=adm.QueueLimits(max_running=limits.max_running, rate_per_second=limits.rate_per_second,
                               rate_burst=limits.rate_burst),
        scheduled=counts.get(TaskState.SCHEDULED, 0),
        queued=counts.get(TaskState.QUEUED, 0) + info.held,
        running=counts.get(TaskState.RUNNING, 0),
        pending=counts.get(TaskState.PENDING, 0),
        succeeded=counts.get(TaskState.SUCCEEDED, 0),
        failed=counts.get(TaskState.FAILED, 0),
        cancelled=counts.get(TaskState.CANCELLED, 0),
        expired=counts.get(TaskState.EXPIRED, 0),
    )
