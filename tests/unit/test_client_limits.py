"""The client SDK's locks and limits: key options on the wire, queue limits and infos, the CLI flags."""

from __future__ import annotations

import pytest
from conveyor.v1 import admin_service_pb2

from client_sdk import QueueInfo, QueueLimits, TaskOptions, _convert, _queues, signature, task
from client_sdk.cli import parser, queue_json


def test_key_options_become_taskspec_fields() -> None:
    options = TaskOptions(queue="q", idempotency_key="i", idempotency_ttl=90.5, unique_key="u",
                          concurrency_key="c", concurrency_limit=3)

    spec = _convert.task_spec("n", b"", "application/json", options)

    assert (spec.idempotency_key, spec.unique_key, spec.concurrency_key, spec.concurrency_limit) == ("i", "u", "c", 3)
    assert spec.idempotency_ttl.ToMilliseconds() == 90_500


def test_without_keys_nothing_is_set() -> None:
    spec = _convert.signature_spec(signature("n"))

    assert not spec.HasField("idempotency_ttl")
    assert (spec.idempotency_key, spec.unique_key, spec.concurrency_key, spec.concurrency_limit) == ("", "", "", 0)


def test_the_decorator_takes_unique_and_concurrency_keys_and_signatures_take_all() -> None:
    @task(unique_key="only-one", concurrency_key="c", concurrency_limit=2, idempotency_key="daily",
          idempotency_ttl=86_400)
    def work() -> None: ...

    sig = work.s().with_options(idempotency_key="k")

    assert (sig.options.unique_key, sig.options.concurrency_key, sig.options.concurrency_limit) == ("only-one", "c", 2)
    assert (work.options.idempotency_key, work.options.idempotency_ttl) == ("daily", 86_400)
    assert sig.options.idempotency_key == "k"


@pytest.mark.parametrize("overrides", [
    {"idempotency_key": ""}, {"unique_key": 5}, {"concurrency_limit": 0}, {"concurrency_limit": 10_001},
    {"idempotency_ttl": 0},
])
def test_bad_key_options_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        TaskOptions(**overrides)  # type: ignore[arg-type]


@pytest.mark.parametrize("limits", [{"max_running": -1}, {"rate_per_second": float("inf")}, {"rate_burst": 1.5}])
def test_bad_queue_limits_are_refused(limits: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        QueueLimits(**limits)  # type: ignore[arg-type]


def test_a_queue_message_becomes_a_queue_info() -> None:
    limits = admin_service_pb2.QueueLimits(max_running=2, rate_per_second=1.5)
    message = admin_service_pb2.Queue(name="q", limits=limits, queued=3, running=2, failed=1)

    info = _queues.queue_info(message)

    assert info == QueueInfo(name="q", limits=QueueLimits(max_running=2, rate_per_second=1.5), queued=3, running=2,
                             failed=1)
    assert queue_json(info)["limits"] == {"max_running": 2, "rate_per_second": 1.5, "rate_burst": 0}
    request = _queues.limits_request("q", info.limits)
    assert (request.queue, request.limits.max_running, request.limits.rate_per_second) == ("q", 2, 1.5)


def test_the_cli_parses_key_flags_and_queue_commands() -> None:
    args = parser().parse_args(["enqueue", "n", "--idempotency-key", "i", "--unique-key", "u",
                                "--concurrency-key", "c", "--concurrency-limit", "4", "--idempotency-ttl", "60"])
    assert (args.idempotency_key, args.unique_key, args.concurrency_key, args.concurrency_limit,
            args.idempotency_ttl) == ("i", "u", "c", 4, 60.0)
    limits = parser().parse_args(["queue", "limits", "q", "--max-running", "3", "--rate", "2.5"])
    assert (limits.action, limits.queue, limits.max_running, limits.rate, limits.burst) == ("limits", "q", 3, 2.5, 0)
    assert parser().parse_args(["queue", "list"]).action == "list"
