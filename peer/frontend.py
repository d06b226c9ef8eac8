"""The audio front-end: echo cancellation, then noise suppression and gain, on the 16 kHz speech path.

It sits between the decoded microphone frames and the VAD/ASR. The echo canceller's far end is the
exact audio the outbound track handed to aiortc (``FarEndReference`` listens to the track), so the peer
can remove its own voice even when the browser's canceller is off or does not cover the output the user
listens on.

Pairing the two streams needs no timestamps arithmetic: the outbound track releases a 20 ms frame every
20 ms and the client's microphone delivers one every 20 ms, so each inbound chunk is paired with the
reference sent most recently, and the echo path's delay (network round trip plus the client's buffers,
100-300 ms, drifting) is left to the canceller's own delay estimation, which is what it is built for.
"""

from __future__ import annotations

import threading

import numpy as np

from .audio import SPEECH_RATE, WEBRTC_RATE, Resampler, SampleBuffer
from .echo import FRAME, EchoCanceller, make_canceller

MAX_REFERENCE_MS = 200
"""Reference older than this when the microphone asks for it is stale (the inbound side paused) and is
dropped, so the pairing stays at "now" and the canceller's delay estimate stays valid."""


FAR_ACTIVE_PEAK = 300
"""A reference frame with a peak above this (-40 dBFS) carries the bot's voice, not silence."""

ECHO_REACH_MS = 600
"""How long after the bot's voice was sent its echo can still reach the microphone: the paired
reference is the latest sent, the echo comes back after the round trip and the client's buffers
(100-300 ms, more on a bad network) plus the room's tail."""


class FarEndReference:
    """What the bot sent, at 16 kHz, queued until the microphone chunk it pairs with arrives.

    Both methods run on the event loop: ``on_frame`` as an OutboundAudioTrack listener, ``take`` from the
    session's inbound task. No locking needed.
    """

    def __init__(self) -> None:
        self._resampler = Resampler(WEBRTC_RATE, SPEECH_RATE)
        self._buffer = SampleBuffer()
        self._max = MAX_REFERENCE_MS * SPEECH_RATE // 1000
        self.dropped = 0

    def on_frame(self, pcm: np.ndarray, _pts: int, _sent_at: float, _voiced: bool) -> None:
        self._buffer.push(self._resampler.push(pcm))
        overflow = len(self._buffer) - self._max
        if overflow > 0:
            self._buffer.pop(overflow)
            self.dropped += overflow

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` reference samples, padded with silence if the track has not sent them yet."""
        out = self._buffer.pop(n)
        if out is None:
            out = np.zeros(n, dtype=np.int16)
            have = self._buffer.pop_all()
            out[: have.size] = have
        return out


class FrontEnd:
    """Echo cancellation, then WebRTC noise suppression and automatic gain, in 10 ms frames.

    Blocking (each 10 ms frame costs ~0.1-0.2 ms), so the session runs it in the front-end worker pool;
    state is per stream and calls must not overlap.
    """

    def __init__(self, aec: str = "aec3", noise_suppression: int = 1, auto_gain_dbfs: int = 0) -> None:
        self.canceller: EchoCanceller | None = make_canceller(aec)
        self._processor = None
        if noise_suppression or auto_gain_dbfs:
            from webrtc_noise_gain import AudioProcessor

            self._processor = AudioProcessor(auto_gain_dbfs, noise_suppression)
        self._near = SampleBuffer()
        self._far = SampleBuffer()
        self._far_frames_ago = 10**9  # 10 ms frames since the reference last carried sound
        # A session closing cancels the task awaiting process(), not the worker thread running it; the
        # lock keeps close() from freeing a native canceller under a frame still being processed.
        self._lock = threading.Lock()
        self._closed = False

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        """Microphone and reference samples at 16 kHz (equal counts); returns the cleaned microphone,
        in whole 10 ms frames (a remainder waits for the next call)."""
        with self._lock:
            if self._closed:
                return np.zeros(0, dtype=np.int16)
            return self._process(near, far)

    def _process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        self._near.push(near)
        self._far.push(far)
        out = []
        while (mic := self._near.pop(FRAME)) is not None:
            ref = self._far.pop(FRAME)
            if ref is None:
                ref = np.zeros(FRAME, dtype=np.int16)
            self._far_frames_ago = (
                0 if np.abs(ref).max(initial=0) > FAR_ACTIVE_PEAK else self._far_frames_ago + 1
            )
            if self.canceller is not None:
                mic = self.canceller.process(mic, ref)
            if self._processor is not None:
                mic = np.frombuffer(self._processor.Process10ms(mic.tobytes()).audio, dtype=np.int16)
            out.append(mic)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int16)

    @property
    def echo_possible(self) -> bool:
        """The bot's voice may be in the microphone now: it was sent within ``ECHO_REACH_MS``."""
        return self._far_frames_ago * 10 < ECHO_REACH_MS

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self.canceller is not None:
                self.canceller.close()
