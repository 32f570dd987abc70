"""fail.lua: retries with backoff or retry_after, dead letters, cancel requests, stale tokens."""

from __future__ import annotations

from broker_service.domain import FailOutcome, Failure, Lease, RetryPolicy, TaskError
from broker_service.store.store import Store
from tests.store.conftest import StoreHarness
from tests.store.helpers import event, redis_now_ms, without


def _failure(lease: Lease, *, retryable: bool = True, after: int = -1, tb: str = "Traceback...") -> Failure:
    return Failure(lease.ulid, lease.token, TaskError("ValueError", "bad input", tb, retryable), after)


def _fail(harness: StoreHarness, *failures: Failure, fraction: float = 0.0) -> list[FailOutcome]:
    return harness.run(harness.store.fail(harness.queue, list(failures), [fraction] * len(failures)))


def test_fail_schedules_a_retry_after_the_backoff(harness: StoreHarness) -> None:
    [lease] = harness.running(1, retry=RetryPolicy(max_attempts=3, initial_backoff_ms=5_000))
    before = redis_now_ms(harness.redis)

    assert _fail(harness, _failure(lease)) == [FailOutcome.RETRYING]

    after = redis_now_ms(harness.redis)
    dump = harness.dump()
    record = dump["tasks"][lease.ulid]
    assert dump["indexes"]["running"] == []
    assert dump["indexes"]["scheduled"] == [lease.ulid]
    assert before + 5_000 <= dump["scores"]["scheduled"][lease.ulid] == int(record["due"]) <= after + 5_000
    assert without(record) == {"state": "scheduled", "name": "tests.work", "b_init": "5000",
                               "attempt": "1", "token": "1", "worker": "w1", "reason": "retry",
                               "e_type": "ValueError", "e_msg": "bad input", "e_tb": "Traceback...",
                               "e_retry": "1"}
    assert dump["expires"][lease.ulid] == -1


def test_fail_backoff_grows_with_each_attempt_and_takes_jitter_off(harness: StoreHarness) -> None:
    retry = RetryPolicy(max_attempts=5, initial_backoff_ms=1_000, max_backoff_ms=3_000, multiplier=2.0, jitter=0.5)
    [lease] = harness.running(1, retry=retry)
    for attempt in (1, 2, 3):
        before = redis_now_ms(harness.redis)
        assert _fail(harness, _failure(lease), fraction=0.5) == [FailOutcome.RETRYING]
        due = int(harness.dump()["tasks"][lease.ulid]["due"])
        expected = retry.backoff_ms(attempt, 0.5)
        assert expected <= due - before <= expected + 50
        harness.redis.zadd(harness.store.queue_keys(harness.queue).scheduled, {lease.ulid: 0})
        assert harness.run(harness.store.promote(harness.queue, 10)) == 1
        [again] = harness.lease(1)
        lease = Lease(again.ulid, again.lease_token)
    assert [retry.backoff_ms(a, 0.5) for a in (1, 2, 3)] == [750, 1_500, 2_250]


def test_fail_with_retry_after_uses_exactly_that_delay(harness: StoreHarness) -> None:
    [lease] = harness.running(1, retry=RetryPolicy(initial_backoff_ms=600_000, jitter=1.0))
    before = redis_now_ms(harness.redis)

    assert _fail(harness, _failure(lease, after=2_500), fraction=0.9) == [FailOutcome.RETRYING]

    due = harness.dump()["scores"]["scheduled"][lease.ulid]
    assert before + 2_500 <= due <= redis_now_ms(harness.redis) + 2_500


def test_fail_with_zero_delay_goes_straight_to_queued(harness: StoreHarness) -> None:
    [lease] = harness.running(1, priority=4)
    events = harness.events()

    assert _fail(harness, _failure(lease, after=0)) == [FailOutcome.RETRYING]

    dump = harness.dump()
    record = dump["tasks"][lease.ulid]
    assert dump["indexes"]["scheduled"] == []
    assert record["state"] == "queued"
    assert dump["ready"][4] == [lease.ulid]
    assert events.take(1) == [event("queued", [lease.ulid])]


def test_fail_with_a_zero_backoff_policy_goes_straight_to_queued(harness: StoreHarness) -> None:
    [lease] = harness.running(1, retry=RetryPolicy(initial_backoff_ms=0))

    assert _fail(harness, _failure(lease)) == [FailOutcome.RETRYING]

    assert harness.dump()["indexes"]["queued"] == [lease.ulid]


def test_fail_non_retryable_goes_to_the_dead_letter_set(harness: StoreHarness) -> None:
    [lease] = harness.running(1, retry=RetryPolicy(max_attempts=10))
    events = harness.events()

    assert _fail(harness, _failure(lease, retryable=False)) == [FailOutcome.DEAD]

    dump = harness.dump()
    record = dump["tasks"][lease.ulid]
    assert (record["state"], record["reason"], record["e_retry"]) == ("failed", "non_retryable", "0")
    assert dump["indexes"]["running"] == []
    assert dump["indexes"]["failed"] == [lease.ulid]
    assert dump["scores"]["failed"][lease.ulid] == int(record["finished"]) + 3_600_000
    assert dump["expires"][lease.ulid] == int(record["finished"]) + 3_600_000
    assert events.take(1) == [event("failed", [lease.ulid])]


def test_fail_of_the_last_attempt_goes_to_the_dead_letter_set(harness: StoreHarness) -> None:
    [lease] = harness.running(1, retry=RetryPolicy(max_attempts=1))

    assert _fail(harness, _failure(lease)) == [FailOutcome.DEAD]

    record = harness.run(harness.store.get(harness.queue, lease.ulid))
    assert record.state.label == "failed"
    assert record.reason == "attempts_exhausted"
    assert record.error is not None and (record.error.type, record.error.message) == ("ValueError", "bad input")


def test_dead_letter_set_is_trimmed_to_its_maximum(harness: StoreHarness) -> None:
    store = Store(harness.store.redis, dead_letter_ttl_ms=3_600_000, dead_letter_max=2)
    leases = harness.running(3, retry=RetryPolicy(max_attempts=1))
    for lease in leases:
        outcome = harness.run(store.fail(harness.queue, [_failure(lease)], [0.0]))
        assert outcome == [FailOutcome.DEAD]

    dump = harness.dump()
    assert dump["indexes"]["failed"] == [leases[1].ulid, leases[2].ulid]
    assert leases[0].ulid not in dump["tasks"]


def test_fail_of_a_task_with_a_cancel_request_ends_cancelled(harness: StoreHarness) -> None:
    [lease] = harness.running(1, result_ttl_ms=50_000)
    harness.run(harness.store.cancel(harness.queue, lease.ulid, "user asked"))
    events = harness.events()

    assert _fail(harness, _failure(lease)) == [FailOutcome.CANCELLED]

    dump = harness.dump()
    record = dump["tasks"][lease.ulid]
    assert (record["state"], record["reason"], "cancel" in record) == ("cancelled", "user asked", False)
    assert dump["indexes"]["cancelled"] == [lease.ulid]
    assert dump["indexes"]["running"] == []
    assert dump["expires"][lease.ulid] == int(record["finished"]) + 50_000
    assert events.take(1) == [event("cancelled", [lease.ulid])]


def test_fail_with_a_stale_token_changes_nothing(harness: StoreHarness) -> None:
    [lease] = harness.running(1)
    before = harness.dump()

    assert _fail(harness, _failure(Lease(lease.ulid, lease.token + 5))) == [FailOutcome.STALE]

    assert harness.dump() == before


def test_fail_without_message_or_traceback_leaves_no_stale_error_fields(harness: StoreHarness) -> None:
    [lease] = harness.running(1)
    _fail(harness, _failure(lease, after=0))
    [again] = harness.lease(1)

    failure = Failure(again.ulid, again.lease_token, TaskError("KeyError", "", "", True), 0)
    assert _fail(harness, failure) == [FailOutcome.RETRYING]

    record = harness.dump()["tasks"][lease.ulid]
    assert record["e_type"] == "KeyError"
    assert "e_msg" not in record and "e_tb" not in record


def test_fail_of_a_batch_answers_per_item_and_publishes_per_kind(harness: StoreHarness) -> None:
    retrying, dead, cancelled = harness.running(3, retry=RetryPolicy(max_attempts=2))
    harness.run(harness.store.cancel(harness.queue, cancelled.ulid, ""))
    events = harness.events()

    outcomes = _fail(harness, _failure(retrying), _failure(dead, retryable=False), _failure(cancelled),
                     _failure(Lease(retrying.ulid, 0)))

    assert outcomes == [FailOutcome.RETRYING, FailOutcome.DEAD, FailOutcome.CANCELLED, FailOutcome.STALE]
    assert events.take(3) == [event("scheduled", [retrying.ulid]), event("failed", [dead.ulid]),
                              event("cancelled", [cancelled.ulid])]


def test_fail_with_a_huge_backoff_growth_stays_at_the_cap(harness: StoreHarness) -> None:
    [lease] = harness.running(1, retry=RetryPolicy(max_attempts=1000, initial_backoff_ms=1, max_backoff_ms=9_000,
                                                   multiplier=1e300))
    keys = harness.store.queue_keys(harness.queue)
    harness.redis.hset(keys.task(lease.ulid), "attempt", 500)  # multiplier ** 499 is inf
    before = redis_now_ms(harness.redis)

    assert _fail(harness, _failure(lease)) == [FailOutcome.RETRYING]

    assert before + 9_000 <= harness.dump()["scores"]["scheduled"][lease.ulid] <= redis_now_ms(harness.redis) + 9_000
