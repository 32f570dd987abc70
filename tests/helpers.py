"""Test helpers: bounded waits, child processes tied to the test session, metrics and key dumps."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import redis
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent

# Runs in the child before the real program: asks the kernel to SIGKILL this process when the
# test process dies (even by SIGKILL), then execs the real program, which keeps that setting.
_LAUNCHER = """\
import ctypes, os, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
except (AttributeError, OSError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(70)  # the test process is already gone
os.execv(sys.argv[2], sys.argv[2:])
"""

# Every child started through spawn(): killed at the end of the session at the latest.
_children: list[subprocess.Popen[bytes]] = []


def eventually(fn: Callable[[], T], timeout: float = 10.0, interval: float = 0.05) -> T:
    """Calls `fn` until it returns a truthy value and returns that value.

    `fn` may also fail with AssertionError, which counts as "not yet". Raises AssertionError
    with the last value (or the last assertion) once `timeout` seconds have passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        last_error: AssertionError | None = None
        value: T | None = None
        try:
            value = fn()
        except AssertionError as exc:
            last_error = exc
        if value and last_error is None:
            return value
        if time.monotonic() >= deadline:
            detail = f"last assertion: {last_error}" if last_error else f"last value: {value!r}"
            raise AssertionError(f"not true within {timeout}s; {detail}") from last_error
        time.sleep(interval)


def run_async(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Runs a coroutine on a fresh event loop, failing with TimeoutError after `timeout` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` different TCP ports on 127.0.0.1 that were free a moment ago (picked one after the
    other, two picks could give the same port once the first socket is closed)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    """Waits until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise AssertionError(f"nothing listens on {host}:{port} after {timeout}s") from exc
            time.sleep(0.05)


def read_metrics(url: str, timeout: float = 5.0) -> dict[str, float]:
    """Scrapes a Prometheus endpoint into {'name{label="v",...}': value} (labels sorted)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def metric_value(metrics: Mapping[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0.0 when there are none)."""
    wanted = {f'{k}="{v}"' for k, v in labels.items()}
    total = 0.0
    for key, value in metrics.items():
        sample_name, _, rest = key.partition("{")
        if sample_name != name:
            continue
        have = set(rest.rstrip("}").split(",")) if rest else set()
        if wanted <= have:
            total += value
    return total


def dump_queue(client: redis.Redis, namespace: str, queue: str) -> dict[str, Any]:
    """Every key of one queue as plain data, keyed by the part after the hash tag.

    Hashes become dicts, sorted sets lists of (member, score), sets sorted lists, lists lists,
    strings strings; bytes are decoded as UTF-8 where possible. Lets a store test assert the whole
    state of a queue after one transition.
    """
    tag = f"{{{namespace}:{queue}}}"
    state: dict[str, Any] = {}
    for raw_key in sorted(client.scan_iter(match=_glob_escape(tag) + "*", count=1000)):
        key = _text(raw_key)
        kind = _text(client.type(raw_key))
        value: Any
        if kind == "hash":
            value = {_text(k): _text(v) for k, v in sorted(client.hgetall(raw_key).items())}
        elif kind == "zset":
            pairs: Any = client.zrange(raw_key, 0, -1, withscores=True)
            value = [(_text(m), score) for m, score in pairs]
        elif kind == "set":
            value = sorted(_text(m) for m in client.smembers(raw_key))
        elif kind == "list":
            value = [_text(v) for v in client.lrange(raw_key, 0, -1)]
        else:
            value = _text(client.get(raw_key))
        state[key[len(tag):]] = value
    return state


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return value
    return value


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path = REPO_ROOT,
) -> subprocess.Popen[bytes]:
    """Starts a child in its own process group that dies with the test process.

    `env` adds to (or overrides) this process's environment. Its stdout and stderr go to
    `log_path`. The repo root is on PYTHONPATH, so test modules
    under tests/ import as `tests.…`. Call it from the main thread: the kernel ties the child's
    life to the thread that started it.
    """
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), child_env.get("PYTHONPATH", "")) if p
    )
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env,
            cwd=cwd,
            start_new_session=True,
        )
    _children.append(proc)
    return proc


def kill_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
    """SIGKILLs a child started by spawn() and everything in its process group; returns its code."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def kill_all_children() -> None:
    """Last line of defence at session end: nothing started by spawn() outlives the tests."""
    while _children:
        kill_group(_children.pop())


def log_tail(path: Path, lines: int = 60, max_bytes: int = 64 * 1024) -> str:
    """The last lines of a log file ('' if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


class BrokerProcess:
    """One `conveyor serve` subprocess on free ports; restarts keep its ports and settings."""

    def __init__(
        self,
        *,
        redis_url: str,
        log_path: Path,
        settings: Mapping[str, object] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.port, metrics_port = free_ports(2)
        self.settings: dict[str, object] = {
            "listen": f"127.0.0.1:{self.port}",
            "redis_url": redis_url,
            "metrics_port": metrics_port,
            "data_dir": str(log_path.parent / f"{log_path.stem}-data"),
            **(settings or {}),
        }
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<BrokerProcess {self.address} pid={self.pid}>"

    @property
    def address(self) -> str:
        """host:port of its gRPC server."""
        return str(self.settings["listen"])

    @property
    def namespace(self) -> str:
        return str(self.settings.get("namespace", "conveyor"))

    @property
    def metrics_url(self) -> str | None:
        """Its Prometheus endpoint, or None when metrics are disabled."""
        port = int(str(self.settings["metrics_port"]))
        return f"http://127.0.0.1:{port}/metrics" if port else None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def argv(self) -> list[str]:
        args = [sys.executable, "-m", "broker_service.cli", "serve"]
        for name, value in self.settings.items():
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):  # --flag / --no-flag
                args.append(flag if value else "--no-" + flag[2:])
                continue
            args += [flag, str(value)]
        return args

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)

    def start(self, timeout: float = 15.0) -> None:
        """Starts the broker and waits until its health service answers SERVING."""
        if self.alive:
            raise RuntimeError(f"{self!r} is already running")
        with open(self.log_path, "ab") as log:
            log.write(f"--- start: {' '.join(self.argv())}\n".encode())
        self.proc = spawn(self.argv(), log_path=self.log_path, env=self.env)
        try:
            wait_until_serving(self.address, timeout=timeout, alive=lambda: self.alive)
        except (RuntimeError, TimeoutError) as exc:
            code = self.proc.poll()
            kill_group(self.proc)
            state = f"exited with code {code}" if code is not None else f"not SERVING after {timeout}s"
            raise RuntimeError(
                f"broker {self.address} {state}: {exc}\n--- broker log tail ---\n{self.log_tail()}"
            ) from None

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (graceful drain); returns the exit code. Fails if it outlives `timeout`."""
        proc = self._running()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise AssertionError(
                f"broker {self.address} still running {timeout}s after SIGTERM\n"
                f"--- broker log tail ---\n{self.log_tail()}"
            ) from None
        kill_group(proc)  # anything it left behind in its group
        return code

    def kill(self) -> int | None:
        """SIGKILL to the broker and its process group; returns the exit code."""
        return kill_group(self._running())

    def close(self) -> None:
        """Teardown: SIGKILL if still running."""
        if self.proc is not None:
            kill_group(self.proc)

    def restart(self, *, hard: bool = False, timeout: float = 15.0) -> None:
        """Stops (SIGTERM, or SIGKILL when `hard`) and starts again on the same ports."""
        if self.alive:
            if hard:
                self.kill()
            else:
                self.stop()
        self.start(timeout)

    def metrics(self) -> dict[str, float]:
        if self.metrics_url is None:
            raise RuntimeError("this broker runs with metrics disabled")
        return read_metrics(self.metrics_url)

    def metric(self, name: str, **labels: str) -> float:
        """Current value of one metric (summed over matching label sets; 0.0 if absent)."""
        return metric_value(self.metrics(), name, **labels)

    def wait_for_workers(
        self, count: int, timeout: float = 15.0, watch: Sequence[WorkerProcess] = ()
    ) -> None:
        """Waits until `conveyor_workers_connected` reaches `count`; fails early if a watched worker dies."""

        def connected() -> bool:
            for worker in watch:
                worker.check_alive()
            return self.metric("conveyor_workers_connected") >= count

        eventually(connected, timeout=timeout, interval=0.1)

    def _running(self) -> subprocess.Popen[bytes]:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self!r} is not running\n--- broker log tail ---\n{self.log_tail()}")
        return self.proc


def wait_until_serving(
    address: str, *, timeout: float = 15.0, alive: Callable[[], bool] = lambda: True
) -> None:
    """Polls grpc.health.v1.Health/Check("") until SERVING; raises if `alive()` turns false."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    options = [
        ("grpc.initial_reconnect_backoff_ms", 50),
        ("grpc.min_reconnect_backoff_ms", 50),
        ("grpc.max_reconnect_backoff_ms", 250),
    ]
    deadline = time.monotonic() + timeout
    last = "no answer"
    with grpc.insecure_channel(address, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if not alive():
                raise RuntimeError(f"the process exited (last health answer: {last})")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            if time.monotonic() >= deadline:
                raise TimeoutError(f"last health answer: {last}")
            time.sleep(0.05)


class WorkerExitedError(RuntimeError):
    """A worker process that should be running has exited (not retried by `eventually`)."""


class WorkerProcess:
    """One `conveyor worker module:attr --broker ADDR ...` subprocess (as `python -m broker_service.cli`)."""

    def __init__(
        self,
        target: str,
        *args: str,
        broker: str,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.target = target
        self.args = args
        self.broker = broker
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<WorkerProcess {self.target} pid={self.pid}>"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "broker_service.cli", "worker", self.target, "--broker", self.broker, *self.args]

    def start(self) -> WorkerProcess:
        with open(self.log_path, "ab") as log:
            log.write(f"--- start: {' '.join(self.argv())}\n".encode())
        self.proc = spawn(self.argv(), log_path=self.log_path, env=self.env)
        return self

    @property
    def pid(self) -> int:
        return self._proc().pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)

    def check_alive(self) -> None:
        """Raises WorkerExitedError, with the log tail, if the worker has exited."""
        code = self.returncode
        if code is not None:
            raise WorkerExitedError(
                f"worker {self.target} exited with code {code}\n--- worker log tail ---\n{self.log_tail()}"
            )

    def wait(self, timeout: float = 30.0) -> int:
        """Waits for the worker to exit by itself; returns its exit code."""
        proc = self._proc()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.target} still running after {timeout}s\n"
                f"--- worker log tail ---\n{self.log_tail()}"
            ) from None

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (drain); returns the exit code. Fails (and kills it) if it outlives `timeout`."""
        proc = self._proc()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise AssertionError(
                f"worker {self.target} still running {timeout}s after SIGTERM\n"
                f"--- worker log tail ---\n{self.log_tail()}"
            ) from None
        kill_group(proc)
        return code

    def interrupt(self) -> None:
        """SIGINT, as Ctrl-C would send."""
        self._proc().send_signal(signal.SIGINT)

    def kill(self) -> int | None:
        """SIGKILL to the worker and its process group; returns the exit code."""
        return kill_group(self._proc())

    def close(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)

    def _proc(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise RuntimeError(f"{self!r} was never started")
        return self.proc


class BrokerFactory(Protocol):
    """The `broker_factory` fixture: starts a broker with the given settings."""

    def __call__(self, *, start: bool = True, **settings: object) -> BrokerProcess: ...


class WorkerFactory(Protocol):
    """The `worker_factory` fixture: starts a worker process on `module:attribute`."""

    def __call__(
        self,
        target: str,
        *args: str,
        broker: BrokerProcess | str,
        env: dict[str, str] | None = None,
        start: bool = True,
    ) -> WorkerProcess: ...
