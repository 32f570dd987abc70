"""The worker SDK's public surface: pinned names, documented symbols, nothing done at import."""

from __future__ import annotations

import inspect
import subprocess
import sys

import client_sdk
import worker_sdk
from worker_sdk import Worker

EXPECTED = {
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
}


def test_all_is_pinned() -> None:
    assert set(worker_sdk.__all__) == EXPECTED
    for name in EXPECTED:
        assert hasattr(worker_sdk, name), name


def test_task_is_the_client_sdk_decorator() -> None:
    assert worker_sdk.task is client_sdk.task
    assert worker_sdk.TaskDefinition is client_sdk.TaskDefinition


def test_worker_errors_are_conveyor_errors() -> None:
    assert issubclass(worker_sdk.WorkerError, client_sdk.ConveyorError)
    assert issubclass(worker_sdk.PayloadError, worker_sdk.NonRetryableError)


def test_public_symbols_have_docstrings() -> None:
    for name in EXPECTED:
        assert inspect.getdoc(getattr(worker_sdk, name)), name
    for name, member in inspect.getmembers(Worker):
        if not name.startswith("_"):
            assert inspect.getdoc(member), f"Worker.{name}"


def test_worker_constructor_is_keyword_only_with_the_documented_defaults() -> None:
    parameters = inspect.signature(Worker).parameters
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters.values())
    defaults = {name: p.default for name, p in parameters.items()}
    assert defaults == {
        "tasks": inspect.Parameter.empty,
        "queues": None,
        "concurrency": 8,
        "broker": "localhost:50051",
        "worker_id": None,
        "shutdown_grace": 30.0,
        "heartbeat_interval": None,
        "credentials": None,
    }


def test_importing_the_sdk_and_its_examples_starts_nothing() -> None:
    code = ("import threading, worker_sdk, worker_sdk.examples, worker_sdk.cli; "
            "assert threading.active_count() == 1, threading.enumerate()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
