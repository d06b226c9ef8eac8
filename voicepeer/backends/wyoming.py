"""Speech recognition and synthesis on a Wyoming server: ``wyoming://HOST:PORT`` in ``--asr`` / ``--tts``.

Wyoming is Home Assistant's protocol for its voice servers (wyoming-faster-whisper, wyoming-piper and
many others). It is small enough to speak here without the ``wyoming`` package: over one TCP
connection each side writes events, an event being one JSON line ``{"type", "version", "data"?,
"data_length"?, "payload_length"?}``, then ``data_length`` bytes of JSON merged over the line's own
``data``, then ``payload_length`` bytes of payload (PCM for ``audio-chunk``).

- ASR: ``transcribe`` {language}, ``audio-start`` {rate, width, channels}, ``audio-chunk``s,
  ``audio-stop`` -> ``transcript`` {text}. The server closes the connection after it: one per turn.
- TTS: ``synthesize`` {text, voice?} -> ``audio-start``, ``audio-chunk``s, ``audio-stop``. A server
  whose ``info`` says ``supports_synthesize_streaming`` (wyoming-piper >= 1.6) gets the streaming
  form instead (``synthesize-start``, ``synthesize-chunk``, ``synthesize``, ``synthesize-stop``) and
  ends with ``synthesize-stopped``, with an audio-start/stop pair per sentence.
- Health: ``describe`` -> ``info``, the programs and models the server has.

Everything read is bounded (a header line, an event's data and payload, a transcript, the audio of one
piece of text, the events skipped while waiting) and every wait has a timeout, since a remote server
may be hung or answer garbage; each of those failures is a short ``BackendError``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from ..audio.formats import SPEECH_RATE, Resampler
from .asr import ASR, Transcript
from .base import MAX_TEXT_CHARS, BackendError, Capabilities
from .registry import BackendContext, BadBackendURL
from .tts import TTS

log = logging.getLogger(__name__)

PROTOCOL_VERSION = "1.10.2"
"""The ``wyoming`` release whose events this module speaks; servers read it as information only."""

ASR_PORT = 10300
TTS_PORT = 10200
"""The ports Home Assistant's add-ons use, for a URL without one."""

CONNECT_TIMEOUT_S = 3.0
"""Connecting to a server on the same network takes milliseconds; a SYN left unanswered (a host that
is gone) would otherwise wait for the kernel's minutes."""

MAX_HEADER_BYTES = 64 * 1024
MAX_DATA_BYTES = 6 * MAX_TEXT_CHARS + 64 * 1024
"""An event's JSON data: a transcript of ``MAX_TEXT_CHARS`` characters even if all are \\u-escaped,
and room for the rest. Refused before it is read."""
MAX_INFO_BYTES = 4 * 1024 * 1024
"""``info`` lists every voice a server could use: 86 kB for wyoming-piper 2.5's whole catalog."""
MAX_PAYLOAD_BYTES = 1024 * 1024
"""One event's payload (wyoming-piper sends 2 kB audio chunks)."""
MAX_OTHER_EVENTS = 1000
"""Events that carry no audio and are not the answer, skipped while waiting for it (transcript
streaming's chunks, empty audio chunks, events of newer protocol versions)."""

TTS_DEFAULT_RATE = 22050
"""The rate a TTS declares when its server cannot be asked at start: Piper's medium and high voices'.
Audio at another rate is resampled to the declared one (see ``WyomingTTS``)."""
DISCOVER_TIMEOUT_S = 5.0


def max_audio_s(text: str) -> float:
    """The longest audio a piece of text may come back as: speech runs at some 15 characters a second,
    and this allows seven times that and 10 s more. Past it the server is sending garbage or endless
    audio, which would otherwise keep the call speaking forever."""
    return 10.0 + 0.5 * len(text)


# -- the protocol -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""

    def encode(self) -> bytes:
        header: dict[str, Any] = {"type": self.type, "version": PROTOCOL_VERSION}
        data = json.dumps(self.data, ensure_ascii=False).encode() if self.data else b""
        if data:
            header["data_length"] = len(data)
        if self.payload:
            header["payload_length"] = len(self.payload)
        return json.dumps(header).encode() + b"\n" + data + self.payload


def _length(header: dict[str, Any], key: str) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BackendError(f"garbage from the server: {key} {str(value)[:20]!r}")
    return value


def _excerpt(raw: bytes) -> str:
    return repr(raw[:60].decode(errors="replace"))


class Connection:
    """One connection to a Wyoming server, every read and write bounded in size and time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout_s: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout_s = timeout_s

    @classmethod
    async def open(cls, host: str, port: int, timeout_s: float) -> Connection:
        connect_s = min(CONNECT_TIMEOUT_S, timeout_s)
        try:
            async with asyncio.timeout(connect_s):
                reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEADER_BYTES)
        except TimeoutError:
            raise BackendError(f"timed out: no connection within {connect_s:g} s") from None
        except ConnectionRefusedError:
            raise BackendError("connection refused") from None
        except OSError as exc:
            raise BackendError(f"cannot connect: {exc.strerror or type(exc).__name__}") from None
        return cls(reader, writer, timeout_s)

    async def send(self, events: Iterable[Event]) -> None:
        try:
            for event in events:
                self.writer.write(event.encode())
                async with asyncio.timeout(self.timeout_s):
                    await self.writer.drain()
        except TimeoutError:
            raise BackendError(f"timed out: the server took nothing for {self.timeout_s:g} s") from None
        except OSError as exc:
            raise BackendError(f"the connection broke: {exc.strerror or type(exc).__name__}") from None

    async def receive(self, max_data: int = MAX_DATA_BYTES) -> Event:
        """The next event, within the timeout. Raises ``BackendError`` when the server closes the
        connection, or sends garbage, truncated or oversized events."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._read(max_data)
        except TimeoutError:
            raise BackendError(f"timed out: no answer within {self.timeout_s:g} s") from None
        except OSError as exc:
            raise BackendError(f"the connection broke: {exc.strerror or type(exc).__name__}") from None

    async def _read(self, max_data: int) -> Event:
        try:
            line = await self.reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise BackendError(f"truncated event: {_excerpt(exc.partial)}") from None
            raise BackendError("the server closed the connection") from None
        except asyncio.LimitOverrunError:
            raise BackendError(f"garbage from the server: a line over {MAX_HEADER_BYTES} bytes") from None
        try:
            header = json.loads(line)
        except ValueError:
            raise BackendError(f"garbage from the server: {_excerpt(line)}") from None
        if not isinstance(header, dict) or not isinstance(header.get("type"), str):
            raise BackendError(f"garbage from the server: {_excerpt(line)}")
        kind: str = header["type"][:64]
        data = header.get("data") or {}
        if not isinstance(data, dict):
            raise BackendError(f"garbage from the server: {kind} data {_excerpt(line)}")
        data_length = _length(header, "data_length")
        payload_length = _length(header, "payload_length")
        if data_length > max_data:
            raise BackendError(f"{kind} event with {data_length} bytes of data (at most {max_data})")
        if payload_length > MAX_PAYLOAD_BYTES:
            raise BackendError(
                f"{kind} event with a {payload_length}-byte payload (at most {MAX_PAYLOAD_BYTES})"
            )
        try:
            if data_length:
                more = json.loads(await self.reader.readexactly(data_length))
                if not isinstance(more, dict):
                    raise BackendError(f"garbage from the server: {kind} data is not an object")
                data = {**data, **more}
            payload = await self.reader.readexactly(payload_length) if payload_length else b""
        except asyncio.IncompleteReadError:
            raise BackendError(f"truncated {kind} event: the connection closed inside it") from None
        except ValueError:
            raise BackendError(f"garbage from the server: {kind} data is not JSON") from None
        return Event(kind, data, payload)

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, *_: object) -> None:
        """Closes it: at once after a failure or an abandoned request (nothing is waited for, no
        half-read answer is left behind), politely after a whole answer."""
        if kind is None:
            await self.close()
        else:
            self.abort()

    def abort(self) -> None:
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        try:
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()
        except (TimeoutError, OSError):
            self.abort()


def _server_error(event: Event) -> BackendError:
    text = str(event.data.get("text") or event.data.get("code") or "no reason given")
    return BackendError(f"the server failed: {text[:200]}")


async def describe(host: str, port: int, timeout_s: float) -> dict[str, Any]:
    """The server's ``info``: its programs (``asr``, ``tts``, ...) with their models or voices."""
    async with await Connection.open(host, port, timeout_s) as conn:
        await conn.send([Event("describe")])
        for _ in range(MAX_OTHER_EVENTS):
            event = await conn.receive(MAX_INFO_BYTES)
            if event.type == "info":
                return event.data
            if event.type == "error":
                raise _server_error(event)
        raise BackendError(f"no info after {MAX_OTHER_EVENTS} events")


def _programs(info: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    programs = info.get(kind)
    if not isinstance(programs, list):
        return []
    return [p for p in programs if isinstance(p, dict) and p.get("installed", True)]


def _languages(items: Iterable[Any]) -> tuple[str, ...]:
    """ISO 639-1 codes of the models' or voices' languages (``en_US`` -> ``en``)."""
    found: set[str] = set()
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("languages"), list):
            found.update(str(lang).split("_")[0].split("-")[0].lower() for lang in item["languages"])
    return tuple(sorted(found))


def _address(url: str, default_port: int, options: tuple[str, ...]) -> tuple[str, int, dict[str, str]]:
    parts = urlsplit(url)
    if not parts.hostname:
        raise BadBackendURL(f"{url!r} has no host (expected e.g. wyoming://127.0.0.1:{default_port})")
    try:
        port = parts.port or default_port
    except ValueError:
        raise BadBackendURL(f"{url!r}: the port is not a number") from None
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - set(options))
    if unknown:
        takes = ", ".join(options) or "no options"
        raise BadBackendURL(f"{url!r}: unknown option {', '.join(unknown)} (a wyoming URL takes {takes})")
    return parts.hostname, port, query


# -- ASR ----------------------------------------------------------------------------------------------


CHUNK_MS = 100
PROBE_SILENCE_S = 0.3


class WyomingASR(ASR):
    """A Wyoming speech-to-text server, one connection per turn (the server closes it after the
    transcript). Not ``cheap``: the call asks it for the turn's transcript only, not for partials."""

    def __init__(self, host: str, port: int, *, language: str = "en", timeout_s: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.path = f"{host}:{port}"
        self.name = f"wyoming://{host}:{port}"
        self.language = language
        self.timeout_s = timeout_s
        self.capabilities = Capabilities(sample_rate=SPEECH_RATE, cheap=False, remote=True)

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        pcm = np.ascontiguousarray(audio, dtype="<i2").reshape(-1)
        step = SPEECH_RATE * CHUNK_MS // 1000
        fmt = {"rate": SPEECH_RATE, "width": 2, "channels": 1}
        requests = [
            Event("transcribe", {"language": self.language} if self.language else {}),
            Event("audio-start", {**fmt, "timestamp": 0}),
            *(
                Event(
                    "audio-chunk", {**fmt, "timestamp": i * 1000 // SPEECH_RATE}, pcm[i : i + step].tobytes()
                )
                for i in range(0, pcm.size, step)
            ),
            Event("audio-stop", {"timestamp": pcm.size * 1000 // SPEECH_RATE}),
        ]
        async with await Connection.open(self.host, self.port, self.timeout_s) as conn:
            await conn.send(requests)
            for _ in range(MAX_OTHER_EVENTS):
                event = await conn.receive()
                if event.type == "transcript":
                    return Transcript(text=_transcript_text(event), audio_s=pcm.size / SPEECH_RATE)
                if event.type == "error":
                    raise _server_error(event)
            raise BackendError(f"no transcript after {MAX_OTHER_EVENTS} events")

    async def probe(self) -> None:
        """Ready when the server lists a speech-to-text program and transcribes 0.3 s of silence (a
        server still loading its model accepts connections but cannot do that)."""
        info = await describe(self.host, self.port, self.timeout_s)
        programs = _programs(info, "asr")
        if not programs:
            raise BackendError("not a speech-to-text server: its info lists no asr program")
        models = [m for p in programs if isinstance(p.get("models"), list) for m in p["models"]]
        self.capabilities = replace(self.capabilities, languages=_languages(models))
        await self.transcribe(np.zeros(int(PROBE_SILENCE_S * SPEECH_RATE), dtype=np.int16))


def _transcript_text(event: Event) -> str:
    text = event.data.get("text")
    if text is None:
        return ""
    if not isinstance(text, str):
        raise BackendError("garbage from the server: the transcript's text is not a string")
    if len(text) > MAX_TEXT_CHARS:
        raise BackendError(f"a transcript of {len(text)} characters (at most {MAX_TEXT_CHARS})")
    return text.strip()


def asr(url: str, context: BackendContext) -> WyomingASR:
    """``wyoming://HOST[:PORT]`` (port 10300 by default); connects nothing until the first request."""
    host, port, _ = _address(url, ASR_PORT, ())
    return WyomingASR(host, port, language=context.language, timeout_s=context.timeout_s)


# -- TTS ----------------------------------------------------------------------------------------------


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
                    raise _server_error(event)
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
        programs = _programs(info, "tts")
        if not programs:
            raise BackendError("not a text-to-speech server: its info lists no tts program")
        self.streaming = not self._force_plain and any(
            p.get("supports_synthesize_streaming") for p in programs
        )
        voices = [v for p in programs if isinstance(p.get("voices"), list) for v in p["voices"]]
        named = [v for v in voices if isinstance(v, dict) and v.get("name") == self.voice]
        self.capabilities = replace(
            self.capabilities, streaming_output=self.streaming, languages=_languages(named)
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
    host, port, options = _address(url, TTS_PORT, ("voice", "speaker"))
    voice, speaker = options.get("voice") or None, options.get("speaker") or None
    return WyomingTTS(host, port, voice=voice, speaker=speaker, timeout_s=context.timeout_s)
