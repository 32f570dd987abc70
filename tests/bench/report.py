"""The markdown report of a benchmark run: one table per scenario, the targets, machine and commands."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

LABELS = {"conveyor": "Conveyor", "celery": "Celery", "dramatiq": "Dramatiq", "huey": "huey"}
PEERS = ("celery", "dramatiq", "huey")


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(float(value)) else float(value)


def _get(data: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def fmt(value: Any, kind: str) -> str:
    v = _num(value)
    if v is None:
        return "—"
    if kind == "rate":
        return f"{v:,.0f}"
    if kind == "ms":
        return f"{v:.2f}"
    if kind == "us":
        return f"{v:,.0f}"
    if kind == "bytes":
        return f"{v:,.0f}"
    if kind == "mib":
        return f"{v / 2**20:,.1f}"
    if kind == "s":
        return f"{v:.1f}"
    if kind == "pct":
        return f"{v * 100:.0f}%"
    return f"{v:,.2f}"


def ratio(a: Any, b: Any) -> str:
    x, y = _num(a), _num(b)
    if x is None or y is None or y == 0:
        return "—"
    return f"{x / y:.2f}×"


def best_drain(drains: dict[str, Any]) -> tuple[str, float] | None:
    """(configuration label, median tasks/s) of the fastest drain configuration."""
    best: tuple[str, float] | None = None
    for label, entry in (drains or {}).items():
        rate = _num(_get(entry, "median", "rate"))
        if rate is not None and (best is None or rate > best[1]):
            best = (label, rate)
    return best


Row = tuple[str, dict[str, Any], str]  # metric label, value per system, format kind


def _table(systems: list[str], rows: list[Row], notes: dict[str, str] | None = None) -> str:
    peers = [s for s in systems if s != "conveyor"]
    head = ["metric", *(LABELS[s] for s in systems)]
    if "conveyor" in systems:
        head += [f"Conveyor ÷ {LABELS[p]}" for p in peers]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, values, kind in rows:
        cells = [label]
        for s in systems:
            cell = fmt(values.get(s), kind) if kind != "text" else str(values.get(s) or "—")
            if notes and values.get(s) is not None and notes.get(f"{label}/{s}"):
                cell += f" ({notes[f'{label}/{s}']})"
            cells.append(cell)
        if "conveyor" in systems:
            cells += [ratio(values.get("conveyor"), values.get(p)) if kind != "text" else "" for p in peers]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _median(scen: dict[str, Any], system: str, variant: str, *path: str) -> Any:
    return _get(scen, system, variant, "median", *path)


def _errors(scen: dict[str, Any]) -> list[str]:
    out = []
    for system, variants in scen.items():
        for variant, entry in variants.items():
            if isinstance(entry, dict) and entry.get("error"):
                first = str(entry["error"]).splitlines()[0]
                out.append(f"- {LABELS.get(system, system)} {variant}: failed: {first}")
    return out


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    scen = results["scenarios"]
    systems = [s for s in meta["systems"] if s in LABELS]
    parts = [_header(meta)]
    sections: list[tuple[str, Callable[[dict[str, Any], list[str]], str]]] = [
        ("1", _s1), ("2", _s2), ("3", _s3), ("4", _s4), ("5", _s5), ("6", _s6), ("7", _s7), ("8", _s8)]
    for key, build in sections:
        source = "3" if key == "6" else key
        if source in scen and (key != "6" or "6" in meta["scenarios"] or "3" in meta["scenarios"]):
            parts.append(build(scen, systems))
            errors = _errors(scen.get(source, {}))
            if errors and key != "6":
                parts.append("\n".join(errors))
    if "conveyor" in systems:
        parts.append(_targets(scen))
    parts.append(_commands(scen, systems))
    return "\n\n".join(parts) + "\n"


def _header(meta: dict[str, Any]) -> str:
    m = meta["machine"]
    v = meta.get("versions", {})
    server = v.get("server", {})
    lines = [
        "# Benchmark results",
        "",
        f"- Date: {meta['date']} ({meta.get('seconds', '?')} s); command: `{meta['command']}`"
        f"{' (quick: small sizes, one run)' if meta.get('quick') else ''}",
        f"- Source: commit {meta.get('source', {}).get('commit', '?')}"
        f"{' with local changes to the product code' if meta.get('source', {}).get('product_code_modified') else ''}",
        f"- Machine: {m['cores']} cores, {m['cpu_model']}, {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}",
        f"- Server: {server.get('binary')} (redis_version {server.get('redis_version')}"
        f"{', valkey ' + str(server['valkey_version']) if server.get('valkey_version') else ''}), "
        f"one private instance for every system: {meta.get('server_args', '')}",
    ]
    for key in ("conveyor", *PEERS):
        if key in v:
            details = ", ".join(f"{k} {val}" for k, val in v[key].items() if k != "command")
            lines.append(f"- {LABELS[key]}: {details}")
    for rerun in meta.get("reruns", []):
        lines.append(f"- Re-measured on {rerun['date']}: scenario(s) {', '.join(rerun['scenarios'])} of "
                     f"{', '.join(LABELS.get(k, k) for k in rerun['systems'])} (`{rerun['command']}`, commit "
                     f"{(rerun.get('source') or {}).get('commit', '?')})")
    sizes = meta["sizes"]
    lines.append(f"- Each figure is the median of {sizes['runs']} run(s) (scenario 8 on the peers: "
                 f"{sizes['peer_sleep_runs']}); ratios are Conveyor's figure divided by the peer's, so above "
                 "1× is better for rates and below 1× is better for latency, CPU and memory. The scenarios run "
                 "one after another, each system in turn within a scenario; in scenarios 1 to 4 the runs go "
                 "round the systems (every system's first run, then every system's second...), so the figures "
                 "a ratio compares are taken seconds apart.")
    return "\n".join(lines)


WARM_UP = ("Every driver first submits a tenth as many tasks the same way, untimed: the systems are "
           "measured warm (Conveyor's broker is a long-running service).")


def _s1(scen: dict[str, Any], systems: list[str]) -> str:
    s = scen["1"]
    rows: list[Row] = [("tasks/s, sync client, one per call", {k: _median(s, k, "sync", "rate") for k in systems},
                        "rate")]
    if "conveyor" in systems:
        sync = {k: _median(s, k, "sync", "rate") for k in systems}
        sync["conveyor"] = _median(s, "conveyor", "async", "rate")
        inflight = _median(s, "conveyor", "async", "inflight")
        rows.append((f"tasks/s, Conveyor AsyncClient ({fmt(inflight, 'rate')} calls in flight) vs peers' sync",
                     sync, "rate"))
    return ("## 1. Enqueue, one task per call (higher is better)\n\n" + WARM_UP + "\n\n"
            + _table(systems, rows))


def _s2(scen: dict[str, Any], systems: list[str]) -> str:
    s = scen["2"]
    rows: list[Row] = [("tasks/s, 1,000 per call", {k: _median(s, k, "batch", "rate") for k in systems}, "rate")]
    if "conveyor" in systems and s.get("conveyor", {}).get("batch-async"):
        values = {k: _median(s, k, "batch", "rate") for k in systems}
        values["conveyor"] = _median(s, "conveyor", "batch-async", "rate")
        inflight = _median(s, "conveyor", "batch-async", "inflight")
        rows.append((f"tasks/s, Conveyor AsyncClient ({fmt(inflight, 'rate')} calls of 1,000 in flight) vs peers'",
                     values, "rate"))
    return ("## 2. Enqueue in batches of 1,000 (higher is better)\n\n"
            "Conveyor: `enqueue_many` (BatchEnqueueTasks), one call at a time from the sync client, and "
            "from an AsyncClient with a few calls in flight; Celery: `group(...).apply_async()`; Dramatiq: "
            "`group(...).run()`; huey: `task.map(...)`. " + WARM_UP + "\n\n" + _table(systems, rows))


def _s3(scen: dict[str, Any], systems: list[str]) -> str:
    s = scen["3"]
    best = {k: best_drain(s.get(k, {})) for k in systems}
    rows: list[Row] = [("tasks/s, best configuration", {k: b[1] if b else None for k, b in best.items()}, "rate")]
    notes = {f"tasks/s, best configuration/{k}": b[0] for k, b in best.items() if b}
    for label in s.get("conveyor", {}):
        values: dict[str, Any] = {k: b[1] if b else None for k, b in best.items()}
        values["conveyor"] = _median(s, "conveyor", label, "rate")
        rows.append((f"Conveyor {label} vs peers' best", values, "rate"))
    out = ["## 3. Drain queued tasks (higher is better)",
           "",
           "From the first task taken off the queue to the last result stored (Redis polled every 4 ms), "
           "workers started after every task was queued. The configurations the issue compares run the "
           "full count; the low-concurrency points of the chart a fifth of it (their rate is steady by then).",
           "",
           _table(systems, rows, notes),
           "",
           "| system | configuration | tasks | tasks/s (median) | each run | worker start (s) |",
           "|---|---|---|---|---|---|"]
    for k in systems:
        for label, entry in s.get(k, {}).items():
            runs = [r.get("rate") for r in entry.get("runs", [])]
            tasks = _get(entry, "median", "tasks")
            rate = fmt(_get(entry, "median", "rate"), "rate")
            out.append(f"| {LABELS[k]} | {label} | {fmt(tasks, 'rate')} | {rate} | "
                       f"{', '.join(fmt(r, 'rate') for r in runs) or entry.get('error', '—')[:60]} | "
                       f"{fmt(_get(entry, 'median', 'startup_seconds'), 'ms')} |")
    return "\n".join(out)


def _s4(scen: dict[str, Any], systems: list[str]) -> str:
    s = scen["4"]
    variant = {k: next(iter(s.get(k, {})), "") for k in systems}
    rows: list[Row] = [("configuration", dict(variant), "text")]
    for metric, label in (("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("p999_ms", "p99.9 ms"),
                          ("mean_ms", "mean ms")):
        rows.append((label, {k: _median(s, k, variant[k], metric) for k in systems}, "ms"))
    rows.append(("round trips/s", {k: _median(s, k, variant[k], "rate") for k in systems}, "rate"))
    return ("## 4. Sequential round trip: submit, wait for the result (lower is better)\n\n"
            "One client, one task at a time; Conveyor: `call` (submit and wait, one session message each "
            "way); Celery: "
            "`delay().get()`; Dramatiq: `send().get_result(block=True)`; huey: `task().get(blocking=True)` "
            "with notify_result.\n\n" + _table(systems, rows))


def _s5(scen: dict[str, Any], systems: list[str]) -> str:
    s = scen["5"]
    variant = {k: next(iter(s.get(k, {})), "") for k in systems}
    rows: list[Row] = [
        ("configuration", dict(variant), "text"),
        ("target rate /s (half the drain rate)", {k: _median(s, k, variant[k], "target_rate") for k in systems},
         "rate"),
        ("achieved rate /s", {k: _median(s, k, variant[k], "achieved_rate") for k in systems}, "rate"),
    ]
    for part, name in (("submit_to_start", "submit→start"), ("submit_to_result", "submit→result stored")):
        for metric in ("p50_ms", "p99_ms"):
            rows.append((f"{name} {metric.split('_')[0]} ms",
                         {k: _median(s, k, variant[k], part, metric) for k in systems}, "ms"))
    peer_rate = "at the fastest peer's rate"  # runner.PEER_RATE
    if s.get("conveyor", {}).get(peer_rate, {}).get("median"):
        rate = _median(s, "conveyor", peer_rate, "target_rate")
        rows.append((f"Conveyor at {fmt(rate, 'rate')}/s, the fastest peer's target rate:", {}, "text"))
        rows.append(("achieved rate /s", {**{k: _median(s, k, variant[k], "achieved_rate") for k in systems},
                                          "conveyor": _median(s, "conveyor", peer_rate, "achieved_rate")}, "rate"))
        for part, name in (("submit_to_start", "submit→start"), ("submit_to_result", "submit→result stored")):
            for metric in ("p50_ms", "p99_ms"):
                values = {k: _median(s, k, variant[k], part, metric) for k in systems}
                values["conveyor"] = _median(s, "conveyor", peer_rate, part, metric)
                rows.append((f"{name} {metric.split('_')[0]} ms", values, "ms"))
    return ("## 5. Latency under load: open-loop submits at half the drain rate (lower is better)\n\n"
            "Tasks return `time.time()` at their start; the result-stored time is Conveyor's `finished` "
            "(Redis TIME, ms), Celery's `date_done`, and for Dramatiq and huey a hook that runs right after "
            "the result is stored (a middleware, a SIGNAL_COMPLETE handler). All clocks are this machine's.\n\n"
            + _table(systems, rows))


def _s6(scen: dict[str, Any], systems: list[str]) -> str:
    s = scen["3"]
    best = {k: best_drain(s.get(k, {})) for k in systems}

    def part(*names: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, b in best.items():
            if b is None:
                continue
            values = [_median(s, k, b[0], "cpu_us_per_task", n) for n in names]
            nums = [v for v in (_num(x) for x in values) if v is not None]
            out[k] = sum(nums) if nums else None
        return out

    rows: list[Row] = [
        ("configuration", {k: b[0] if b else None for k, b in best.items()}, "text"),
        ("CPU µs per task, all processes", part("total"), "us"),
        ("  client (enqueue)", part("client"), "us"),
        ("  broker (enqueue + drain)", part("enqueue_broker", "drain_broker"), "us"),
        ("  Redis (enqueue + drain)", part("enqueue_redis", "drain_redis"), "us"),
        ("  workers", part("drain_workers"), "us"),
    ]
    lines = ["## 6. CPU cost of scenario 3 (lower is better)", "",
             "User + system CPU of every process (from /proc/<pid>/stat, children included) while the "
             "tasks of scenario 3 were enqueued in batches and then drained, divided by the tasks; the best "
             "drain configuration of each system. Worker start-up is left out (counted from the first task taken).", "",
             _table(systems, rows), "", "| system | configuration | CPU µs/task (median) |", "|---|---|---|"]
    for k in systems:
        for label in s.get(k, {}):
            lines.append(f"| {LABELS[k]} | {label} | {fmt(_median(s, k, label, 'cpu_us_per_task', 'total'), 'us')} |")
    return "\n".join(lines)


def _s7(scen: dict[str, Any], systems: list[str]) -> str:
    s = scen["7"]
    rows: list[Row] = [
        ("Redis bytes per queued task", {k: _median(s, k, "memory", "queued_bytes_per_task") for k in systems},
         "bytes"),
        ("Redis bytes per finished task with result",
         {k: _median(s, k, "memory", "finished_bytes_per_task") for k in systems}, "bytes"),
    ]
    first: dict[str, Any] = next(iter(s.values()), {})
    n = _get(first, "memory", "median", "tasks")
    lines = ["## 7. Memory (lower is better)", "",
             f"`INFO memory` used_memory deltas over {fmt(n, 'rate')} tasks with a 100-byte argument payload "
             "(queued, then drained by the default configuration with results kept).", "", _table(systems, rows)]
    rss = _get(s, "conveyor", "broker_rss", "median")
    if rss:
        steps = sorted(int(k.rsplit("_", 1)[1]) for k in rss if k.startswith("rss_at_"))
        lines += ["", "Conveyor broker RSS (MiB) as the queue grows (no workers):", "",
                  "| at start | " + " | ".join(f"{n:,} queued" for n in steps) + f" | growth start → "
                  f"{steps[-1]:,} |", "|" + "---|" * (len(steps) + 2),
                  f"| {fmt(rss.get('rss_start'), 'mib')} | "
                  + " | ".join(fmt(rss.get(f'rss_at_{n}'), 'mib') for n in steps)
                  + f" | {ratio(rss.get(f'rss_at_{steps[-1]}'), rss.get('rss_start'))} |"]
        redis_top = rss.get(f"redis_used_memory_at_{steps[-1]}")
        if _num(redis_top):
            lines.append(f"\nRedis used_memory with {steps[-1]:,} queued: {fmt(redis_top, 'mib')} MiB.")
    return "\n".join(lines)


def _s8(scen: dict[str, Any], systems: list[str]) -> str:
    s = scen["8"]
    lines = ["## 8. I/O-bound: sleeping tasks at concurrency 200 in one worker process", "",
             "| system | task | configuration | wall s (median) | ideal s | efficiency |", "|---|---|---|---|---|---|"]
    for k in systems:
        for variant, entry in s.get(k, {}).items():
            med = entry.get("median", {})
            lines.append(f"| {LABELS[k]} | {variant} | {med.get('config', '—')} | {fmt(med.get('seconds'), 's')} | "
                         f"{fmt(med.get('ideal_seconds'), 's')} | {fmt(med.get('efficiency'), 'pct')} |")
    return "\n".join(lines)


def _targets(scen: dict[str, Any]) -> str:
    def m(scenario: str, system: str, variant: str, *path: str) -> float | None:
        return _num(_median(scen.get(scenario, {}), system, variant, *path))

    drains = {k: best_drain(scen.get("3", {}).get(k, {})) for k in ("conveyor", *PEERS)}
    drain = {k: b[1] if b else None for k, b in drains.items()}
    rows = []

    def add(target: str, measured: str, ok: bool | None) -> None:
        rows.append(f"| {target} | {measured} | {'—' if ok is None else ('met' if ok else 'missed')} |")

    def rel(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    r = rel(drain["conveyor"], drain["dramatiq"])
    add("drain ≥ 2× Dramatiq", ratio(drain["conveyor"], drain["dramatiq"]), None if r is None else r >= 2)
    r = rel(drain["conveyor"], drain["celery"])
    add("drain ≥ 10× Celery", ratio(drain["conveyor"], drain["celery"]), None if r is None else r >= 10)
    batch = max((v for v in (m("2", "conveyor", "batch", "rate"), m("2", "conveyor", "batch-async", "rate")) if v),
                default=None)
    add("batch enqueue ≥ 100,000/s", f"{fmt(batch, 'rate')}/s", None if batch is None else batch >= 100_000)
    one = max((v for v in (m("1", "conveyor", "sync", "rate"), m("1", "conveyor", "async", "rate")) if v),
              default=None)
    huey = m("1", "huey", "sync", "rate")
    r = rel(one, huey)
    add("one per call ≥ huey (async client counts)", ratio(one, huey), None if r is None else r >= 1)
    sync, celery = m("1", "conveyor", "sync", "rate"), m("1", "celery", "sync", "rate")
    r = rel(sync, celery)
    add("one per call, strictly sequential, ≥ 1.5× Celery", ratio(sync, celery), None if r is None else r >= 1.5)
    rt = scen.get("4", {})
    conv = next(iter(rt.get("conveyor", {})), None)
    for peer in ("celery", "huey"):
        variant = next(iter(rt.get(peer, {})), None)
        for metric in ("p50_ms", "p99_ms"):
            a = m("4", "conveyor", conv or "", metric)
            b = m("4", peer, variant or "", metric)
            add(f"round trip {metric[:3]} below {LABELS[peer]}'s", f"{fmt(a, 'ms')} vs {fmt(b, 'ms')} ms "
                f"({ratio(a, b)})", None if a is None or b is None else a < b)
    cpu = {k: _num(_median(scen.get("3", {}), k, b[0], "cpu_us_per_task", "total")) if b else None
           for k, b in drains.items()}
    peers_cpu = [v for k, v in cpu.items() if k != "conveyor" and v is not None]
    best_peer = min(peers_cpu) if peers_cpu else None
    r = rel(cpu["conveyor"], best_peer)
    add("CPU per task ≤ 0.5× the best peer's", ratio(cpu["conveyor"], best_peer), None if r is None else r <= 0.5)
    r = rel(cpu["conveyor"], cpu["celery"])
    add("CPU per task ≤ 0.1× Celery's", ratio(cpu["conveyor"], cpu["celery"]), None if r is None else r <= 0.1)
    a = m("7", "conveyor", "memory", "queued_bytes_per_task")
    b = m("7", "celery", "memory", "queued_bytes_per_task")
    r = rel(a, b)
    add("Redis bytes per queued task ≤ 0.25× Celery's", ratio(a, b), None if r is None else r <= 0.25)
    growth = m("7", "conveyor", "broker_rss", "rss_growth")
    add("broker RSS flat (±10%) from start to 1,000,000 queued", ratio(growth, 1.0),
        None if growth is None else abs(growth - 1) <= 0.10)
    return "## Targets (issue 3)\n\n| target | measured | |\n|---|---|---|\n" + "\n".join(rows)


def _commands(scen: dict[str, Any], systems: list[str]) -> str:
    lines = ["## Commands", "", "Worker and driver command lines of the first run of each measurement "
             "(the server port and broker address change from run to run).", ""]
    seen: set[str] = set()
    for scenario in sorted(scen):
        for k in systems:
            for variant, entry in scen[scenario].get(k, {}).items():
                first = (entry.get("runs") or [{}])[0]
                cmds = [*first.get("worker_commands", [])]
                for key in ("enqueue_command", "command"):
                    if first.get(key):
                        cmds.append(first[key])
                for cmd in cmds:
                    if cmd in seen:
                        continue
                    seen.add(cmd)
                    lines.append(f"- {scenario} {LABELS[k]} {variant}: `{cmd}`")
    return "\n".join(lines)
