"""Keeps the benchmark suite working: Conveyor alone through scenarios 1-4 at a few hundred tasks,
and the gRPC floor tool for a moment.

Asserts only that every scenario produced numbers and that the report has its tables; the
figures themselves mean nothing at this size.
"""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.bench import systems
from tests.bench.runner import execute
from tests.bench.scenarios import Sizes
from tests.redis_process import find_server_binary


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not math.isnan(value) and value > 0


@pytest.mark.timeout(60)
def test_conveyor_scenarios_produce_numbers_and_tables(tmp_path: Path) -> None:
    conveyor = systems.conveyor()
    conveyor.drain_configs = [conveyor.config("c=8")]
    conveyor.default_config = "c=8"
    results = execute([conveyor], ["1", "2", "3", "4"], Sizes.smoke(), find_server_binary(), tmp_path,
                      command=["pytest", __file__], chart=False, echo=False, log_dir=tmp_path / "logs")

    scen = results["scenarios"]
    assert _positive(scen["1"]["conveyor"]["sync"]["median"]["rate"]), scen["1"]
    assert _positive(scen["1"]["conveyor"]["async"]["median"]["rate"]), scen["1"]
    assert _positive(scen["2"]["conveyor"]["batch"]["median"]["rate"]), scen["2"]
    drain = scen["3"]["conveyor"]["c=8"]["median"]
    assert _positive(drain["rate"]) and _positive(drain["cpu_us_per_task"]["total"]), scen["3"]
    assert drain["tasks"] == Sizes.smoke().drain_n
    roundtrip = scen["4"]["conveyor"]["c=8"]["median"]
    assert _positive(roundtrip["p50_ms"]) and _positive(roundtrip["p99_ms"]), scen["4"]

    text = (tmp_path / "latest.md").read_text()
    for heading in ("## 1. Enqueue", "## 2. Enqueue in batches", "## 3. Drain", "## 4. Sequential round trip",
                    "## 6. CPU cost", "## Targets", "## Commands"):
        assert heading in text
    assert "| tasks/s, sync client, one per call |" in text
    assert (tmp_path / "latest.json").exists()


def test_report_ratios_and_medians() -> None:
    from tests.bench.report import best_drain, ratio
    from tests.bench.scenarios import median_of

    runs = [{"rate": 3.0, "cpu": {"total": 1.0}, "label": "a"}, {"rate": 1.0, "cpu": {"total": 3.0}, "label": "b"},
            {"rate": 2.0, "cpu": {"total": 2.0}, "label": "c"}]
    assert median_of(runs) == {"rate": 2.0, "cpu": {"total": 2.0}, "label": "a"}
    assert ratio(3.0, 1.5) == "2.00×"
    assert ratio(1.0, None) == "—"
    drains = {"x": {"median": {"rate": 5.0}}, "y": {"median": {"rate": 7.0}}, "z": {"error": "e"}}
    assert best_drain(drains) == ("y", 7.0)
    assert replace(Sizes.full(), runs=5).runs == 5


@pytest.mark.timeout(60)
def test_the_grpc_floor_tool_times_both_kinds_of_exchange() -> None:
    done = subprocess.run([sys.executable, "-m", "tests.bench.floor", "--seconds", "0.2"],
                          capture_output=True, text=True, timeout=50, check=True)
    settings, *lines = done.stdout.splitlines()
    assert settings.startswith("echo server: GRPC_EXPERIMENTS=")
    assert [line.split(":")[0] for line in lines] == ["stream, message and reply", "unary call"]
    assert all(int(line.split(": ")[1].split(" µs")[0]) > 0 for line in lines)


def test_runs_of_scenarios_1_to_4_go_round_the_systems(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tests.bench import runner
    from tests.bench.scenarios import Bench

    bench = Bench(None, replace(Sizes.smoke(), runs=3), tmp_path)  # type: ignore[arg-type]
    calls: list[tuple[str, str, tuple[int, int] | None]] = []
    rates = iter([1.0, 10.0, 2.0, 30.0, 3.0, 20.0])

    def jobs(bench: Bench, system: systems.System, scenarios: list[str], out: dict[str, object],
             peer_sleep: bool) -> list[runner.Job]:
        def once(scenario: str) -> dict[str, object]:
            calls.append((scenario, system.key, bench.round))
            return bench.runs(system, scenario, lambda: {"rate": next(rates)} if scenario == "4" else {"n": 1})

        return [(scenario, "v", lambda scenario=scenario: once(scenario)) for scenario in scenarios]

    monkeypatch.setattr(runner, "_jobs", jobs)
    out: dict[str, object] = {}
    runner._run_all(bench, [systems.conveyor(), systems.celery()], ["4", "7"], out, False)

    assert calls == [("4", "conveyor", (1, 3)), ("4", "celery", (1, 3)), ("4", "conveyor", (2, 3)),
                     ("4", "celery", (2, 3)), ("4", "conveyor", (3, 3)), ("4", "celery", (3, 3)),
                     ("7", "conveyor", None), ("7", "celery", None)]
    assert out["4"]["conveyor"]["v"] == {"runs": [{"rate": 1.0}, {"rate": 2.0}, {"rate": 3.0}],  # type: ignore[index]
                                         "median": {"rate": 2.0}}
    assert out["4"]["celery"]["v"]["median"] == {"rate": 20.0}  # type: ignore[index]
    assert [len(out["7"][key]["v"]["runs"]) for key in ("conveyor", "celery")] == [3, 3]  # type: ignore[index]
    assert bench.round is None
