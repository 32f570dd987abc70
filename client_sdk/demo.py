"""`conveyor demo` (what `make run` runs): a broker on its embedded store, a worker and a batch of tasks.

The demo submits the example tasks of `worker_sdk.examples` by name, as any client in any
language would, prints their results, then keeps broker and worker running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from client_sdk import Client, TaskFailedError, UnavailableError, signature

EXAMPLES = "worker_sdk.examples"


def _port(preferred: int) -> int:
    """The preferred port when it is free, else any free one."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(client: Client, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.get("00000000000000000000000000@demo")
        except UnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        except Exception:  # noqa: BLE001 - NOT_FOUND means the broker answers
            return


def _run_batch(client: Client, count: int) -> None:
    print(f"\n== submitting {count} x add(i, i) in one batch")
    started = time.perf_counter()
    handles = client.enqueue_many(signature(f"{EXAMPLES}.add", i, i) for i in range(count))
    submitted = time.perf_counter()
    # Tasks of one priority run in submission order, so the last result marks the end of the batch.
    handles[-1].result(timeout=60)
    finished = time.perf_counter()
    results = [handle.result(timeout=60) for handle in handles]
    assert results == [2 * i for i in range(count)], "unexpected results"
    print(f"   submitted in {submitted - started:.3f}s ({count / (submitted - started):,.0f} tasks/s); "
          f"all {count} ran in {finished - started:.3f}s ({count / (finished - started):,.0f} tasks/s end to end)")
    print(f"   first results: {results[:8]}")

    print("\n== a delayed task (run in 1 s)")
    handle = client.enqueue(signature(f"{EXAMPLES}.add", 20, 22).with_options(delay=1.0))
    print(f"   {handle.id} -> {handle.result(timeout=30)} after {handle.get().state.name}")

    print("\n== a task that fails twice, then succeeds on its third attempt")
    flaky = client.enqueue(signature(f"{EXAMPLES}.flaky", "demo-" + str(os.getpid()), 2)
                           .with_options(max_attempts=5, retry_backoff=0.2))
    print(f"   result {flaky.result(timeout=30)!r} on attempt {flaky.get().attempt}")

    print("\n== a task that always fails: it ends in the dead-letter set with its error")
    doomed = client.enqueue(signature(f"{EXAMPLES}.always_fails").with_options(max_attempts=2, retry_backoff=0.2))
    try:
        doomed.result(timeout=30)
    except TaskFailedError as exc:
        print(f"   {doomed.get().state.name}: {exc.error.type}: {exc.error.message}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="conveyor demo", description=__doc__)
    parser.add_argument("--tasks", type=int, default=2000, help="size of the batch of add() tasks")
    parser.add_argument("--once", action="store_true", help="stop after the batch instead of waiting for Ctrl-C")
    parser.add_argument("--data-dir", default=".conveyor", help="the embedded store's folder")
    args = parser.parse_args(argv)

    port, metrics_port = _port(50051), _port(9464)
    address = f"127.0.0.1:{port}"
    command = [sys.executable, "-m", "broker_service.cli"]
    broker = subprocess.Popen([*command, "serve", "--listen", address, "--metrics-port", str(metrics_port),
                               "--data-dir", args.data_dir])
    worker = subprocess.Popen([*command, "worker", f"{EXAMPLES}:worker", "--broker", address,
                               "--concurrency", "16"])
    code = 0
    try:
        with Client(address, timeout=10) as client:
            _wait_ready(client, timeout=30)
            print(f"\nbroker on {address}, metrics on http://127.0.0.1:{metrics_port}/metrics")
            _run_batch(client, args.tasks)
        if not args.once:
            print(f"\nBroker and worker keep running. Try:\n"
                  f"   conveyor enqueue {EXAMPLES}.add --args '[1, 2]' --wait --broker {address}\n"
                  f"Ctrl-C stops everything.")
            with contextlib.suppress(KeyboardInterrupt):
                while broker.poll() is None and worker.poll() is None:
                    time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 - report, stop the children, exit non-zero
        print(f"demo failed: {exc}", file=sys.stderr)
        code = 1
    finally:
        for process in (worker, broker):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    print("stopped.")
    return code


if __name__ == "__main__":
    sys.exit(main())
