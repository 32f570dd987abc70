"""complete.lua: results are stored with their TTL; stale tokens are refused; repeats are harmless."""

from __future__ import annotations

import time

from broker_service.domain import Completion, Lease, TaskState
from tests.store.conftest import StoreHarness
from tests.store.helpers import event, without


def _done(lease: Lease, result: bytes = b'{"ok": true}', ctype: str = "application/json") -> Completion:
    return Completion(lease.ulid, lease.token, result, ctype)


def test_complete_stores_the_result_and_ends_succeeded(harness: StoreHarness) -> None:
    [lease] = harness.running(1, result_ttl_ms=60_000)
    time.sleep(0.005)

    [run_ms] = harness.run(harness.store.complete(harness.queue, [_done(lease)]))

    dump = harness.dump()
    record = dump["tasks"][lease.ulid]
    assert run_ms is not None and run_ms >= 5
    assert run_ms == int(record["finished"]) - int(record["started"])
    assert without(record) == {"state": "succeeded", "name": "tests.work", "ttl": "60000",
                               "attempt": "1", "token": "1", "worker": "w1", "result": b'{"ok": true}'}
    assert harness.run(harness.store.get(harness.queue, lease.ulid)).result_content_type == "application/json"
    assert dump["indexes"]["running"] == []
    assert dump["indexes"]["succeeded"] == [lease.ulid]
    assert dump["scores"]["succeeded"][lease.ulid] == int(record["finished"]) + 60_000
    assert dump["expires"][lease.ulid] == int(record["finished"]) + 60_000


def test_a_result_media_type_other_than_json_is_kept_and_none_is_told_before_success(harness: StoreHarness) -> None:
    first, second = harness.running(2)
    assert harness.run(harness.store.get(harness.queue, first.ulid)).result_content_type == ""

    harness.run(harness.store.complete(harness.queue, [_done(first, b"\x00", "application/x-msgpack"),
                                                       _done(second, b"1", "")]))

    tasks = harness.dump()["tasks"]
    assert tasks[first.ulid]["rtype"] == "application/x-msgpack"
    assert "rtype" not in tasks[second.ulid]  # empty means application/json, as for payloads
    got = [harness.run(harness.store.get(harness.queue, lease.ulid)).result_content_type for lease in (first, second)]
    assert got == ["application/x-msgpack", "application/json"]


def test_complete_with_stale_token_is_refused(harness: StoreHarness) -> None:
    [lease] = harness.running(1)
    before = harness.dump()

    answers = harness.run(harness.store.complete(harness.queue, [_done(Lease(lease.ulid, lease.token - 1))]))

    assert answers == [None]
    assert harness.dump() == before


def test_complete_of_a_redelivered_task_refuses_the_old_attempt(harness: StoreHarness) -> None:
    [old] = harness.running(1)
    harness.run(harness.store.release(harness.queue, [old], "worker_shutdown", started=True))
    [new] = harness.lease(1, worker="w2")

    assert harness.run(harness.store.complete(harness.queue, [_done(old, b"old")])) == [None]
    assert harness.run(harness.store.complete(harness.queue, [_done(Lease(new.ulid, new.lease_token), b"new")]))[0] \
        is not None
    assert harness.run(harness.store.get(harness.queue, old.ulid)).result == b"new"


def test_complete_twice_with_the_same_token_is_idempotent(harness: StoreHarness) -> None:
    [lease] = harness.running(1)
    [first] = harness.run(harness.store.complete(harness.queue, [_done(lease, b"1")]))
    before = harness.dump()
    events = harness.events()

    [second] = harness.run(harness.store.complete(harness.queue, [_done(lease, b"2")]))

    assert second == first
    after = harness.dump()
    assert after["tasks"] == before["tasks"]
    assert after["indexes"] == before["indexes"]
    assert harness.run(harness.store.get(harness.queue, lease.ulid)).result == b"1"
    assert events.take(0) == []


def test_complete_of_an_unknown_task_is_stale(harness: StoreHarness) -> None:
    answers = harness.run(harness.store.complete(harness.queue, [_done(Lease("01HZZZZZZZZZZZZZZZZZZZZZZZ", 1))]))

    assert answers == [None]


def test_complete_without_a_result_keeps_no_empty_fields(harness: StoreHarness) -> None:
    [lease] = harness.running(1)

    harness.run(harness.store.complete(harness.queue, [_done(lease, b"", "")]))

    record = harness.dump()["tasks"][lease.ulid]
    assert "result" not in record and "rtype" not in record
    assert harness.run(harness.store.get(harness.queue, lease.ulid)).state is TaskState.SUCCEEDED


def test_complete_of_a_task_with_a_cancel_request_succeeds_and_drops_the_request(harness: StoreHarness) -> None:
    [lease] = harness.running(1)
    harness.run(harness.store.cancel(harness.queue, lease.ulid, "user"))

    harness.run(harness.store.complete(harness.queue, [_done(lease)]))

    record = harness.run(harness.store.get(harness.queue, lease.ulid))
    assert record.state is TaskState.SUCCEEDED
    assert (record.cancel_requested, record.reason) == (False, "")


def test_complete_of_a_batch_answers_per_item_and_publishes_once(harness: StoreHarness) -> None:
    a, b = harness.running(2)
    events = harness.events()

    answers = harness.run(harness.store.complete(harness.queue, [_done(a), _done(Lease(b.ulid, 0)), _done(b)]))

    assert answers[0] is not None and answers[1] is None and answers[2] is not None
    assert events.take(1) == [event("succeeded", [a.ulid, b.ulid])]


def test_complete_and_read_answers_the_records_as_the_call_left_them(harness: StoreHarness) -> None:
    first, stale = harness.running(2)
    result = bytes(range(200))  # stored in pieces: the record read back has it whole
    gone = "01HZZZZZZZZZZZZZZZZZZZZZZZ"

    run_ms, records = harness.run(harness.store.complete_and_read(
        harness.queue, [_done(first, result, "application/octet-stream"), Completion(stale.ulid, 99, b"", "")],
        [first.ulid, stale.ulid, gone]))

    assert run_ms[0] is not None and run_ms[1] is None
    done, untouched, missing = records
    assert done is not None and done.state is TaskState.SUCCEEDED
    assert done.result == result and done.result_content_type == "application/octet-stream"
    assert done.finished_ms == int(harness.dump()["tasks"][first.ulid]["finished"])
    assert untouched is not None and untouched.state is TaskState.RUNNING  # a stale token wrote nothing
    assert missing is None
    assert harness.run(harness.store.complete_and_read(harness.queue, [], [first.ulid])) == ([], [None])
