"""A bare WorkerService.Connect stream driven by hand, to speak the protocol without the worker SDK."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
from conveyor.v1 import worker_service_pb2 as wpb
from conveyor.v1 import worker_service_pb2_grpc


class RawWorker:
    """One Connect stream: `send()` writes WorkerMessages, `expect()` reads BrokerMessages of a kind.

    Reading happens on a thread, so a message is never lost between two `expect()` calls; a
    stream that ends puts its RpcError (or None after a clean end) in the inbox.
    """

    def __init__(self, address: str, *, worker_id: str, queues: list[str], concurrency: int = 1,
                 acks_ride: bool = False) -> None:
        self._channel = grpc.insecure_channel(address)
        self._outbox: queue.Queue[wpb.WorkerMessage | None] = queue.Queue()
        self._inbox: queue.Queue[wpb.BrokerMessage | grpc.RpcError | None] = queue.Queue()
        stub = worker_service_pb2_grpc.WorkerServiceStub(self._channel)
        self._call: Any = stub.Connect(self._requests())
        self._reader = threading.Thread(target=self._read, name=f"raw-{worker_id}", daemon=True)
        self._reader.start()
        self.send(hello=wpb.Hello(worker_id=worker_id, queues=queues, concurrency=concurrency,
                                  sdk="conveyor-tests-raw/0", acks_ride=acks_ride))
        self.welcome = self.expect("welcome").welcome

    def _requests(self) -> Iterator[wpb.WorkerMessage]:
        while (message := self._outbox.get()) is not None:
            yield message

    def _read(self) -> None:
        try:
            for message in self._call:
                self._inbox.put(message)
        except grpc.RpcError as exc:
            self._inbox.put(exc)
            return
        self._inbox.put(None)

    def send(self, **kind: Any) -> None:
        """Writes one WorkerMessage, e.g. ``send(credit=wpb.Credit(credits=1))``."""
        self._outbox.put(wpb.WorkerMessage(**kind))

    def expect(self, kind: str, timeout: float = 10.0) -> wpb.BrokerMessage:
        """The next BrokerMessage of `kind`, skipping others; AssertionError when none comes in time."""
        deadline = time.monotonic() + timeout
        while True:
            item = self.next(kind, max(0.0, deadline - time.monotonic()))
            if item.WhichOneof("kind") == kind:
                return item

    def next(self, awaited: str = "any", timeout: float = 10.0) -> wpb.BrokerMessage:
        """The next BrokerMessage, whatever its kind; AssertionError when none comes in time."""
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {awaited} message within {timeout}s") from None
        if item is None:
            raise AssertionError(f"the stream ended before a {awaited} message")
        if isinstance(item, grpc.RpcError):
            raise AssertionError(f"the stream failed before a {awaited} message: {item}")
        return item

    def end(self, timeout: float = 10.0) -> grpc.RpcError | None:
        """Waits for the broker to end the stream; returns its error (None for a clean end)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self._inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"the stream did not end within {timeout}s") from None
            if item is None or isinstance(item, grpc.RpcError):
                return item

    def close(self) -> None:
        """Half-closes, cancels the call and closes the channel."""
        self._outbox.put(None)
        self._call.cancel()
        self._channel.close()
        self._reader.join(5)

    def __enter__(self) -> RawWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
