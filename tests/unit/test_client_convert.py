"""Signatures and options to conveyor.v1 requests, and conveyor.v1 Tasks back to TaskInfo."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from conveyor.v1 import task_pb2
from google.protobuf import duration_pb2, timestamp_pb2

from client_sdk import (
    ConveyorError,
    InvalidArgumentError,
    RemoteError,
    TaskCancelledError,
    TaskExpiredError,
    TaskFailedError,
    TaskInfo,
    TaskOptions,
    TaskState,
    TaskTimeoutError,
    signature,
    task,
)
from client_sdk._convert import (
    batch_requests,
    call_outcome,
    encode_arguments,
    is_json,
    name_batch_field,
    needs_spelling_out,
    outcome,
    signature_spec,
    spelled_out,
    task_info,
    task_spec,
    terminal_or_timeout,
    to_signature,
)


@task(queue="q")
def echo(value: object, *, tag: str = "") -> object:
    return value


def test_arguments_are_encoded_as_args_and_kwargs_json() -> None:
    payload = encode_arguments("t", (1, "a", [1, 2], None), {"k": {"n": 1.5}})
    assert json.loads(payload) == {"args": [1, "a", [1, 2], None], "kwargs": {"k": {"n": 1.5}}}


def test_a_positional_argument_json_cannot_encode_is_named() -> None:
    with pytest.raises(TypeError, match=r"task 't': positional argument 1 .*\(set\)"):
        encode_arguments("t", (1, {2}), {})


def test_a_keyword_argument_json_cannot_encode_is_named() -> None:
    with pytest.raises(TypeError, match=r"keyword argument 'when' .*\(datetime\)"):
        encode_arguments("t", (), {"ok": 1, "when": datetime.now(UTC)})


def test_nan_is_refused_as_not_json() -> None:
    with pytest.raises(TypeError, match="positional argument 0"):
        encode_arguments("t", (float("nan"),), {})


def test_bytes_are_refused_never_pickled() -> None:
    with pytest.raises(TypeError, match="bytes"):
        signature_spec(echo.s(b"raw"))


def test_spec_of_a_signature_carries_name_queue_payload_and_content_type() -> None:
    spec = signature_spec(echo.s(7, tag="x"))
    assert spec.name == echo.name and spec.queue == "q"
    assert spec.content_type == "application/json"
    assert json.loads(spec.payload) == {"args": [7], "kwargs": {"tag": "x"}}
    assert not spec.HasField("delay") and not spec.HasField("run_at")
    assert not spec.HasField("execution_timeout") and not spec.HasField("lease_duration")
    assert not spec.HasField("schedule_to_start_timeout") and not spec.HasField("result_ttl")


def test_spec_carries_every_option() -> None:
    options = TaskOptions(queue="q2", priority=4, max_attempts=7, retry_backoff=0.25, retry_backoff_max=30,
                          retry_jitter=0.5, timeout=12.5, lease=20, schedule_to_start=60, result_ttl=3600,
                          delay=1.5, headers={"trace": "t1"})
    spec = task_spec("n", b"\x00raw", "application/octet-stream", options)
    assert (spec.queue, spec.name, spec.payload, spec.content_type) == ("q2", "n", b"\x00raw",
                                                                        "application/octet-stream")
    assert spec.priority == 4 and dict(spec.headers) == {"trace": "t1"}
    assert spec.retry_policy.max_attempts == 7
    assert spec.retry_policy.initial_backoff.ToTimedelta() == timedelta(milliseconds=250)
    assert spec.retry_policy.max_backoff.ToTimedelta() == timedelta(seconds=30)
    assert spec.retry_policy.jitter == 0.5
    assert spec.WhichOneof("schedule") == "delay"
    assert spec.delay.ToTimedelta() == timedelta(seconds=1.5)
    assert spec.execution_timeout.ToTimedelta() == timedelta(seconds=12.5)
    assert spec.lease_duration.ToTimedelta() == timedelta(seconds=20)
    assert spec.schedule_to_start_timeout.ToTimedelta() == timedelta(seconds=60)
    assert spec.result_ttl.ToTimedelta() == timedelta(hours=1)


def test_run_at_is_sent_as_a_utc_timestamp() -> None:
    at = datetime(2030, 6, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    spec = signature_spec(echo.with_options(run_at=at).s(1))
    assert spec.WhichOneof("schedule") == "run_at"
    assert spec.run_at.ToDatetime(tzinfo=UTC) == datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


def test_enqueue_accepts_a_definition_a_signature_or_a_name() -> None:
    assert to_signature(echo, (1,), {}) == echo.s(1)
    sig = signature("x", 1)
    assert to_signature(sig, (), {}) is sig
    assert to_signature("x", (1,), {"k": 2}) == signature("x", 1, k=2)
    with pytest.raises(TypeError, match="already holds"):
        to_signature(sig, (2,), {})
    with pytest.raises(TypeError):
        to_signature(42, (), {})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        to_signature(echo, (1, 2), {})


def test_batches_are_cut_at_the_task_limit() -> None:
    sigs = [signature("t", i) for i in range(25)]
    for requests in (list(batch_requests(sigs, max_tasks=10, templates=False)),
                     [spelled_out(r) for r in batch_requests(sigs, max_tasks=10)]):
        assert [len(r.tasks) for r in requests] == [10, 10, 5]
        assert [json.loads(t.payload)["args"][0] for r in requests for t in r.tasks] == list(range(25))
        assert {(t.name, t.queue) for r in requests for t in r.tasks} == {("t", "default")}


def test_batches_are_cut_before_they_grow_too_large() -> None:
    sigs = [signature("t", "x" * 1000) for _ in range(10)]
    requests = list(batch_requests(sigs, max_bytes=3500, templates=False))
    assert [len(r.tasks) for r in requests] == [3, 3, 3, 1]
    assert all(r.ByteSize() < 3500 for r in requests)
    requests = list(batch_requests(sigs, max_bytes=3500))
    assert [len(r.payloads) for r in requests] == [3, 3, 3, 1]
    assert all(r.ByteSize() < 3500 for r in requests)


def test_one_task_over_many_arguments_travels_as_a_template_and_payloads() -> None:
    sigs = [echo.s(i, tag="a") for i in range(25)]
    requests = list(batch_requests(sigs, max_tasks=10))

    assert [(len(r.tasks), len(r.payloads)) for r in requests] == [(0, 10), (0, 10), (0, 5)]
    assert {(r.template.name, r.template.queue, r.template.payload) for r in requests} == {(echo.name, "q", b"")}
    assert [json.loads(p) for r in requests for p in r.payloads] == \
        [{"args": [i], "kwargs": {"tag": "a"}} for i in range(25)]
    # The broker gets the same tasks as when each is sent as a TaskSpec.
    spelled = [t for r in requests for t in spelled_out(r).tasks]
    assert spelled == [t for r in batch_requests(sigs, max_tasks=10, templates=False) for t in r.tasks]


def test_tasks_that_differ_in_more_than_arguments_travel_as_task_specs() -> None:
    for sigs in ([echo.s(1), echo.s(2).with_options(priority=5)], [echo.s(1), signature("other", 2)]):
        [request] = batch_requests(sigs)
        assert len(request.tasks) == 2 and not request.payloads and not request.HasField("template")


def test_a_templated_batch_fault_is_named_as_the_task_it_is_in() -> None:
    [request] = batch_requests([echo.s(i) for i in range(3)])
    for field, named in (("template.priority", "tasks[0].priority"), ("payloads[2]", "tasks[2].payload"),
                         ("tasks", "tasks"), (None, None)):
        error = InvalidArgumentError("bad", field=field)
        name_batch_field(error, request)
        assert error.field == named
    # A broker that predates templates sees no task and names `tasks`: the batch is sent spelled out.
    assert needs_spelling_out(InvalidArgumentError("no task", field="tasks"), request)
    assert not needs_spelling_out(InvalidArgumentError("bad", field="payloads[1]"), request)
    [plain] = batch_requests([echo.s(i) for i in range(3)], templates=False)
    assert not needs_spelling_out(InvalidArgumentError("no task", field="tasks"), plain)


def test_a_bad_argument_anywhere_fails_the_batch_before_any_request() -> None:
    sigs = (signature("t", i if i != 15 else {i}) for i in range(20))
    produced = batch_requests(sigs, max_tasks=10)
    with pytest.raises(TypeError, match="set"):
        next(produced)


def test_an_empty_batch_makes_no_request() -> None:
    assert list(batch_requests([])) == []


def _stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(moment)
    return value


def _span(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromTimedelta(timedelta(seconds=seconds))
    return value


def test_a_full_task_record_becomes_task_info_with_python_types() -> None:
    created = datetime(2030, 1, 1, 12, 0, 0, 123000, tzinfo=UTC)
    message = task_pb2.Task(
        id="01ARZ3NDEKTSV4RRFFQ69G5FAV@q", queue="q", name="n", payload=b"{}", content_type="application/json",
        headers={"a": "b"}, priority=3, state=task_pb2.TASK_STATE_FAILED, attempt=2,
        retry_policy=task_pb2.RetryPolicy(max_attempts=2, initial_backoff=_span(1), max_backoff=_span(600),
                                          multiplier=2.0, jitter=0.1),
        execution_timeout=_span(30), lease_duration=_span(15), created_at=_stamp(created),
        scheduled_at=_stamp(created + timedelta(seconds=1)), started_at=_stamp(created + timedelta(seconds=2)),
        finished_at=_stamp(created + timedelta(seconds=3)), result_content_type="",
        error=task_pb2.TaskError(type="ValueError", message="bad", traceback="tb", retryable=False),
        reason="attempts_exhausted", progress=0.5, progress_message="half", worker_id="w1",
        result_ttl=_span(86400),
    )
    info = task_info(message)
    assert info.id == "01ARZ3NDEKTSV4RRFFQ69G5FAV@q" and info.queue == "q" and info.name == "n"
    assert info.state is TaskState.FAILED and info.terminal
    assert info.headers == {"a": "b"} and info.priority == 3 and info.attempt == 2
    assert info.max_attempts == 2 and info.retry_policy.initial_backoff == timedelta(seconds=1)
    assert info.retry_policy.multiplier == 2.0 and info.retry_policy.jitter == pytest.approx(0.1)
    assert info.execution_timeout == timedelta(seconds=30) and info.lease_duration == timedelta(seconds=15)
    assert info.created_at == created and info.created_at.tzinfo is UTC
    assert info.finished_at == created + timedelta(seconds=3)
    assert info.start_deadline is None
    assert info.error == RemoteError("ValueError", "bad", "tb", False)
    assert (info.reason, info.progress, info.progress_message, info.worker_id) == (
        "attempts_exhausted", 0.5, "half", "w1")
    assert info.result_ttl == timedelta(days=1)


def test_unset_fields_become_none_and_empty_values() -> None:
    info = task_info(task_pb2.Task(id="i@q", queue="q", name="n", state=task_pb2.TASK_STATE_QUEUED))
    assert info.state is TaskState.QUEUED and not info.terminal
    assert info.error is None and info.created_at is None and info.execution_timeout is None
    assert info.retry_policy.initial_backoff is None and info.result == b""


def test_a_state_this_sdk_does_not_know_reads_as_unspecified() -> None:
    assert task_info(task_pb2.Task(id="i@q", state=99)).state is TaskState.UNSPECIFIED


def test_task_states_are_the_wire_values() -> None:
    for state in TaskState:
        assert task_pb2.TaskState.Name(state.value) == f"TASK_STATE_{state.name}"
    assert TaskState.parse("Queued") is TaskState.QUEUED
    assert TaskState.parse(4) is TaskState.SUCCEEDED
    with pytest.raises(ValueError, match="unknown task state"):
        TaskState.parse("done")


@pytest.mark.parametrize(("content_type", "expected"), [
    ("", True), ("application/json", True), ("application/json; charset=utf-8", True),
    ("application/problem+json", True), ("text/plain", False), ("application/octet-stream", False),
])
def test_json_content_types(content_type: str, expected: bool) -> None:
    assert is_json(content_type) is expected


def _info(state: TaskState, **fields: object) -> TaskInfo:
    return TaskInfo(id="i@q", queue="q", name="n", state=state, **fields)  # type: ignore[arg-type]


def test_a_json_result_is_decoded() -> None:
    assert outcome(_info(TaskState.SUCCEEDED, result=b'{"a": [1]}', result_content_type="application/json")) == {
        "a": [1]}
    assert outcome(_info(TaskState.SUCCEEDED, result=b"", result_content_type="application/json")) is None


def test_a_result_of_another_content_type_is_returned_as_bytes() -> None:
    assert outcome(_info(TaskState.SUCCEEDED, result=b"\x89PNG", result_content_type="image/png")) == b"\x89PNG"


def test_a_json_result_that_does_not_parse_is_an_error() -> None:
    with pytest.raises(ConveyorError, match="not valid JSON"):
        outcome(_info(TaskState.SUCCEEDED, result=b"{", result_content_type="application/json"))


def test_a_failed_task_raises_task_failed_error_with_the_remote_error() -> None:
    error = RemoteError("KeyError", "'x'", "Traceback...", True)
    with pytest.raises(TaskFailedError) as caught:
        outcome(_info(TaskState.FAILED, error=error))
    assert caught.value.task_id == "i@q" and caught.value.error == error
    assert caught.value.info is not None and "KeyError" in str(caught.value)


def test_cancelled_and_expired_tasks_raise_their_errors() -> None:
    with pytest.raises(TaskCancelledError):
        outcome(_info(TaskState.CANCELLED))
    with pytest.raises(TaskExpiredError):
        outcome(_info(TaskState.EXPIRED))


def test_a_wait_of_no_time_times_out_unless_the_task_finished() -> None:
    done = _info(TaskState.SUCCEEDED)
    assert terminal_or_timeout(done, 0) is done
    with pytest.raises(TaskTimeoutError, match="last seen running") as caught:
        terminal_or_timeout(_info(TaskState.RUNNING), 0)
    assert caught.value.timeout == 0


@pytest.mark.parametrize(("result", "content_type"), [
    (b'{"a": [1]}', "application/json"), (b"", "application/json"), (b"7", ""), (b"\x89PNG", "image/png"),
])
def test_a_calls_success_is_read_from_the_record_as_from_its_task_info(result: bytes, content_type: str) -> None:
    record = task_pb2.Task(id="i@q", state=task_pb2.TASK_STATE_SUCCEEDED, result=result,
                           result_content_type=content_type)
    assert call_outcome(record, 5) == outcome(task_info(record))


@pytest.mark.parametrize(("state", "error"), [
    (task_pb2.TASK_STATE_FAILED, TaskFailedError), (task_pb2.TASK_STATE_CANCELLED, TaskCancelledError),
    (task_pb2.TASK_STATE_EXPIRED, TaskExpiredError), (task_pb2.TASK_STATE_RUNNING, TaskTimeoutError),
])
def test_a_call_that_did_not_succeed_raises_as_a_wait_does(state: int, error: type[Exception]) -> None:
    record = task_pb2.Task(id="i@q", state=state)
    record.error.type = "KeyError"
    with pytest.raises(error) as caught:
        call_outcome(record, 5)
    assert caught.value.info == task_info(record)  # type: ignore[attr-defined]


def test_a_calls_result_that_is_not_json_is_an_error_naming_the_task() -> None:
    record = task_pb2.Task(id="i@q", state=task_pb2.TASK_STATE_SUCCEEDED, result=b"{",
                           result_content_type="application/json")
    with pytest.raises(ConveyorError, match="i@q: result is not valid JSON"):
        call_outcome(record, 5)


def test_submissions_of_one_task_share_nothing_but_what_they_have_in_common() -> None:
    options = TaskOptions(queue="q", priority=2)
    first = task_spec("t", b"[1]", "application/json", options)
    second = task_spec("t", b"[2]", "application/json", options)
    first.priority = 9  # a spec is the caller's to change: the next one does not see it

    third = task_spec("t", b"[3]", "application/json", options)

    assert (first.payload, second.payload, third.payload) == (b"[1]", b"[2]", b"[3]")
    assert (second.priority, third.priority) == (2, 2)
    tagged = TaskOptions(queue="q", headers={"trace": "a"})
    assert dict(task_spec("t", b"", "application/json", tagged).headers) == {"trace": "a"}
    tagged.headers["trace"] = "b"  # type: ignore[index]  # a mapping can change: read at each submission
    assert dict(task_spec("t", b"", "application/json", tagged).headers) == {"trace": "b"}
