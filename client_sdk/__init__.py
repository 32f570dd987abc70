"""Conveyor's client SDK: define tasks, submit them to a broker, wait for and read their results."""

from client_sdk._async_client import AsyncClient, AsyncTaskHandle
from client_sdk._client import Client, TaskHandle
from client_sdk._errors import (
    ConveyorError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    TaskCancelledError,
    TaskExpiredError,
    TaskFailedError,
    TaskTimeoutError,
    UnavailableError,
)
from client_sdk._models import RemoteError, RetryPolicy, TaskInfo, TaskState
from client_sdk._queues import QueueInfo, QueueLimits
from client_sdk._schedule_models import MissedTicks, ScheduleInfo
from client_sdk._task import Signature, TaskDefinition, TaskOptions, signature, task

__all__ = [
    "AsyncClient",
    "AsyncTaskHandle",
    "Client",
    "ConveyorError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "MissedTicks",
    "NotFoundError",
    "QueueInfo",
    "QueueLimits",
    "RemoteError",
    "RetryPolicy",
    "ScheduleInfo",
    "Signature",
    "TaskCancelledError",
    "TaskDefinition",
    "TaskExpiredError",
    "TaskFailedError",
    "TaskHandle",
    "TaskInfo",
    "TaskOptions",
    "TaskState",
    "TaskTimeoutError",
    "UnavailableError",
    "signature",
    "task",
]
