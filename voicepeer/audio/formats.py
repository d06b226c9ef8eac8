"""Sample formats, rates and the converters between them.

Two rates meet here. The WebRTC edge runs at 48 kHz: aiortc's Opus decoder hands us s16 packed stereo
frames of 960 samples (20 ms) even when the browser sends mono, and its encoder takes whatever we give
it at 48 kHz. The speech path (VAD, ASR) runs at 16 kHz mono because that is what Silero and Whisper
were trained on. Piper speaks at the voice's own rate (22050 Hz for the bundled voice).

Every conversion goes through one stateful ``av.AudioResampler`` per stream, so the filter history
carries across frame boundaries and the output has no clicks or drift; resampling each frame on its own
would restart the filter every 20 ms.
"""

from __future__ import annotations

from collections import deque
from fractions import Fraction

import av
import numpy as np

WEBRTC_RATE = 48_000
"""Sample rate at the WebRTC edge, in Hz (Opus' native rate)."""

WEBRTC_FRAME_SAMPLES = 960
"""Samples per channel in one 20 ms WebRTC audio frame at 48 kHz."""

SPEECH_RATE = 16_000
"""Sample rate of the speech path (VAD and ASR), in Hz."""

INT16_FULL_SCALE = 32768.0


class Resampler:
    """Converts a stream of int16 audio from one rate and layout to 16-bit mono at another rate.

    One instance per stream: it keeps the resampling filter state and its own sample clock, so
    consecutive chunks join seamlessly. Input timestamps are ignored on purpose: the aiortc jitter buffer
    may skip packets, and a jump in pts would make libswresample insert or drop samples to compensate,
    which we do not want inside the speech path.
    """

    def __init__(self, in_rate: int, out_rate: int, in_layout: str = "mono") -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.in_layout = in_layout
        self._channels = 2 if in_layout == "stereo" else 1
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=out_rate)
        self._pts = 0

    def _run(self, frame: av.AudioFrame | None) -> np.ndarray:
        out = self._resampler.resample(frame)
        if not out:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in out]).astype(np.int16, copy=False)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Feeds interleaved int16 samples; returns whatever mono int16 output is ready."""
        samples = np.ascontiguousarray(samples, dtype=np.int16).reshape(1, -1)
        if samples.shape[1] == 0:
            return np.zeros(0, dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout=self.in_layout)
        frame.sample_rate = self.in_rate
        frame.pts = self._pts
        frame.time_base = Fraction(1, self.in_rate)
        self._pts += samples.shape[1] // self._channels
        return self._run(frame)

    def flush(self) -> np.ndarray:
        """Drains the filter's delay line at the end of a stream."""
        return self._run(None)


class InboundConverter:
    """Turns microphone PCM at whatever rate and layout the transport delivers into 16 kHz mono int16
    for the speech path.

    A new resampler is built only if the rate or channel count changes mid-stream (aiortc 1.16 always
    decodes Opus to 48 kHz stereo, but a transport is free to deliver something else).
    """

    def __init__(self, out_rate: int = SPEECH_RATE) -> None:
        self.out_rate = out_rate
        self._resampler: Resampler | None = None

    def convert(self, pcm: np.ndarray, sample_rate: int, channels: int = 1) -> np.ndarray:
        """``pcm``: interleaved int16 samples, ``channels`` of them per instant, at ``sample_rate`` Hz."""
        if channels not in (1, 2):
            raise ValueError(f"microphone audio must be mono or stereo, not {channels} channels")
        if sample_rate <= 0:
            raise ValueError(f"bad sample rate {sample_rate}")
        layout = "stereo" if channels == 2 else "mono"
        r = self._resampler
        if r is None or r.in_rate != sample_rate or r.in_layout != layout:
            r = self._resampler = Resampler(sample_rate, self.out_rate, layout)
        return r.push(pcm)


def frame_pcm(frame: av.AudioFrame) -> tuple[np.ndarray, int, int]:
    """A decoded frame as aiortc delivers it (s16 packed) as (interleaved samples, rate, channels)."""
    if frame.format.name != "s16":
        raise ValueError(f"expected s16 packed audio, got {frame.format.name}")
    return frame.to_ndarray().reshape(-1), frame.sample_rate, len(frame.layout.channels)


def to_float32(pcm: np.ndarray) -> np.ndarray:
    """int16 PCM to float32 in [-1, 1), the form Silero and Whisper take."""
    return pcm.astype(np.float32) / INT16_FULL_SCALE


def to_int16(audio: np.ndarray) -> np.ndarray:
    """float PCM in [-1, 1] to int16 with clipping (never wraps around)."""
    return np.clip(np.round(audio * INT16_FULL_SCALE), -32768, 32767).astype(np.int16)


def rms_dbfs(pcm: np.ndarray) -> float:
    """RMS level of int16 PCM in dB relative to full scale; -inf-safe (floors at -120 dB)."""
    if pcm.size == 0:
        return -120.0
    x = pcm.astype(np.float64) / INT16_FULL_SCALE
    return float(10.0 * np.log10(max(np.mean(x * x), 1e-12)))


def leading_quiet(pcm: np.ndarray, rate: int, below_peak_db: float, frame_ms: int = 10) -> int:
    """How many samples at the start of ``pcm`` come before its first frame within ``below_peak_db`` of
    its loudest frame (0 when the first frame already is, or ``pcm`` is shorter than a frame)."""
    n = rate * frame_ms // 1000
    frames = pcm.size // n
    if frames == 0:
        return 0
    x = pcm[: frames * n].astype(np.float64).reshape(frames, n)
    energy = np.mean(x * x, axis=1)
    loud = np.flatnonzero(energy >= energy.max() * 10 ** (-below_peak_db / 10))
    return int(loud[0]) * n


class SampleBuffer:
    """A FIFO of int16 samples that hands out fixed-size blocks.

    The VAD wants 512-sample windows, WebRTC wants 960-sample frames, and producers deliver whatever
    size they have (a whole TTS sentence at once). Popping copies only the samples handed out, never the
    rest of the queue, so a long reply sitting in the buffer costs nothing per 20 ms frame.
    """

    def __init__(self) -> None:
        self._chunks: deque[np.ndarray] = deque()
        self._offset = 0  # samples of _chunks[0] already handed out
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, pcm: np.ndarray) -> None:
        if pcm.size:
            self._chunks.append(np.asarray(pcm, dtype=np.int16).reshape(-1))
            self._size += pcm.size

    def pop(self, n: int) -> np.ndarray | None:
        """Removes and returns exactly ``n`` samples, or None if fewer are buffered."""
        if self._size < n:
            return None
        out = np.empty(n, dtype=np.int16)
        filled = 0
        while filled < n:
            head = self._chunks[0]
            take = min(n - filled, head.size - self._offset)
            out[filled : filled + take] = head[self._offset : self._offset + take]
            filled += take
            self._offset += take
            if self._offset == head.size:
                self._chunks.popleft()
                self._offset = 0
        self._size -= n
        return out

    def pop_all(self) -> np.ndarray:
        out = self.pop(self._size)
        return out if out is not None else np.zeros(0, dtype=np.int16)

    def clear(self) -> int:
        """Drops everything buffered; returns how many samples were dropped."""
        n = self._size
        self._chunks.clear()
        self._offset = 0
        self._size = 0
        return n
