"""A payload over 64 bytes is stored in pieces, so the task hash keeps Redis's compact encoding;
every reader joins the pieces again (enqueue.lua writes them, lease.lua and the records read them)."""

from __future__ import annotations

import os

import pytest

from broker_service.domain import Completion
from tests.store.conftest import StoreHarness


def _encoding(harness: StoreHarness, ulid: str) -> str:
    encoding = harness.redis.object("encoding", harness.store.queue_keys(harness.queue).task(ulid))
    return encoding.decode() if isinstance(encoding, bytes) else str(encoding)


# 192/193: the lease reads up to three pieces with the record, more in a second read
@pytest.mark.parametrize("size", [65, 100, 128, 129, 192, 193, 1000, 2048])
def test_a_payload_in_pieces_is_whole_again_for_lease_get_and_list(harness: StoreHarness, size: int) -> None:
    payload = os.urandom(size)  # any bytes: pieces are cut by byte, never by character
    task = harness.task(payload=payload)
    harness.enqueue(task)
    assert harness.run(harness.store.get(harness.queue, task.ulid)).payload == payload
    [many] = harness.run(harness.store.get_many([(harness.queue, task.ulid)]))
    assert many is not None and many.payload == payload

    [leased] = harness.lease()  # the ready task's packed record becomes its task hash

    assert leased.payload == payload
    record = harness.dump()["tasks"][task.ulid]
    pieces = -(-size // 64)
    assert int(record["pn"]) == pieces
    assert b"".join([record["payload"], *(record[f"p{i}"] for i in range(2, pieces + 1))]) == payload
    assert all(len(record[f"p{i}"]) <= 64 for i in range(2, pieces + 1))
    assert _encoding(harness, task.ulid) == "listpack"
    assert harness.run(harness.store.get(harness.queue, task.ulid)).payload == payload


@pytest.mark.parametrize("size", [0, 1, 64, 2049, 70_000])
def test_a_payload_that_fits_one_value_or_could_never_be_compact_stays_whole(harness: StoreHarness,
                                                                             size: int) -> None:
    payload = os.urandom(size)
    task = harness.task(payload=payload)
    harness.enqueue(task)

    record = harness.dump()["tasks"][task.ulid]
    assert "pn" not in record and "p2" not in record
    assert record.get("payload", b"") == payload
    [leased] = harness.lease()
    assert leased.payload == payload


def test_a_finished_task_with_a_short_result_stays_compact(harness: StoreHarness) -> None:
    task = harness.task(payload=b"x" * 300)
    harness.enqueue(task)
    [leased] = harness.lease()

    harness.run(harness.store.complete(harness.queue, [Completion(leased.ulid, leased.lease_token, b"3", "t")]))

    assert _encoding(harness, task.ulid) == "listpack"
    assert harness.run(harness.store.get(harness.queue, task.ulid)).payload == b"x" * 300



@pytest.mark.parametrize("size", [3, 100, 2048, 5000])
def test_a_result_is_stored_in_pieces_too_and_read_whole(harness: StoreHarness, size: int) -> None:
    result = os.urandom(size)
    harness.enqueue(harness.task(payload=b"[1]"))
    [leased] = harness.lease()

    harness.run(harness.store.complete(harness.queue, [Completion(leased.ulid, leased.lease_token, result, "t")]))

    record = harness.dump()["tasks"][leased.ulid]
    assert ("rn" in record) == (64 < size <= 2048)
    assert _encoding(harness, leased.ulid) == ("listpack" if size <= 2048 else "hashtable")
    assert harness.run(harness.store.get(harness.queue, leased.ulid)).result == result
    [(node, passed, rtype)] = harness.run(harness.store.parent_results([(harness.queue, leased.ulid)]))
    assert (node, passed, rtype) == ("", result, "t")
