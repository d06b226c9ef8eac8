"""The bot's voice as a queue of 48 kHz PCM, pulled one 20 ms frame at a time by whatever transport
carries the call.

The call knows nothing of how its audio leaves: a WebRTC track pulls a frame every 20 ms and is the
clock (see ``tracks.PlayoutTrack``), a test pulls as fast or as slowly as it likes. What the call does
need to know is *what has been handed out*, since barge-in keeps in the history only the words the user
was actually sent; so every position here counts samples handed to the transport, not samples queued.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import numpy as np

from ..audio.formats import WEBRTC_FRAME_SAMPLES, WEBRTC_RATE, SampleBuffer
from ..runtime.workers import idle_trim

log = logging.getLogger(__name__)

FrameListener = Callable[[np.ndarray, int, float, bool], None]
"""Called for every frame handed out: (pcm int16 @ 48 kHz, position of its first sample, loop time it
was handed out, whether it carried bot audio)."""


class Playout:
    """A mono s16 queue at ``sample_rate``: ``enqueue`` chunks of any length, ``next_frame`` returns
    exactly ``frame_samples`` (silence when nothing is queued or while paused).

    What the user has been sent so far is ``played_total``: the conversation keeps, on an interruption,
    the words of the reply up to there.
    """

    def __init__(self, sample_rate: int = WEBRTC_RATE, frame_samples: int = WEBRTC_FRAME_SAMPLES) -> None:
        self.sample_rate = sample_rate
        self.frame_samples = frame_samples
        self._buffer = SampleBuffer()
        self._enqueued = 0  # samples ever enqueued (and not cleared)
        self._sent = 0  # samples of enqueued audio ever handed out
        self._position = 0  # samples ever handed out, silence included: the stream clock
        self._idle = asyncio.Event()
        self._idle.set()
        self._listeners: list[FrameListener] = []
        self._paused = False
        idle_trim.watch(self)  # no memory trim stalls the loop while this voice is being sent

    # -- producer side -------------------------------------------------------------------------

    def enqueue(self, pcm: np.ndarray) -> None:
        """Queues int16 mono samples at ``sample_rate`` for playout after what is already queued."""
        pcm = np.asarray(pcm, dtype=np.int16).reshape(-1)
        self._buffer.push(pcm)
        self._enqueued += pcm.size
        if len(self._buffer):
            self._idle.clear()

    def clear(self) -> int:
        """Drops queued audio that has not been handed out yet (barge-in); returns the samples dropped."""
        dropped = self._buffer.clear()
        self._enqueued -= dropped
        self._idle.set()
        return dropped

    def keep(self, samples: int) -> int:
        """Keeps only the next ``samples`` of queued audio (the rest of the sentence playing now) and
        drops what follows; returns the samples dropped."""
        kept = self._buffer.pop(min(max(0, samples), len(self._buffer)))
        assert kept is not None
        dropped = self._buffer.clear()
        if kept.size:
            self._buffer.push(kept)
        self._enqueued -= dropped
        if not len(self._buffer):
            self._idle.set()
        return dropped

    def pause(self) -> None:
        """Hands out silence from the next frame on but keeps what is queued: the user may have started
        to speak (barge-in), and if it was only a cough the bot goes on where it stopped."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def sounding(self) -> bool:
        """Audio is queued to be handed out (paused or not: a pause is a moment's judgement)."""
        return len(self._buffer) > 0

    @property
    def buffered_samples(self) -> int:
        return len(self._buffer)

    @property
    def queued_total(self) -> int:
        """Samples ever queued and not cleared: a position on the same axis as ``played_total``."""
        return self._enqueued

    @property
    def played_total(self) -> int:
        """Samples of queued audio ever handed out."""
        return self._sent

    async def wait_idle(self) -> None:
        """Returns once everything queued so far has been handed out."""
        await self._idle.wait()

    def add_listener(self, listener: FrameListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: FrameListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # -- transport side ------------------------------------------------------------------------

    def next_frame(self, now: float) -> np.ndarray:
        """The next ``frame_samples`` of the bot's voice, handed out at loop time ``now``."""
        n = self.frame_samples
        voiced = len(self._buffer) > 0 and not self._paused
        pcm = self._buffer.pop(n) if voiced else np.zeros(n, dtype=np.int16)
        if pcm is None:  # the last, short piece of the queue, padded with silence
            tail = self._buffer.pop_all()
            pcm = np.zeros(n, dtype=np.int16)
            pcm[: tail.size] = tail
            self._sent += tail.size
        elif voiced:
            self._sent += n
        if not len(self._buffer):
            self._idle.set()  # while paused with audio queued, the playout is not idle
        position = self._position
        self._position += n
        for listener in list(self._listeners):
            try:
                listener(pcm, position, now, voiced)
            except Exception:
                log.exception("frame listener failed")
        return pcm
