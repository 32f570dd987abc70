"""An event loop driven by the threads that wait on it, for the sync client's grpc.aio session.

A thread that finds the loop idle runs it until its own coroutine is done. A coroutine that
another thread starts meanwhile joins the running loop, and its thread sleeps until that
coroutine is done or the loop is idle again, in which case it runs the loop itself. The loop
has no thread of its own, so a lone caller's reply reaches it without a hand-over between
threads (grpc's sync streams need two: a thread that writes requests, one that reads replies).

A thread that already runs an event loop of its own (a notebook cell, code that calls the sync
client from a coroutine) cannot run a second one: its calls are run by a short-lived thread.

Every sync client of a process shares one such loop (`shared`), which lives as long as the
process: grpc keeps a reference to each loop it served and may still deliver a closed channel's
last events to it a moment after the close, so a closed loop would turn them into errors in
whichever loop grpc's poller hands them to.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["CallerLoop", "shared"]

T = TypeVar("T")

# How long past its own deadline a waiting thread gives a coroutine that should have ended by then
# (every coroutine run here carries its own deadline; this only guards against a stuck loop).
GRACE = 5.0


class CallerLoop:
    """An asyncio event loop shared by the threads that call `run`."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._lock = threading.Condition()
        self._runner: int | None = None  # ident of the thread running the loop
        self._guards: dict[asyncio.Task[None], asyncio.TimerHandle] = {}  # each coroutine's deadline

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Runs `coro` on the loop and returns its result (or raises its exception).

        `timeout` is the coroutine's own deadline; past it (and a grace period) the coroutine is
        cancelled and TimeoutError raised.
        """
        if _loop_running_here():
            result: T = _in_thread(lambda: self.run(coro, timeout), timeout + 3 * GRACE)
            return result
        done: concurrent.futures.Future[T] = concurrent.futures.Future()
        me = threading.get_ident()

        def start() -> None:
            task = self._loop.create_task(self._settled(coro, done, me))
            self._guards[task] = self._loop.call_later(timeout + GRACE, task.cancel)

        with self._lock:
            if self._runner is None:
                self._runner = me
                start()
            else:
                self._loop.call_soon_threadsafe(start)
        deadline = time.monotonic() + timeout + 2 * GRACE
        while not done.done():
            with self._lock:
                if self._runner is not None and self._runner != me:
                    # The loop's runner cancels the coroutine past its deadline (the guard above);
                    # this wait's own deadline is for a runner that stopped running it.
                    if not self._lock.wait_for(lambda: done.done() or self._runner is None,
                                               max(0.0, deadline - time.monotonic())):
                        raise TimeoutError(f"no result within {timeout:g}s")
                    continue
                self._runner = me
            try:
                self._loop.run_forever()  # until `done` (stopped by _settle), or a stop for another runner
            finally:
                with self._lock:
                    self._runner = None
                    self._lock.notify_all()
        return done.result()

    async def _settled(self, coro: Coroutine[Any, Any, T], done: concurrent.futures.Future[T], caller: int) -> None:
        """Runs `coro` and, in its last step, hands its outcome to its caller's future, then stops
        the loop if that caller is the one running it, else wakes it (a done callback would cost
        the caller one more turn of the loop)."""
        try:
            done.set_result(await coro)
        except asyncio.CancelledError:  # the guard: past the deadline and its grace
            done.set_exception(TimeoutError("no result in time"))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller as is
            done.set_exception(exc)
        finally:
            task = asyncio.current_task(self._loop)
            guard = self._guards.pop(task, None) if task is not None else None
            if guard is not None:
                guard.cancel()
            if self._runner == caller:
                self._loop.stop()
            else:
                with self._lock:
                    self._lock.notify_all()

    def close(self) -> None:
        """Cancels the coroutines left and closes the loop, from a thread not running it. Only
        for a loop no grpc channel used (see the module's note); `shared` is never closed."""
        with self._lock:
            if self._runner is not None:
                raise RuntimeError("the loop is running")
            self._runner = threading.get_ident()
        try:
            left = asyncio.all_tasks(self._loop)
            for task in left:
                task.cancel()
            if left:
                self._loop.run_until_complete(asyncio.wait(left, timeout=GRACE))
            self._loop.close()
        finally:
            with self._lock:
                self._runner = None
                self._lock.notify_all()


def _loop_running_here() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _in_thread(call: Any, timeout: float) -> Any:
    """`call()` on a thread of its own (this one already runs an event loop)."""
    result: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def target() -> None:
        try:
            result.set_result(call())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller as is
            result.set_exception(exc)

    threading.Thread(target=target, name="conveyor-call", daemon=True).start()
    return result.result(timeout)


_shared: CallerLoop | None = None
_shared_lock = threading.Lock()


def shared() -> CallerLoop:
    """The process's CallerLoop (a child process after fork makes its own)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = CallerLoop()
        return _shared


def _forget_after_fork() -> None:
    global _shared, _shared_lock
    _shared, _shared_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
