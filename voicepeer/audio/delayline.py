"""The far-end reference on its way to the echo canceller: held back by the echo's delay, and edited
where the client's playout was edited.

The canceller pairs each microphone frame with the reference frame it hands out, so the reference
must be the bot's voice on the timeline the client played it. The client's receiver does not play
what we send as sent: when it runs dry it plays silence (concealment) and everything after later,
and when its buffer swells it squeezes the voice back (time stretching). Those edits happened at a
point of the voice the client had reached then, which is *behind* what the canceller is being handed
now: the report comes a poll and a transit after the edit, and the canceller is handed the
reference ``ALIGN_SLACK_MS`` (the part of the echo's delay left to it) ahead of its echo. A silence
added at the newest end of the queue, as a move of the delay, leaves the voice between the edit
and now on the old timeline: its echo came back unmatched (about half a second of it after a
493 ms dry spell, and a turn opened on it). So the line keeps what it has handed out for a while,
and an edit goes where it happened: silence inserted there, the voice after it handed out again;
or the squeezed-out samples cut there.
"""

from __future__ import annotations

import numpy as np

from .formats import SampleBuffer

HISTORY_S = 2.0
"""Reference kept after it was handed out, for edits that happened before it was: the report's own
delay plus the slack left to the canceller, with room to spare."""

MAX_DELAY_S = 3.0
"""The longest the line holds the reference back, whatever the edits say: past the echo's longest
delay looked for (1.5 s) and the reference's own queue (``frontend.MAX_REFERENCE_MS``), a longer hold
is of no use, and an edit comes from the client, so its size is bounded here."""


class DelayLine:
    """A FIFO of int16 samples handed out ``delay`` samples after they came in, whose content can be
    edited at any point of the last ``HISTORY_S`` seconds, handed out or not. All sample counts.

    ``back`` counts samples of the line, silence included: the silence of an edit goes in before the
    voice it delayed, so a later edit of that voice still finds it; a realignment (``set_delay``)
    is a rare exception that an edit reaching across it misses by its size."""

    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._history = SampleBuffer()  # handed out, oldest first
        self._held = SampleBuffer()  # not handed out yet, oldest first
        self._history_limit = round(HISTORY_S * rate)
        self._limit = round(MAX_DELAY_S * rate)
        self._owed = 0  # samples cut that could not be (no delay left to take them from)

    @property
    def delay(self) -> int:
        """Samples between the newest that came in and the next handed out."""
        return len(self._held)

    def push_pop(self, pcm: np.ndarray, n: int) -> np.ndarray:
        """Takes ``pcm`` in and hands out the next ``n`` samples (``n`` = ``pcm.size`` keeps the delay;
        silence if too few are held)."""
        self._held.push(pcm)
        out = self._held.pop(n)
        if out is None:
            out = np.zeros(n, dtype=np.int16)
            have = self._held.pop_all()
            out[: have.size] = have
        self._history.push(out)
        self._trim()
        return out

    def set_delay(self, samples: int) -> None:
        """Holds the reference back ``samples`` from now on (a new measurement of the echo's delay, not
        an edit): the next sample handed out is the one that came in ``samples`` ago. A longer delay
        hands out again what the line handed out then, and silence only for what it no longer
        keeps: the echo coming in now is of that voice. (Silence at the newest end, as it was,
        gave the canceller nothing to cancel for as long as the delay grew: up to a second of the
        first reply's echo, when its delay was first measured at 1.3 s, passed to the turn
        detector as the user.) A shorter one drops the oldest held samples."""
        samples = max(0, min(self._limit, samples))
        self._owed = 0  # a measurement supersedes what the edits could not do
        more = samples - len(self._held)
        if more > 0:
            handed = self._history.pop_all()
            again = min(more, handed.size)
            self._history.push(handed[: handed.size - again])
            held = self._held.pop_all()
            self._held.push(np.zeros(more - again, dtype=np.int16))
            self._held.push(handed[handed.size - again :])
            self._held.push(held)
        else:
            self._held.pop(-more)

    def edit(self, samples: int, back: int) -> int:
        """The client's playout of the samples ``back`` from the newest was edited: ``samples`` > 0 of
        silence were played before them, or ``-samples`` of them were cut. The next sample handed
        out stays where it is in the line, so the delay changes by the edit, except where a cut
        reaches samples not taken in yet (it cannot be made, and the next silence inserted is that
        much shorter, or a receiver squeezing back what it stretched would drift the delay up) or
        the delay would pass ``MAX_DELAY_S`` (the oldest held are dropped). Returns the change."""
        samples = max(-self._limit, min(self._limit, samples))
        if samples > 0 and self._owed:
            paid = min(self._owed, samples)
            self._owed -= paid
            samples -= paid
        if not samples:
            return 0
        handed = len(self._history)
        before = len(self._held)
        line = np.concatenate([self._history.pop_all(), self._held.pop_all()])
        at = max(0, line.size - max(0, back))
        if samples > 0:
            line = np.concatenate([line[:at], np.zeros(samples, dtype=np.int16), line[at:]])
        else:
            line = np.concatenate([line[:at], line[at - samples :]])
        handed = min(handed, line.size)
        self._history.push(line[max(0, handed - self._history_limit) : handed])
        self._held.push(line[handed:][-self._limit :])
        change = len(self._held) - before
        if samples < 0:
            self._owed = min(self._limit, self._owed + change - samples)
        return change

    def _trim(self) -> None:
        excess = len(self._history) - self._history_limit
        if excess > 0:
            self._history.pop(excess)

    def clear(self) -> None:
        self._history.clear()
        self._held.clear()
