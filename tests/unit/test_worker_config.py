"""Building a Worker: which tasks, which queues, and the checks on its settings."""

from __future__ import annotations

import pytest

from worker_sdk import Worker, task


@task
def plain(x: int) -> int:
    return x


@task(queue="emails")
def send(to: str) -> None:
    pass


@task(queue="reports")
def build() -> None:
    pass


def loose(x: int) -> int:
    return x


def test_queues_default_to_the_queues_of_the_tasks_in_order() -> None:
    assert Worker(tasks=[send, build, plain, send]).queues == ("emails", "reports", "default")


def test_explicit_queues_win_and_duplicates_collapse() -> None:
    assert Worker(tasks=[send], queues=["a", "b", "a"]).queues == ("a", "b")


def test_plain_functions_are_registered_under_their_default_name() -> None:
    worker = Worker(tasks=[loose, plain])
    assert set(worker.tasks) == {f"{__name__}.loose", f"{__name__}.plain"}


def test_two_functions_under_one_name_are_refused() -> None:
    with pytest.raises(ValueError, match="share the task name"):
        Worker(tasks=[plain, task(name=plain.name)(loose)])


def test_the_same_task_twice_is_fine() -> None:
    assert len(Worker(tasks=[plain, plain]).tasks) == 1


def test_a_worker_needs_tasks() -> None:
    with pytest.raises(ValueError, match="at least one task"):
        Worker(tasks=[])


@pytest.mark.parametrize("queues", [["bad queue"], ["x" * 129], [""], [f"q{i}" for i in range(65)]])
def test_invalid_queues_are_refused(queues: list[str]) -> None:
    with pytest.raises(ValueError):
        Worker(tasks=[plain], queues=queues)


def test_a_single_string_is_not_a_list_of_queues() -> None:
    with pytest.raises(TypeError):
        Worker(tasks=[plain], queues="default")


@pytest.mark.parametrize("settings", [{"concurrency": 0}, {"concurrency": True}, {"shutdown_grace": -1},
                                      {"heartbeat_interval": 0}, {"worker_id": ""}, {"worker_id": "x" * 129},
                                      {"broker": ""}])
def test_out_of_range_settings_are_refused(settings: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Worker(tasks=[plain], **settings)  # type: ignore[arg-type]


def test_configure_overrides_only_what_it_is_given() -> None:
    worker = Worker(tasks=[plain], broker="b:1", concurrency=2)
    assert worker.configure(concurrency=5, queues=["x"]) is worker
    assert (worker.broker, worker.concurrency, worker.queues) == ("b:1", 5, ("x",))
    assert "concurrency=5" in repr(worker)


def test_stop_before_run_is_harmless() -> None:
    Worker(tasks=[plain]).stop()
