"""Speech recognition: the ASR interface and its faster-whisper implementation."""

from __future__ import annotations

import abc
import logging
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from . import models
from .audio import SPEECH_RATE, to_float32
from .workers import run_blocking

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Transcript:
    text: str
    audio_s: float
    """Duration of the audio that was transcribed."""
    compute_s: float
    """Wall time the recogniser took, for the real-time factor."""


class ASR(abc.ABC):
    """Turns one user turn (int16 mono at ``sample_rate``) into text."""

    sample_rate: int = SPEECH_RATE

    @abc.abstractmethod
    async def transcribe(self, audio: np.ndarray) -> Transcript: ...

    def warmup(self) -> None:
        """Runs once at load (blocking) so the first user does not pay for lazy initialisation."""
        return None  # optional: backends with nothing to warm keep this


class WhisperASR(ASR):
    """faster-whisper (CTranslate2, int8 on CPU), loaded once per process and shared by all sessions.

    Greedy decoding without timestamps or conditioning on previous text: turns are short, and these are
    the settings that keep tiny.en near 0.1 real-time factor on two cores.
    """

    def __init__(self, model: str = "tiny.en", cpu_threads: int = 0, language: str = "en") -> None:
        from faster_whisper import WhisperModel

        self.name = model
        self.path = models.whisper_model_dir(model)
        self.language = language
        # CTranslate2 defaults to 4 threads; on a 2-core machine that oversubscribes and slows every call.
        threads = cpu_threads or os.cpu_count() or 1
        self._model = WhisperModel(str(self.path), device="cpu", compute_type="int8", cpu_threads=threads)
        # CTranslate2 can run concurrent calls, but on a small CPU they only slow each other down, and a
        # lock gives the turn that asked first its answer first.
        self._lock = threading.Lock()

    def warmup(self) -> None:
        self.transcribe_blocking(np.zeros(SPEECH_RATE, dtype=np.int16))

    def transcribe_blocking(self, audio: np.ndarray) -> Transcript:
        t0 = time.perf_counter()
        with self._lock:
            segments, _info = self._model.transcribe(
                to_float32(audio),
                language=self.language,
                beam_size=1,
                best_of=1,
                temperature=0.0,
                condition_on_previous_text=False,
                without_timestamps=True,
                vad_filter=False,
            )
            parts = []
            for seg in segments:
                # Whisper invents text for noise ("Thank you."); these two scores flag it.
                if seg.no_speech_prob > 0.6 and seg.avg_logprob < -1.0:
                    log.debug("dropping likely hallucination %r", seg.text)
                    continue
                parts.append(seg.text)
        text = " ".join(p.strip() for p in parts).strip()
        return Transcript(text=text, audio_s=audio.size / SPEECH_RATE, compute_s=time.perf_counter() - t0)

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        return await run_blocking(self.transcribe_blocking, audio)
