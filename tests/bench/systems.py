"""The systems under test: how each starts its workers, where its queue and results live in Redis.

Conveyor runs from the project's virtualenv (broker, workers, driver); each peer's workers and
driver run under .bench-venv's interpreter from the modules in tests/bench/peers/.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.bench.procs import Child, Children
from tests.helpers import free_port, wait_until_serving
from tests.redis_process import RedisProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH_VENV = REPO_ROOT / ".bench-venv"
BENCH_PYTHON = str(BENCH_VENV / "bin" / "python")
CONVEYOR_QUEUE = "bench"
CONVEYOR_NAMESPACE = "conveyor"


def shown(argv: Sequence[str]) -> str:
    """A command line as the report shows it: paths inside the repository made relative to it."""
    root = str(REPO_ROOT) + os.sep
    return " ".join(a.replace(root, "") for a in argv)


@dataclass(frozen=True)
class WorkerConfig:
    """One way to run a system's workers: `processes` × `concurrency` (total = their product)."""

    label: str
    processes: int
    concurrency: int
    argv: tuple[tuple[str, ...], ...]  # one command line per process started by the bench

    @property
    def total(self) -> int:
        return self.processes * self.concurrency


@dataclass
class System:
    """A task queue under test."""

    key: str
    label: str
    python: str
    driver: str
    queue_db: int
    result_db: int
    queue_depth_cmd: Callable[[redis.Redis], int]
    result_count_cmd: Callable[[redis.Redis], int]
    dbs: tuple[int, ...]
    drain_configs: list[WorkerConfig] = field(default_factory=list)
    roundtrip_config: str = ""
    default_config: str = ""
    sleep_config: Callable[[int], WorkerConfig] | None = None
    needs_broker: bool = False

    def config(self, label: str) -> WorkerConfig:
        for candidate in self.drain_configs:
            if candidate.label == label:
                return candidate
        raise KeyError(f"{self.key} has no worker configuration {label!r}")


class Session:
    """One scenario run of one system on the shared server: clean databases, its broker (if any)."""

    def __init__(self, system: System, server: RedisProcess, log_dir: Path, tag: str) -> None:
        self.system = system
        self.server = server
        self.log_dir = log_dir
        self.tag = tag
        self.infra = Children(log_dir)
        self.workers = Children(log_dir)
        self.broker: Child | None = None
        self.target = ""
        self.redis = {db: redis.Redis(host="127.0.0.1", port=server.port, db=db, socket_timeout=30)
                      for db in {system.queue_db, system.result_db, *system.dbs}}

    def __enter__(self) -> Session:
        # Every system's databases: keys another system left (and their expiries) would blur
        # the memory figures.
        self.redis[self.system.queue_db].flushall()
        if self.system.needs_broker:
            port = free_port()
            self.target = f"127.0.0.1:{port}"
            argv = [sys.executable, "-m", "broker_service.cli", "serve", "--listen", self.target,
                    "--redis-url", f"redis://127.0.0.1:{self.server.port}/0", "--metrics-port", "0",
                    "--namespace", CONVEYOR_NAMESPACE, "--log-level", "WARNING"]
            self.broker = self.infra.start(f"{self.tag}-broker", argv)
            wait_until_serving(self.target, timeout=30, alive=self.broker.alive)
        return self

    def __exit__(self, *exc: object) -> None:
        self.workers.stop_all(timeout=15)
        self.infra.stop_all(timeout=15)
        for client in self.redis.values():
            client.close()

    def env(self) -> dict[str, str]:
        return {"BENCH_REDIS": f"redis://127.0.0.1:{self.server.port}"}

    def driver_argv(self, op: str, *options: str) -> list[str]:
        return [self.system.python, "-m", self.system.driver, op, "--target", self.target or "unused",
                "--redis-url", f"redis://127.0.0.1:{self.server.port}/0", *options]

    def start_workers(self, config: WorkerConfig, extra_env: dict[str, str] | None = None) -> list[Child]:
        started = []
        for i, argv in enumerate(config.argv):
            line = [a.replace("{broker}", self.target) for a in argv]
            started.append(self.workers.start(f"{self.tag}-worker{i}", line, {**self.env(), **(extra_env or {})}))
        return started

    def queue_depth(self) -> int:
        return self.system.queue_depth_cmd(self.redis[self.system.queue_db])

    def result_count(self) -> int:
        return self.system.result_count_cmd(self.redis[self.system.result_db])

    def processes_cpu(self) -> dict[str, float]:
        """CPU seconds so far of Redis, the broker and the workers (with their children)."""
        from tests.bench.procs import tree_cpu

        assert self.server.proc is not None
        out = {"redis": tree_cpu(self.server.proc.pid), "workers": self.workers.cpu()}
        if self.broker is not None:
            out["broker"] = self.broker.cpu()
        return out


# --- the four systems ---------------------------------------------------------------------------


def _conveyor_worker(processes: int, concurrency: int) -> WorkerConfig:
    # `conveyor worker`, as operators run it (it sets the worker's gRPC I/O before grpc loads).
    argv = (sys.executable, "-m", "broker_service.cli", "worker", "tests.bench.conveyor_tasks:worker",
            "--broker", "{broker}", "--concurrency", str(concurrency), "--log-level", "WARNING")
    return WorkerConfig(f"{processes}×{concurrency}" if processes > 1 else f"c={concurrency}",
                        processes, concurrency, tuple(argv for _ in range(processes)))


def conveyor() -> System:
    tag = f"{{{CONVEYOR_NAMESPACE}:{CONVEYOR_QUEUE}}}"
    return System(
        key="conveyor", label="Conveyor", python=sys.executable, driver="tests.bench.conveyor_driver",
        queue_db=0, result_db=0, dbs=(0,), needs_broker=True,
        queue_depth_cmd=lambda r: int(r.hlen(f"{tag}:ready")),
        result_count_cmd=lambda r: int(r.zcard(f"{tag}:succeeded")),
        drain_configs=[_conveyor_worker(1, 1), _conveyor_worker(1, 8), _conveyor_worker(1, 64),
                       _conveyor_worker(2, 64)],
        roundtrip_config="c=8", default_config="c=64",
        sleep_config=lambda c: _conveyor_worker(1, c),
    )


def _celery_worker(pool: str, concurrency: int) -> WorkerConfig:
    argv = (BENCH_PYTHON, "-m", "celery", "-A", "tests.bench.peers.celery_app", "worker", "-P", pool,
            "-c", str(concurrency), "-l", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-n", f"bench-{pool}@%h")
    label = "solo" if pool == "solo" else f"{pool} -c {concurrency}"
    return WorkerConfig(label, 1, concurrency, (argv,))


def celery() -> System:
    return System(
        key="celery", label="Celery", python=BENCH_PYTHON, driver="tests.bench.peers.celery_driver",
        queue_db=1, result_db=2, dbs=(1, 2),
        queue_depth_cmd=lambda r: int(r.llen("celery")),
        result_count_cmd=lambda r: int(r.dbsize()),
        drain_configs=[_celery_worker("solo", 1), _celery_worker("prefork", 2), _celery_worker("threads", 8)],
        roundtrip_config="solo", default_config="prefork -c 2",
        sleep_config=lambda c: _celery_worker("threads", c),
    )


def _dramatiq_worker(processes: int, threads: int) -> WorkerConfig:
    argv = (BENCH_PYTHON, "-m", "dramatiq", "tests.bench.peers.dramatiq_app", "-p", str(processes),
            "-t", str(threads))
    return WorkerConfig(f"-p {processes} -t {threads}", processes, threads, (argv,))


def dramatiq() -> System:
    return System(
        key="dramatiq", label="Dramatiq", python=BENCH_PYTHON, driver="tests.bench.peers.dramatiq_driver",
        queue_db=3, result_db=4, dbs=(3, 4),
        queue_depth_cmd=lambda r: int(r.llen("dramatiq:default")),
        result_count_cmd=lambda r: int(r.dbsize()),
        drain_configs=[_dramatiq_worker(1, 1), _dramatiq_worker(1, 8), _dramatiq_worker(2, 32)],
        roundtrip_config="-p 2 -t 32", default_config="-p 2 -t 32",
        sleep_config=lambda c: _dramatiq_worker(1, c),
    )


def _huey_worker(kind: str, workers: int) -> WorkerConfig:
    argv = (BENCH_PYTHON, "-m", "huey.bin.huey_consumer", "tests.bench.peers.huey_app.huey", "-k", kind,
            "-w", str(workers), "-q")
    processes = workers if kind == "process" else 1
    return WorkerConfig(f"-k {kind} -w {workers}", processes, workers // processes, (argv,))


def huey() -> System:
    return System(
        key="huey", label="huey", python=BENCH_PYTHON, driver="tests.bench.peers.huey_driver",
        queue_db=5, result_db=5, dbs=(5,),
        queue_depth_cmd=lambda r: int(r.llen("huey.redis.bench")),
        result_count_cmd=lambda r: int(r.hlen("huey.results.bench")),
        drain_configs=[_huey_worker("thread", 1), _huey_worker("thread", 8), _huey_worker("process", 2)],
        roundtrip_config="-k thread -w 1", default_config="-k process -w 2",
        sleep_config=lambda c: _huey_worker("thread", c),
    )


ALL: dict[str, Callable[[], System]] = {"conveyor": conveyor, "celery": celery, "dramatiq": dramatiq, "huey": huey}
