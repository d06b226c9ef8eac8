"""WAV in and out: a turn as a WAV file for a transcription server, and a speech answer's WAV header
and PCM (a speech server's, or espeak-ng's) decoded as the bytes stream in.

Only 16-bit PCM is accepted (an 8-bit, float or compressed WAV would play as noise), and the header is
looked for within a bound, so garbage fails fast with a short ``BackendError``.
"""

from __future__ import annotations

import io
import struct
import wave
from dataclasses import dataclass

import numpy as np

from ..audio.formats import SPEECH_RATE
from .base import BackendError

MAX_HEADER_BYTES = 64 * 1024
"""How far into a WAV answer its ``data`` chunk must start."""


def wav_bytes(audio: np.ndarray, rate: int = SPEECH_RATE) -> bytes:
    """int16 mono PCM as a WAV file in memory."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(audio, dtype=np.int16).tobytes())
    return buffer.getvalue()


@dataclass(frozen=True)
class PCMFormat:
    rate: int
    channels: int


_UNKNOWN_SIZES = (0, 0xFFFFFFFF)
"""``data`` chunk sizes a streaming server writes before it knows the length."""


def parse_wav_header(buffer: bytes) -> tuple[PCMFormat, int, int | None] | None:
    """``(format, offset of the samples, their byte count or None if unknown)`` once ``buffer`` holds
    the header up to the ``data`` chunk; None while more bytes are needed. Raises ``BackendError`` for
    anything but 16-bit PCM (an 8-bit, float or compressed WAV would play as noise)."""
    if len(buffer) < 12:
        return None
    if buffer[:4] != b"RIFF" or buffer[8:12] != b"WAVE":
        raise BackendError(f"the speech server answered no WAV (it starts {buffer[:12]!r})")
    offset, fmt = 12, None
    while len(buffer) >= offset + 8:
        chunk, size = struct.unpack_from("<4sI", buffer, offset)
        if chunk == b"data":
            if fmt is None:
                raise BackendError("the speech server answered a WAV without a format chunk")
            known = size not in _UNKNOWN_SIZES and size < 0x7FFFF000
            return fmt, offset + 8, size if known else None
        if chunk == b"fmt ":
            if len(buffer) < offset + 8 + min(size, 40):
                return None
            code, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", buffer, offset + 8)
            if code == 0xFFFE and size >= 26:  # WAVE_FORMAT_EXTENSIBLE: the subformat GUID starts with it
                code = struct.unpack_from("<H", buffer, offset + 8 + 24)[0]
            if code != 1 or bits != 16:
                raise BackendError(
                    f"the speech server answered a WAV of format {code}, {bits} bits, not PCM16"
                )
            if not (1 <= channels <= 2 and 8000 <= rate <= 192_000):
                raise BackendError(f"the speech server answered a WAV of {channels} channels at {rate} Hz")
            fmt = PCMFormat(rate=rate, channels=channels)
        offset += 8 + size + (size & 1)
        if offset > MAX_HEADER_BYTES:
            break
    if len(buffer) > MAX_HEADER_BYTES:
        raise BackendError(f"the speech server's WAV has no data in its first {MAX_HEADER_BYTES} bytes")
    return None


class PCMDecoder:
    """Bytes of an answer as they arrive in, int16 frames out (interleaved when stereo), with the
    format read from the WAV header, or given (``pcm``)."""

    def __init__(self, fmt: PCMFormat | None = None) -> None:
        self.fmt = fmt
        self._pending = b""
        self._left: int | None = None
        """Bytes of samples still to come when the WAV header says how many."""
        self.frames = 0

    def feed(self, data: bytes) -> np.ndarray:
        buffer = self._pending + data
        if self.fmt is None:
            header = parse_wav_header(buffer)
            if header is None:
                self._pending = buffer
                return np.zeros(0, dtype=np.int16)
            self.fmt, start, self._left = header
            buffer = buffer[start:]
        if self._left is not None:
            buffer = buffer[: self._left]  # a trailing chunk (LIST, id3) is not audio
            self._left -= len(buffer)
        frame = 2 * self.fmt.channels
        usable = len(buffer) - len(buffer) % frame
        self._pending = buffer[usable:]
        self.frames += usable // frame
        return np.frombuffer(buffer[:usable], dtype="<i2").astype(np.int16, copy=False)

    def finish(self) -> None:
        """Raises if the answer ended early: within the header, or short of its declared length."""
        if self.fmt is None:
            raise BackendError("the speech server's answer ended inside its WAV header")
        if self._left:
            raise BackendError(f"the speech server's WAV was cut short ({self._left} bytes missing)")
