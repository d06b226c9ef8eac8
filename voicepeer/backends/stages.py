"""Each stage's chain behind the stage's own interface, so a call uses a chain as it would one backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np

from ..audio.formats import Resampler
from ..runtime.workers import run_blocking
from .asr import ASR, Transcript
from .base import Capabilities
from .chain import Chain
from .llm import LLM, LLMOptions, Message
from .tts import TTS


class ASRChain(ASR):
    def __init__(self, chain: Chain[ASR]) -> None:
        self.chain = chain
        self.name = f"{chain.stage} chain"

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        return (self.chain.active or self.chain.first).capabilities

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        return await self.chain.call(lambda backend: backend.transcribe(audio))

    def warmup(self) -> None:
        for backend in self.chain.backends:
            backend.warmup()


class TTSChain(TTS):
    """Speaks at the first backend's rate: a fallback with another rate is resampled to it here, so
    the call's own resampler to 48 kHz sees one rate for the whole process."""

    def __init__(self, chain: Chain[TTS]) -> None:
        self.chain = chain
        self.name = f"{chain.stage} chain"
        self.sample_rate = chain.first.sample_rate

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        return (self.chain.active or self.chain.first).capabilities

    async def _speak(self, backend: TTS, text: str) -> AsyncIterator[np.ndarray]:
        if backend.sample_rate == self.sample_rate:
            async for chunk in backend.synthesize(text):
                yield chunk
            return
        resampler = Resampler(backend.sample_rate, self.sample_rate)
        async for chunk in backend.synthesize(text):
            yield await run_blocking(resampler.push, chunk)
        yield await run_blocking(resampler.flush)

    def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        return self.chain.stream(lambda backend: self._speak(backend, text))

    def warmup(self) -> None:
        for backend in self.chain.backends:
            backend.warmup()


class LLMChain(LLM):
    def __init__(self, chain: Chain[LLM]) -> None:
        self.chain = chain
        self.name = f"{chain.stage} chain"
        self.options = chain.first.options

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        return (self.chain.active or self.chain.first).capabilities

    def stream(self, messages: list[Message], options: LLMOptions | None = None) -> AsyncIterator[str]:
        return self.chain.stream(lambda backend: backend.stream(messages, options))

    def warmup(self, system_prompt: str) -> None:
        for backend in self.chain.backends:
            backend.warmup(system_prompt)
