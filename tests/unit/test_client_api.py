"""The client SDK's public surface: pinned names, documented symbols, no protobuf leaking out."""

from __future__ import annotations

import inspect
import subprocess
import sys

import client_sdk
from client_sdk import cli

EXPECTED = {
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
    # Workflows.
    "DAG",
    "AsyncWorkflowHandle",
    "Chain",
    "Chord",
    "Group",
    "WorkflowCancelledError",
    "WorkflowFailedError",
    "WorkflowHandle",
    "WorkflowInfo",
    "WorkflowNodeInfo",
    "WorkflowState",
    "WorkflowTimeoutError",
    "chain",
    "chord",
    "group",
}


def test_all_is_pinned() -> None:
    assert set(client_sdk.__all__) == EXPECTED
    assert len(client_sdk.__all__) == len(EXPECTED)
    for name in client_sdk.__all__:
        assert hasattr(client_sdk, name), name


def test_every_public_symbol_and_method_has_a_docstring() -> None:
    for name in client_sdk.__all__:
        obj = getattr(client_sdk, name)
        assert inspect.getdoc(obj), name
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and callable(member):
                    assert inspect.getdoc(member), f"{name}.{attr}"


def test_every_error_is_a_conveyor_error() -> None:
    errors = [getattr(client_sdk, n) for n in client_sdk.__all__ if n.endswith("Error") and n != "RemoteError"]
    assert len(errors) == 13
    for error in errors:
        assert issubclass(error, client_sdk.ConveyorError)


def test_public_signatures_mention_no_protobuf_type() -> None:
    for name in client_sdk.__all__:
        obj = getattr(client_sdk, name)
        members = [obj, *vars(obj).values()] if inspect.isclass(obj) else [obj]
        for member in members:
            if callable(member):
                try:
                    text = str(inspect.signature(member))
                except (TypeError, ValueError):
                    continue
                assert "pb2" not in text and "google.protobuf" not in text, f"{name}: {text}"


def test_cli_names_its_commands() -> None:
    assert cli.COMMANDS == ("enqueue", "get", "wait", "cancel", "list", "queue", "schedule", "workflow")
    assert callable(cli.main)


def test_importing_the_sdk_loads_no_broker_code() -> None:
    code = "import sys, client_sdk, client_sdk.cli; print(any(m.startswith('broker_service') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"
