"""Speech recognition on a Wyoming server (wyoming-faster-whisper): ``wyoming://HOST[:PORT]`` in ``--asr``.

``transcribe`` {language}, ``audio-start`` {rate, width, channels}, ``audio-chunk``s, ``audio-stop``
-> ``transcript`` {text}. The server closes the connection after it: one per turn.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ...audio.formats import SPEECH_RATE
from ..asr import ASR, AUTO, Transcript
from ..base import MAX_TEXT_CHARS, BackendError, Capabilities
from ..registry import BackendContext
from .protocol import (
    MAX_OTHER_EVENTS,
    Connection,
    Event,
    describe,
    installed_programs,
    language_code,
    language_codes,
    parse_address,
    server_error,
)

ASR_PORT = 10300
"""The port Home Assistant's speech-to-text add-ons use, for a URL without one."""

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

    async def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        """``AUTO`` sends no language: wyoming-faster-whisper then detects it."""
        language = language or self.language
        pcm = np.ascontiguousarray(audio, dtype="<i2").reshape(-1)
        step = SPEECH_RATE * CHUNK_MS // 1000
        fmt = {"rate": SPEECH_RATE, "width": 2, "channels": 1}
        requests = [
            Event("transcribe", {"language": language} if language and language != AUTO else {}),
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
                    return Transcript(
                        text=_transcript_text(event),
                        audio_s=pcm.size / SPEECH_RATE,
                        language=_transcript_language(event, language),
                    )
                if event.type == "error":
                    raise server_error(event)
            raise BackendError(f"no transcript after {MAX_OTHER_EVENTS} events")

    async def probe(self) -> None:
        """Ready when the server lists a speech-to-text program and transcribes 0.3 s of silence (a
        server still loading its model accepts connections but cannot do that)."""
        info = await describe(self.host, self.port, self.timeout_s)
        programs = installed_programs(info, "asr")
        if not programs:
            raise BackendError("not a speech-to-text server: its info lists no asr program")
        models = [m for p in programs if isinstance(p.get("models"), list) for m in p["models"]]
        self.capabilities = replace(self.capabilities, languages=language_codes(models))
        await self.transcribe(np.zeros(int(PROBE_SILENCE_S * SPEECH_RATE), dtype=np.int16))


def _transcript_language(event: Event, asked: str | None) -> str | None:
    """The language the server says it heard (newer servers send one), else the one asked for."""
    said = event.data.get("language")
    if isinstance(said, str) and 2 <= len(said) <= 16:
        return language_code(said)
    return asked if asked and asked != AUTO else None


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
    host, port, _ = parse_address(url, ASR_PORT, ())
    return WyomingASR(host, port, language=context.language, timeout_s=context.timeout_s)
