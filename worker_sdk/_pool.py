"""Threads for sync task functions: calls in through one queue, completions back to the loop in bursts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")


class TaskPool(Generic[K, V]):
    """A pool of at most `size` threads taking calls from one queue.

    Each finished call is handed to `on_done(key, value)` on the event loop. Completions are
    delivered in batches: the first one of a burst schedules a single loop callback, which
    takes every completion that arrived by the time it runs (one wake-up per burst, not per
    call). Threads start on demand and never outnumber the calls outstanding.

    Args:
        size: Most threads at once.
        loop: The loop that receives completions; calls from other threads never touch it
            except through `call_soon_threadsafe`.
        on_done: Called on the loop with each call's key and return value (None if the call
            raised, which is logged).
        name: Thread name prefix.
    """

    def __init__(self, size: int, loop: asyncio.AbstractEventLoop, on_done: Callable[[K, V | None], None], *,
                 name: str = "conveyor-task") -> None:
        self._size = size
        self._loop = loop
        self._on_done = on_done
        self._name = name
        self._calls: queue.SimpleQueue[tuple[K, Callable[[], V]] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._done: list[tuple[K, V | None]] = []
        self._wake_pending = False
        self._submitted = 0  # written on the loop only
        self._finished = 0  # written under _lock only
        self._running = 0  # written under _lock only
        self._closed = False

    @property
    def busy(self) -> int:
        """Calls running on a thread right now (some may belong to abandoned attempts)."""
        with self._lock:
            return self._running

    def submit(self, key: K, call: Callable[[], V]) -> None:
        """Queues `call()` for a thread; `on_done(key, value)` follows on the loop."""
        if self._closed:
            raise RuntimeError("the task pool is shut down")
        self._submitted += 1
        threads = len(self._threads)
        if threads < self._size and threads < self._submitted - self._finished:
            thread = threading.Thread(target=self._work, name=f"{self._name}-{threads}", daemon=True)
            self._threads.append(thread)
            thread.start()
        self._calls.put((key, call))

    def shutdown(self) -> None:
        """Drops calls not yet started and lets idle threads end; busy ones end after their call."""
        self._closed = True
        with contextlib.suppress(queue.Empty):
            while True:
                self._calls.get_nowait()
        for _ in self._threads:
            self._calls.put(None)

    def _work(self) -> None:
        calls, lock = self._calls, self._lock
        while (item := calls.get()) is not None:
            key, call = item
            with lock:
                self._running += 1
            value: V | None = None
            try:
                value = call()
            except BaseException:  # a thread outlives whatever a call raises
                logger.exception("task pool call failed")
            with lock:
                self._running -= 1
                self._finished += 1
                self._done.append((key, value))
                wake = not self._wake_pending
                self._wake_pending = True
            if wake:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                    self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            done, self._done = self._done, []
            self._wake_pending = False
        on_done = self._on_done
        for key, value in done:
            try:
                on_done(key, value)
            except Exception:
                logger.exception("completion handler failed")
