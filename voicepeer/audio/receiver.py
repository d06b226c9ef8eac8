"""What the client's receiver did with the bot's voice: when it ran dry and played concealment, its
playout of everything after moved later, and so did the bot's echo in the microphone.

A loaded client (or a network that holds packets back) starves the receiver now and then. On a
Chromium sharing two busy cores with the server, its receiver concealed 460 ms in one go, and its
jitter buffer then held the bot's voice 520 ms instead of 30: the echo came back 490 ms later than
the canceller expected. The cross-correlation (``echopath.EchoCoupling``) found the new delay only
~0.7 s after, and in that time the canceller let the echo through and the double-talk rule took it
for the user. The client knows at once: its ``inbound-rtp`` statistics (W3C webrtc-stats) count the
concealed samples. The project's client sends them on the events channel (``playout``), and
``PlayoutMoves`` turns them into moves of the echo's delay for ``FrontEnd.playout_moved``.

Only concealment bursts are taken: the receiver's time stretching (``insertedSamplesForDeceleration``,
``removedSamplesForAcceleration``) moves the playout a few ms at a time, which the canceller follows
on its own, and a reference moved in 40 ms steps at the wrong moments lost it more often than it
helped (a replay of three voices: 4-140 frames taken for the user against 46-97 without).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PACKET_MS = 20.0
"""Audio in one of our RTP packets. A lost packet is concealed without moving the playout, and so is
one that came after its turn and was discarded: a receiver that conceals 400 ms may then drop the
late packets instead of playing them all later (on a loaded Chromium its delay rose by 150-300 ms
after 402 ms of concealment)."""

BURST_MS = 60.0
"""Concealment gathered over consecutive reports that moves the echo: less is a late packet or two,
which the receiver makes up for by squeezing and the canceller follows."""

MAX_COUNTER = 2**53
"""Counters above this are not from a real receiver (a JSON number keeps integers exact below it)."""


FIELDS = {
    "concealedSamples": "concealed_samples",
    "packetsLost": "packets_lost",
    "packetsDiscarded": "packets_discarded",
    "clockRate": "clock_rate",
}
"""The ``playout`` message's fields, and the ``ReceiverStats`` attributes they fill."""


@dataclass(frozen=True)
class ReceiverStats:
    """The cumulative counters of one ``inbound-rtp`` report for the bot's voice, as the client sent
    them (names from W3C webrtc-stats)."""

    concealed_samples: float
    packets_lost: float
    packets_discarded: float
    clock_rate: float

    @classmethod
    def parse(cls, message: dict[str, object]) -> ReceiverStats:
        """The counters of a ``playout`` message; ValueError naming the field if one is not a number
        a receiver could report."""
        values: dict[str, float] = {}
        for name, attr in FIELDS.items():
            value = message.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(name)
            if not (-MAX_COUNTER < value < MAX_COUNTER) or (name != "packetsLost" and value < 0):
                raise ValueError(name)  # packetsLost may be negative: duplicates count against it
            values[attr] = float(value)
        if not 8_000 <= values["clock_rate"] <= 192_000:
            raise ValueError("clockRate")
        return cls(**values)


class PlayoutMoves:
    """Turns successive receiver reports into the moves of the client's playout (ms, later) that the
    echo's delay follows. ``ours_ms``: concealment our own outbound stalls explain, which the reference
    was given already (``FarEndReference.stalled``), so it is not counted twice."""

    def __init__(self) -> None:
        self._last: ReceiverStats | None = None
        self._burst = 0.0  # concealment in the reports since the last one without any
        self._moving = False  # the burst reached BURST_MS: the rest of it moves the echo as it comes
        self.reports = 0
        self.moved_ms = 0.0
        """The moves returned so far, in all."""

    def update(self, stats: ReceiverStats, ours_ms: float = 0.0) -> float:
        """The move this report shows, in ms (0.0: none)."""
        last, self._last = self._last, stats
        self.reports += 1
        if last is None or stats.concealed_samples < last.concealed_samples:
            self._burst, self._moving = 0.0, False  # the first report, or a new receiver
            return 0.0
        concealed = (stats.concealed_samples - last.concealed_samples) * 1000 / stats.clock_rate
        dropped = stats.packets_lost - last.packets_lost + stats.packets_discarded - last.packets_discarded
        lost = max(0.0, dropped) * PACKET_MS
        new = max(0.0, concealed - lost - ours_ms)
        if new <= 0:
            self._burst, self._moving = 0.0, False
            return 0.0
        self._burst += new
        if self._moving:
            move = new
        elif self._burst >= BURST_MS:
            move, self._moving = self._burst, True
        else:
            return 0.0
        self.moved_ms += move
        return move
