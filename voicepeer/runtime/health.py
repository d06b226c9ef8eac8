"""Media health: how late the event loop runs, which is how late audio frames leave.

Every outbound frame, every inbound packet and every data-channel message is handled on the one event
loop, so anything that holds it (a CPU-bound call made in the loop's thread, a GIL-hungry worker)
delays the bot's voice. ``LoopMonitor`` asks the loop to wake it every 10 ms and records how late it
was woken, and samples the loop thread's scheduling so that a late frame can be explained
(``stalls.StallClock``); the outbound tracks count the frames they released late (``PlayoutTrack.gaps``)
by cause.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

import numpy as np

from .stalls import StallClock, stall_clock

INTERVAL_S = 0.01

WINDOW = 30_000
"""Lag samples kept for the percentiles: the last five minutes at one every 10 ms."""


class LoopMonitor:
    def __init__(
        self, interval_s: float = INTERVAL_S, window: int = WINDOW, clock: StallClock | None = None
    ) -> None:
        self.interval_s = interval_s
        self.clock = clock if clock is not None else stall_clock()
        self._lags: deque[float] = deque(maxlen=window)
        self._task: asyncio.Task[None] | None = None
        self.samples = 0
        self.max_s = 0.0
        self.over_30ms = 0

    def start(self) -> None:
        if self._task is None:
            self.clock.attach()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self.clock.detach()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.interval_s)
            self.clock.sample()
            self.record(loop.time() - before - self.interval_s)

    def record(self, lag_s: float) -> None:
        lag_s = max(0.0, lag_s)
        self._lags.append(lag_s)
        self.samples += 1
        self.max_s = max(self.max_s, lag_s)
        self.over_30ms += lag_s > 0.030

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100) of the recent lags, in seconds."""
        return float(np.percentile(self._lags, q)) if self._lags else 0.0
