"""What a test client saw of a call's events, with the loop time each arrived, and waiting on them."""

from __future__ import annotations

import asyncio
from typing import Any


class EventLog:
    def __init__(self) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._got_event = asyncio.Event()

    def record(self, event: dict[str, Any]) -> None:
        self.events.append((asyncio.get_running_loop().time(), event))
        self._got_event.set()

    def messages(self, kind: str) -> list[dict[str, Any]]:
        return [m for _, m in self.events if m.get("type") == kind]

    async def wait_for(self, predicate, timeout: float) -> tuple[float, dict[str, Any]]:
        """The first event (and its arrival time) that satisfies ``predicate``, waiting for it. On a
        timeout the assertion lists what did arrive: a CI log must say why, not just that it waited."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for t, m in self.events:
                        if predicate(m):
                            return t, m
                    self._got_event.clear()
                    await self._got_event.wait()
        except TimeoutError:
            raise AssertionError(f"no such event in {timeout} s; the call sent:\n{self.summary()}") from None

    def summary(self, limit: int = 60) -> str:
        """The last events, one line each, partial transcripts and replies left out."""
        t0 = self.events[0][0] if self.events else 0.0
        lines = [
            f"{t - t0:7.2f} {m}"
            for t, m in self.events
            if not (m.get("type") in ("transcript", "reply") and not m.get("final"))
        ]
        return "\n".join(lines[-limit:])
