"""The stream's conversions: assignments to jobs, results and batches to messages, reconnect delays."""

from __future__ import annotations

import datetime
import itertools

import pytest
from conveyor.v1 import worker_service_pb2 as wpb

from worker_sdk._engine import Batch, PendingRelease
from worker_sdk._jobs import Cancelled, Failed, Result, Succeeded
from worker_sdk._session import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    MAX_BATCH_BYTES,
    backoff_delays,
    batch_messages,
    job_from_assignment,
    outcome_message,
)


def test_an_assignment_becomes_a_job() -> None:
    assignment = wpb.Assignment(task_id="01ARZ3NDEKTSV4RRFFQ69G5FAV@q", queue="q", name="app.add", payload=b"{}",
                                content_type="application/json", headers={"k": "v"}, attempt=2, max_attempts=3,
                                lease_token=99, lease_duration=datetime.timedelta(seconds=30),
                                execution_timeout=datetime.timedelta(milliseconds=1500))
    job = job_from_assignment(assignment)
    assert (job.task_id, job.queue, job.name, job.payload, job.content_type, dict(job.headers)) == (
        "01ARZ3NDEKTSV4RRFFQ69G5FAV@q", "q", "app.add", b"{}", "application/json", {"k": "v"})
    assert (job.attempt, job.max_attempts, job.lease_token) == (2, 3, 99)
    assert (job.lease_duration, job.timeout) == (30.0, 1.5)
    assert not job.started and job.running


def test_an_assignment_without_a_timeout_has_none() -> None:
    assert job_from_assignment(wpb.Assignment(task_id="t@q", lease_token=1)).timeout is None


def test_results_become_outcomes() -> None:
    success = outcome_message(("t@q", 5), Succeeded(b"1", "application/json"))
    assert (success.task_id, success.lease_token, success.WhichOneof("result")) == ("t@q", 5, "success")
    assert success.success.payload == b"1"

    failure = outcome_message(("t@q", 5), Failed("ValueError", "m", "tb", retryable=False, retry_after=2.5))
    assert failure.WhichOneof("result") == "failure"
    error = failure.failure.error
    assert (error.type, error.message, error.traceback, error.retryable) == ("ValueError", "m", "tb", False)
    assert failure.failure.retry_after.ToTimedelta() == datetime.timedelta(seconds=2.5)
    assert not outcome_message(("t@q", 5), Failed("E", "m")).failure.HasField("retry_after")

    assert outcome_message(("t@q", 5), Cancelled()).WhichOneof("result") == "cancelled"


def test_a_batch_is_written_as_releases_credits_outcomes_progress_then_heartbeat() -> None:
    batch = Batch(releases=[PendingRelease((("a@q", 1),), "worker_shutdown", True)],
                  outcomes=[(("b@q", 2), Succeeded(b"1", "application/json")), (("c@q", 3), Cancelled())],
                  progress=[(("d@q", 4), 0.5, "half")], credits=4)
    outgoing = batch_messages(batch, heartbeat=[("d@q", 4)])
    messages = [m.message for m in outgoing]
    assert [m.WhichOneof("kind") for m in messages] == ["release", "credit", "outcomes", "progress", "heartbeat"]
    release, credit, outcomes, progress, heartbeat = messages
    assert (release.release.reason, release.release.started) == ("worker_shutdown", True)
    assert credit.credit.credits == 4
    assert [o.task_id for o in outcomes.outcomes.outcomes] == ["b@q", "c@q"]
    assert [o.WhichOneof("result") for o in outcomes.outcomes.outcomes] == ["success", "cancelled"]
    assert progress.progress.updates[0].progress == 0.5
    assert heartbeat.heartbeat.leases[0].lease_token == 4
    # What each answered message speaks of, in order: the broker's answers name no token.
    assert [(m.outcomes, m.heartbeat) for m in outgoing] == [
        (None, None), (None, None), ([("b@q", 2), ("c@q", 3)], None), (None, None), (None, [("d@q", 4)])]


def test_credits_ride_in_the_first_outcomes_message_when_the_broker_reads_them_there() -> None:
    big = Succeeded(b"x" * (MAX_BATCH_BYTES // 2), "application/json")  # two Outcomes messages
    batch = Batch(releases=[PendingRelease((("a@q", 1),), "nack", False)],
                  outcomes=[(("b@q", 2), big), (("c@q", 3), big)], credits=3)

    messages = [m.message for m in batch_messages(batch, heartbeat=None, outcome_credits=True)]

    assert [m.WhichOneof("kind") for m in messages] == ["release", "outcomes", "outcomes"]
    assert [m.outcomes.credits for m in messages[1:]] == [3, 0]
    # Without outcomes, or for an older broker, credits keep their own message.
    alone = batch_messages(Batch(credits=2), heartbeat=None, outcome_credits=True)
    assert [m.message.credit.credits for m in alone] == [2]
    older = [m.message for m in batch_messages(batch, heartbeat=None)]
    assert [m.WhichOneof("kind") for m in older] == ["release", "credit", "outcomes", "outcomes"]
    assert all(m.outcomes.credits == 0 for m in older[2:])


def test_an_outcomes_message_matches_the_outcomes_built_one_by_one() -> None:
    results: list[Result] = [Succeeded(b"1", "application/json"),
                             Failed("ValueError", "m", "tb", retryable=False, retry_after=2.5),
                             Failed("E", "m"), Cancelled()]
    keys = [(f"{i}@q", i + 1) for i in range(len(results))]
    [outgoing] = batch_messages(Batch(outcomes=list(zip(keys, results, strict=True))), heartbeat=None)
    expected = [outcome_message(k, r) for k, r in zip(keys, results, strict=True)]
    assert list(outgoing.message.outcomes.outcomes) == expected


def test_an_empty_batch_writes_nothing_but_an_empty_heartbeat_is_still_sent() -> None:
    assert batch_messages(Batch(), heartbeat=None) == []
    [outgoing] = batch_messages(Batch(), heartbeat=[])
    assert outgoing.message.WhichOneof("kind") == "heartbeat" and len(outgoing.message.heartbeat.leases) == 0


@pytest.mark.parametrize("result", [Succeeded(b"x" * (MAX_BATCH_BYTES // 4), "application/json"),
                                    Failed("E", "é" * (MAX_BATCH_BYTES // 8), "t" * 1000)])
def test_large_outcome_batches_are_split(result: Succeeded | Failed) -> None:
    batch = Batch(outcomes=[((f"{i}@q", i), result) for i in range(7)])  # three fit in one message
    messages = [m.message for m in batch_messages(batch, heartbeat=None)]
    assert len(messages) == 3
    assert sum(len(m.outcomes.outcomes) for m in messages) == 7
    assert all(m.ByteSize() <= MAX_BATCH_BYTES for m in messages)


def test_reconnect_delays_grow_with_jitter_up_to_the_cap() -> None:
    delays = list(itertools.islice(backoff_delays(), 12))
    assert BACKOFF_FIRST / 2 <= delays[0] <= BACKOFF_FIRST
    assert all(0 < d <= BACKOFF_MAX for d in delays)
    assert delays[-1] >= BACKOFF_MAX / 2
    assert len(set(delays)) > 1
