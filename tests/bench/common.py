"""What every scenario driver shares, Conveyor's and the peers': standard library only.

A driver is a small program, ``python -m <driver> <op> [options]``, that runs one client side
of a scenario against a running system and prints one JSON object on its last stdout line.
Peers' drivers run under .bench-venv's interpreter, so this module imports nothing else.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

# Names of the task functions every system registers (each under its own naming rules).
ADD, STAMP, SLEEP, ASYNC_SLEEP = "add", "stamp", "sleep", "async_sleep"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p99, p99.9, mean and max of latencies given in seconds, reported in milliseconds."""
    ms = [s * 1000.0 for s in seconds]
    return {
        "count": float(len(ms)),
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "p999_ms": percentile(ms, 99.9),
        "mean_ms": sum(ms) / len(ms) if ms else math.nan,
        "max_ms": max(ms) if ms else math.nan,
    }


def payload_string(payload_bytes: int) -> str:
    """A string x such that ``{"args":["x",""],"kwargs":{}}`` (Conveyor's JSON) is `payload_bytes` long."""
    overhead = len(json.dumps({"args": ["", ""], "kwargs": {}}, separators=(",", ":")))
    return "p" * max(1, payload_bytes - overhead)


def arguments(index: int, payload_bytes: int) -> tuple[Any, Any]:
    """The two arguments of add(): two ints, or a payload string and "" when a size is asked for."""
    if payload_bytes > 0:
        return payload_string(payload_bytes), ""
    return index, index


def own_cpu() -> dict[str, float]:
    """User and system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"user": usage.ru_utime, "sys": usage.ru_stime}


def parser(prog: str) -> argparse.ArgumentParser:
    """The command line every driver accepts (each ignores what its system does not use)."""
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("op", choices=["enqueue", "roundtrip", "openloop", "collect", "versions"])
    p.add_argument("--redis-url", default="redis://127.0.0.1:6390/0",
                   help="server of the peers (their db numbers are fixed in their app modules)")
    p.add_argument("--target", default="127.0.0.1:50051", help="Conveyor broker address")
    p.add_argument("--n", type=int, default=1000, help="tasks to submit")
    p.add_argument("--mode", choices=["single", "batch", "async", "batch-async"], default="single")
    p.add_argument("--batch", type=int, default=1000, help="tasks per call in batch mode")
    p.add_argument("--inflight", type=int, default=64, help="calls in flight in async mode")
    p.add_argument("--batch-inflight", type=int, default=4, help="batch calls in flight in batch-async mode")
    p.add_argument("--max-seconds", type=float, default=0.0, help="stop submitting after this long (0: no cap)")
    p.add_argument("--warm-up", type=int, default=0, help="tasks submitted the same way before the clock starts")
    p.add_argument("--task", choices=[ADD, STAMP, SLEEP, ASYNC_SLEEP], default=ADD)
    p.add_argument("--sleep", type=float, default=1.0, help="seconds of the sleep task")
    p.add_argument("--payload-bytes", type=int, default=0, help="size of add()'s argument payload (0: two ints)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of a round-trip or open-loop run")
    p.add_argument("--rate", type=float, default=100.0, help="open-loop submissions per second")
    p.add_argument("--timeout", type=float, default=60.0, help="longest wait for any one result")
    return p


def emit(result: dict[str, Any]) -> None:
    """Prints the driver's answer as one JSON line (the orchestrator reads the last line)."""
    result.setdefault("cpu", own_cpu())
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def timed_enqueue(n: int, max_seconds: float, submit_one: Callable[[int], object],
                  submit_batch: Callable[[Sequence[int]], object] | None, batch: int,
                  warm_up: int = 0) -> dict[str, Any]:
    """Submits tasks 0..n-1 one per call (or `batch` per call) until done or `max_seconds` passed,
    after `warm_up` tasks submitted the same way before the clock starts (counted as queued)."""
    for first in range(-warm_up, 0, batch if submit_batch is not None else 1):
        if submit_batch is None:
            submit_one(first)
        else:
            submit_batch(range(first, min(0, first + batch)))
    cap = max_seconds if max_seconds > 0 else math.inf
    done = 0
    cpu_before = own_cpu()
    started = time.perf_counter()
    if submit_batch is None:
        while done < n and time.perf_counter() - started < cap:
            submit_one(done)
            done += 1
    else:
        while done < n and time.perf_counter() - started < cap:
            chunk = range(done, min(n, done + batch))
            submit_batch(chunk)
            done += len(chunk)
    seconds = time.perf_counter() - started
    cpu_after = own_cpu()
    timed_cpu = cpu_after["user"] + cpu_after["sys"] - cpu_before["user"] - cpu_before["sys"]
    return {"count": done + warm_up, "seconds": seconds, "rate": done / seconds if seconds > 0 else 0.0,
            "timed_cpu": timed_cpu}


def timed_roundtrips(seconds: float, one: Callable[[int], object]) -> dict[str, Any]:
    """Runs `one(i)` (submit and wait for the result) back to back for `seconds`; latencies."""
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    i = 0
    # Warm-up: connections and the first lookups are not what a steady client pays.
    for _ in range(20):
        one(i)
        i += 1
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        one(i)
        latencies.append(time.perf_counter() - t0)
        i += 1
    summary: dict[str, Any] = latency_summary(latencies)
    summary["rate"] = len(latencies) / seconds
    return summary


def open_loop(rate: float, seconds: float, submit: Callable[[int], str]) -> tuple[list[tuple[str, float]], float]:
    """Submits at a fixed rate for `seconds` whatever the answers take (open loop).

    Submission i is due at start + i / rate; a late one goes at once, nothing is skipped. Its
    submit time is the time it was due, so a client that falls behind is charged for it.
    Returns (task id, wall-clock due time) pairs and the achieved rate.
    """
    total = max(1, int(rate * seconds))
    sent: list[tuple[str, float]] = []
    start, wall = time.perf_counter(), time.time()
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent.append((submit(i), wall + i / rate))
    elapsed = time.perf_counter() - start
    return sent, total / elapsed if elapsed > 0 else 0.0


def open_loop_summary(sent: Iterable[tuple[str, float]], started: dict[str, float],
                      stored: dict[str, float], achieved_rate: float) -> dict[str, Any]:
    """submit→start and submit→result-stored latencies of an open-loop run."""
    to_start: list[float] = []
    to_result: list[float] = []
    missing = 0
    for task_id, submitted in sent:
        if task_id not in started or task_id not in stored:
            missing += 1
            continue
        to_start.append(max(0.0, started[task_id] - submitted))
        to_result.append(max(0.0, stored[task_id] - submitted))
    return {
        "achieved_rate": achieved_rate,
        "missing": missing,
        "submit_to_start": latency_summary(to_start),
        "submit_to_result": latency_summary(to_result),
    }


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Calls `check` until it is true or `timeout` seconds passed; returns its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
