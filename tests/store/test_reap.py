"""reap.lua: expired leases go back to queued, timed-out attempts fail, exhausted tasks die."""

from __future__ import annotations

from broker_service.domain import Lease, RetryPolicy, TaskState
from broker_service.store.store import Store
from tests.store.conftest import StoreHarness
from tests.store.helpers import event, redis_now_ms


def _expire_lease(harness: StoreHarness, lease: Lease) -> None:
    """Moves the lease deadline into the past (the score the reaper looks at)."""
    harness.redis.zadd(harness.store.queue_keys(harness.queue).running, {lease.ulid: 1})


def _exceed_timeout(harness: StoreHarness, lease: Lease) -> None:
    keys = harness.store.queue_keys(harness.queue)
    harness.redis.hset(keys.task(lease.ulid), "exec_dl", 1)
    harness.redis.zadd(keys.running, {lease.ulid: 1})


def test_reap_requeues_a_delayed_task_at_its_due_time_not_its_creation(harness: StoreHarness) -> None:
    leased = harness.leased_after_delay(30)
    _expire_lease(harness, Lease(leased.ulid, leased.lease_token))

    assert harness.run(harness.store.reap(harness.queue, 100, 0.5)).requeued == [leased.ulid]

    record = harness.dump()["tasks"][leased.ulid]
    assert int(record["due"]) == int(record["created"]) + 30
    assert harness.dump()["indexes"]["queued"] == [leased.ulid]


def test_reap_requeues_a_task_whose_lease_expired_in_its_old_place(harness: StoreHarness) -> None:
    [lease] = harness.running(1, priority=2)
    [waiting] = harness.submit(1, priority=2)
    _expire_lease(harness, lease)
    events = harness.events()

    result = harness.run(harness.store.reap(harness.queue, 100, 0.5))

    assert (result.requeued, result.timed_out, result.dead, result.cancelled) == ([lease.ulid], [], [], [])
    dump = harness.dump()
    record = dump["tasks"][lease.ulid]
    assert (record["state"], record["reason"], record["attempt"]) == ("queued", "lease_expired", "1")
    assert dump["indexes"]["running"] == []
    assert dump["indexes"]["queued"] == [lease.ulid, waiting]
    assert dump["ready"][2] == [lease.ulid, waiting]  # at the head of its priority's list
    assert events.take(1) == [event("queued", [lease.ulid])]


def test_reap_leaves_live_leases_alone(harness: StoreHarness) -> None:
    harness.running(2)
    before = harness.dump()

    result = harness.run(harness.store.reap(harness.queue, 100, 0.5))

    assert (result.requeued, result.timed_out, result.dead, result.cancelled) == ([], [], [], [])
    assert harness.dump() == before


def test_reap_of_an_expired_lease_on_the_last_attempt_dead_letters_it(harness: StoreHarness) -> None:
    [lease] = harness.running(1, retry=RetryPolicy(max_attempts=1), lease_ms=1_000)
    _expire_lease(harness, lease)
    events = harness.events()

    result = harness.run(harness.store.reap(harness.queue, 100, 0.5))

    assert result.dead == [lease.ulid] and result.requeued == []
    dump = harness.dump()
    record = dump["tasks"][lease.ulid]
    assert (record["state"], record["reason"], record["e_type"]) == ("failed", "lease_expired", "LeaseExpired")
    assert dump["indexes"]["failed"] == [lease.ulid]
    assert dump["expires"][lease.ulid] == int(record["finished"]) + 3_600_000
    assert events.take(1) == [event("failed", [lease.ulid])]


def test_reap_fails_an_attempt_past_its_execution_timeout_and_retries_it(harness: StoreHarness) -> None:
    [lease] = harness.running(1, timeout_ms=5_000, retry=RetryPolicy(max_attempts=3, initial_backoff_ms=2_000))
    _exceed_timeout(harness, lease)
    before = redis_now_ms(harness.redis)

    result = harness.run(harness.store.reap(harness.queue, 100, 0.0))

    assert result.timed_out == [lease.ulid]
    dump = harness.dump()
    record = dump["tasks"][lease.ulid]
    assert (record["state"], record["reason"], record["e_type"], record["e_retry"]) == (
        "scheduled", "execution_timeout", "TimeoutError", "1")
    assert "5000 ms" in record["e_msg"]
    assert dump["indexes"]["scheduled"] == [lease.ulid]
    assert before + 2_000 <= dump["scores"]["scheduled"][lease.ulid] <= redis_now_ms(harness.redis) + 2_000


def test_reap_of_a_timeout_on_the_last_attempt_dead_letters_it(harness: StoreHarness) -> None:
    [lease] = harness.running(1, timeout_ms=100, retry=RetryPolicy(max_attempts=1))
    _exceed_timeout(harness, lease)

    result = harness.run(harness.store.reap(harness.queue, 100, 0.0))

    assert result.dead == [lease.ulid] and result.timed_out == []
    record = harness.run(harness.store.get(harness.queue, lease.ulid))
    assert record.state is TaskState.FAILED
    assert record.error is not None and record.error.type == "TimeoutError"


def test_reap_cancels_a_task_with_a_cancel_request(harness: StoreHarness) -> None:
    [lease] = harness.running(1)
    harness.run(harness.store.cancel(harness.queue, lease.ulid, "stop it"))
    _expire_lease(harness, lease)

    result = harness.run(harness.store.reap(harness.queue, 100, 0.0))

    assert result.cancelled == [lease.ulid]
    dump = harness.dump()
    assert (dump["tasks"][lease.ulid]["state"], dump["tasks"][lease.ulid]["reason"]) == ("cancelled", "stop it")
    assert dump["indexes"]["cancelled"] == [lease.ulid]


def test_reap_handles_at_most_limit_tasks(harness: StoreHarness) -> None:
    leases = harness.running(5)
    for lease in leases:
        _expire_lease(harness, lease)

    assert len(harness.run(harness.store.reap(harness.queue, 3, 0.0)).requeued) == 3
    assert len(harness.run(harness.store.reap(harness.queue, 3, 0.0)).requeued) == 2


def test_reap_spreads_jitter_over_the_batch(harness: StoreHarness) -> None:
    leases = harness.running(4, timeout_ms=1_000,
                            retry=RetryPolicy(initial_backoff_ms=100_000, max_backoff_ms=100_000, jitter=1.0))
    for lease in leases:
        _exceed_timeout(harness, lease)

    harness.run(harness.store.reap(harness.queue, 100, 0.25))

    dues = [int(harness.dump()["tasks"][lease.ulid]["due"]) for lease in leases]
    assert len(set(dues)) == 4


def test_reap_then_a_stale_completion_is_refused(harness: StoreHarness) -> None:
    from broker_service.domain import Completion

    [lease] = harness.running(1)
    _expire_lease(harness, lease)
    harness.run(harness.store.reap(harness.queue, 100, 0.0))
    [again] = harness.lease(1, worker="w2")

    assert harness.run(harness.store.complete(harness.queue, [Completion(lease.ulid, lease.token, b"", "")])) == [None]
    assert again.lease_token > lease.token
    assert again.attempt == 2


def test_reap_drops_running_entries_whose_record_is_gone(harness: StoreHarness) -> None:
    [lease] = harness.running(1)
    keys = harness.store.queue_keys(harness.queue)
    harness.redis.delete(keys.task(lease.ulid))
    _expire_lease(harness, lease)

    result = harness.run(harness.store.reap(harness.queue, 100, 0.0))

    assert (result.requeued, result.dead) == ([], [])
    assert harness.dump()["indexes"]["running"] == []


def test_reap_trims_the_dead_letter_set(harness: StoreHarness) -> None:
    store = Store(harness.store.redis, dead_letter_ttl_ms=3_600_000, dead_letter_max=1)
    leases = harness.running(2, retry=RetryPolicy(max_attempts=1))
    for lease in leases:
        _expire_lease(harness, lease)

    result = harness.run(store.reap(harness.queue, 100, 0.0))

    assert sorted(result.dead) == sorted(lease.ulid for lease in leases)
    dump = harness.dump()
    assert len(dump["indexes"]["failed"]) == 1
    assert len(dump["tasks"]) == 1
