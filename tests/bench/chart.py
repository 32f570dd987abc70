"""Drain throughput versus concurrency, one line per system: ``python -m tests.bench.chart IN.json OUT.png``.

Runs under .bench-venv's interpreter (matplotlib lives there, never in the project's dependencies).
"""

import json
import sys
from typing import Any


def points(results: dict[str, Any]) -> dict[str, list[tuple[int, float, str]]]:
    """{system label: [(total concurrency, median tasks/s, configuration), ...]} from scenario 3."""
    labels = {"conveyor": "Conveyor", "celery": "Celery", "dramatiq": "Dramatiq", "huey": "huey"}
    out: dict[str, list[tuple[int, float, str]]] = {}
    for key, configs in results.get("scenarios", {}).get("3", {}).items():
        series = []
        for label, entry in configs.items():
            runs = entry.get("runs") or []
            rate = (entry.get("median") or {}).get("rate")
            if not runs or rate is None:
                continue
            series.append((_concurrency(key, label), rate, label))
        if series:
            out[labels.get(key, key)] = sorted(series)
    return out


def _concurrency(system: str, label: str) -> int:
    """Total tasks run at once for a configuration label (see tests/bench/systems.py)."""
    words = label.replace("×", " x ").replace("=", " ").split()
    numbers = [int(w) for w in words if w.isdigit()]
    if system == "conveyor":
        return numbers[0] * numbers[1] if " x " in label.replace("×", " x ") else numbers[0]
    if system == "dramatiq":
        return numbers[0] * numbers[1]
    if label == "solo":
        return 1
    return numbers[-1] if numbers else 1


def main(argv: list[str]) -> int:
    import matplotlib  # type: ignore[import-not-found]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found]

    source, target = argv[1], argv[2]
    with open(source) as f:
        results = json.load(f)
    meta = results.get("meta", {})
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for system, series in points(results).items():
        xs = [p[0] for p in series]
        ys = [p[1] for p in series]
        ax.plot(xs, ys, marker="o", label=system)
        for x, y, label in series:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tasks run at once (worker processes × concurrency)")
    ax.set_ylabel("tasks/s (median)")
    machine = meta.get("machine", {})
    ax.set_title(f"Drain of {meta.get('sizes', {}).get('drain_n', 0):,} no-op tasks, results stored\n"
                 f"{machine.get('cores')} cores, {machine.get('cpu_model', '')}, {meta.get('date', '')}",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
