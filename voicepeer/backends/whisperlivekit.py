"""Streaming speech recognition on a WhisperLiveKit server: ``ws(s)://HOST:PORT/asr`` in ``--asr``.

WhisperLiveKit (``whisperlivekit-server ... --pcm-input``) transcribes a WebSocket's audio while it
arrives, so the words are there while the user speaks and the transcript is nearly done when the turn
ends. The protocol, as its ``basic_server.py`` (0.2.26) speaks it:

- the client connects to ``/asr`` (query ``language``, ``token`` optional; a bad token closes the
  socket with 4401 before the handshake, a bad ``language`` with a ``{"type": "error"}`` and 4400);
- the server sends ``{"type": "config", "useAudioWorklet": <--pcm-input>, "mode": "full"}`` first;
  ``useAudioWorklet`` false means it wants an encoded stream through ffmpeg, not our raw PCM;
- the client sends binary frames of raw s16le 16 kHz mono PCM (any length);
- the server sends, whenever its state changes (at most every 50 ms), the whole state:
  ``{"status", "lines": [{"speaker", "text", "start", "end"}, ...], "buffer_transcription", ...}``:
  ``lines`` are the committed words (a line with speaker -2 is a pause, its text empty),
  ``buffer_transcription`` the words not yet agreed on; ``status`` ``error`` carries ``error``;
- an empty binary frame ends the audio: the server finishes what it has and then sends
  ``{"type": "ready_to_stop"}``. It processes faster than real time, so a whole turn sent at once
  (``transcribe``) comes back in a fraction of its duration.

``GET /health`` (same host, http for ws) answers only once the model is loaded (FastAPI's lifespan
builds the engine before the server accepts connections), so it is the readiness route, and the probe
adds a tiny real stream to prove the processing path works.

Every wait has a timeout and every message is bounded (``max_msg_size``, ``MAX_TEXT_CHARS``): a hung
server, garbage, an oversized transcript or a stream that never ends is a short ``BackendError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import numpy as np

from ..audio.formats import SPEECH_RATE
from .asr import ASR, ASRStream, Transcript
from .base import MAX_TEXT_CHARS, BackendError, Capabilities
from .registry import BackendContext, BadBackendURL, display_name

log = logging.getLogger(__name__)

FRAME_S = 0.1
"""Audio per binary frame: what a live microphone path would send; the server buffers it anyway."""

MAX_MSG_BYTES = 8 * MAX_TEXT_CHARS + 64 * 1024
"""One server message: the whole state (every committed line with its times, the buffer), a transcript
of ``MAX_TEXT_CHARS`` characters even if all were escaped, and room for the rest. aiohttp refuses a
longer frame before it holds it."""

CLOSE_TIMEOUT_S = 2.0
"""Waiting for the server's answer to our close frame: past it the socket is dropped."""

PROBE_AUDIO_S = 0.5

FINISH_SLACK_PER_AUDIO_S = 0.5
"""``finish`` waits ``timeout_s`` plus this much per second of audio sent: a turn sent all at once
leaves the server all of it to transcribe after the end (0.3-0.7 s per second of audio with tiny.en on 2
busy cores), where one streamed in real time leaves only the last words."""


def asr(url: str, context: BackendContext) -> WhisperLiveKitASR:
    return WhisperLiveKitASR(url, language=context.language, timeout_s=context.timeout_s)


class WhisperLiveKitASR(ASR):
    """One WhisperLiveKit server; a WebSocket per turn, from one ``aiohttp`` session per backend."""

    capabilities = Capabilities(
        streaming_input=True, partials=True, remote=True, cheap=False, sample_rate=SPEECH_RATE
    )

    def __init__(self, url: str, *, language: str | None = "en", timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise BadBackendURL(f"{display_name(url)!r}: expected ws://HOST:PORT/asr")
        self.name = display_name(url)
        self.timeout_s = timeout_s
        self._query = dict(parse_qsl(parts.query))
        self.language = self._query.get("language", language)
        netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        path = parts.path or "/asr"
        self._base = (parts.scheme, netloc, path)
        http = "https" if parts.scheme == "wss" else "http"
        self.health_url = urlunsplit((http, netloc, path.rsplit("/", 1)[0] + "/health", "", ""))
        # A password in the URL (ws://:TOKEN@host/asr) is the server's --api-token, sent as a Bearer
        # header so that it never shows in a URL; ``?token=`` works too, and display_name drops both.
        self._headers = {"Authorization": f"Bearer {parts.password}"} if parts.password else {}
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    def _http(self) -> aiohttp.ClientSession:
        """The backend's session, made on first use in the running loop. A session is bound to its loop,
        so a backend used from a new loop (a test's, a ``voicepeer check``) gets a new one; the old one
        went with its loop."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=self.timeout_s, sock_connect=self.timeout_s
                ),
            )
            self._session_loop = loop
        return self._session

    def ws_url(self, language: str | None = None) -> str:
        """The socket's URL for a turn in ``language`` (None: the backend's; ``auto`` is WhisperLiveKit's
        own word for detection)."""
        query = dict(self._query)  # a language in the URL stays: the operator's choice for this server
        language = language or self.language
        if language and "language" not in query:
            query["language"] = language
        return urlunsplit((*self._base, urlencode(query), ""))

    async def open_stream(self, language: str | None = None) -> WhisperLiveKitStream:
        """Connects and waits for the server's ``config``; the turn's audio can be fed at once after."""
        try:
            async with asyncio.timeout(self.timeout_s):
                ws = await self._http().ws_connect(
                    self.ws_url(language),
                    max_msg_size=MAX_MSG_BYTES,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT_S),
                    autoping=True,
                )
        except TimeoutError:
            raise BackendError(f"{self.name}: no WebSocket handshake within {self.timeout_s:g} s") from None
        except aiohttp.WSServerHandshakeError as exc:
            raise BackendError(f"{self.name}: WebSocket refused (HTTP {exc.status})") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise BackendError(f"{self.name}: cannot connect ({_short(exc)})") from None
        stream = WhisperLiveKitStream(
            self.name, ws, self.timeout_s, self._query.get("language") or language or self.language
        )
        try:
            await stream.start()
        except BaseException:
            await stream.aclose()
            raise
        return stream

    async def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        """The whole turn as one stream, sent as fast as the socket takes it (the server works faster
        than real time), then ``finish``."""
        if audio.size == 0:
            return Transcript(text="", audio_s=0.0)
        stream = await self.open_stream(language)
        try:
            await stream.feed(audio)
            return await stream.finish()
        finally:
            await stream.aclose()

    async def probe(self) -> None:
        """``/health`` (the model is loaded once it answers), then a tiny stream of silence that must
        reach ``ready_to_stop`` (the processing path works)."""
        try:
            async with self._http().get(
                self.health_url, timeout=aiohttp.ClientTimeout(total=self.timeout_s)
            ) as resp:
                if resp.status != 200:
                    raise BackendError(f"{self.name}: /health answered HTTP {resp.status}")
                body = await resp.content.read(4096)
        except TimeoutError:
            raise BackendError(f"{self.name}: /health gave no answer within {self.timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise BackendError(f"{self.name}: /health failed ({_short(exc)})") from None
        try:
            health = json.loads(body)
        except ValueError:
            raise BackendError(f"{self.name}: /health answered garbage") from None
        if not isinstance(health, dict) or health.get("status") != "ok" or health.get("ready") is False:
            raise BackendError(f"{self.name}: not ready ({_excerpt(body)})")
        await self.transcribe(np.zeros(int(PROBE_AUDIO_S * SPEECH_RATE), dtype=np.int16))

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()


class WhisperLiveKitStream(ASRStream):
    """One turn on one WebSocket: ``feed`` sends frames, a reader task keeps the latest state, and
    ``finish`` ends the audio and waits for ``ready_to_stop``."""

    def __init__(
        self, name: str, ws: aiohttp.ClientWebSocketResponse, timeout_s: float, language: str | None = None
    ) -> None:
        self._language = language if language and language != "auto" else None
        self.name = name
        self.timeout_s = timeout_s
        self._ws = ws
        self._committed = ""
        self._buffer = ""
        self._samples = 0
        self._configured = asyncio.Event()
        """Set on the server's ``config`` (or first state) or on a failure: what ``start`` waits for."""
        self._done = asyncio.Event()
        """Set on ``ready_to_stop`` or on a failure (``_error``): what ``finish`` waits for."""
        self._error: BackendError | None = None
        self._finishing = False
        self._closed = False
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Starts the reader and waits for the server's ``config`` (or its first state)."""
        self._reader = asyncio.create_task(self._read(), name=f"wlk-reader {self.name}")
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._configured.wait()
        except TimeoutError:
            raise BackendError(f"{self.name}: no config message within {self.timeout_s:g} s") from None
        self._raise_if_failed()

    @property
    def partial(self) -> str:
        return _join(self._committed, self._buffer)

    async def feed(self, audio: np.ndarray) -> None:
        self._raise_if_failed()
        if self._closed or self._finishing:
            raise BackendError(f"{self.name}: audio fed after the end of the turn")
        pcm = np.ascontiguousarray(audio, dtype="<i2").reshape(-1)
        frame = int(FRAME_S * SPEECH_RATE)
        try:
            async with asyncio.timeout(self.timeout_s):
                for start in range(0, pcm.size, frame):
                    await self._ws.send_bytes(pcm[start : start + frame].tobytes())
        except TimeoutError:
            raise BackendError(
                f"{self.name}: the server takes no audio (blocked {self.timeout_s:g} s)"
            ) from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            self._raise_if_failed()
            raise BackendError(f"{self.name}: connection lost while sending audio ({_short(exc)})") from None
        self._samples += pcm.size

    async def finish(self) -> Transcript:
        self._raise_if_failed()
        if self._closed:
            raise BackendError(f"{self.name}: stream already closed")
        self._finishing = True
        audio_s = self._samples / SPEECH_RATE
        wait_s = self.timeout_s + FINISH_SLACK_PER_AUDIO_S * audio_s
        try:
            async with asyncio.timeout(wait_s):
                await self._ws.send_bytes(b"")
                await self._done.wait()
        except TimeoutError:
            raise BackendError(f"{self.name}: no end of transcript within {wait_s:.3g} s") from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            self._raise_if_failed()
            raise BackendError(
                f"{self.name}: connection lost at the end of the turn ({_short(exc)})"
            ) from None
        self._raise_if_failed()
        text = self.partial
        await self.aclose()
        return Transcript(text=text, audio_s=audio_s, language=self._language)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._done.is_set():
            self._fail("stream closed")
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._ws.close()

    # -- reading ----------------------------------------------------------------------------------------

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _fail(self, message: str) -> None:
        if self._error is None:
            log.debug("%s: %s", self.name, message)
            self._error = BackendError(f"{self.name}: {message}")
        self._configured.set()
        self._done.set()

    async def _read(self) -> None:
        """Until ``ready_to_stop`` or a failure; every failure ends in ``_error`` and ``_done``."""
        try:
            async for msg in self._ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    if self._handle(msg.data):
                        return
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    exc = msg.data if isinstance(msg.data, BaseException) else self._ws.exception()
                    if (
                        isinstance(exc, aiohttp.WebSocketError)
                        and exc.code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
                    ):
                        self._fail(f"a message over {MAX_MSG_BYTES} bytes")
                    else:
                        self._fail(f"WebSocket error ({_short(exc) if exc else 'unknown'})")
                    return
                else:
                    self._fail(f"unexpected {msg.type.name.lower()} message")
                    return
            code = self._ws.close_code
            self._fail(f"connection closed before the end of the turn (code {code})")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(f"reading failed ({_short(exc)})")

    def _handle(self, data: str) -> bool:
        """One server message; True when it is the last (``ready_to_stop``)."""
        try:
            msg = json.loads(data)
        except ValueError:
            self._fail(f"garbage message ({_excerpt(data)})")
            return True
        if not isinstance(msg, dict):
            self._fail(f"garbage message ({_excerpt(data)})")
            return True
        kind = msg.get("type")
        if kind == "config":
            if msg.get("useAudioWorklet") is False:
                self._fail("the server wants encoded audio: start it with --pcm-input")
                return True
            self._configured.set()
            return False
        if kind == "ready_to_stop":
            self._done.set()
            return True
        if kind == "error" or msg.get("status") == "error":
            self._fail(f"server error ({_excerpt(str(msg.get('error', '')))})")
            return True
        if kind is not None:
            return False  # a message type of a newer server: not ours to read
        lines = msg.get("lines", [])
        buffer = msg.get("buffer_transcription", "")
        if not isinstance(lines, list) or not isinstance(buffer, str):
            self._fail(f"malformed state ({_excerpt(data)})")
            return True
        texts = []
        for line in lines:
            text = line.get("text") if isinstance(line, dict) else None
            if not isinstance(text, str):
                self._fail(f"malformed line ({_excerpt(json.dumps(line))})")
                return True
            texts.append(text)
        committed = _join(*texts)
        if len(committed) + len(buffer) > MAX_TEXT_CHARS:
            self._fail(f"a transcript over {MAX_TEXT_CHARS} characters")
            return True
        self._committed, self._buffer = committed, buffer
        self._configured.set()  # a server that skips ``config`` is fine once it sends state
        return False


def _join(*parts: str) -> str:
    """Lines and buffer as one text: WhisperLiveKit's own client joins them with a space, and the
    faster-whisper backend's words carry their leading spaces."""
    return " ".join(p.strip() for p in parts if p and p.strip())


def _excerpt(data: str | bytes, n: int = 80) -> str:
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "..."


def _short(exc: BaseException) -> str:
    return _excerpt(str(exc) or type(exc).__name__, 120)
