"""Locks and limits across the scripts: idempotency and unique keys (enqueue and every end of a
task), concurrency keys (lease holds back, every exit from running lets one go), queue caps."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from broker_service.domain import Completion, Failure, Lease, QueueLimits, RetryPolicy, TaskError, TaskState
from tests.store.conftest import StoreHarness
from tests.store.helpers import event, redis_now_ms


def _keys(harness: StoreHarness) -> Any:
    return harness.store.queue_keys(harness.queue)


def _get(harness: StoreHarness, key: str) -> str | None:
    value: Any = harness.redis.get(key)
    return None if value is None else value.decode()


def _held(harness: StoreHarness, ckey: str) -> tuple[list[str], list[str]]:
    """(the queue's held set, the key's held set), in order."""
    keys = _keys(harness)
    queue_wide: Any = harness.redis.zrange(keys.held, 0, -1)
    per_key: Any = harness.redis.zrange(keys.held_prefix + ckey, 0, -1)
    return [m.decode() for m in queue_wide], [m.decode() for m in per_key]


def _running_of(harness: StoreHarness, ckey: str) -> set[str]:
    members: Any = harness.redis.smembers(_keys(harness).conc_prefix + ckey)
    return {m.decode() for m in members}


def _done(lease: Lease) -> Completion:
    return Completion(lease.ulid, lease.token, b"", "")


def _set_limits(harness: StoreHarness, **limits: Any) -> None:
    harness.run(harness.store.set_limits(harness.queue, QueueLimits(**limits)))


# --- enqueue: idempotency keys ------------------------------------------------------------------


def test_an_idempotency_key_answers_the_first_task_and_stores_nothing_more(harness: StoreHarness) -> None:
    first = harness.task(idempotency_key="order-7", idempotency_ttl_ms=60_000)
    [stored] = harness.enqueue(first)
    before = harness.dump()

    [again] = harness.enqueue(harness.task(idempotency_key="order-7", delay_ms=60_000))

    assert (stored.ulid, stored.state, stored.duplicate) == (first.ulid, TaskState.QUEUED, False)
    assert (again.ulid, again.state, again.duplicate, again.duplicate_kind) == (
        first.ulid, TaskState.QUEUED, True, "idempotency")
    assert harness.dump() == before
    key = _keys(harness).idem_prefix + "order-7"
    assert _get(harness, key) == first.ulid
    assert 59_000 < int(harness.redis.pttl(key)) <= 60_000


def test_a_duplicate_answers_the_current_state_of_the_original(harness: StoreHarness) -> None:
    first = harness.task(idempotency_key="k")
    harness.enqueue(first)
    [lease] = harness.lease(1)
    harness.run(harness.store.complete(harness.queue, [_done(Lease(lease.ulid, lease.lease_token))]))

    [again] = harness.enqueue(harness.task(idempotency_key="k"))

    assert (again.ulid, again.state, again.duplicate) == (first.ulid, TaskState.SUCCEEDED, True)


def test_the_second_of_two_tasks_with_one_idempotency_key_in_a_batch_is_a_duplicate(harness: StoreHarness) -> None:
    a, b, c = harness.task(idempotency_key="same"), harness.task(idempotency_key="same"), harness.task()

    results = harness.enqueue(a, b, c)

    assert [(r.ulid, r.duplicate) for r in results] == [(a.ulid, False), (a.ulid, True), (c.ulid, False)]
    assert sorted(harness.dump()["tasks"]) == sorted([a.ulid, c.ulid])


def test_an_idempotency_key_outliving_its_record_still_answers_the_original_id(harness: StoreHarness) -> None:
    first = harness.task(idempotency_key="k")
    harness.enqueue(first)
    harness.drop_record(first.ulid)

    [again] = harness.enqueue(harness.task(idempotency_key="k"))

    assert (again.ulid, again.state, again.duplicate) == (first.ulid, None, True)


def test_an_expired_idempotency_key_lets_a_new_task_in(harness: StoreHarness) -> None:
    harness.enqueue(harness.task(idempotency_key="k", idempotency_ttl_ms=20))
    time.sleep(0.05)
    second = harness.task(idempotency_key="k")

    [result] = harness.enqueue(second)

    assert (result.ulid, result.duplicate) == (second.ulid, False)


def test_a_retried_enqueue_of_the_same_ulid_is_not_a_duplicate(harness: StoreHarness) -> None:
    task = harness.task(idempotency_key="k", unique_key="u")
    harness.enqueue(task)

    [again] = harness.enqueue(task)

    assert (again.ulid, again.state, again.duplicate) == (task.ulid, TaskState.QUEUED, False)


# --- enqueue and the scripts that end a task: unique keys -----------------------------------------


def test_a_unique_key_answers_its_waiting_holder(harness: StoreHarness) -> None:
    first = harness.task(unique_key="report", delay_ms=60_000)
    harness.enqueue(first)

    [again] = harness.enqueue(harness.task(unique_key="report"))

    assert (again.ulid, again.state, again.duplicate, again.duplicate_kind) == (
        first.ulid, TaskState.SCHEDULED, True, "unique")
    assert _get(harness, _keys(harness).uniq_prefix + "report") == first.ulid
    assert list(harness.dump()["tasks"]) == [first.ulid]


def test_a_unique_key_is_kept_while_running_and_by_retries_and_released_at_the_end(harness: StoreHarness) -> None:
    [lease] = harness.running(1, unique_key="u", retry=RetryPolicy(max_attempts=2, initial_backoff_ms=0))
    key = _keys(harness).uniq_prefix + "u"
    assert harness.enqueue(harness.task(unique_key="u"))[0].ulid == lease.ulid

    harness.run(harness.store.fail(harness.queue, [Failure(lease.ulid, lease.token, TaskError("E", "m"))], [0.5]))
    assert _get(harness, key) == lease.ulid  # retrying: still holds it
    [again] = harness.lease(1)
    harness.run(harness.store.fail(harness.queue, [Failure(lease.ulid, again.lease_token, TaskError("E", "m"))],
                                   [0.5]))

    assert harness.dump()["tasks"][lease.ulid]["state"] == "failed"
    assert _get(harness, key) is None
    newcomer = harness.task(unique_key="u")
    assert harness.enqueue(newcomer)[0].ulid == newcomer.ulid


def test_every_end_of_a_task_releases_its_unique_key(harness: StoreHarness) -> None:
    keys = _keys(harness)
    s = harness.store
    # complete, cancel (waiting), cancel_running, release with a cancel request, reap with one, expire
    [done] = harness.running(1, unique_key="a")
    harness.run(s.complete(harness.queue, [_done(done)]))
    [waiting] = harness.submit(1, unique_key="b", delay_ms=60_000)
    harness.run(s.cancel(harness.queue, waiting, "no"))
    [stopped] = harness.running(1, unique_key="c")
    harness.run(s.cancelled(harness.queue, [stopped]))
    [released] = harness.running(1, unique_key="d")
    harness.run(s.cancel(harness.queue, released.ulid, "stop"))
    harness.run(s.release(harness.queue, [released], "nack", started=True))
    [reaped] = harness.running(1, unique_key="e")
    harness.run(s.cancel(harness.queue, reaped.ulid, "stop"))
    harness.redis.zadd(keys.running, {reaped.ulid: 1})
    harness.run(s.reap(harness.queue, 10, 0.5))
    [late] = harness.submit(1, unique_key="f", start_timeout_ms=1, delay_ms=5)
    time.sleep(0.02)
    assert harness.run(s.expire(harness.queue, 10)) == [late]

    dump = harness.dump()
    ended = [done.ulid, waiting, stopped.ulid, released.ulid, reaped.ulid, late]
    assert [dump["tasks"][u]["state"] for u in ended] == [
        "succeeded", "cancelled", "cancelled", "cancelled", "cancelled", "expired"]
    assert [_get(harness, keys.uniq_prefix + k) for k in "abcdef"] == [None] * 6


def test_a_unique_key_whose_holder_ended_without_releasing_it_is_taken_over(harness: StoreHarness) -> None:
    [old] = harness.submit(1)
    harness.run(harness.store.cancel(harness.queue, old, ""))
    harness.redis.set(_keys(harness).uniq_prefix + "u", old)
    task = harness.task(unique_key="u")

    [result] = harness.enqueue(task)

    assert (result.ulid, result.duplicate) == (task.ulid, False)
    assert _get(harness, _keys(harness).uniq_prefix + "u") == task.ulid


def test_a_unique_duplicate_points_its_idempotency_key_at_the_holder(harness: StoreHarness) -> None:
    [holder] = harness.submit(1, unique_key="u")

    [dup] = harness.enqueue(harness.task(unique_key="u", idempotency_key="i"))

    assert (dup.ulid, dup.duplicate_kind) == (holder, "unique")
    assert _get(harness, _keys(harness).idem_prefix + "i") == holder


# --- lease and the exits from running: concurrency keys ---------------------------------------


def test_lease_holds_back_tasks_over_their_keys_limit_without_blocking_others(harness: StoreHarness) -> None:
    a1, a2, a3 = (harness.task(concurrency_key="cust-1", concurrency_limit=1) for _ in range(3))
    other = harness.task()
    harness.enqueue(a1, a2, a3, other)

    leased = harness.lease(10)

    assert [t.ulid for t in leased] == [a1.ulid, other.ulid]
    assert _held(harness, "cust-1") == ([a2.ulid, a3.ulid], [a2.ulid, a3.ulid])
    assert _running_of(harness, "cust-1") == {a1.ulid}
    dump = harness.dump()
    assert dump["indexes"]["queued"] == []
    assert [dump["tasks"][u]["state"] for u in (a2.ulid, a3.ulid)] == ["queued", "queued"]
    assert harness.lease(10) == []  # held tasks are not popped again


def test_a_key_with_a_limit_of_two_runs_two(harness: StoreHarness) -> None:
    ulids = harness.submit(4, concurrency_key="k", concurrency_limit=2)

    assert [t.ulid for t in harness.lease(10)] == ulids[:2]
    assert _held(harness, "k")[1] == ulids[2:]


def test_complete_lets_the_oldest_held_task_of_its_key_go_in_its_old_place(harness: StoreHarness) -> None:
    a1, a2, a3 = (harness.task(concurrency_key="k", concurrency_limit=1) for _ in range(3))
    harness.enqueue(a1, a2, a3)
    [running] = harness.lease(10)
    events = harness.events()

    harness.run(harness.store.complete(harness.queue, [_done(Lease(running.ulid, running.lease_token))]))

    dump = harness.dump()
    assert dump["indexes"]["queued"] == [a2.ulid]
    assert dump["ready"][0] == [a2.ulid]
    assert _held(harness, "k") == ([a3.ulid], [a3.ulid])
    assert _running_of(harness, "k") == set()
    assert events.take(2) == [event("succeeded", [a1.ulid]), event("queued", [a2.ulid])]
    assert [t.ulid for t in harness.lease(10)] == [a2.ulid]


def test_every_exit_from_running_frees_the_slot(harness: StoreHarness) -> None:
    s = harness.store
    q = harness.queue
    exits: list[Callable[[Lease], Awaitable[Any]]] = [
        lambda lease: s.fail(q, [Failure(lease.ulid, lease.token, TaskError("E", "m"))], [0.5]),
        lambda lease: s.cancelled(q, [lease]),
        lambda lease: s.release(q, [lease], "nack", True),
        lambda lease: s.reap(q, 10, 0.5),
    ]
    for n, leave in enumerate(exits):
        ckey = f"k{n}"
        [lease] = harness.running(1, concurrency_key=ckey, concurrency_limit=1)
        [waiting] = harness.submit(1, concurrency_key=ckey, concurrency_limit=1)
        assert harness.lease(1) == [] and _held(harness, ckey)[1] == [waiting]
        harness.redis.zadd(_keys(harness).running, {lease.ulid: 1})  # for reap: its lease expired

        harness.run(leave(lease))

        assert _running_of(harness, ckey) == set(), n
        assert _held(harness, ckey)[1] == [], n
        assert waiting in harness.dump()["indexes"]["queued"], n
        harness.redis.delete(_keys(harness).ready, *(_keys(harness).ready_list(p) for p in range(10)))


def test_cancel_of_a_held_task_takes_it_out_of_the_held_sets(harness: StoreHarness) -> None:
    [first, held] = harness.submit(2, concurrency_key="k", concurrency_limit=1)
    harness.lease(2)

    assert harness.run(harness.store.cancel(harness.queue, held, "no")) is TaskState.CANCELLED

    assert _held(harness, "k") == ([], [])
    assert harness.dump()["tasks"][held]["state"] == "cancelled"
    assert first in _running_of(harness, "k")


def test_cancel_of_a_queued_task_lets_a_held_one_of_its_key_go(harness: StoreHarness) -> None:
    [lease] = harness.running(1, concurrency_key="k", concurrency_limit=1)
    [held] = harness.submit(1, concurrency_key="k", concurrency_limit=1)
    harness.lease(1)
    harness.run(harness.store.complete(harness.queue, [_done(lease)]))  # `held` goes back to queued...
    [late] = harness.submit(1, concurrency_key="k", concurrency_limit=1)
    [running] = harness.lease(1)  # ...and runs; `late` waits in queued behind nothing
    assert running.ulid == held
    assert harness.lease(1) == []  # `late` is held now
    [extra] = harness.submit(1, concurrency_key="k", concurrency_limit=1)
    events = harness.events()

    harness.run(harness.store.cancel(harness.queue, extra, ""))

    assert harness.dump()["indexes"]["queued"] == [late]
    assert events.take(2) == [event("cancelled", [extra]), event("queued", [late])]


def test_a_held_task_keeps_its_start_deadline_and_expires_out_of_the_held_sets(harness: StoreHarness) -> None:
    harness.running(1, concurrency_key="k", concurrency_limit=1)
    # Long enough that the lease meets the task before its deadline, however slow the machine.
    [held] = harness.submit(1, concurrency_key="k", concurrency_limit=1, start_timeout_ms=500)
    harness.lease(1)
    assert harness.dump()["indexes"]["start_by"] == [held]
    assert _held(harness, "k")[0] == [held]
    time.sleep(0.55)

    assert harness.run(harness.store.expire(harness.queue, 10)) == [held]

    assert _held(harness, "k") == ([], [])


def test_listing_queued_tasks_shows_the_held_ones_after_the_others(harness: StoreHarness) -> None:
    ulids = harness.submit(3, concurrency_key="k", concurrency_limit=1)
    harness.lease(3)
    [plain] = harness.submit(1)

    first = harness.run(harness.store.list_tasks(harness.queue, TaskState.QUEUED, 10, ""))
    second = harness.run(harness.store.list_tasks(harness.queue, TaskState.QUEUED, 1, first.next_cursor))
    third = harness.run(harness.store.list_tasks(harness.queue, TaskState.QUEUED, 1, second.next_cursor))

    assert [t.ulid for t in first.tasks] == [plain]
    assert [t.ulid for t in second.tasks + third.tasks] == ulids[1:]
    assert third.next_cursor == ""


# --- lease: queue caps ---------------------------------------------------------------------------


def test_max_running_caps_each_lease_and_says_so(harness: StoreHarness) -> None:
    _set_limits(harness, max_running=2)
    harness.submit(4)

    first = harness.run(harness.store.lease(harness.queue, 10, "w"))
    second = harness.run(harness.store.lease(harness.queue, 10, "w"))

    assert (len(first.leased), first.slots_full, first.retry_ms) == (2, True, -1)
    assert (len(second.leased), second.slots_full) == (0, True)
    [lease] = [Lease(t.ulid, t.lease_token) for t in first.leased[:1]]
    harness.run(harness.store.complete(harness.queue, [_done(lease)]))
    third = harness.run(harness.store.lease(harness.queue, 10, "w"))
    assert (len(third.leased), third.slots_full) == (1, True)


def test_max_running_says_nothing_when_no_task_is_left(harness: StoreHarness) -> None:
    _set_limits(harness, max_running=2)
    harness.submit(2)

    batch = harness.run(harness.store.lease(harness.queue, 10, "w"))

    assert (len(batch.leased), batch.slots_full, batch.retry_ms) == (2, False, -1)


def test_the_rate_limit_spends_the_burst_then_answers_when_the_next_token_comes(harness: StoreHarness) -> None:
    _set_limits(harness, rate_per_second=10, rate_burst=3)
    harness.submit(10)
    before = redis_now_ms(harness.redis)

    first = harness.run(harness.store.lease(harness.queue, 10, "w"))
    second = harness.run(harness.store.lease(harness.queue, 10, "w"))

    assert (len(first.leased), first.slots_full) == (3, False)
    assert 90 <= first.retry_ms <= 100
    assert len(second.leased) == 0 and 0 < second.retry_ms <= 100
    bucket: Any = harness.redis.hgetall(_keys(harness).bucket)
    assert float(bucket[b"tokens"]) < 1
    assert int(bucket[b"ts"]) // 1000 >= before
    assert 0 < int(harness.redis.pttl(_keys(harness).bucket)) <= 1300
    time.sleep(second.retry_ms / 1000 + 0.01)
    assert len(harness.run(harness.store.lease(harness.queue, 10, "w")).leased) == 1


def test_the_rate_limit_without_waiting_tasks_answers_no_retry(harness: StoreHarness) -> None:
    _set_limits(harness, rate_per_second=1, rate_burst=1)
    harness.submit(1)

    batch = harness.run(harness.store.lease(harness.queue, 10, "w"))

    assert (len(batch.leased), batch.retry_ms) == (1, -1)


def test_the_janitor_reports_held_tasks_per_queue(harness: StoreHarness) -> None:
    from broker_service.loops.janitor import Janitor
    from broker_service.metrics import Metrics

    harness.run(harness.store.register_queues([harness.queue]))
    harness.submit(3, concurrency_key="k", concurrency_limit=1)
    harness.lease(3)
    metrics = Metrics()

    harness.run(Janitor(harness.store, metrics, interval=60).tick())

    assert metrics.registry.get_sample_value("conveyor_queue_held_tasks", {"queue": harness.queue}) == 2
