"""Every script that ends a workflow node adds it to its queue's outbox in the same step."""

from __future__ import annotations

from typing import Any

from broker_service.domain import Completion, Failure, TaskError
from tests.store.conftest import StoreHarness
from tests.store.helpers import event
from tests.store.workflow_helpers import graph, run_node


def _outbox(harness: StoreHarness) -> list[str]:
    members: Any = harness.redis.zrange(harness.store.queue_keys(harness.queue).wf_outbox, 0, -1)
    return [m.decode() for m in members]


def test_completing_a_node_puts_it_in_the_outbox_and_announces_it(harness: StoreHarness) -> None:
    _, ulids = graph(harness, {"a": ()})
    lease = run_node(harness, ulids["a"])
    events = harness.events()

    harness.run(harness.store.complete(harness.queue, [Completion(lease.ulid, lease.token, b"1", "")]))

    assert _outbox(harness) == [lease.ulid]
    assert events.take(2) == [event("succeeded", [lease.ulid]), event("workflow", [lease.ulid])]


def test_a_dead_lettered_node_is_in_the_outbox_a_retried_one_is_not(harness: StoreHarness) -> None:
    _, ulids = graph(harness, {"a": (), "b": ()})
    first = run_node(harness, ulids["a"])
    harness.run(harness.store.fail(harness.queue, [Failure(first.ulid, first.token, TaskError("E", "m"))], [0.0]))
    assert _outbox(harness) == []

    second = run_node(harness, ulids["b"])
    harness.run(harness.store.fail(harness.queue, [Failure(second.ulid, second.token,
                                                             TaskError("E", "m", retryable=False))], [0.0]))

    assert _outbox(harness) == [second.ulid]


def test_cancelling_a_pending_node_ends_it_and_puts_it_in_the_outbox(harness: StoreHarness) -> None:
    _, ulids = graph(harness, {"a": (), "b": ("a",)})

    harness.run(harness.store.cancel(harness.queue, ulids["b"], "parent 'a' failed"))

    dump = harness.dump()
    assert dump["indexes"]["pending"] == [ulids["a"]]
    assert dump["indexes"]["cancelled"] == [ulids["b"]]
    assert _outbox(harness) == [ulids["b"]]


def test_plain_tasks_never_touch_the_outbox(harness: StoreHarness) -> None:
    [lease] = harness.running(1)

    harness.run(harness.store.complete(harness.queue, [Completion(lease.ulid, lease.token, b"1", "")]))

    assert _outbox(harness) == []
