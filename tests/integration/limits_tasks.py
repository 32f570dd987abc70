"""Tasks of the locks-and-limits tests: each records when it ran, so tests can check overlaps.

A line per run, appended to the file the test names: `<label> <start> <end>` (wall-clock seconds
of the worker process; every worker of a test runs on this machine, so their clocks agree).
"""

from __future__ import annotations

import time

from worker_sdk import Worker, examples, task


@task
def span(path: str, label: str, seconds: float) -> str:
    """Sleeps `seconds`, then appends `label start end` to the file `path`."""
    start = time.time()
    time.sleep(seconds)
    end = time.time()
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{label} {start!r} {end!r}\n")
    return label


worker = Worker(tasks=[span, examples.add], queues=["default"])
