"""The speech side of the configuration: the models, the audio front-end, and turn-taking.

Each field is an option declared once (``option(...)``), as in ``network.py``; a ``live`` one may also
be changed by a call while it runs (the ``config`` control command).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..audio.vad import TurnParams
from ..backends.llm import DEFAULT_SYSTEM_PROMPT, LLMOptions
from ..backends.registry import Stage, parse_chain, split_languages
from ..call.language import normalize as language_code
from ..call.turntaking import TurnPolicy
from .option import Live, option

BACKEND_SCHEMES = "embedded, wyoming://HOST:PORT, http(s)://HOST:PORT/v1"


def _chain(stage: Stage):
    return lambda text: tuple(parse_chain(stage, text))


@dataclass(frozen=True)
class ASRConfig:
    """Speech recognition: a chain of backends, the embedded one faster-whisper."""

    backends: tuple[str, ...] = field(
        default=("embedded",),
        metadata=option(
            "--asr",
            f"ASR backends tried in order, comma-separated: {BACKEND_SCHEMES}, ws(s)://HOST:PORT/asr "
            "(WhisperLiveKit)",
            env="ASR",
            convert=_chain("asr"),
            metavar="URL,...",
        ),
    )
    timeout_s: float = field(
        default=10.0,
        metadata=option(
            "--asr-timeout",
            "seconds an ASR backend may take for a transcript before the next",
            low=0,
            above=True,
        ),
    )
    partials: str = field(
        default="auto",
        metadata=option(
            "--asr-partials",
            "partial transcripts while the user speaks: auto = only from a backend that is cheap "
            "(in process) or streams",
            choices=("auto", "on", "off"),
        ),
    )
    language: str = field(
        default="en",
        metadata=option(
            "--language",
            "the language calls are spoken in: an ISO 639-1 code (en, zh, ja, fr...), or auto to detect "
            "it in each turn",
            convert=language_code,
            live=Live(2, 5, "characters"),
        ),
    )
    """A call may change it (``config``); the ASR is told it, the LLM is told to answer in it, and the
    TTS chain of that language speaks (``--tts zh=...``)."""
    model: str = field(
        default="tiny.en",
        metadata=option("--asr-model", "tiny.en, base, or a faster-whisper model directory"),
    )
    multilingual_model: str | None = field(
        default="base",
        metadata=option(
            "--asr-multilingual-model",
            "the embedded ASR's model for languages other than English and for auto, when --asr-model "
            "is English-only: base (whisper base, from voicepeer[multilingual]), a model directory, or off",
            none=("off", "none"),
        ),
    )
    threads: int = field(
        default=0, metadata=option("--asr-threads", "CTranslate2 threads, 0 = one per core", low=0)
    )


@dataclass(frozen=True)
class LLMConfig:
    """Reply generation: a chain of backends, the embedded one llama.cpp."""

    backends: tuple[str, ...] = field(
        default=(),
        metadata=option(
            "--llm",
            f"LLM backends tried in order, comma-separated: {BACKEND_SCHEMES}; none: --llm-url, or embedded",
            env="LLM",
            convert=_chain("llm"),
            metavar="URL,...",
        ),
    )
    url: str | None = field(
        default=None,
        metadata=option(
            "--llm-url",
            "base URL of an OpenAI-compatible server (Ollama: http://127.0.0.1:11434/v1), short for "
            "--llm URL; none: the embedded model",
        ),
    )
    model: str | None = field(
        default=None,
        metadata=option(
            "--llm-model",
            "path of a GGUF model (none: the bundled SmolLM2-135M); with --llm-url, the server's model name",
        ),
    )
    api_key: str | None = field(
        default=None, metadata=option("--llm-api-key", "bearer token for --llm-url", secret=True)
    )
    threads: int = field(
        default=0, metadata=option("--llm-threads", "embedded LLM threads, 0 = one per core", low=0)
    )
    system_prompt: str = field(
        default=DEFAULT_SYSTEM_PROMPT,
        metadata=option(
            "--system-prompt",
            "the assistant's instructions",
            shown="short spoken answers (`DEFAULT_SYSTEM_PROMPT`)",
            live=Live(1, 4000, "characters"),
        ),
    )
    max_tokens: int = field(
        default=LLMOptions.max_tokens,
        metadata=option("--llm-max-tokens", "longest reply in tokens", low=1, live=Live(8, 512, "tokens")),
    )
    """A call may go up to 512 tokens, about a minute of speech."""
    max_sentences: int | None = field(
        default=LLMOptions.max_sentences,
        metadata=option(
            "--llm-max-sentences", "a reply stops after this many sentences, 0 = no cap", low=0, none=(0,)
        ),
    )
    """Spoken replies are brief by default; a system prompt that wants long answers (a storyteller)
    needs it raised or off."""
    timeout_s: float = field(
        default=20.0,
        metadata=option(
            "--llm-timeout",
            "seconds without a token before the user gets an error and an apology",
            low=0,
            above=True,
        ),
    )
    """No first token within this time counts as a dead backend."""

    @property
    def chain(self) -> tuple[str, ...]:
        """The backends in order: ``--llm``, else ``--llm-url`` alone, else the embedded model."""
        return self.backends or ((self.url,) if self.url else ("embedded",))

    @property
    def options(self) -> LLMOptions:
        """How replies are generated, for the backend and for each call (which may change them)."""
        return LLMOptions(max_tokens=self.max_tokens, max_sentences=self.max_sentences)


@dataclass(frozen=True)
class TTSConfig:
    """Speech synthesis: a chain of backends, the embedded one Piper."""

    backends: tuple[str, ...] = field(
        default=("embedded",),
        metadata=option(
            "--tts",
            f"TTS backends tried in order, comma-separated: {BACKEND_SCHEMES}, espeak-ng; LANG=URL starts "
            "the chain of a language (zh=wyoming://HOST:PORT,espeak-ng); a language without one is "
            "spoken by the first chain if it can, else by espeak-ng",
            env="TTS",
            convert=_chain("tts"),
            metavar="URL,...",
        ),
    )
    timeout_s: float = field(
        default=10.0,
        metadata=option(
            "--tts-timeout",
            "seconds a TTS backend may take for its first audio (and between chunks) before the next",
            low=0,
            above=True,
        ),
    )
    voice: str | None = field(
        default=None,
        metadata=option(
            "--tts-voice", "path of a Piper .onnx voice (its .onnx.json beside it); none: joe-medium"
        ),
    )
    threads: int = field(
        default=0, metadata=option("--tts-threads", "Piper threads, 0 = onnxruntime's default", low=0)
    )

    @property
    def chains(self) -> dict[str, tuple[str, ...]]:
        """The chain of each language named in ``--tts`` (``zh=...``), and the first one under ""."""
        return split_languages(self.backends)


@dataclass(frozen=True)
class AudioConfig:
    """The server's audio front-end, before the turn detector and the ASR (``bench/frontend.py``)."""

    aec: str = field(
        default="aec3",
        metadata=option(
            "--aec", "server-side echo canceller before the turn detector", choices=("aec3", "speex", "off")
        ),
    )
    asr_aec: str = field(
        default="speex",
        metadata=option(
            "--asr-aec",
            "echo canceller whose output the ASR hears once the bot's voice comes back ('same': --aec's)",
            choices=("speex", "aec3", "same"),
        ),
    )
    """Words spoken over the bot's voice survive Speex's linear filter, not AEC3's suppressor
    (``voicepeer.audio.frontend.FrontEnd``)."""
    noise_suppression: int = field(
        default=1,
        metadata=option("--noise-suppression", "WebRTC noise suppression level, 0 = off", low=0, high=4),
    )
    """Level 1: on six espeak questions in white noise, stronger levels helped whisper only in heavy
    noise and garbled some words after AEC3 at -40 dBFS."""
    auto_gain_dbfs: int = field(
        default=0,
        metadata=option(
            "--auto-gain",
            "WebRTC gain control target, dBFS below full scale, 0 = off",
            env="AUTO_GAIN",
            low=0,
            high=31,
        ),
    )


_DETECTOR = TurnParams()
_POLICY = TurnPolicy()


@dataclass(frozen=True)
class TurnsConfig:
    """When the user's turn ends and when the bot is interrupted.

    The tunable few of the detector's ``TurnParams`` and the conversation's ``TurnPolicy`` (their
    docstrings say why each default is what it is); the rest keep those classes' defaults."""

    end_silence_ms: int = field(
        default=_DETECTOR.end_silence_ms,
        metadata=option(
            "--end-silence-ms", "silence that ends a user turn", low=1, live=Live(150, 3000, "ms")
        ),
    )
    """A call may wait up to 3 s, as long as a turn may reasonably wait."""
    hold_silence_ms: int = field(
        default=_POLICY.hold_silence_ms,
        metadata=option(
            "--hold-silence-ms",
            "silence that ends a turn whose last phrase sounds unfinished ('... and', 'um')",
            low=0,
        ),
    )
    complete_silence_ms: int = field(
        default=_POLICY.complete_silence_ms,
        metadata=option(
            "--complete-silence-ms", "silence that ends a turn the end-of-turn model judges complete", low=0
        ),
    )
    end_of_turn_model: str | None = field(
        default="smart-turn",
        metadata=option(
            "--end-of-turn",
            "end-of-turn model: smart-turn (Smart Turn v3.2, from the pipecat-ai wheel), the path of such an "
            "ONNX file, or off (silence and the last words alone)",
            none=("off", "none"),
        ),
    )
    partial_interval_ms: int = field(
        default=_DETECTOR.partial_interval_ms,
        metadata=option("--partial-interval-ms", "speech between two partial transcripts, 0 = none", low=0),
    )
    interrupt_after_ms: int = field(
        default=_POLICY.interrupt_after_ms,
        metadata=option(
            "--interrupt-after-ms",
            "barge-in: speech during a reply that lasts this long cuts the bot off",
            low=0,
        ),
    )
    vad_threshold: float = field(
        default=_DETECTOR.threshold,
        metadata=option(
            "--vad-threshold", "Silero probability that counts as speech", low=0, above=True, high=1
        ),
    )
    detector_defaults: TurnParams = _DETECTOR
    """The rest of the detector's parameters, not options of their own (a program that embeds voicepeer
    may set them: ``TurnsConfig(detector_defaults=TurnParams(pause_ms=120))``); the options above
    replace their fields."""
    policy_defaults: TurnPolicy = _POLICY
    """Likewise the rest of the conversation's ``TurnPolicy`` (``end_of_turn_threshold``,
    ``min_partial_ms``, ...)."""

    @property
    def detector(self) -> TurnParams:
        """How the microphone's speech is cut into turns."""
        return dataclasses.replace(
            self.detector_defaults,
            end_silence_ms=self.end_silence_ms,
            partial_interval_ms=self.partial_interval_ms,
            threshold=self.vad_threshold,
        )

    @property
    def policy(self) -> TurnPolicy:
        """What the conversation makes of the turns: end of turn, holding, barge-in."""
        return dataclasses.replace(
            self.policy_defaults,
            hold_silence_ms=self.hold_silence_ms,
            complete_silence_ms=self.complete_silence_ms,
            interrupt_after_ms=self.interrupt_after_ms,
        )
