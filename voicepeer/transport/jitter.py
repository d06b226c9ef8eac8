"""The inbound audio's jitter buffer: each Opus packet to the decoder as soon as it is next in order.

aiortc gives every audio receiver ``JitterBuffer(capacity=16, prefetch=4)``, which hands a packet on
only once four more have arrived: 80 ms on the uplink of every call, before the server hears a word.
The prefetch is for video, whose frames span several packets; an Opus packet is a whole 20 ms frame,
and nothing on the server plays the audio out on a clock (the front-end and the turn detector take it
as it comes), so there is nothing for the wait to smooth. Here a packet goes on the moment the one
before it has. A packet that arrives early (its predecessor late or lost) waits, as in aiortc, until
the gap is filled or the buffer overflows; after that the receiver takes one frame per packet, so
frames that became ready together would keep the uplink that many frames late for the rest of the
call. More than ``MAX_BACKLOG`` of them and the oldest is dropped: 20 ms of audio once, rather than
a lag that grows with every reordering.
"""

from __future__ import annotations

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from av import AudioFrame

CAPACITY = 16
"""Packets held while one is missing (as aiortc's): 320 ms, then the gap is given up."""

MAX_BACKLOG = 2
"""Ready frames allowed behind the one handed on (40 ms of lag at most) before the oldest is dropped."""


class AudioJitterBuffer(JitterBuffer):
    def __init__(self) -> None:
        super().__init__(capacity=CAPACITY, prefetch=0)
        self.dropped = 0
        """Frames dropped to keep the lag within ``MAX_BACKLOG``."""

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        assert self._origin is not None
        ready = 0
        while ready < self.capacity and self._packets[(self._origin + ready) % self.capacity] is not None:
            ready += 1
        if ready == 0:
            return None
        if ready - 1 > MAX_BACKLOG:
            self.remove(ready - 1 - MAX_BACKLOG)
            self.dropped += ready - 1 - MAX_BACKLOG
        packet = self._packets[self._origin % self.capacity]
        assert packet is not None
        self.remove(1)
        return JitterFrame(data=packet._data, timestamp=packet.timestamp)  # type: ignore[attr-defined]


def use_audio_jitter_buffer(receiver: RTCRtpReceiver) -> None:
    """Gives an audio receiver this buffer instead of aiortc's; call it before media flows (on the
    ``track`` event). aiortc keeps the buffer in a private attribute and offers no setting for it."""
    if not hasattr(receiver, "_RTCRtpReceiver__jitter_buffer"):
        raise RuntimeError("this aiortc keeps no audio jitter buffer where voicepeer expects it")
    receiver._RTCRtpReceiver__jitter_buffer = AudioJitterBuffer()  # type: ignore[attr-defined]


class Timeline:
    """The microphone's own timeline, from its frames' RTP timestamps: how much audio never came
    between one decoded frame and the next (packets lost for good, frames dropped above, a sender's
    DTX), which the call needs to keep the bot's reference paired with the right moment."""

    MAX_GAP_S = 60.0
    """A jump further than this is a new stream (the sender restarted its timestamps), not a gap."""

    def __init__(self) -> None:
        self._next: int | None = None

    def missing_s(self, frame: AudioFrame) -> float:
        """Seconds missing before ``frame``; 0 for the first one, or for timestamps it cannot read."""
        if frame.pts is None or frame.time_base is None:
            return 0.0
        expected, self._next = self._next, frame.pts + frame.samples
        if expected is None:
            return 0.0
        gap = float((frame.pts - expected) * frame.time_base)
        return gap if 0 < gap <= self.MAX_GAP_S else 0.0
