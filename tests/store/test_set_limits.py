"""set_limits.lua: a queue's limits are replaced as a whole, cleared by zeros, and wake dispatchers."""

from __future__ import annotations

from broker_service.domain import QueueLimits, TaskState
from tests.store.conftest import StoreHarness


def _limits(harness: StoreHarness) -> dict[str, str]:
    raw = harness.redis.hgetall(harness.store.queue_keys(harness.queue).limits)
    return {k.decode(): v.decode() for k, v in raw.items()}  # type: ignore[union-attr]


def test_set_limits_stores_what_is_set_and_wakes_dispatchers(harness: StoreHarness) -> None:
    events = harness.events()

    harness.run(harness.store.set_limits(harness.queue, QueueLimits(max_running=4, rate_per_second=2.5,
                                                                    rate_burst=10)))

    assert _limits(harness) == {"max_running": "4", "rate": "2.5", "burst": "10"}
    assert events.take(1) == ["wake"]


def test_set_limits_replaces_the_previous_ones(harness: StoreHarness) -> None:
    harness.run(harness.store.set_limits(harness.queue, QueueLimits(max_running=4, rate_per_second=2,
                                                                    rate_burst=10)))

    harness.run(harness.store.set_limits(harness.queue, QueueLimits(rate_per_second=7)))

    assert _limits(harness) == {"rate": "7.0"}


def test_set_limits_with_zeros_clears_them_and_ignores_a_burst_without_rate(harness: StoreHarness) -> None:
    harness.run(harness.store.set_limits(harness.queue, QueueLimits(max_running=4)))

    harness.run(harness.store.set_limits(harness.queue, QueueLimits(rate_burst=10)))

    assert harness.redis.exists(harness.store.queue_keys(harness.queue).limits) == 0


def test_queue_info_reads_limits_and_counts_held_tasks_as_their_own(harness: StoreHarness) -> None:
    harness.run(harness.store.set_limits(harness.queue, QueueLimits(max_running=9)))
    harness.submit(3, concurrency_key="k", concurrency_limit=1)
    harness.submit(1, delay_ms=60_000)
    harness.lease(5)

    info = harness.run(harness.store.queue_info(harness.queue))

    assert info.limits == QueueLimits(max_running=9)
    assert (info.counts[TaskState.RUNNING], info.counts[TaskState.QUEUED], info.held) == (1, 0, 2)
    assert info.counts[TaskState.SCHEDULED] == 1
