"""Each stage's chain behind the stage's own interface, so a call uses a chain as it would one backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TypeVar

import numpy as np

from ..audio.formats import Resampler
from ..runtime.workers import run_blocking
from .asr import ASR, ASRStream, Transcript
from .base import BackendError, Capabilities
from .chain import Chain, describe
from .llm import LLM, LLMOptions, Message, ToolCall, ToolChoice, ToolSpec
from .tts import TTS

T = TypeVar("T")


class ASRChain(ASR):
    def __init__(self, chain: Chain[ASR]) -> None:
        self.chain = chain
        self.name = f"{chain.stage} chain"

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        return (self.chain.active or self.chain.first).capabilities

    async def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        return await self.chain.call(lambda backend: backend.transcribe(audio, language))

    async def open_stream(self, language: str | None = None) -> ASRStream:
        """A stream on the active backend, if it takes one; its failures count against that backend
        (the next turns go to the next one), and each step has the chain's timeout."""
        index = self.chain.active_index
        backend = self.chain.active
        if index is None or backend is None or not backend.capabilities.streaming_input:
            raise BackendError("the active ASR does not stream")
        try:
            async with asyncio.timeout(self.chain.timeout_s):
                stream = await backend.open_stream(language)
        except Exception as exc:
            self.chain.failed(index, describe(exc, self.chain.timeout_s))
            raise BackendError(f"asr: {describe(exc)}") from exc
        return _ChainedStream(self.chain, index, stream)

    def warmup(self) -> None:
        for backend in self.chain.backends:
            backend.warmup()


class _ChainedStream(ASRStream):
    def __init__(self, chain: Chain[ASR], index: int, stream: ASRStream) -> None:
        self._chain = chain
        self._index = index
        self._stream = stream

    async def _step(self, step: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self._chain.timeout_s):
                return await step
        except Exception as exc:
            reason = describe(exc, self._chain.timeout_s)
            self._chain.failed(self._index, reason)
            raise BackendError(f"asr: {reason}") from exc

    async def feed(self, audio: np.ndarray) -> None:
        await self._step(self._stream.feed(audio))

    @property
    def partial(self) -> str:
        return self._stream.partial

    async def finish(self) -> Transcript:
        return await self._step(self._stream.finish())

    async def aclose(self) -> None:
        await self._stream.aclose()


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

    def stream(
        self,
        messages: list[Message],
        options: LLMOptions | None = None,
        tools: Sequence[ToolSpec] = (),
        tool_choice: ToolChoice = "auto",
    ) -> AsyncIterator[str | ToolCall]:
        """``tools`` go to a backend that takes them; a fallback that does not answers without them
        (a reply without the application's data beats an apology)."""

        def request(backend: LLM) -> AsyncIterator[str | ToolCall]:
            if tools and backend.capabilities.tools:
                return backend.stream(messages, options, tools, tool_choice)
            return backend.stream(messages, options)

        return self.chain.stream(request)

    def warmup(self, system_prompt: str) -> None:
        for backend in self.chain.backends:
            backend.warmup(system_prompt)
