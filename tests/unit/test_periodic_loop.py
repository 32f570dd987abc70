"""PeriodicLoop: the pause between passes varies around the interval, so replicas drift apart."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time

import pytest

import broker_service.loops as loops
from broker_service.loops import JITTER, PeriodicLoop


class Recorder(PeriodicLoop):
    def __init__(self, interval: float, passes: int) -> None:
        super().__init__(interval)
        self.times: list[float] = []
        self.passes = passes
        self.done = asyncio.Event()

    async def tick(self) -> None:
        self.times.append(time.monotonic())
        if len(self.times) >= self.passes:
            self.done.set()
        if len(self.times) == 3:
            raise RuntimeError("a failing pass is logged; the loop goes on")


def test_the_pause_between_passes_follows_the_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    # Shortest and longest pause in turn: the long pauses must last about 2 × JITTER × interval more.
    factors = itertools.cycle((1 - JITTER, 1 + JITTER))
    draws: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        draws.append((low, high))
        return next(factors)

    monkeypatch.setattr(loops.random, "uniform", uniform)
    interval = 0.1

    async def main() -> list[float]:
        loop = Recorder(interval, passes=9)
        loop.start()
        try:
            await asyncio.wait_for(loop.done.wait(), 10)
        finally:
            await loop.stop()
        return loop.times

    times = asyncio.run(main())
    gaps = [b - a for a, b in itertools.pairwise(times[:9])]
    short, long = gaps[0::2], gaps[1::2]
    assert set(draws) == {(1 - JITTER, 1 + JITTER)}
    assert min(gaps) >= (1 - JITTER) * interval - 0.002
    assert statistics.mean(long) - statistics.mean(short) == pytest.approx(2 * JITTER * interval, abs=0.01)
