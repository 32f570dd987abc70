"""Child processes of the benchmark: start, stop, CPU and memory read from /proc, driver answers.

Every child is started through tests.helpers.spawn: its own process group, and the kernel
SIGKILLs it if the benchmark process dies, so nothing outlives a run (Ctrl-C included).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import kill_group, log_tail, spawn

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class BenchError(RuntimeError):
    """A scenario could not be measured (a process died, a deadline passed)."""


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    return raw[raw.rindex(")") + 2:].split()


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of one process (0.0 if it is gone)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # After the name: state(0) ppid(1) ... utime(11) stime(12).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def descendants(root: int) -> list[int]:
    """`root` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, ()))
    return found


def tree_cpu(root: int) -> float:
    """CPU seconds of a process and all its live descendants."""
    return sum(process_cpu(pid) for pid in descendants(root))


def rss_bytes(pid: int) -> int:
    """Resident set size of one process, in bytes."""
    fields = Path(f"/proc/{pid}/statm").read_text().split()
    return int(fields[1]) * PAGE_SIZE


@dataclass
class Child:
    """One started child and its log."""

    label: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check(self) -> None:
        if not self.alive():
            raise BenchError(f"{self.label} exited with code {self.proc.returncode}\n"
                             f"--- {self.log_path} ---\n{log_tail(self.log_path, 40)}")

    def cpu(self) -> float:
        return tree_cpu(self.pid)

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
        """Asks it to stop (SIGTERM by default); SIGKILLs its whole group after `timeout`."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        kill_group(self.proc)


@dataclass
class Children:
    """The children of one scenario run, stopped together."""

    log_dir: Path
    items: list[Child] = field(default_factory=list)

    def start(self, label: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> Child:
        log_path = self.log_dir / f"{label}.log"
        with open(log_path, "ab") as log:
            log.write(f"--- start: {' '.join(argv)}\n".encode())
        child = Child(label, list(argv), log_path, spawn(argv, log_path=log_path, env=env))
        self.items.append(child)
        return child

    def check(self) -> None:
        for child in self.items:
            child.check()

    def stop_all(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
        for child in self.items:
            if child.alive():
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(sig)
        deadline = time.monotonic() + timeout
        for child in self.items:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            kill_group(child.proc)
        self.items.clear()

    def cpu(self) -> float:
        return sum(child.cpu() for child in self.items)


def run_driver(argv: Sequence[str], *, log_dir: Path, label: str, timeout: float,
               env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Runs a scenario driver to the end (at most `timeout` seconds) and returns its JSON answer."""
    group = Children(log_dir)
    child = group.start(label, argv, env)
    try:
        child.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{label} did not finish within {timeout:.0f}s\n"
                         f"--- {child.log_path} ---\n{log_tail(child.log_path, 40)}") from None
    finally:
        group.stop_all(timeout=2.0)
    if child.proc.returncode != 0:
        raise BenchError(f"{label} exited with code {child.proc.returncode}\n"
                         f"--- {child.log_path} ---\n{log_tail(child.log_path, 40)}")
    answer = last_json_line(child.log_path.read_text(errors="replace").splitlines())
    if answer is None:
        raise BenchError(f"{label} printed no JSON answer\n--- {child.log_path} ---\n{log_tail(child.log_path, 40)}")
    return answer


def last_json_line(lines: Iterable[str]) -> dict[str, Any] | None:
    """The last line that parses as a JSON object."""
    for line in reversed(list(lines)):
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    return value
    return None
