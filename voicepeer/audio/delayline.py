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

from collections import deque

import numpy as np

HISTORY_S = 2.0
"""Reference kept after it was handed out, for edits that happened before it was: the report's own
delay plus the slack left to the canceller, with room to spare."""

MAX_DELAY_S = 3.0
"""The longest the line holds the reference back, whatever the edits say: past the echo's longest
delay looked for (1.5 s) and the reference's own queue (``frontend.MAX_REFERENCE_MS``), a longer hold
is of no use, and an edit comes from the client, so its size is bounded here."""


class DelayLine:
    """A FIFO of int16 samples handed out ``delay`` samples after they came in, whose content can be
    edited at any point of the last ``HISTORY_S`` seconds, handed out or not. All sample counts."""

    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._history: deque[np.ndarray] = deque()  # handed out, oldest first
        self._history_size = 0
        self._held = np.zeros(0, dtype=np.int16)  # not handed out yet, oldest first

    @property
    def delay(self) -> int:
        """Samples between the newest that came in and the next handed out."""
        return self._held.size

    def push_pop(self, pcm: np.ndarray, n: int) -> np.ndarray:
        """Takes ``pcm`` in and hands out the next ``n`` samples (``n`` = ``pcm.size`` keeps the delay;
        silence if too few are held)."""
        held = np.concatenate([self._held, np.asarray(pcm, dtype=np.int16)])
        out = held[:n]
        if out.size < n:
            out = np.concatenate([out, np.zeros(n - out.size, dtype=np.int16)])
        self._held = held[n:]
        self._remember(out)
        return out

    def set_delay(self, samples: int) -> None:
        """Holds the reference back ``samples`` from now on: silence added at the newest end, or the
        oldest held samples dropped (a new measurement of the echo's delay, not an edit: where the
        delay changed is not known)."""
        samples = max(0, min(round(MAX_DELAY_S * self._rate), samples))
        if samples > self._held.size:
            self._held = np.concatenate([self._held, np.zeros(samples - self._held.size, dtype=np.int16)])
        else:
            self._held = self._held[self._held.size - samples :]

    def edit(self, samples: int, back: int) -> int:
        """The client's playout of the samples ``back`` from the newest was edited: ``samples`` > 0 of
        silence were played before them, or ``-samples`` of them were cut. Returns how much the delay
        changed: the edit itself, less what was cut from samples not yet taken in (not undoable)."""
        limit = round(MAX_DELAY_S * self._rate)
        samples = max(-limit, min(limit, samples))
        if not samples:
            return 0
        line = np.concatenate([*self._history, self._held])
        handed = self._history_size
        at = max(0, line.size - max(0, back))
        if samples > 0:
            line = np.concatenate([line[:at], np.zeros(samples, dtype=np.int16), line[at:]])
        else:
            line = np.concatenate([line[:at], line[at - samples :]])
        # The next sample handed out stays at the same place in the line: what was inserted or cut
        # before it shifts the voice after it, and the delay changes by the edit.
        before = self.delay
        self._history = deque([line[:handed]]) if handed else deque()
        self._history_size = min(handed, line.size)
        self._held = line[handed:][-limit:]
        self._trim()
        return self.delay - before

    def _remember(self, out: np.ndarray) -> None:
        self._history.append(out)
        self._history_size += out.size
        self._trim()

    def _trim(self) -> None:
        limit = round(HISTORY_S * self._rate)
        while self._history and self._history_size - self._history[0].size >= limit:
            self._history_size -= self._history.popleft().size

    def clear(self) -> None:
        self._history.clear()
        self._history_size = 0
        self._held = np.zeros(0, dtype=np.int16)
