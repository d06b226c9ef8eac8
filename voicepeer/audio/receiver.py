"""What the client's receiver did with the bot's voice: when it ran dry and played concealment, its
playout of everything after moved later, and so did the bot's echo in the microphone.

A loaded client (or a network that holds packets back) starves the receiver now and then. On a
Chromium sharing two busy cores with the server, its receiver concealed 460 ms in one go, and its
jitter buffer then held the bot's voice 520 ms instead of 30: the echo came back 490 ms later than
the canceller expected. The cross-correlation (``echopath.EchoCoupling``) found the new delay only
~0.7 s after, and in that time the canceller let the echo through and the double-talk rule took it
for the user. The client knows at once: its ``inbound-rtp`` statistics (W3C webrtc-stats) count the
concealed samples. The project's client sends them on the events channel (``playout``), and
``PlayoutMoves`` turns them into edits of the reference for ``FrontEnd.playout_moved``.

The receiver's time stretching moves the playout too, a few ms at a time, and after a burst it adds
up: the receiver then shrinks its swollen buffer by squeezing the bot's voice
(``removedSamplesForAcceleration``), on that Chromium 500 ms over the next ten seconds. The echo then
comes sooner and sooner, out of the canceller's reach on the early side, and its linear filter,
which cannot follow audio cut a pitch period at a time, let the bot's words through. Each report's
stretching therefore edits the reference as it comes, to the sample (a replay of four voices: 1-3
turns opened on the bot's own voice in those ten seconds without; with, none on three of them).
Small concealments stay out: a late packet or two is squeezed back at once.

Each edit says where it happened, as how far behind the newest audio we sent (``back_ms``): a
concealment where the receiver ran dry (the burst so far, plus the trip), a squeeze at the playout
point (the receiver's buffer, plus the trip, plus half the time between two reports). The reference
is edited there (``delayline.DelayLine``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

PACKET_MS = 20.0
"""Audio in one of our RTP packets. A lost packet is concealed without moving the playout, and so is
one that came after its turn and was discarded: a receiver that conceals 400 ms may then drop the
late packets instead of playing them all later (on a loaded Chromium its delay rose by 150-300 ms
after 402 ms of concealment)."""

BURST_MS = 60.0
"""Concealment gathered over consecutive reports that moves the echo: less is a late packet or two,
which the receiver makes up for by squeezing at once. So such concealment is not followed, and the
squeeze that undoes it is not either (``PlayoutMoves``: its credit)."""

TRIP_MS = 20.0
"""Our audio's way to the client's receiver plus its report's way back, outside its buffer: a
concealment reported at once happened this much behind the newest audio we sent."""

REPORT_EVERY_MS = 100.0
"""How often the project's client reports (``PLAYOUT_REPORT_MS``): a squeeze happened on average half
of it before the report."""

DEFAULT_BUFFER_MS = 60.0
"""The receiver's buffer when its report does not say (an idle Chromium holds 30-80 ms)."""

MAX_CREDIT_MS = 200.0
"""Small concealment kept to be undone by the squeezes that follow: more than a few bursts' worth is
not waiting to be squeezed back any longer."""

MAX_COUNTER = 2**53
"""Counters above this are not from a real receiver (a JSON number keeps integers exact below it)."""


FIELDS = {
    "concealedSamples": "concealed_samples",
    "packetsLost": "packets_lost",
    "packetsDiscarded": "packets_discarded",
    "clockRate": "clock_rate",
}
"""The ``playout`` message's required fields, and the ``ReceiverStats`` attributes they fill."""

OPTIONAL_FIELDS = {
    "insertedSamplesForDeceleration": "inserted_samples",
    "removedSamplesForAcceleration": "removed_samples",
    "jitterBufferDelay": "buffer_delay_s",
    "jitterBufferEmittedCount": "buffer_emitted",
}
"""Its optional fields: a receiver that does not count its time stretching is followed through its
concealment alone, and one that does not say how long its buffer holds the voice is assumed to hold
``DEFAULT_BUFFER_MS``."""


class PlayoutEdit(NamedTuple):
    """A move of the client's playout: ``ms`` later (earlier if negative), at the point of the bot's
    voice ``back_ms`` behind the newest audio we sent when the report came."""

    ms: float
    back_ms: float


@dataclass(frozen=True)
class ReceiverStats:
    """The cumulative counters of one ``inbound-rtp`` report for the bot's voice, as the client sent
    them (names from W3C webrtc-stats)."""

    concealed_samples: float
    packets_lost: float
    packets_discarded: float
    clock_rate: float
    inserted_samples: float | None = None
    removed_samples: float | None = None
    buffer_delay_s: float | None = None
    """``jitterBufferDelay``: seconds each emitted sample spent in the buffer, summed."""
    buffer_emitted: float | None = None

    @classmethod
    def parse(cls, message: dict[str, object]) -> ReceiverStats:
        """The counters of a ``playout`` message; ValueError naming the field if one is not a number
        a receiver could report."""
        values: dict[str, float] = {}
        for name, attr in (FIELDS | OPTIONAL_FIELDS).items():
            value = message.get(name)
            if value is None and name in OPTIONAL_FIELDS:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(name)
            if not (-MAX_COUNTER < value < MAX_COUNTER) or (name != "packetsLost" and value < 0):
                raise ValueError(name)  # packetsLost may be negative: duplicates count against it
            values[attr] = float(value)
        if not 8_000 <= values["clock_rate"] <= 192_000:
            raise ValueError("clockRate")
        return cls(**values)


class PlayoutMoves:
    """Turns successive receiver reports into the edits of the client's playout that the reference
    follows. ``ours_ms``: concealment our own outbound stalls explain, which the reference was given
    already (``FarEndReference.stalled``), so it is not counted twice."""

    def __init__(self) -> None:
        self._last: ReceiverStats | None = None
        self._burst = 0.0  # concealment in the reports since the last one without any
        self._moving = False  # the burst reached BURST_MS: the rest of it moves the echo as it comes
        self._credit = 0.0  # small concealment not followed, which the next squeezes undo
        self.reports = 0
        self.moved_ms = 0.0
        """The moves returned so far, in all."""
        self.concealed_ms = 0.0
        """Of which concealment bursts."""
        self.squeezed_ms = 0.0
        """Time stretching that moved the playout earlier, in all (a positive figure)."""
        self.stretched_ms = 0.0
        """Time stretching that moved it later, in all."""

    def update(self, stats: ReceiverStats, ours_ms: float = 0.0) -> list[PlayoutEdit]:
        """The edits this report shows (none, one or both of a concealment and a squeeze)."""
        last, self._last = self._last, stats
        self.reports += 1
        if last is None or stats.concealed_samples < last.concealed_samples:
            self._burst, self._moving = 0.0, False  # the first report, or a new receiver
            return []
        edits = []
        concealed = self._concealment(last, stats, ours_ms)
        if concealed:
            edits.append(PlayoutEdit(concealed, self._burst + TRIP_MS))
        stretched = _stretch(last, stats)
        if stretched < 0 and self._credit:
            undone = min(self._credit, -stretched)
            self._credit -= undone
            stretched += undone
        if stretched:
            edits.append(PlayoutEdit(stretched, _buffer_ms(last, stats) + TRIP_MS + REPORT_EVERY_MS / 2))
        self.moved_ms += concealed + stretched
        self.concealed_ms += concealed
        self.squeezed_ms += max(0.0, -stretched)
        self.stretched_ms += max(0.0, stretched)
        return edits

    def _concealment(self, last: ReceiverStats, stats: ReceiverStats, ours_ms: float) -> float:
        """The move the receiver's concealment shows: bursts only, without what lost packets and our
        own stalls explain."""
        concealed = (stats.concealed_samples - last.concealed_samples) * 1000 / stats.clock_rate
        dropped = stats.packets_lost - last.packets_lost + stats.packets_discarded - last.packets_discarded
        lost = max(0.0, dropped) * PACKET_MS
        new = max(0.0, concealed - lost - ours_ms)
        if new <= 0:
            if not self._moving:
                self._credit = min(MAX_CREDIT_MS, self._credit + self._burst)
            self._burst, self._moving = 0.0, False
            return 0.0
        self._burst += new
        if self._moving:
            return new
        if self._burst >= BURST_MS:
            self._moving = True
            return self._burst
        return 0.0


def _delta(last: float | None, now: float | None) -> float | None:
    """How much a counter both reports carry grew (None: one lacks it, or it went back)."""
    if last is None or now is None or now < last:
        return None
    return now - last


def _stretch(last: ReceiverStats, stats: ReceiverStats) -> float:
    """How much later (ms) the receiver's time stretching moved its playout between two reports."""
    inserted = _delta(last.inserted_samples, stats.inserted_samples)
    removed = _delta(last.removed_samples, stats.removed_samples)
    if inserted is None or removed is None:
        return 0.0
    return (inserted - removed) * 1000 / stats.clock_rate


def _buffer_ms(last: ReceiverStats, stats: ReceiverStats) -> float:
    """How long the receiver's buffer held the voice it played between two reports."""
    delay = _delta(last.buffer_delay_s, stats.buffer_delay_s)
    emitted = _delta(last.buffer_emitted, stats.buffer_emitted)
    if delay is None or not emitted:
        return DEFAULT_BUFFER_MS
    return delay / emitted * 1000
