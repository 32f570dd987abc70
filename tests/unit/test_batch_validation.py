"""The broker's checks of a batch of submissions, and the ids it gives them (no sockets)."""

from __future__ import annotations

import dataclasses
import time

import pytest
from conveyor.v1 import task_pb2
from conveyor.v1 import task_service_pb2 as ts
from google.protobuf import duration_pb2

from broker_service.api.errors import ApiError
from broker_service.api.validate import Limits, submitted_task, task_spec, task_specs, template_tasks
from broker_service.domain import _crockford, _UlidFactory, new_ulid, parse_task_id

LIMITS = Limits(max_payload_bytes=64, max_batch_size=100, lease_ms=30_000, result_ttl_ms=60_000, max_attempts=3)
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _spec(payload: bytes = b"{}", **fields: object) -> ts.TaskSpec:
    return ts.TaskSpec(queue="q", name="tests.work", payload=payload, **fields)  # type: ignore[arg-type]


def test_specs_differing_only_in_payload_keep_each_payload_and_get_their_own_ulids() -> None:
    specs = [_spec(b"[%d]" % i, priority=3, lease_duration=duration_pb2.Duration(seconds=5)) for i in range(50)]

    tasks = task_specs(specs, "tasks", LIMITS, now_ms=0)

    assert [t.payload for t in tasks] == [b"[%d]" % i for i in range(50)]
    assert len({t.ulid for t in tasks}) == 50 and [t.ulid for t in tasks] == sorted(t.ulid for t in tasks)
    alone = task_spec(specs[7], "task", LIMITS, now_ms=0)
    assert dataclasses.replace(tasks[7], ulid=alone.ulid) == alone  # same as checking each on its own
    assert {(t.priority, t.lease_ms) for t in tasks} == {(3, 5_000)}


def test_specs_differing_in_anything_else_are_each_checked_as_given() -> None:
    specs = [_spec(), _spec(priority=9), _spec(retry_policy=task_pb2.RetryPolicy(max_attempts=7)), _spec()]

    tasks = task_specs(specs, "tasks", LIMITS, now_ms=0)

    assert [t.priority for t in tasks] == [0, 9, 0, 0]
    assert [t.retry.max_attempts for t in tasks] == [3, 3, 7, 3]


@pytest.mark.parametrize(("bad", "field"), [
    (_spec(b"x" * 65), "tasks[2].payload"),  # the shape seen before, a payload over the limit
    (_spec(priority=10), "tasks[2].priority"),
    (_spec(lease_duration=duration_pb2.Duration(seconds=-1)), "tasks[2].lease_duration"),
    (ts.TaskSpec(queue="q", name="has space"), "tasks[2].name"),
])
def test_a_bad_spec_after_good_ones_of_the_same_shape_is_named_by_its_index(bad: ts.TaskSpec, field: str) -> None:
    with pytest.raises(ApiError) as caught:
        task_specs([_spec(), _spec(b"[1]"), bad], "tasks", LIMITS, now_ms=0)

    assert caught.value.metadata["field"] == field


def test_ulids_are_crockford_base32_of_the_time_then_randomness_and_sort_as_made() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_ulid() for _ in range(5_000)]
    after = time.time_ns() // 1_000_000

    assert all(len(u) == 26 and set(u) <= set(CROCKFORD) for u in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    ms = [int("".join(format(CROCKFORD.index(c), "05b") for c in u[:10]), 2) for u in (ids[0], ids[-1])]
    assert before <= ms[0] <= ms[1] <= after
    assert parse_task_id(f"{ids[0]}@q") == (ids[0], "q")


def test_a_template_gives_every_field_but_the_payload_to_one_task_per_payload() -> None:
    template = _spec(b"", priority=3, lease_duration=duration_pb2.Duration(seconds=5))
    payloads = [b"[%d]" % i for i in range(50)]

    tasks = template_tasks(template, payloads, LIMITS, now_ms=0)

    assert [t.payload for t in tasks] == payloads
    assert len({t.ulid for t in tasks}) == 50 and [t.ulid for t in tasks] == sorted(t.ulid for t in tasks)
    alone = task_spec(_spec(b"[7]", priority=3, lease_duration=duration_pb2.Duration(seconds=5)), "task",
                      LIMITS, now_ms=0)
    assert dataclasses.replace(tasks[7], ulid=alone.ulid) == alone  # as if sent as a TaskSpec


@pytest.mark.parametrize(("template", "payloads", "field"), [
    (_spec(b"{}"), [b"[1]"], "template.payload"),
    (_spec(b"", priority=10), [b"[1]"], "template.priority"),
    (ts.TaskSpec(queue="q", name="has space"), [b"[1]"], "template.name"),
    (_spec(b""), [b"[1]", b"[2]", b"x" * 65], "payloads[2]"),
])
def test_a_bad_template_or_payload_is_named(template: ts.TaskSpec, payloads: list[bytes], field: str) -> None:
    with pytest.raises(ApiError) as caught:
        template_tasks(template, payloads, LIMITS, now_ms=0)

    assert caught.value.metadata["field"] == field


def test_ulids_made_many_at_once_are_encoded_and_ordered_like_single_ones() -> None:
    factory = _UlidFactory()
    ids = [*factory.many(3_000), factory(), *factory.many(2)]

    assert all(len(u) == 26 and set(u) <= set(CROCKFORD) for u in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # Counting up carries from the low 40 random bits into the upper ones: same digits as one at a time.
    ms = time.time_ns() // 1_000_000 + 60_000  # ahead of the clock, so `many` counts on from it
    factory = _UlidFactory()
    factory._last_ms, factory._last_rand, factory._prefix = ms, (5 << 40) - 3, _crockford(ms, 5)
    assert factory.many(5) == [_crockford(ms, 5) + _crockford((5 << 40) - 2 + i, 8) for i in range(5)]


def test_a_submit_like_one_checked_before_is_checked_by_its_payload_alone() -> None:
    first = submitted_task(_spec(b"[1]", priority=4), "submit", LIMITS, now_ms=0)
    second = submitted_task(_spec(b"[2]", priority=4), "submit", LIMITS, now_ms=0)
    other = submitted_task(_spec(b"[3]", priority=5), "submit", LIMITS, now_ms=0)

    assert (second.priority, second.payload) == (4, b"[2]") and second.ulid > first.ulid
    assert dataclasses.replace(second, ulid=first.ulid, payload=first.payload) == first
    assert other.priority == 5
    with pytest.raises(ApiError) as caught:
        submitted_task(_spec(b"x" * 65, priority=4), "submit_and_wait.task", LIMITS, now_ms=0)
    assert caught.value.metadata["field"] == "submit_and_wait.task.payload"
    # What a spec means depends on the broker's limits too (its defaults): never mixed up.
    longer = dataclasses.replace(LIMITS, lease_ms=90_000)
    assert submitted_task(_spec(b"[4]", priority=4), "submit", longer, now_ms=0).lease_ms == 90_000
