"""Conveyor's worker SDK: define tasks and run them with a Worker connected to a broker.

Example:
    >>> from worker_sdk import Worker, task  # doctest: +SKIP
    >>> @task
    ... def add(x: int, y: int) -> int:
    ...     return x + y
    >>> Worker(tasks=[add]).run()  # doctest: +SKIP
"""

from client_sdk import TaskDefinition, TaskOptions, task
from worker_sdk.context import TaskContext, current_task
from worker_sdk.errors import NonRetryableError, PayloadError, Retry, WorkerError
from worker_sdk.worker import Worker

__all__ = [
    "NonRetryableError",
    "PayloadError",
    "Retry",
    "TaskContext",
    "TaskDefinition",
    "TaskOptions",
    "Worker",
    "WorkerError",
    "current_task",
    "task",
]
