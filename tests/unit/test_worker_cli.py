"""`conveyor worker module:attribute`: finding the Worker and applying the command line to it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker_sdk import Worker
from worker_sdk.cli import load_worker, main


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "cli_app_for_tests.py").write_text(
        "from worker_sdk import Worker, task\n"
        "@task\n"
        "def job() -> int:\n"
        "    return 1\n"
        "worker = Worker(tasks=[job], broker='configured:1')\n"
        "class Holder:\n"
        "    inner = worker\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    sys.modules.pop("cli_app_for_tests", None)


def test_the_example_worker_loads() -> None:
    worker = load_worker("worker_sdk.examples:worker")
    assert isinstance(worker, Worker)
    assert "worker_sdk.examples.add" in worker.tasks
    assert worker.queues == ("default",)


def test_a_module_in_the_current_directory_loads_with_a_dotted_attribute(app_dir: Path) -> None:
    assert load_worker("cli_app_for_tests:Holder.inner") is load_worker("cli_app_for_tests:worker")


@pytest.mark.parametrize("target", ["no_colon", "worker_sdk.examples:", ":worker", "worker_sdk.examples:add",
                                    "worker_sdk.examples:missing"])
def test_targets_that_name_no_worker_are_refused(target: str) -> None:
    with pytest.raises(ValueError):
        load_worker(target)


def test_a_missing_module_is_an_import_error() -> None:
    with pytest.raises(ImportError):
        load_worker("no_such_module_anywhere:worker")


def test_main_reports_a_bad_target_with_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker_sdk.examples:add"]) == 2
    assert "not a worker_sdk.Worker" in capsys.readouterr().err


def test_main_refuses_bad_overrides_before_running(app_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cli_app_for_tests:worker", "--concurrency", "0"]) == 2
    assert "concurrency" in capsys.readouterr().err
    assert main(["cli_app_for_tests:worker", "--queues", "ok,not ok"]) == 2


def test_overrides_apply_and_the_environment_gives_the_default_broker(
        app_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[Worker] = []
    loops: list[str] = []
    monkeypatch.setattr(Worker, "run", lambda self, event_loop: (ran.append(self), loops.append(event_loop)))
    assert main(["cli_app_for_tests:worker", "--concurrency", "3", "--queues", "a, b"]) == 0
    assert (ran[0].broker, ran[0].concurrency, ran[0].queues) == ("configured:1", 3, ("a", "b"))
    assert loops == ["auto"]
    monkeypatch.setenv("CONVEYOR_BROKER", "from-env:2")
    assert main(["cli_app_for_tests:worker"]) == 0
    assert ran[1].broker == "from-env:2"
    assert main(["cli_app_for_tests:worker", "--broker", "flag:3"]) == 0
    assert ran[2].broker == "flag:3"


def test_the_event_loop_comes_from_the_flag_or_the_environment(
        app_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    loops: list[str] = []
    monkeypatch.setattr(Worker, "run", lambda self, event_loop: loops.append(event_loop))
    monkeypatch.setenv("CONVEYOR_EVENT_LOOP", "asyncio")
    assert main(["cli_app_for_tests:worker"]) == 0
    assert main(["cli_app_for_tests:worker", "--event-loop", "uvloop"]) == 0
    assert loops == ["asyncio", "uvloop"]
    monkeypatch.setenv("CONVEYOR_EVENT_LOOP", "trio")
    assert main(["cli_app_for_tests:worker"]) == 2
    assert "event_loop must be one of auto, uvloop, asyncio, got 'trio'" in capsys.readouterr().err
    assert loops == ["asyncio", "uvloop"]


def test_run_refuses_an_unknown_event_loop_before_connecting() -> None:
    worker = load_worker("worker_sdk.examples:worker")
    with pytest.raises(ValueError, match="event_loop must be one of auto, uvloop, asyncio, got 'trio'"):
        worker.run(event_loop="trio")
