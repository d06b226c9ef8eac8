"""Speech recognition over ``POST /v1/audio/transcriptions``: ``http(s)://HOST:PORT/v1`` in ``--asr``.

The turn goes as a 16 kHz WAV (multipart, with ``model``, ``language``, ``response_format=json``), the
transcript comes back as ``{"text": ...}``: faster-whisper-server, speaches, vLLM, OpenAI.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import aiohttp
import numpy as np

from ...audio.formats import SPEECH_RATE
from ..asr import ASR, AUTO, Transcript
from ..base import MAX_TEXT_CHARS, BackendError, Capabilities
from ..registry import BackendContext
from ..wav import wav_bytes
from .http import CONNECT_TIMEOUT_S, MAX_JSON_BYTES, Endpoint, HTTPClient, looks_like_name, read_bounded

PROBE_SILENCE_S = 0.5


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
        self._fixed = "language" in endpoint.query
        self.timeout_s = timeout_s
        self.http = HTTPClient(
            endpoint,
            "the transcription server",
            token=api_key,
            connect_timeout_s=min(connect_timeout_s, timeout_s),
            trace_configs=trace_configs,
        )
        self.url = f"{endpoint.base}/audio/transcriptions"

    def _form(self, wav: bytes, language: str | None) -> dict[str, object]:
        form = aiohttp.FormData()
        form.add_field("file", wav, filename="turn.wav", content_type="audio/wav")
        # OpenAI's field is ``model``; faster-whisper-server 0.0.3 reads ``model_name`` (and needs it to
        # name a model of its config file when it serves several).
        form.add_field("model", self.model)
        form.add_field("model_name", self.model)
        if language and language != AUTO:
            form.add_field("language", language)
        form.add_field("response_format", "json")
        return {"data": form}

    async def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        """``AUTO`` sends no ``language``: the server detects it (and says which only in its
        ``verbose_json`` format, which not every server has, so the transcript does not say)."""
        language = self.language_for(language)
        if audio.size == 0:
            return Transcript(text="", audio_s=0.0)
        wav = wav_bytes(audio)
        timeout = self.http.timeout(total=self.timeout_s)
        async with self.http.request(
            "POST", self.url, timeout, lambda: self._form(wav, language)
        ) as response:
            await self.http.check(response, json_body=True)
            body = await read_bounded(response, MAX_JSON_BYTES, self.http.what)
        try:
            text = json.loads(body)["text"]
        except (ValueError, KeyError, TypeError):
            raise BackendError(f"{self.http.what} answered malformed JSON: {body[:80]!r}") from None
        if not isinstance(text, str):
            raise BackendError(f"{self.http.what} answered a {type(text).__name__} as the text")
        if len(text) > MAX_TEXT_CHARS:
            raise BackendError(f"{self.http.what} answered {len(text)} characters for one turn")
        heard = language if language and language != AUTO else None
        return Transcript(text=text.strip(), audio_s=audio.size / SPEECH_RATE, language=heard)

    def language_for(self, asked: str | None) -> str | None:
        """The language a request is sent in: the URL's, if it names one (the operator's choice for
        this server), else the one asked for, else the backend's own."""
        return self.language if self._fixed else (asked or self.language)

    async def probe(self) -> None:
        """Its health route, then half a second of silence transcribed: faster-whisper-server answers
        ``/health`` before it has loaded its model, which it does on the first request."""
        await self.http.health(self.timeout_s)
        await self.transcribe(np.zeros(int(PROBE_SILENCE_S * SPEECH_RATE), dtype=np.int16))

    async def aclose(self) -> None:
        await self.http.aclose()


def asr(url: str, context: BackendContext) -> OpenAIASR:
    model = context.asr_model if looks_like_name(context.asr_model) else "whisper-1"
    return OpenAIASR(url, model=model, language=context.language, timeout_s=context.timeout_s)
