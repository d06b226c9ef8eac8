"""The outbound audio track: the bot's voice, paced in real time, silence when there is nothing to say.

aiortc pulls frames from ``recv()`` as fast as it returns them, so the track itself is the clock: each
frame is released when the event loop's monotonic clock reaches its presentation time. Two rules come
from how aiortc's sender behaves: a frame without ``pts`` or any exception other than MediaStreamError
ends the sender task for good (silently, the call stays up with a dead audio track), so ``recv()``
catches everything and falls back to silence.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from fractions import Fraction

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .audio import WEBRTC_FRAME_SAMPLES, WEBRTC_RATE, SampleBuffer

log = logging.getLogger(__name__)

FrameListener = Callable[[np.ndarray, int, float, bool], None]
"""Called for every frame handed to aiortc: (pcm int16 @ 48 kHz, pts, loop time sent, has bot audio)."""

GAP_S = 0.03
"""Two frames handed to aiortc further apart than this (nominally 20 ms) count as a gap in the media."""

MAX_LATE_S = 0.2
"""If the loop stalled for longer than this, restart the pacing clock instead of bursting to catch up.

Bursting hundreds of milliseconds of audio into the network at once would overflow the receiver's jitter
buffer and be dropped anyway; a clean restart keeps pts contiguous and the audio continuous."""


class OutboundAudioTrack(MediaStreamTrack):
    """A 48 kHz mono s16 track fed with PCM by the conversation and drained by aiortc.

    ``enqueue`` may be called with chunks of any length; ``recv`` always returns exactly one 20 ms frame
    with contiguous ``pts``. ``on_played`` callbacks fire when the last sample of their chunk has been
    handed to aiortc, which is how the conversation learns what the user has actually been sent.
    """

    kind = "audio"

    def __init__(self, sample_rate: int = WEBRTC_RATE, frame_samples: int = WEBRTC_FRAME_SAMPLES) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.frame_samples = frame_samples
        self._time_base = Fraction(1, sample_rate)
        self._buffer = SampleBuffer()
        self._pts = 0
        self._start: float | None = None
        self._enqueued = 0  # samples ever enqueued (and not cleared)
        self._sent = 0  # samples of enqueued audio ever handed out
        self._marks: deque[tuple[int, Callable[[], None]]] = deque()
        self._idle = asyncio.Event()
        self._idle.set()
        self._listeners: list[FrameListener] = []
        self._paused = False
        self._last_sent_at: float | None = None
        self.frames_sent = 0
        self.restarts = 0
        self.gaps = 0
        """Frames sent more than ``GAP_S`` after the one before: a stalled loop or a starved sender."""
        self.max_interval_s = 0.0

    # -- producer side -------------------------------------------------------------------------

    def enqueue(self, pcm: np.ndarray, on_played: Callable[[], None] | None = None) -> None:
        """Queues int16 mono samples at ``sample_rate`` for playout after what is already queued."""
        pcm = np.asarray(pcm, dtype=np.int16).reshape(-1)
        self._buffer.push(pcm)
        self._enqueued += pcm.size
        if on_played is not None:
            self._marks.append((self._enqueued, on_played))
        if len(self._buffer):
            self._idle.clear()

    def clear(self) -> int:
        """Drops queued audio that has not been sent yet (barge-in); returns the samples dropped."""
        dropped = self._buffer.clear()
        self._enqueued -= dropped
        self._marks.clear()
        self._idle.set()
        return dropped

    def pause(self) -> None:
        """Sends silence from the next frame on but keeps what is queued: the user may have started to
        speak (barge-in), and if it was only a cough the bot goes on where it stopped."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def buffered_samples(self) -> int:
        return len(self._buffer)

    @property
    def queued_total(self) -> int:
        """Samples ever queued and not cleared: a position on the same axis as ``played_total``."""
        return self._enqueued

    @property
    def played_total(self) -> int:
        """Samples of queued audio ever handed to aiortc."""
        return self._sent

    async def wait_idle(self) -> None:
        """Returns once everything queued so far has been handed to aiortc."""
        await self._idle.wait()

    def add_listener(self, listener: FrameListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: FrameListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # -- aiortc side ---------------------------------------------------------------------------

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        try:
            await self._wait_for_slot()
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover - defensive: pacing must never kill the sender
            log.exception("outbound pacing failed; sending without delay")
        try:
            return self._next_frame()
        except Exception:
            log.exception("outbound frame failed; sending silence")
            return self._frame(np.zeros(self.frame_samples, dtype=np.int16))

    async def _wait_for_slot(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._start is None:
            self._start = now
            return
        target = self._start + (self._pts + self.frame_samples) / self.sample_rate
        delay = target - now
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -MAX_LATE_S:
            self.restarts += 1
            log.warning("outbound track %.0f ms late; restarting its clock", -delay * 1000)
            self._start = now - (self._pts + self.frame_samples) / self.sample_rate

    def _next_frame(self) -> av.AudioFrame:
        if self.frames_sent:
            self._pts += self.frame_samples
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
        if voiced:
            while self._marks and self._marks[0][0] <= self._sent:
                _, callback = self._marks.popleft()
                try:
                    callback()
                except Exception:
                    log.exception("on_played callback failed")
        if not len(self._buffer):
            self._idle.set()  # while paused with audio queued, the track is not idle
        frame = self._frame(pcm)
        self.frames_sent += 1
        sent_at = asyncio.get_running_loop().time()
        if self._last_sent_at is not None:
            interval = sent_at - self._last_sent_at
            self.max_interval_s = max(self.max_interval_s, interval)
            if interval > GAP_S:
                self.gaps += 1
        self._last_sent_at = sent_at
        for listener in list(self._listeners):
            try:
                listener(pcm, self._pts, sent_at, voiced)
            except Exception:
                log.exception("frame listener failed")
        return frame

    def _frame(self, pcm: np.ndarray) -> av.AudioFrame:
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        frame.time_base = self._time_base
        return frame
