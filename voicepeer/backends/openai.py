"""The OpenAI-compatible HTTP API for every stage: ``http(s)://HOST:PORT/v1`` in --asr, --tts, --llm.

- ASR: ``POST /v1/audio/transcriptions`` (multipart: the turn as a 16 kHz WAV, ``model``, ``language``,
  ``response_format=json``): faster-whisper-server, speaches, vLLM, OpenAI.
- TTS: ``POST /v1/audio/speech`` (JSON ``model``, ``input``, ``voice``, ``response_format``):
  local-tts-studio, Kokoro-FastAPI, openedai-speech, OpenAI.
- LLM: ``POST /v1/chat/completions``, streamed as server-sent events: llama.cpp's and llama-cpp-python's
  servers, Ollama, vLLM, OpenAI.

What the API leaves open is taken from the URL's query, which is not part of the backend's name and is
not sent as such:

- ASR: ``?model=NAME`` (default: ``--asr-model`` when it is a name, not a path; else ``whisper-1``),
  ``?language=xx``.
- TTS: ``?voice=NAME`` (default ``alloy``; ``--tts-voice`` names a Piper voice for the embedded
  backend), ``?model=NAME`` (default ``tts-1``), ``?format=wav|pcm`` (default ``wav``), ``?rate=HZ``
  (the rate to yield; default: the server's, asked once at startup).
- LLM: ``?model=NAME`` when ``--llm-model`` names none.

A bearer token for ASR or TTS may ride in the URL's credentials (``https://:TOKEN@host/v1``), which the
backend's name never shows; the LLM takes ``--llm-api-key``.

Each backend keeps one ``aiohttp.ClientSession`` with a keep-alive pool, made on first use in the
running loop and closed by ``aclose``: a turn reuses the connection of the last one instead of paying
a TCP (and TLS) handshake. Every request has a connect and a read timeout, and every answer is read
within a bound, so a hung, slow or babbling server costs one ``BackendError`` and never the memory of
the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import struct
import urllib.request
import wave
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import aiohttp
import numpy as np

from ..audio.formats import SPEECH_RATE, Resampler
from .asr import ASR, Transcript
from .base import MAX_TEXT_CHARS, BackendError, Capabilities
from .llm import LLM, LLMError, LLMOptions, Message
from .registry import BackendContext, BadBackendURL, display_name
from .tts import TTS

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
"""Longest wait for a TCP connection: a server that is up accepts in milliseconds, even under load."""

KEEPALIVE_S = 4.0
"""How long an idle pooled connection is kept: under uvicorn's default of 5 s (the servers above are
mostly FastAPI apps), so the client drops an idle connection before the server does, rather than send
a request into a socket the server is closing. The rare race left is retried once (``_send``)."""

LLM_READ_TIMEOUT_S = 60.0
"""The chat stream's socket guard. The chain bounds the first token and each next one by
``--llm-timeout``; this only keeps a dead connection from hanging a stream used without a chain."""

MAX_JSON_BYTES = 8 * MAX_TEXT_CHARS
"""The largest transcription answer read: ``MAX_TEXT_CHARS`` of text even if every character came as
a ``\\uXXXX`` escape, with room for the JSON around it."""

MAX_LINE_BYTES = 64 * 1024
"""The longest server-sent event line: a token's delta is a few hundred bytes of JSON."""

MAX_HEADER_BYTES = 64 * 1024
"""How far into a WAV answer its ``data`` chunk must start."""

ERROR_EXCERPT_BYTES = 2048

OPENAI_PCM_RATE = 24_000
"""OpenAI's ``pcm`` is raw s16le mono at 24 kHz; a server that says otherwise in ``X-Sample-Rate``
(local-tts-studio sends its voice's rate) is believed."""

HEALTH_PATHS = ("/health", "/api/health")
"""Health routes tried on the server's root: faster-whisper-server, speaches and most FastAPI servers
answer ``/health``; local-tts-studio answers ``/api/health`` (its ``/health`` is its web UI's page)."""

PROBE_SILENCE_S = 0.5


def max_speech_s(text: str) -> float:
    """The longest audio a TTS answer for ``text`` may have before it is taken for a runaway stream:
    about four times a slow reader's pace (150 words a minute is ~0.08 s a character), plus 10 s."""
    return 10.0 + 0.3 * len(text)


# -- the HTTP client every backend here shares ----------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A backend URL taken apart: where to send, what to call it, and what its query says."""

    base: str
    """The API's base URL without query or credentials (``http://host:port/v1``)."""
    root: str
    """The server's root (the base without a trailing ``/v1``), where health routes live."""
    name: str
    """The URL as events and errors show it (no credentials)."""
    token: str | None
    """A bearer token from the URL's credentials."""
    query: dict[str, str]

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
        path = parts.path.rstrip("/")
        base = urlunsplit((parts.scheme, netloc, path, "", ""))
        root_path = path[: -len("/v1")] if path.endswith("/v1") else path
        root = urlunsplit((parts.scheme, netloc, root_path, "", ""))
        token = unquote(parts.password or parts.username or "") or None
        query = {k: v[-1] for k, v in parse_qs(parts.query).items() if v}
        return cls(base=base, root=root, name=display_name(url), token=token, query=query)


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


async def _excerpt(response: aiohttp.ClientResponse) -> str:
    """A short, one-line excerpt of an error answer: OpenAI's ``error.message`` when it is one."""
    try:
        raw = await response.content.read(ERROR_EXCERPT_BYTES)
    except Exception:
        return ""
    text = raw.decode("utf-8", "replace")
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        body = json.loads(text)
        error = body.get("error") if isinstance(body, dict) else None
        detail = body.get("detail") if isinstance(body, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            text = error["message"]
        elif isinstance(error, str):
            text = error
        elif isinstance(detail, str):
            text = detail
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."


async def _read_bounded(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The whole body, refused past ``limit`` bytes (before reading, when ``Content-Length`` says so)."""
    length = response.content_length
    if length is not None and length > limit:
        raise BackendError(f"{what} answered {length} bytes, over the {limit} allowed")
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise BackendError(f"{what} answered over {limit} bytes")
    return bytes(body)


class HTTPClient:
    """One pooled session to one server, made lazily in the running loop (a backend is built before
    the server's loop runs), with every aiohttp failure turned into a short ``BackendError``."""

    def __init__(
        self,
        endpoint: Endpoint,
        what: str,
        *,
        token: str | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        """``what``: how errors name the server ("the speech server"); ``trace_configs``: aiohttp's
        request tracing (tests count connections with it)."""
        self.endpoint = endpoint
        self.what = what
        self.token = token or endpoint.token
        self.connect_timeout_s = connect_timeout_s
        self.trace_configs = list(trace_configs)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def session_or_none(self) -> aiohttp.ClientSession | None:
        return self._session

    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            # A session made in another loop (a test's, or one that ended) cannot be used or closed
            # from this one; it is dropped and a new pool made.
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_S),
                headers=headers,
                trace_configs=self.trace_configs or None,
            )
            self._loop = loop
        return self._session

    def timeout(self, *, total: float | None = None, read: float | None = None) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=total, sock_connect=self.connect_timeout_s, sock_read=read)

    async def _send(
        self, method: str, url: str, limits: aiohttp.ClientTimeout, body
    ) -> aiohttp.ClientResponse:
        """Sends once more when a pooled connection turns out closed by the server before it answered
        (aiohttp retries only idempotent methods by itself, and these are POSTs)."""
        session = self.session()
        for attempt in range(2):
            try:
                return await session.request(method, url, timeout=limits, **body())
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if attempt or isinstance(exc, aiohttp.ClientConnectorError):
                    raise
                log.debug("%s: %s on a pooled connection; sending again", self.endpoint.name, exc)
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def request(
        self, method: str, url: str, limits: aiohttp.ClientTimeout, body=dict
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response to one request, released on exit. ``body()`` gives ``request``'s keyword
        arguments (a function, so that a resend has a fresh multipart form). Timeouts and transport
        failures, while sending or while the caller reads the body, become ``BackendError``."""
        try:
            response = await self._send(method, url, limits, body)
            try:
                yield response
            finally:
                response.release()
        except TimeoutError:
            limit = limits.total or limits.sock_read
            after = f" after {limit:g} s" if limit else ""
            raise BackendError(f"{self.what} at {self.endpoint.name} timed out{after}") from None
        except aiohttp.ClientError as exc:
            raise BackendError(f"{self.what} at {self.endpoint.name} failed: {_short(exc)}") from None

    async def check(self, response: aiohttp.ClientResponse, *, json_body: bool = False) -> None:
        """Raises unless ``response`` is a 200 (with a JSON body, if asked)."""
        if response.status != 200:
            raise BackendError(f"{self.what} answered {response.status}: {await _excerpt(response)}")
        if json_body and not _is_json(response.content_type):
            raise BackendError(f"{self.what} answered {response.content_type}, not JSON")

    async def health(self, timeout_s: float) -> None:
        """Raises unless the server's health route says it is up. A server with no JSON health route
        (a hosted API) passes: the tiny real request that follows in ``probe`` decides."""
        timeout = self.timeout(total=timeout_s)
        for path in HEALTH_PATHS:
            async with self.request("GET", self.endpoint.root + path, timeout) as response:
                if response.status == 200 and _is_json(response.content_type):
                    await _read_bounded(response, MAX_JSON_BYTES, self.what)
                    return
                if response.status >= 500:
                    raise BackendError(f"{self.what} health {path} answered {response.status}")

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            with contextlib.suppress(Exception):
                await session.close()


def _looks_like_name(model: str | None) -> bool:
    """A server's model name, not a local path (which only the embedded backend can load)."""
    return bool(model) and not model.startswith(("/", ".", "~")) and not Path(model).exists()


# -- ASR ------------------------------------------------------------------------------------------------


def wav_bytes(audio: np.ndarray, rate: int = SPEECH_RATE) -> bytes:
    """int16 mono PCM as a WAV file in memory."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(audio, dtype=np.int16).tobytes())
    return buffer.getvalue()


class OpenAIASR(ASR):
    """One request per turn: the turn as a WAV, the transcript as ``{"text": ...}``.

    Not ``cheap``: a remote transcription costs a round trip and the server's time (and on a hosted
    API, money), so the call asks it for the committed turn only, not for a partial every 640 ms.
    """

    capabilities = Capabilities(sample_rate=SPEECH_RATE, cheap=False, remote=True)

    def __init__(
        self,
        url: str,
        *,
        model: str = "whisper-1",
        language: str | None = "en",
        timeout_s: float = 10.0,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        api_key: str | None = None,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        endpoint = Endpoint.parse(url)
        self.name = endpoint.name
        self.model = endpoint.query.get("model", model)
        self.language = endpoint.query.get("language", language)
        self.timeout_s = timeout_s
        self.http = HTTPClient(
            endpoint,
            "the transcription server",
            token=api_key,
            connect_timeout_s=min(connect_timeout_s, timeout_s),
            trace_configs=trace_configs,
        )
        self.url = f"{endpoint.base}/audio/transcriptions"

    def _form(self, wav: bytes) -> dict[str, object]:
        form = aiohttp.FormData()
        form.add_field("file", wav, filename="turn.wav", content_type="audio/wav")
        # OpenAI's field is ``model``; faster-whisper-server 0.0.3 reads ``model_name`` (and needs it to
        # name a model of its config file when it serves several).
        form.add_field("model", self.model)
        form.add_field("model_name", self.model)
        if self.language:
            form.add_field("language", self.language)
        form.add_field("response_format", "json")
        return {"data": form}

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        if audio.size == 0:
            return Transcript(text="", audio_s=0.0)
        wav = wav_bytes(audio)
        timeout = self.http.timeout(total=self.timeout_s)
        async with self.http.request("POST", self.url, timeout, lambda: self._form(wav)) as response:
            await self.http.check(response, json_body=True)
            body = await _read_bounded(response, MAX_JSON_BYTES, self.http.what)
        try:
            text = json.loads(body)["text"]
        except (ValueError, KeyError, TypeError):
            raise BackendError(f"{self.http.what} answered malformed JSON: {body[:80]!r}") from None
        if not isinstance(text, str):
            raise BackendError(f"{self.http.what} answered a {type(text).__name__} as the text")
        if len(text) > MAX_TEXT_CHARS:
            raise BackendError(f"{self.http.what} answered {len(text)} characters for one turn")
        return Transcript(text=text.strip(), audio_s=audio.size / SPEECH_RATE)

    async def probe(self) -> None:
        """Its health route, then half a second of silence transcribed: faster-whisper-server answers
        ``/health`` before it has loaded its model, which it does on the first request."""
        await self.http.health(self.timeout_s)
        await self.transcribe(np.zeros(int(PROBE_SILENCE_S * SPEECH_RATE), dtype=np.int16))

    async def aclose(self) -> None:
        await self.http.aclose()


def asr(url: str, context: BackendContext) -> OpenAIASR:
    model = context.asr_model if _looks_like_name(context.asr_model) else "whisper-1"
    return OpenAIASR(url, model=model, language=context.language, timeout_s=context.timeout_s)


# -- TTS ------------------------------------------------------------------------------------------------


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


class OpenAITTS(TTS):
    """``/v1/audio/speech``, the answer decoded as it streams in and resampled (when the server's rate
    is not ``sample_rate``) by one resampler per piece.

    ``wav`` is the default format: its header says the rate, so nothing is assumed. OpenAI's ``pcm``
    is 24 kHz, but local-tts-studio's is its voice's rate (22050 Hz for en_US-joe-medium), told only
    in an ``X-Sample-Rate`` header; a WAV plays at the right speed from either.
    """

    def __init__(
        self,
        url: str,
        *,
        voice: str = "alloy",
        model: str = "tts-1",
        response_format: str = "wav",
        sample_rate: int = OPENAI_PCM_RATE,
        streaming: bool = False,
        timeout_s: float = 10.0,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        api_key: str | None = None,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        """``sample_rate``: the rate this backend yields, whatever the server sends (``tts_format``
        finds the server's own, so that nothing is resampled); ``streaming``: the server sends audio
        before the piece is synthesized whole."""
        endpoint = Endpoint.parse(url)
        self.name = endpoint.name
        self.voice = endpoint.query.get("voice", voice)
        self.model = endpoint.query.get("model", model)
        self.response_format = endpoint.query.get("format", response_format).lower()
        if self.response_format not in ("wav", "pcm"):
            raise BadBackendURL(f"{self.name}: ?format= must be wav or pcm, not {self.response_format!r}")
        rate = endpoint.query.get("rate", str(sample_rate))
        if not rate.isdigit() or not 8000 <= int(rate) <= 192_000:
            raise BadBackendURL(f"{self.name}: ?rate= must be a sample rate in Hz, not {rate!r}")
        self.timeout_s = timeout_s
        self.declare(int(rate), streaming)
        self.http = HTTPClient(
            endpoint,
            "the speech server",
            token=api_key,
            connect_timeout_s=min(connect_timeout_s, timeout_s),
            trace_configs=trace_configs,
        )
        self.url = f"{endpoint.base}/audio/speech"

    def declare(self, sample_rate: int, streaming: bool) -> None:
        """Sets the rate this backend yields (before its first piece: a chain reads it once) and
        whether the server streams."""
        self.sample_rate = sample_rate
        self.capabilities = Capabilities(
            streaming_output=streaming, sample_rate=sample_rate, cheap=False, remote=True
        )

    def body(self, text: str) -> dict[str, str]:
        return {
            "model": self.model,
            "input": text,
            "voice": self.voice,
            "response_format": self.response_format,
        }

    def _decoder(self, headers) -> PCMDecoder:
        if self.response_format == "wav":
            return PCMDecoder()
        try:
            rate = int(headers.get("X-Sample-Rate", OPENAI_PCM_RATE))
            channels = int(headers.get("X-Channels", 1))
        except ValueError:
            raise BackendError("the speech server sent a malformed X-Sample-Rate") from None
        if not (8000 <= rate <= 192_000 and channels in (1, 2)):
            raise BackendError(f"the speech server sent pcm of {channels} channels at {rate} Hz")
        return PCMDecoder(PCMFormat(rate, channels))

    async def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        timeout = self.http.timeout(read=self.timeout_s)
        body = self.body(text)
        async with self.http.request("POST", self.url, timeout, lambda: {"json": body}) as response:
            await self.http.check(response)
            kind = response.content_type
            if not (kind.startswith("audio/") or kind == "application/octet-stream"):
                raise BackendError(
                    f"the speech server answered {kind}, not audio: {await _excerpt(response)}"
                )
            decoder = self._decoder(response.headers)
            resampler: Resampler | None = None
            limit_s = max_speech_s(text)
            async for data in response.content.iter_any():
                samples = decoder.feed(data)
                if not samples.size:
                    continue
                fmt = decoder.fmt
                assert fmt is not None
                if decoder.frames > limit_s * fmt.rate:
                    raise BackendError(
                        f"the speech server sent over {limit_s:g} s of audio for {len(text)} characters"
                    )
                if resampler is None and (fmt.rate != self.sample_rate or fmt.channels != 1):
                    # A rate other than the declared one is converted, never played at the wrong speed.
                    layout = "stereo" if fmt.channels == 2 else "mono"
                    resampler = Resampler(fmt.rate, self.sample_rate, layout)
                if resampler is not None:
                    samples = resampler.push(samples)  # libswresample: well under 1 ms per chunk
                if samples.size:
                    yield samples
            decoder.finish()
            if decoder.frames == 0:
                raise BackendError(f"the speech server answered no audio for {text[:40]!r}")
            if resampler is not None and (tail := resampler.flush()).size:
                yield tail

    async def probe(self) -> None:
        """Its health route, then "Hi." synthesized: local-tts-studio loads its voice on the first
        request, and answers ``/api/health`` long before."""
        await self.http.health(self.timeout_s)
        async with asyncio.timeout(self.timeout_s):
            async for _ in self.synthesize("Hi."):
                pass

    async def aclose(self) -> None:
        await self.http.aclose()


def tts_format(tts: OpenAITTS, timeout_s: float) -> tuple[int, bool] | None:
    """The rate of the server's voice and whether it streams (no ``Content-Length``: it began to
    answer before it knew how long the audio would be), asked with one blocking "Hi." at startup;
    None when the server does not answer. A TTS declares its rate before its first piece (the
    chain resamples its fallbacks to it), and the server's own rate spares a resampling."""
    request = urllib.request.Request(
        tts.url,
        data=json.dumps(tts.body("Hi.")).encode(),
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {tts.http.token}"} if tts.http.token else {}),
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            streaming = response.headers.get("Content-Length") is None
            if tts.response_format == "pcm":
                return int(response.headers.get("X-Sample-Rate", OPENAI_PCM_RATE)), streaming
            header = response.read(MAX_HEADER_BYTES)
            parsed = parse_wav_header(header)
            return (parsed[0].rate, streaming) if parsed else None
    except (OSError, ValueError, BackendError) as exc:
        log.warning("%s: no answer to find its sample rate (%s)", tts.name, _short(exc))
        return None


def tts(url: str, context: BackendContext) -> OpenAITTS:
    """Without ``?rate=`` in the URL, asks the server once (blocking, within the timeout) for its
    rate; a server down at startup gets OpenAI's 24 kHz, and what it sends later is resampled to it.

    The voice is the URL's ``?voice=`` (else OpenAI's ``alloy``), not ``--tts-voice``, which names a
    Piper voice for the embedded backend that may follow in the same chain."""
    backend = OpenAITTS(url, timeout_s=context.timeout_s)
    if "rate" in backend.http.endpoint.query:
        return backend
    found = tts_format(backend, min(context.timeout_s, 10.0))
    if found is not None:
        backend.declare(*found)
    return backend


# -- LLM ------------------------------------------------------------------------------------------------


async def _lines(chunks: AsyncIterator[bytes], limit: int = MAX_LINE_BYTES) -> AsyncIterator[bytes]:
    """Lines of a byte stream, each bounded (aiohttp's own line reader raises a bare ValueError)."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line
        if len(pending) > limit:
            raise LLMError(f"the language model server sent a line over {limit} bytes")
    if pending:
        yield pending


DRAIN_S = 0.5


async def _drain(response: aiohttp.ClientResponse, limit: int = MAX_LINE_BYTES) -> None:
    """Reads what follows ``[DONE]`` (the chunked body's end, already on its way), so the connection
    goes back to the pool instead of being closed as one with a body half read. A server that keeps
    the stream open or talking after it loses the connection, not the reply."""
    left = limit
    with contextlib.suppress(TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout(DRAIN_S):
            while left > 0 and (data := await response.content.read(left)):
                left -= len(data)


class OpenAICompatibleLLM(LLM):
    """Chat completions over HTTP, streamed as server-sent events: Ollama, vLLM, llama.cpp's server,
    llama-cpp-python's server, OpenAI. Nothing is loaded locally; the server owns the model.

    Every failure (refused connection, an HTTP error, a malformed stream) surfaces as ``LLMError``, which
    the conversation turns into an error event and a spoken apology. A stream closed before its end
    (the reply reached its last sentence) closes its connection, which tells the server to stop
    generating; a stream read to its end leaves its connection to the next turn.
    """

    capabilities = Capabilities(streaming_output=True, cheap=False, remote=True)

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        options: LLMOptions | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = LLM_READ_TIMEOUT_S,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        endpoint = Endpoint.parse(base_url)
        self.name = endpoint.name
        self.base_url = endpoint.base
        self.path = f"{self.base_url}/chat/completions"
        self.model = model or endpoint.query.get("model") or "default"
        self.api_key = api_key
        self.options = options or LLMOptions()
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.http = HTTPClient(
            endpoint,
            "the language model server",
            token=api_key,
            connect_timeout_s=connect_timeout_s,
            trace_configs=trace_configs,
        )

    def _body(self, messages: list[Message], options: LLMOptions) -> dict[str, object]:
        body: dict[str, object] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
        }
        for name in ("presence_penalty", "frequency_penalty"):
            if value := getattr(options, name):
                body[name] = value
        return body

    async def stream(self, messages: list[Message], options: LLMOptions | None = None) -> AsyncIterator[str]:
        body = self._body(messages, options or self.options)
        timeout = self.http.timeout(read=self.read_timeout_s)
        try:
            async with self.http.request("POST", self.path, timeout, lambda: {"json": body}) as response:
                if response.status != 200:
                    detail = await _excerpt(response)
                    raise LLMError(f"the language model server answered {response.status}: {detail}")
                if response.content_type != "text/event-stream":
                    raise LLMError(
                        f"the language model server answered {response.content_type}, not an event stream"
                    )
                total = 0
                async for raw in _lines(response.content.iter_any()):
                    line = raw.decode("utf-8", "replace").strip()
                    if not line.startswith("data:"):
                        continue  # blank separators, comments, event names
                    data = line[5:].strip()
                    if data == "[DONE]":
                        await _drain(response)
                        return
                    try:
                        delta = json.loads(data)["choices"][0].get("delta", {}).get("content")
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                        raise LLMError(f"malformed stream from the language model server: {exc}") from None
                    if delta:
                        if not isinstance(delta, str):
                            raise LLMError(
                                "malformed stream from the language model server: a non-text delta"
                            )
                        total += len(delta)
                        if total > MAX_TEXT_CHARS:
                            raise LLMError(f"the language model server sent over {MAX_TEXT_CHARS} characters")
                        yield delta
        except LLMError:
            raise
        except BackendError as exc:  # a transport failure, named by the HTTP client
            raise LLMError(str(exc)) from None

    async def probe(self) -> None:
        """``GET /models``, a 200 with JSON. Enough for llama.cpp's and llama-cpp-python's servers and
        vLLM, which answer only once their model is loaded; a generation as a probe would cost a
        server that is up a whole prompt evaluation every few seconds. (Ollama answers before it
        loads a model; its first turn is then slow, not failed.)"""
        timeout = self.http.timeout(total=min(self.read_timeout_s, 10.0))
        async with self.http.request("GET", f"{self.base_url}/models", timeout) as response:
            await self.http.check(response, json_body=True)
            body = await _read_bounded(response, MAX_JSON_BYTES, self.http.what)
        try:
            json.loads(body)
        except ValueError:
            raise BackendError(f"{self.http.what} answered malformed JSON on /models") from None

    async def aclose(self) -> None:
        await self.http.aclose()


def llm(url: str, context: BackendContext) -> OpenAICompatibleLLM:
    # ``--llm-model`` names the server's model here, but a GGUF path for the embedded fallback of the
    # same chain: a path is not sent.
    model = (
        context.llm_model
        if _looks_like_name(context.llm_model) and not str(context.llm_model).endswith(".gguf")
        else None
    )
    return OpenAICompatibleLLM(url, model=model, api_key=context.llm_api_key, options=context.llm_options)
