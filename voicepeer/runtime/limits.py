"""Token buckets: how often a client may do something, with room for a burst.

Used per call (control messages) and per client address (offers). Time is the event loop's monotonic
clock, passed in, so a bucket is plain arithmetic with nothing to schedule or clean up.
"""

from __future__ import annotations

from collections import OrderedDict


class TokenBucket:
    """``rate`` actions per second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at: float | None = None

    def take(self, now: float) -> bool:
        """Spends one action if the bucket allows it now."""
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_s(self) -> float:
        """Seconds until the next action would be allowed."""
        return max(0.0, (1.0 - self._tokens) / self.rate) if self.rate > 0 else float("inf")


class KeyedBuckets:
    """One bucket per key (a client address), the least recently seen forgotten past ``max_keys``: a
    flood from many addresses costs bounded memory, and a forgotten key starts with a full bucket."""

    def __init__(self, rate: float, burst: float, max_keys: int = 10_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str, now: float) -> tuple[bool, float]:
        """(allowed, seconds to wait if not)."""
        bucket = self._buckets.pop(key, None) or TokenBucket(self.rate, self.burst)
        self._buckets[key] = bucket
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        allowed = bucket.take(now)
        return allowed, 0.0 if allowed else bucket.wait_s()
