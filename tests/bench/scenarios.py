"""The scenarios of the benchmark, each run against one system on the shared Redis server.

Every function returns plain data (numbers, labels, the commands it ran) that the report
turns into tables; nothing here prints.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tests.bench import common
from tests.bench.procs import BenchError, Child, rss_bytes, run_driver, tree_cpu
from tests.bench.systems import Session, System, WorkerConfig, shown
from tests.redis_process import RedisProcess

POLL_INTERVAL = 0.004


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is."""

    single_n: int = 20_000  # 1: tasks submitted one per call (or as many as fit in enqueue_cap)
    batch_n: int = 100_000  # 2: tasks submitted 1,000 per call
    batch_size: int = 1_000
    enqueue_cap: float = 10.0  # 1, 2: seconds of submitting at most
    # 1, 2: tasks each driver submits the same way before its clock starts (a tenth of the timed
    # ones): Conveyor's broker, like any long-running service, is measured warm
    warm_up_fraction: float = 0.1
    async_inflight: int = 64  # 1: Conveyor's AsyncClient, calls in flight
    drain_n: int = 50_000  # 3, 6
    roundtrip_seconds: float = 10.0  # 4
    openloop_seconds: float = 10.0  # 5
    memory_n: int = 100_000  # 7
    payload_bytes: int = 100  # 7
    rss_n: int = 1_000_000  # 7: Conveyor's broker RSS with this many queued
    sleep_n: int = 1_000  # 8
    sleep_seconds: float = 10.0  # 8
    sleep_concurrency: int = 200  # 8
    runs: int = 3
    peer_sleep_runs: int = 1  # 8 for peers: each run is as long as Conveyor's, so once is enough

    @classmethod
    def full(cls) -> Sizes:
        return cls()

    @classmethod
    def quick(cls) -> Sizes:
        return cls(single_n=1_000, batch_n=5_000, enqueue_cap=5.0, drain_n=2_000, roundtrip_seconds=2.0,
                   openloop_seconds=3.0, memory_n=10_000, rss_n=100_000, sleep_n=200, sleep_seconds=1.0,
                   runs=1)

    @classmethod
    def smoke(cls) -> Sizes:
        return cls(single_n=300, batch_n=300, enqueue_cap=5.0, async_inflight=16, drain_n=300,
                   roundtrip_seconds=1.0, openloop_seconds=1.0, memory_n=300, rss_n=1_000, sleep_n=20,
                   sleep_seconds=0.2, sleep_concurrency=20, runs=1)


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Key by key median of the runs' numbers (nested dicts too); other values from the first run."""
    if not runs:
        return {}
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [run.get(key) for run in runs]
        if isinstance(first, bool) or not isinstance(first, int | float | dict):
            out[key] = first
        elif isinstance(first, dict):
            out[key] = median_of([v for v in values if isinstance(v, dict)])
        else:
            numbers = [float(v) for v in values if isinstance(v, int | float) and not math.isnan(float(v))]
            out[key] = statistics.median(numbers) if numbers else math.nan
    return out


class Bench:
    """Runs scenarios on one server, logging children under `log_dir`."""

    def __init__(self, server: RedisProcess, sizes: Sizes, log_dir: Path,
                 progress: Callable[[str], None] = lambda text: None) -> None:
        self.server = server
        self.sizes = sizes
        self.log_dir = log_dir
        self.progress = progress
        self._tags = 0
        # Set while the runner goes round the systems run by run: (this run, runs in all).
        self.round: tuple[int, int] | None = None

    def session(self, system: System, scenario: str) -> Session:
        self._tags += 1
        return Session(system, self.server, self.log_dir, f"{self._tags:03d}-{system.key}-s{scenario}")

    def runs(self, system: System, scenario: str, once: Callable[[], dict[str, Any]],
             count: int | None = None, label: str = "") -> dict[str, Any]:
        """`once` run `count` times (default the sizes' runs), or once when the runner goes round
        the systems run by run (`round`); the runs and their median."""
        results = []
        total = count or (1 if self.round else self.sizes.runs)
        for i in range(total):
            run, runs = self.round if self.round and not count else (i + 1, total)
            self.progress(f"{system.label}: scenario {scenario}{' ' + label if label else ''} run {run}/{runs}")
            results.append(once())
        return {"runs": results, "median": median_of(results)}

    # --- helpers ------------------------------------------------------------------------------

    def _driver(self, session: Session, op: str, *options: str, timeout: float,
                env: dict[str, str] | None = None) -> dict[str, Any]:
        argv = session.driver_argv(op, *options)
        answer = run_driver(argv, log_dir=self.log_dir, label=f"{session.tag}-driver-{op}", timeout=timeout,
                            env={**session.env(), **(env or {})})
        answer["command"] = shown(argv)
        return answer

    def _enqueue(self, session: Session, n: int, mode: str, *extra: str, cap: float = 0.0) -> dict[str, Any]:
        options = ["--n", str(n), "--mode", mode, "--batch", str(self.sizes.batch_size),
                   "--inflight", str(self.sizes.async_inflight), "--max-seconds", str(cap), *extra]
        budget = (cap or 0.0) + 120.0 + n / 500.0
        return self._driver(session, "enqueue", *options, timeout=budget)

    def _settle(self, workers: list[Child], timeout: float = 20.0) -> float:
        """Waits until the workers are done starting (their CPU use goes quiet); returns the wait."""
        started = time.monotonic()
        deadline = started + timeout
        time.sleep(0.3)
        while time.monotonic() < deadline:
            before = sum(w.cpu() for w in workers)
            time.sleep(0.25)
            for w in workers:
                w.check()
            if sum(w.cpu() for w in workers) - before < 0.02:
                break
        return time.monotonic() - started

    def _drain(self, session: Session, expected: int, config: WorkerConfig, timeout: float,
               env: dict[str, str] | None = None) -> dict[str, Any]:
        """Starts the workers on `expected` queued tasks; times first dequeue to last result stored."""
        depth = session.queue_depth()
        if depth < expected:
            raise BenchError(f"{session.system.label}: {depth} tasks queued, expected {expected}")
        spawned = time.perf_counter()
        session.start_workers(config, env)
        deadline = time.monotonic() + timeout
        t0 = None
        cpu0: dict[str, float] = {}
        checks = 0
        while True:
            now = time.perf_counter()
            if t0 is None and session.queue_depth() < expected:
                t0 = now
                cpu0 = session.processes_cpu()
            if t0 is not None and session.result_count() >= expected:
                t1 = time.perf_counter()
                cpu1 = session.processes_cpu()
                break
            checks += 1
            if checks % 100 == 0:
                session.workers.check()
                if time.monotonic() > deadline:
                    raise BenchError(f"{session.system.label} {config.label}: {session.result_count()} of "
                                     f"{expected} results after {timeout:.0f}s")
            time.sleep(POLL_INTERVAL)
        session.workers.stop_all(timeout=20)
        seconds = t1 - t0
        cpu = {name: cpu1.get(name, 0.0) - cpu0.get(name, 0.0) for name in cpu1}
        return {"tasks": expected, "seconds": seconds, "rate": expected / seconds,
                "startup_seconds": t0 - spawned, "cpu": cpu,
                "worker_commands": [shown(argv) for argv in config.argv]}

    # --- scenarios ----------------------------------------------------------------------------

    def enqueue(self, system: System, scenario: str, mode: str) -> dict[str, Any]:
        """1 and 2: submitting tasks one per call, `inflight` at once, or 1,000 per call."""
        n = self.sizes.single_n if mode in ("single", "async") else self.sizes.batch_n

        warm_up = int(n * self.sizes.warm_up_fraction)
        if mode.startswith("batch"):
            warm_up -= warm_up % self.sizes.batch_size  # whole calls of batch_size

        def once() -> dict[str, Any]:
            with self.session(system, scenario) as session:
                return self._enqueue(session, n, mode, "--warm-up", str(warm_up), cap=self.sizes.enqueue_cap)

        return self.runs(system, scenario, once, label=mode)

    def drain_tasks(self, system: System, config: WorkerConfig) -> int:
        """`drain_n` for the configurations the issue compares (the system's default one and any
        running 32 or more tasks at once); a fifth of it for the slow low-concurrency points of the
        chart, whose rate is as steady after 10,000 tasks."""
        if config.label == system.default_config or config.total >= 32:
            return self.sizes.drain_n
        return max(self.sizes.drain_n // 5, min(self.sizes.drain_n, 1_000))

    def drain(self, system: System, config: WorkerConfig) -> dict[str, Any]:
        """3 and 6: tasks queued, then workers start; throughput and CPU per task."""
        n = self.drain_tasks(system, config)

        def once() -> dict[str, Any]:
            with self.session(system, "3") as session:
                before = session.processes_cpu()
                queued = self._enqueue(session, n - 1, "batch")
                after = session.processes_cpu()
                result = self._drain(session, int(queued["count"]), config, timeout=120.0 + n / 100.0)
            cpu = {"client": float(queued["timed_cpu"]),
                   **{f"enqueue_{k}": after[k] - before[k] for k in after if k != "workers"},
                   **{f"drain_{k}": v for k, v in result.pop("cpu").items()}}
            cpu["total"] = sum(cpu.values())
            result["cpu_seconds"] = cpu
            result["cpu_us_per_task"] = {k: v / result["tasks"] * 1e6 for k, v in cpu.items()}
            result["enqueue_rate"] = queued["rate"]
            result["enqueue_command"] = queued["command"]
            return result

        return self.runs(system, "3", once, label=config.label)

    def roundtrip(self, system: System) -> dict[str, Any]:
        """4: one client submits and waits for each result, back to back."""
        config = system.config(system.roundtrip_config)

        def once() -> dict[str, Any]:
            with self.session(system, "4") as session:
                workers = session.start_workers(config)
                self._settle(workers)
                answer = self._driver(session, "roundtrip", "--seconds", str(self.sizes.roundtrip_seconds),
                                      timeout=self.sizes.roundtrip_seconds + 120)
                answer["config"] = config.label
                answer["worker_commands"] = [shown(argv) for argv in config.argv]
                return answer

        return self.runs(system, "4", once, label=config.label)

    def open_loop(self, system: System, config: WorkerConfig, rate: float) -> dict[str, Any]:
        """5: submissions at a fixed rate; submit→start and submit→result stored."""

        def once() -> dict[str, Any]:
            with self.session(system, "5") as session:
                workers = session.start_workers(config, {"BENCH_RECORD_STORED": "1"})
                self._settle(workers)
                answer = self._driver(session, "openloop", "--rate", f"{rate:.1f}", "--seconds",
                                      str(self.sizes.openloop_seconds), "--timeout", "120",
                                      timeout=self.sizes.openloop_seconds * 3 + 240)
                answer.update(config=config.label, target_rate=rate,
                              worker_commands=[shown(argv) for argv in config.argv])
                return answer

        return self.runs(system, "5", once, label=f"{config.label} at {rate:,.0f}/s")

    def memory(self, system: System) -> dict[str, Any]:
        """7: Redis bytes per queued task and per finished task (with its result)."""
        config = system.config(system.default_config)
        n = self.sizes.memory_n

        def once() -> dict[str, Any]:
            with self.session(system, "7") as session:
                info = session.redis[session.system.queue_db]
                time.sleep(0.2)
                base = _memory(info)
                out: dict[str, Any] = {"tasks": n}
                if session.broker is not None:
                    out["broker_rss_before"] = rss_bytes(session.broker.pid)
                queued = self._enqueue(session, n, "batch", "--payload-bytes", str(self.sizes.payload_bytes))
                count = int(queued["count"])
                time.sleep(0.2)
                after_queue = _memory(info)
                if session.broker is not None:
                    out["broker_rss_queued"] = rss_bytes(session.broker.pid)
                self._drain(session, count, config, timeout=120.0 + n / 100.0)
                time.sleep(0.2)
                finished = _memory(info)
                for key in ("used_memory", "used_memory_dataset"):
                    out[f"queued_bytes_per_task_{key}"] = (after_queue[key] - base[key]) / count
                    out[f"finished_bytes_per_task_{key}"] = (finished[key] - base[key]) / count
                out["queued_bytes_per_task"] = out["queued_bytes_per_task_used_memory"]
                out["finished_bytes_per_task"] = out["finished_bytes_per_task_used_memory"]
                out["enqueue_command"] = queued["command"]
                return out

        # Byte counts do not wobble like timings: one run (of up to 100,000 tasks per system) is enough.
        return self.runs(system, "7", once, count=1)

    def broker_rss(self, system: System) -> dict[str, Any]:
        """7 (Conveyor): the broker's RSS empty, then with `rss_n` tasks queued, all submitted in
        calls of `batch_size` (1,000) as in scenario 2, so that every point sees the same calls
        and only the queue's length differs. (A call's working set is what lifts the RSS: calls of
        10,000 tasks hold about 15 MiB more while they run, and the allocator keeps it.)"""
        n = self.sizes.rss_n
        steps = sorted({1_000, n // 10, n})

        def once() -> dict[str, Any]:
            with self.session(system, "7rss") as session:
                assert session.broker is not None
                pid = session.broker.pid
                out: dict[str, Any] = {"rss_start": rss_bytes(pid)}
                queued = 0
                for step in steps:
                    answer = self._enqueue(session, step - queued, "batch")
                    queued += int(answer["count"])
                    time.sleep(0.5)
                    out[f"rss_at_{step}"] = rss_bytes(pid)
                    out[f"redis_used_memory_at_{step}"] = _memory(session.redis[session.system.queue_db])["used_memory"]
                out["queued"] = queued
                out["depth"] = session.queue_depth()
                out["rss_growth"] = out[f"rss_at_{n}"] / out["rss_start"]
                out["cpu_broker"] = tree_cpu(pid)
                return out

        return self.runs(system, "7", once, count=1, label=f"broker RSS to {n:,} queued")

    def sleep(self, system: System, task: str = common.SLEEP, runs: int | None = None) -> dict[str, Any]:
        """8: `sleep_n` sleeping tasks at `sleep_concurrency` in one worker process."""
        assert system.sleep_config is not None
        config = system.sleep_config(self.sizes.sleep_concurrency)
        s = self.sizes
        ideal = math.ceil(s.sleep_n / s.sleep_concurrency) * s.sleep_seconds

        def once() -> dict[str, Any]:
            with self.session(system, "8") as session:
                queued = self._enqueue(session, s.sleep_n - 1, "batch", "--task", task, "--sleep", str(s.sleep_seconds))
                result = self._drain(session, int(queued["count"]), config, timeout=ideal * 4 + 120)
            result.update(ideal_seconds=ideal, efficiency=ideal / result["seconds"], task=task,
                          config=config.label)
            return result

        return self.runs(system, "8", once, count=runs, label=f"{task} ×{s.sleep_n} at {config.label}")


def _memory(client: Any) -> dict[str, int]:
    info = client.info("memory")
    return {"used_memory": int(info["used_memory"]), "used_memory_dataset": int(info["used_memory_dataset"])}


def sized(sizes: Sizes, **changes: Any) -> Sizes:
    return replace(sizes, **changes)
