"""list_page.lua through Store.list_tasks: index order, cursors that survive concurrent changes."""

from __future__ import annotations

import pytest

from broker_service.domain import Completion, TaskState
from broker_service.store.store import Page
from tests.store.conftest import StoreHarness


def _page(harness: StoreHarness, state: TaskState, size: int, cursor: str = "") -> Page:
    return harness.run(harness.store.list_tasks(harness.queue, state, size, cursor))


def _ulids(page: Page) -> list[str]:
    return [t.ulid for t in page.tasks]


def test_list_returns_tasks_in_index_order_without_payloads(harness: StoreHarness) -> None:
    low = harness.task(payload=b"p1", priority=0, headers={"h": "1"})
    high = harness.task(payload=b"p2", priority=9)
    harness.enqueue(low, high)

    page = _page(harness, TaskState.QUEUED, 10)

    assert _ulids(page) == [high.ulid, low.ulid]
    assert page.next_cursor == ""
    assert all(t.payload == b"" and t.state is TaskState.QUEUED for t in page.tasks)
    assert page.tasks[1].headers == {"h": "1"}
    assert page.tasks[0].priority == 9


def test_list_leaves_results_out(harness: StoreHarness) -> None:
    [lease] = harness.running(1)
    harness.run(harness.store.complete(harness.queue, [Completion(lease.ulid, lease.token, b"big", "text/plain")]))

    [task] = _page(harness, TaskState.SUCCEEDED, 10).tasks

    assert (task.result, task.result_content_type, task.state) == (b"", "text/plain", TaskState.SUCCEEDED)


def test_list_pages_through_everything_exactly_once(harness: StoreHarness) -> None:
    ulids = harness.submit(25)

    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        page = _page(harness, TaskState.QUEUED, 10, cursor)
        seen += _ulids(page)
        pages += 1
        cursor = page.next_cursor
        if not cursor:
            break

    assert seen == ulids
    assert pages == 3


def test_list_of_an_exact_multiple_of_the_page_size_ends_without_an_empty_page(harness: StoreHarness) -> None:
    harness.submit(10)

    first = _page(harness, TaskState.QUEUED, 5)
    second = _page(harness, TaskState.QUEUED, 5, first.next_cursor)

    assert len(first.tasks) == len(second.tasks) == 5
    assert second.next_cursor == ""


def test_list_paging_survives_concurrent_inserts(harness: StoreHarness) -> None:
    original = harness.submit(30, priority=5)  # one batch: every entry has the same score
    seen: list[str] = []
    cursor = ""
    while True:
        page = _page(harness, TaskState.QUEUED, 7, cursor)
        seen += _ulids(page)
        cursor = page.next_cursor
        if not cursor:
            break
        harness.submit(3, priority=9)  # sorts before the cursor
        harness.submit(3, priority=5)  # same priority, later: after everything listed so far
        harness.submit(3, priority=0)  # sorts after

    present = [u for u in seen if u in set(original)]
    assert present == original
    assert len(seen) == len(set(seen))


def test_list_paging_survives_the_last_seen_task_leaving(harness: StoreHarness) -> None:
    ulids = harness.submit(10, delay_ms=60_000)
    first = _page(harness, TaskState.SCHEDULED, 4)
    assert _ulids(first) == ulids[:4]
    harness.run(harness.store.cancel(harness.queue, ulids[3], ""))  # the cursor's own entry leaves
    harness.run(harness.store.cancel(harness.queue, ulids[1], ""))

    second = _page(harness, TaskState.SCHEDULED, 4, first.next_cursor)

    assert _ulids(second) == ulids[4:8]


def test_list_skips_index_entries_whose_record_expired(harness: StoreHarness) -> None:
    a, b = harness.submit(2)
    harness.drop_record(a)

    assert _ulids(_page(harness, TaskState.QUEUED, 10)) == [b]


def test_list_of_an_empty_state_is_one_empty_page(harness: StoreHarness) -> None:
    assert _page(harness, TaskState.EXPIRED, 10) == Page(tasks=[], next_cursor="")
    assert _page(harness, TaskState.PENDING, 10) == Page(tasks=[], next_cursor="")


@pytest.mark.parametrize("cursor", ["garbage!", "bm90IGEgY3Vyc29y", "MSAyIHEgbmFuIDAxSFo", "%%%"])
def test_list_with_a_malformed_cursor_raises_value_error(harness: StoreHarness, cursor: str) -> None:
    with pytest.raises(ValueError):
        _page(harness, TaskState.QUEUED, 10, cursor)


def test_list_with_a_cursor_of_another_listing_raises_value_error(harness: StoreHarness) -> None:
    harness.submit(3)
    cursor = _page(harness, TaskState.QUEUED, 1).next_cursor
    assert cursor

    with pytest.raises(ValueError):
        _page(harness, TaskState.SCHEDULED, 1, cursor)
    with pytest.raises(ValueError):
        harness.run(harness.store.list_tasks(harness.queue + "-other", TaskState.QUEUED, 1, cursor))


def test_list_with_a_bad_page_size_raises_value_error(harness: StoreHarness) -> None:
    with pytest.raises(ValueError):
        _page(harness, TaskState.QUEUED, 0)
