"""Speech recognition: the ASR interface and its faster-whisper implementation."""

from __future__ import annotations

import abc
import logging
import os
import threading
from dataclasses import dataclass

import numpy as np

from ..audio.formats import SPEECH_RATE, leading_quiet, to_float32
from ..runtime import models
from ..runtime.workers import priority, run_blocking
from .base import Backend, Capabilities

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Transcript:
    text: str
    audio_s: float
    """Duration of the audio that was transcribed."""


class ASR(Backend, abc.ABC):
    """Turns one user turn (int16 mono at 16 kHz, ``SPEECH_RATE``) into text.

    Raises ``BackendError`` when it cannot (a remote server down, a garbage answer)."""

    @abc.abstractmethod
    async def transcribe(self, audio: np.ndarray) -> Transcript: ...

    def warmup(self) -> None:
        """Runs once at load (blocking) so the first user does not pay for lazy initialisation."""
        return None  # optional: backends with nothing to warm keep this

    async def open_stream(self) -> ASRStream:
        """A stream for one turn's audio as it arrives; only with ``capabilities.streaming_input``."""
        raise NotImplementedError(f"{type(self).__name__} does not take streaming input")


class ASRStream(abc.ABC):
    """One turn fed to a streaming ASR as it is spoken: the words come while the user talks, and the
    transcript is (nearly) ready when the turn ends. Every method raises ``BackendError`` on failure."""

    @abc.abstractmethod
    async def feed(self, audio: np.ndarray) -> None:
        """The next audio of the turn, int16 mono at ``SPEECH_RATE``; returns without waiting for words."""

    @property
    @abc.abstractmethod
    def partial(self) -> str:
        """The words recognised so far ("" before any)."""

    @abc.abstractmethod
    async def finish(self) -> Transcript:
        """Ends the turn's audio and waits for the final transcript of all of it."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Abandons the stream (the turn was dropped) and frees its connection. Idempotent."""


SHORT_TURN_S = 28.0
"""Turns up to this long take the short path below; longer ones go through faster-whisper's windowing."""

MIN_CONTEXT_S = 12.0
"""Encoder context for short turns: max(turn + 1 s, 12 s), not the 30 s Whisper always encodes, which
makes a 2 s question pay for 28 s of padding. With less than 12 s the decoder starts repeating the
sentence, since it no longer sees the silence it was trained to stop at; ``_drop_repetition`` guards
the rest. The measurements: docs/decisions/asr-context.md."""


LEAD_KEEP_MS = 250
LEAD_QUIET_DB = 40.0
"""A turn reaches the ASR with up to 800 ms from before the detector's onset (``TurnParams``'s pre-roll,
so that the first syllables are never cut), in a quiet room near-silence, and whisper tiny.en hears a
long quiet lead worse. So what comes before the first 10 ms frame within ``LEAD_QUIET_DB`` of the
turn's loudest is cut to ``LEAD_KEEP_MS``: only near-silence goes, never a soft first consonant (some
20-30 dB under the vowels) and never the bot's residual echo under a word spoken over it. The
measurements: docs/decisions/asr-quiet-lead.md."""


class WhisperASR(ASR):
    """faster-whisper (CTranslate2, int8 on CPU), loaded once per process and shared by all sessions.

    Greedy decoding without timestamps or conditioning on previous text: turns are short and stand alone.
    """

    capabilities = Capabilities(partials=True, sample_rate=SPEECH_RATE, cheap=True)

    def __init__(self, model: str = "tiny.en", cpu_threads: int = 0, language: str = "en") -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self.name = model
        self.path = models.whisper_model_dir(model)
        self.language = language
        # CTranslate2 defaults to 4 threads; on a 2-core machine that oversubscribes and slows every call.
        threads = cpu_threads or os.cpu_count() or 1
        self._model = WhisperModel(str(self.path), device="cpu", compute_type="int8", cpu_threads=threads)
        multilingual = self._model.model.is_multilingual
        self._tokenizer = Tokenizer(
            self._model.hf_tokenizer,
            multilingual,
            task="transcribe",
            language=language if multilingual else "en",
        )
        self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
        self._suppress = list(get_suppressed_tokens(self._tokenizer, [-1]))
        # CTranslate2 can run concurrent calls, but on a small CPU they only slow each other down, and a
        # lock gives the turn that asked first its answer first.
        self._lock = threading.Lock()

    def warmup(self) -> None:
        self.transcribe_blocking(np.zeros(SPEECH_RATE, dtype=np.int16))

    def transcribe_blocking(self, audio: np.ndarray) -> Transcript:
        quiet = leading_quiet(audio, SPEECH_RATE, LEAD_QUIET_DB)
        audio = audio[max(0, quiet - LEAD_KEEP_MS * SPEECH_RATE // 1000) :]
        with self._lock, priority.urgent():
            if audio.size <= SHORT_TURN_S * SPEECH_RATE:
                text = self._decode_short(to_float32(audio))
            else:
                text = self._decode_long(to_float32(audio))
        return Transcript(text=text, audio_s=audio.size / SPEECH_RATE)

    def _decode_short(self, audio: np.ndarray) -> str:
        import ctranslate2

        n = max(audio.size + SPEECH_RATE, int(MIN_CONTEXT_S * SPEECH_RATE))
        padded = np.zeros(n, dtype=np.float32)
        padded[: audio.size] = audio
        hop = self._model.feature_extractor.hop_length
        frames = (n // hop) & ~1  # the encoder's stride-2 convolution wants an even count
        features = self._model.feature_extractor(padded)[:, :frames]
        encoded = self._model.model.encode(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None])), to_cpu=False
        )
        result = self._model.model.generate(
            encoded,
            [self._prompt],
            beam_size=1,
            max_length=min(self._model.max_length, 16 + int(audio.size / SPEECH_RATE * 12)),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )[0]
        # Whisper invents text for noise ("you", "Thank you."); these two scores flag it.
        if result.no_speech_prob > 0.6 and result.scores[0] < -1.0:
            log.debug("dropping likely hallucination (no_speech_prob %.2f)", result.no_speech_prob)
            return ""
        return self._tokenizer.decode(_drop_repetition(result.sequences_ids[0])).strip()

    def _decode_long(self, audio: np.ndarray) -> str:
        segments, _info = self._model.transcribe(
            audio,
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
            if seg.no_speech_prob > 0.6 and seg.avg_logprob < -1.0:
                log.debug("dropping likely hallucination %r", seg.text)
                continue
            parts.append(seg.text.strip())
        return " ".join(parts).strip()

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        return await run_blocking(self.transcribe_blocking, audio)


def _drop_repetition(ids: list[int]) -> list[int]:
    """Cuts a token sequence that repeats itself from the start ("A B C A B C A") to one period."""
    n = len(ids)
    for period in range(4, n // 2 + 1):  # short periods are real speech: "no, no, no"
        if ids[period:] == ids[: n - period]:
            return ids[:period]
    return ids
