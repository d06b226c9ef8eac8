"""Speech synthesis over ``POST /v1/audio/speech``: ``http(s)://HOST:PORT/v1`` in ``--tts``.

JSON ``model``, ``input``, ``voice``, ``response_format`` in, ``wav`` or ``pcm`` audio out, decoded as it
streams in and resampled to the rate the backend declared: local-tts-studio, Kokoro-FastAPI,
openedai-speech, OpenAI. The audio of one piece of text is bounded (``max_speech_s``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import AsyncIterator, Sequence

import aiohttp
import numpy as np

from ...audio.formats import Resampler
from ..base import BackendError, Capabilities
from ..registry import BackendContext, BadBackendURL
from ..tts import TTS
from ..wav import MAX_HEADER_BYTES, PCMDecoder, PCMFormat, parse_wav_header
from .http import CONNECT_TIMEOUT_S, Endpoint, HTTPClient, error_excerpt, short_reason

log = logging.getLogger(__name__)

OPENAI_PCM_RATE = 24_000
"""OpenAI's ``pcm`` is raw s16le mono at 24 kHz; a server that says otherwise in ``X-Sample-Rate``
(local-tts-studio sends its voice's rate) is believed."""


def max_speech_s(text: str) -> float:
    """The longest audio a TTS answer for ``text`` may have before it is taken for a runaway stream:
    about four times a slow reader's pace (150 words a minute is ~0.08 s a character), plus 10 s."""
    return 10.0 + 0.3 * len(text)


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
                    f"the speech server answered {kind}, not audio: {await error_excerpt(response)}"
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
        log.warning("%s: no answer to find its sample rate (%s)", tts.name, short_reason(exc))
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
