"""Channel settings: message size, keepalive, and retries only where a repeat is harmless."""

from __future__ import annotations

import json

from client_sdk._channel import MAX_MESSAGE_BYTES, channel_options, service_config


def test_only_idempotent_reads_are_retried_and_only_on_unavailable() -> None:
    config = json.loads(service_config())
    (method_config,) = config["methodConfig"]
    names = {(n["service"], n["method"]) for n in method_config["name"]}
    assert names == {("conveyor.v1.TaskService", m) for m in ("GetTask", "ListTasks", "WaitTask")}
    policy = method_config["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert policy["maxAttempts"] >= 2


def test_submissions_and_cancels_are_never_retried() -> None:
    text = service_config()
    for method in ("EnqueueTask", "BatchEnqueueTasks", "CancelTask"):
        assert method not in text


def test_channel_allows_64_mib_messages_and_keeps_long_streams_alive() -> None:
    options = dict(channel_options())
    assert MAX_MESSAGE_BYTES == 64 * 1024 * 1024
    assert options["grpc.max_send_message_length"] == MAX_MESSAGE_BYTES
    assert options["grpc.max_receive_message_length"] == MAX_MESSAGE_BYTES
    assert 10_000 <= options["grpc.keepalive_time_ms"] <= 300_000
    assert options["grpc.keepalive_timeout_ms"] < options["grpc.keepalive_time_ms"]
    assert options["grpc.service_config"] == service_config()


def test_extra_options_override_the_defaults_by_name() -> None:
    options = channel_options([("grpc.keepalive_time_ms", 5000), ("grpc.lb_policy_name", "round_robin")])
    assert dict(options)["grpc.keepalive_time_ms"] == 5000
    assert dict(options)["grpc.lb_policy_name"] == "round_robin"
    assert len([k for k, _ in options if k == "grpc.keepalive_time_ms"]) == 1
