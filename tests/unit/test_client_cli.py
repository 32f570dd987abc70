"""The client subcommands: argument parsing, exit codes of bad input, and the JSON they print."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from client_sdk import RemoteError, TaskInfo, TaskState
from client_sdk.cli import broker_address, info_json, main, parser

TASK_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV@q"


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["enqueue", "--help"]) == 0
    assert "--kwargs" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    [],
    ["bogus"],
    ["enqueue"],
    ["get"],
    ["list", "q", "--state", "done"],
    ["enqueue", "t", "--priority", "high"],
    ["enqueue", "t", "--delay", "-1"],
    ["wait", TASK_ID, "--timeout", "soon"],
])
def test_usage_errors_exit_two(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["enqueue", "t", "--args", "{"], "--args: not valid JSON"),
    (["enqueue", "t", "--args", '{"a": 1}'], "--args: expected a JSON array"),
    (["enqueue", "t", "--kwargs", "[1]"], "--kwargs: expected a JSON object"),
    (["enqueue", "t", "--header", "novalue"], "KEY=VALUE"),
    (["enqueue", "t", "--priority", "12"], "priority must be 0 to 9"),
])
def test_bad_input_exits_two_with_a_json_error_before_any_call(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--broker", "127.0.0.1:1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    error = json.loads(captured.err)
    assert error["error"] == "InvalidInput" and message in error["message"]


def test_broker_comes_from_the_flag_then_the_environment_then_the_default() -> None:
    before = parser().parse_args(["--broker", "a:1", "get", TASK_ID])
    after = parser().parse_args(["get", TASK_ID, "--broker", "b:2"])
    neither = parser().parse_args(["get", TASK_ID])
    assert broker_address(before, {}) == "a:1"
    assert broker_address(after, {"CONVEYOR_BROKER": "c:3"}) == "b:2"
    assert broker_address(neither, {"CONVEYOR_BROKER": "c:3"}) == "c:3"
    assert broker_address(neither, {}) == "localhost:50051"


def test_enqueue_options_are_parsed() -> None:
    args = parser().parse_args(["enqueue", "app.add", "--queue", "math", "--args", "[1, 2]", "--kwargs",
                                '{"k": true}', "--delay", "2.5", "--priority", "7", "--wait", "--timeout", "5",
                                "--header", "a=b=c"])
    assert (args.name, args.queue, args.delay, args.priority, args.wait, args.timeout) == (
        "app.add", "math", 2.5, 7, True, 5.0)
    assert args.header == ["a=b=c"]


def test_list_defaults_to_queued_tasks() -> None:
    args = parser().parse_args(["list", "q"])
    assert (args.queue, args.state, args.page_size) == ("q", "queued", 100)


def test_task_json_decodes_json_bodies_and_renders_times_and_durations() -> None:
    created = datetime(2030, 1, 1, tzinfo=UTC)
    info = TaskInfo(id=TASK_ID, queue="q", name="n", state=TaskState.SUCCEEDED, payload=b'{"args":[1],"kwargs":{}}',
                    content_type="application/json", created_at=created, lease_duration=timedelta(seconds=30),
                    result=b"42", result_content_type="application/json", attempt=1, headers={"h": "v"})
    out = info_json(info)
    assert out["state"] == "succeeded" and out["result"] == {"json": 42}
    assert out["payload"] == {"json": {"args": [1], "kwargs": {}}}
    assert out["created_at"] == "2030-01-01T00:00:00+00:00" and out["lease_duration"] == 30.0
    assert out["headers"] == {"h": "v"}
    assert "finished_at" not in out and "error" not in out
    json.dumps(out)


def test_task_json_keeps_other_bodies_as_base64_and_shows_the_error() -> None:
    info = TaskInfo(id=TASK_ID, queue="q", name="n", state=TaskState.FAILED, payload=b"\x00\x01",
                    content_type="application/octet-stream",
                    error=RemoteError("ValueError", "bad", "Traceback", False), reason="non_retryable")
    out = info_json(info)
    assert out["payload"] == {"base64": "AAE=", "content_type": "application/octet-stream"}
    assert out["error"] == {"type": "ValueError", "message": "bad", "traceback": "Traceback", "retryable": False}
    assert out["reason"] == "non_retryable" and "result" not in out


def test_an_empty_json_result_prints_as_null() -> None:
    info = TaskInfo(id=TASK_ID, queue="q", name="n", state=TaskState.SUCCEEDED, result_content_type="application/json")
    assert info_json(info)["result"] == {"json": None}
