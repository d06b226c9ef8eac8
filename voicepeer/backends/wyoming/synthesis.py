"""Speech synthesis on a Wyoming server (wyoming-piper): ``wyoming://HOST[:PORT][?voice=NAME]`` in ``--tts``.

``synthesize`` {text, voice?} -> ``audio-start``, ``audio-chunk``s, ``audio-stop``. A server whose
``info`` says ``supports_synthesize_streaming`` (wyoming-piper >= 1.6) gets the streaming form instead
(``synthesize-start``, ``synthesize-chunk``, ``synthesize``, ``synthesize-stop``) and ends with
``synthesize-stopped``, with an audio-start/stop pair per sentence. The audio of one piece of text is
bounded (``max_audio_s``), and audio in any PCM format or rate becomes int16 mono at the declared rate.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ...audio.formats import Resampler
from ..base import MAX_TEXT_CHARS, BackendError, Capabilities
from ..registry import BackendContext
from ..tts import TTS
from .protocol import (
    MAX_OTHER_EVENTS,
    Connection,
    Event,
    describe,
    installed_programs,
    language_codes,
    parse_address,
    server_error,
)

log = logging.getLogger(__name__)

TTS_PORT = 10200
"""The port Home Assistant's text-to-speech add-ons use, for a URL without one."""

TTS_DEFAULT_RATE = 22050
"""The rate a TTS declares when its server cannot be asked at start: Piper's medium and high voices'.
Audio at another rate is resampled to the declared one (see ``WyomingTTS``)."""
DISCOVER_TIMEOUT_S = 5.0


def max_audio_s(text: str) -> float:
    """The longest audio a piece of text may come back as: speech runs at some 15 characters a second,
    and this allows seven times that and 10 s more. Past it the server is sending garbage or endless
    audio, which would otherwise keep the call speaking forever."""
    return 10.0 + 0.5 * len(text)


@dataclass(frozen=True)
class AudioFormat:
    rate: int
    width: int
    channels: int

    @classmethod
    def of(cls, data: dict[str, Any], default: AudioFormat | None) -> AudioFormat:
        values = [data.get(key, getattr(default, key, None)) for key in ("rate", "width", "channels")]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise BackendError(f"audio without a format: {json.dumps(data)[:80]}")
        fmt = cls(*values)
        if not (1000 <= fmt.rate <= 384_000) or fmt.width not in (1, 2, 4) or not (1 <= fmt.channels <= 16):
            raise BackendError(
                f"unsupported audio: {fmt.rate} Hz, {fmt.width} bytes per sample, {fmt.channels} channels"
            )
        return fmt

    @property
    def frame_bytes(self) -> int:
        return self.width * self.channels

    def to_mono_int16(self, raw: bytes) -> np.ndarray:
        """Whole frames of ``raw`` as int16 mono: 8-bit (unsigned) and 32-bit PCM scaled to 16-bit,
        channels averaged."""
        if self.width == 1:
            samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.int32) - 128) << 8
        elif self.width == 2:
            samples = np.frombuffer(raw, dtype="<i2").astype(np.int32)
        else:
            samples = np.frombuffer(raw, dtype="<i4") >> 16
        if self.channels > 1:
            samples = samples.reshape(-1, self.channels).sum(axis=1, dtype=np.int64) // self.channels
        return samples.astype(np.int16)


class WyomingTTS(TTS):
    """A Wyoming text-to-speech server, one connection per piece of text.

    ``sample_rate`` has to be right before the first synthesis (the TTS chain and the call size their
    resamplers by it), and Wyoming says the rate only in the answer's ``audio-start``. So the factory
    asks the server once, blocking, with a short timeout (``DISCOVER_TIMEOUT_S``): its ``info`` and the
    rate of a synthesized "Hi." (which also loads wyoming-piper's voice before the first reply). A
    server that cannot be asked then (down, still starting) gets ``TTS_DEFAULT_RATE``; audio that
    arrives at another rate than the declared one, then or after a server change, is resampled to it
    here, so the declared rate always holds.

    Chunks are yielded as they arrive. ``capabilities.streaming_output`` is what the server's ``info``
    says (``supports_synthesize_streaming``), learned at start and on every probe.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        voice: str | None = None,
        speaker: str | None = None,
        sample_rate: int | None = None,
        timeout_s: float = 10.0,
        streaming: bool | None = None,
    ) -> None:
        """``sample_rate`` None: asked of the server now (blocking). ``streaming`` None: as the server's
        info says; False: always the plain ``synthesize`` request."""
        self.host = host
        self.port = port
        self.path = f"{host}:{port}"
        self.name = f"wyoming://{host}:{port}"
        self.voice = voice
        self.speaker = speaker
        self.timeout_s = timeout_s
        self._force_plain = streaming is False
        self.streaming = False
        self.server_rate: int | None = None
        """The rate of the server's last audio (None before any)."""
        self.sample_rate = sample_rate or TTS_DEFAULT_RATE
        self.capabilities = Capabilities(sample_rate=self.sample_rate, cheap=False, remote=True)
        if sample_rate is None:
            self.sample_rate = self._discover_rate()
            self.capabilities = replace(self.capabilities, sample_rate=self.sample_rate)

    def _discover_rate(self) -> int:
        timeout_s = min(DISCOVER_TIMEOUT_S, self.timeout_s)

        async def ask() -> None:
            async with asyncio.timeout(timeout_s):
                await self.probe()

        # In a thread with its own loop: the factory is called from blocking code, which may itself run
        # in a worker of the server's event loop.
        try:
            with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="wyoming-tts") as pool:
                pool.submit(asyncio.run, ask()).result()
        except (BackendError, TimeoutError) as exc:
            reason = str(exc) or "timed out"
            log.warning(
                "TTS %s: %s; declaring %d Hz, other rates resampled", self.name, reason, TTS_DEFAULT_RATE
            )
            return TTS_DEFAULT_RATE
        return self.server_rate or TTS_DEFAULT_RATE

    def _voice(self) -> dict[str, str]:
        voice = {"name": self.voice} if self.voice else {}
        if self.voice and self.speaker:
            voice["speaker"] = self.speaker
        return voice

    def _requests(self, text: str) -> list[Event]:
        voice = {"voice": self._voice()} if self.voice else {}
        if not self.streaming:
            return [Event("synthesize", {"text": text, **voice})]
        # The plain ``synthesize`` inside the stream is for servers that only pretend to stream; a
        # streaming one ignores it (the protocol's own rule, which Home Assistant follows).
        return [
            Event("synthesize-start", voice),
            Event("synthesize-chunk", {"text": text}),
            Event("synthesize", {"text": text, **voice}),
            Event("synthesize-stop"),
        ]

    async def _audio(self, text: str) -> AsyncIterator[tuple[int, np.ndarray]]:
        """The server's audio for ``text`` as (rate, int16 mono) chunks, as they arrive."""
        streaming = self.streaming
        limit_s = max_audio_s(text)
        async with await Connection.open(self.host, self.port, self.timeout_s) as conn:
            await conn.send(self._requests(text))
            fmt: AudioFormat | None = None
            carry = b""
            audio_s = 0.0
            others = 0
            while True:
                event = await conn.receive()
                if event.type == "audio-chunk" and event.payload:
                    chunk_fmt = AudioFormat.of(event.data, fmt)
                    if chunk_fmt != fmt:
                        carry = b""  # a partial frame of another format is noise
                        fmt = chunk_fmt
                    raw = carry + event.payload
                    whole = len(raw) - len(raw) % fmt.frame_bytes
                    carry = raw[whole:]
                    if whole:
                        pcm = fmt.to_mono_int16(raw[:whole])
                        audio_s += pcm.size / fmt.rate
                        if audio_s > limit_s:
                            raise BackendError(f"over {limit_s:g} s of audio for {len(text)} characters")
                        self.server_rate = fmt.rate
                        yield fmt.rate, pcm
                    continue
                if event.type == "audio-start":
                    fmt = AudioFormat.of(event.data, None)
                    carry = b""
                elif event.type == "audio-stop" and not streaming:
                    break
                elif event.type == "synthesize-stopped" and streaming:
                    break
                elif event.type == "error":
                    raise server_error(event)
                others += 1
                if others > MAX_OTHER_EVENTS:
                    raise BackendError(f"no end of audio after {MAX_OTHER_EVENTS} events without audio")

    async def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        if not text.strip():
            return
        if len(text) > MAX_TEXT_CHARS:
            raise BackendError(f"a piece of {len(text)} characters (at most {MAX_TEXT_CHARS})")
        resampler: Resampler | None = None
        async for rate, pcm in self._audio(text):
            if rate != self.sample_rate:
                if resampler is None or resampler.in_rate != rate:
                    if resampler is not None and (tail := resampler.flush()).size:
                        yield tail
                    resampler = Resampler(rate, self.sample_rate)
                pcm = resampler.push(pcm)
            if pcm.size:
                yield pcm
        if resampler is not None:
            tail = resampler.flush()
            if tail.size:
                yield tail

    async def probe(self) -> None:
        """Ready when the server lists a text-to-speech program and speaks "Hi." (wyoming-piper loads
        its voice on the first request: a server that cannot is not up). Learns whether it streams,
        the voice's languages and the rate it speaks at."""
        info = await describe(self.host, self.port, self.timeout_s)
        programs = installed_programs(info, "tts")
        if not programs:
            raise BackendError("not a text-to-speech server: its info lists no tts program")
        self.streaming = not self._force_plain and any(
            p.get("supports_synthesize_streaming") for p in programs
        )
        voices = [v for p in programs if isinstance(p.get("voices"), list) for v in p["voices"]]
        named = [v for v in voices if isinstance(v, dict) and v.get("name") == self.voice]
        self.capabilities = replace(
            self.capabilities, streaming_output=self.streaming, languages=language_codes(named)
        )
        samples = 0
        async for _rate, pcm in self._audio("Hi."):
            samples += pcm.size
        if not samples:
            raise BackendError('no audio for "Hi."')


def tts(url: str, context: BackendContext) -> WyomingTTS:
    """``wyoming://HOST[:PORT][?voice=NAME[&speaker=NAME]]`` (port 10200 by default; without a voice,
    the server's default). ``--tts-voice`` is not sent: it names the embedded voice, which may be a
    file path. Asks the server for its rate now (blocking, at most ``DISCOVER_TIMEOUT_S``)."""
    host, port, options = parse_address(url, TTS_PORT, ("voice", "speaker"))
    voice, speaker = options.get("voice") or None, options.get("speaker") or None
    return WyomingTTS(host, port, voice=voice, speaker=speaker, timeout_s=context.timeout_s)
