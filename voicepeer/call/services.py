"""The shared models of one process: loaded once, then used by every session."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

from ..audio.endofturn import EndOfTurn, SmartTurn
from ..audio.vad import silero_session
from ..backends.asr import ASR
from ..backends.base import Backend, BackendError
from ..backends.chain import Chain
from ..backends.llm import LLM
from ..backends.registry import BackendContext, BadBackendURL, Stage, create
from ..backends.stages import ASRChain, LLMChain, TTSChain
from ..backends.tts import TTS
from ..config import Config
from ..runtime.load import InferenceLoad, turn_compute_ms
from ..runtime.memory import freeze_loaded_heap

log = logging.getLogger(__name__)


@dataclass
class Services:
    """The stages a call uses, each a chain of backends (``voicepeer.backends.chain``). A bare backend
    given here (an application's own LLM, a test's scripted one) becomes a chain of one, with the
    default timeouts, so every stage has the same bounds, health and events."""

    asr: ASR
    llm: LLM
    tts: TTS
    end_of_turn: EndOfTurn | None = None
    """None: turns end on silence and their last words alone."""
    tts_languages: dict[str, TTS] = field(default_factory=dict)
    """The TTS chain of each language ``--tts`` names (``zh=...``); ``tts`` speaks the rest, if it can
    (``tts_for``)."""
    espeak_fallback: bool = True
    """A language no chain speaks is spoken by espeak-ng, if it has a voice for it."""
    language: str = "en"
    """The server's own language (``--language``): the first chain speaks it, whatever its voice
    declares, as the operator set it up."""
    tts_timeout_s: float = field(default_factory=lambda: Config().tts.timeout_s)
    """For the espeak-ng chains made on first use."""
    load: InferenceLoad = field(default_factory=InferenceLoad)
    """How long the process's turns take on its own cores: shared by its calls, as the models are."""

    def __post_init__(self) -> None:
        defaults = Config()
        if not isinstance(self.asr, ASRChain):
            self.asr = ASRChain(Chain("asr", [self.asr], timeout_s=defaults.asr.timeout_s))
        if not isinstance(self.tts, TTSChain):
            self.tts = TTSChain(Chain("tts", [self.tts], timeout_s=defaults.tts.timeout_s))
        if not isinstance(self.llm, LLMChain):
            self.llm = LLMChain(Chain("llm", [self.llm], timeout_s=defaults.llm.timeout_s))
        for language, tts in self.tts_languages.items():
            if not isinstance(tts, TTSChain):
                self.tts_languages[language] = TTSChain(
                    Chain(f"tts.{language}", [tts], timeout_s=defaults.tts.timeout_s)
                )
        self._fallbacks: dict[str, TTS] = {}

    def tts_for(self, language: str) -> TTS:
        """The voice of ``language``: its own chain; else the first chain if its voice speaks it (or
        does not say what it speaks); else espeak-ng's voice for it, made on first use; else the
        first chain, which will mispronounce it rather than stay silent."""
        own = self.tts_languages.get(language)
        if own is not None:
            return own
        spoken = self.tts.capabilities.languages
        if language == self.language or not spoken or language in spoken or not self.espeak_fallback:
            return self.tts
        if language not in self._fallbacks:
            self._fallbacks[language] = self._espeak(language)
        return self._fallbacks[language]

    def _espeak(self, language: str) -> TTS:
        """espeak-ng's voice for ``language`` (on the event loop: the list of its voices was read at
        load, ``installed_voices``), or the first chain if it has none."""
        from ..backends.espeak import EspeakTTS, voice_for

        timeout_s = self.tts_timeout_s
        try:
            voice = EspeakTTS(voice_for(language), language=language, timeout_s=timeout_s)
        except Exception as exc:
            log.warning("no voice for %s: %s; the first TTS chain speaks it", language, exc)
            return self.tts
        voice.name = f"espeak-ng?voice={voice.voice}"
        log.info("TTS for %s: %s (no chain of its own)", language, voice.path)
        return TTSChain(Chain(f"tts.{language}", [voice], timeout_s=timeout_s))

    def turn_audible(self, marks: dict[str, float]) -> None:
        """A turn's first audio went out (its stage ``marks``): its in-process compute is the load."""
        stages = {"asr": self.asr, "llm": self.llm, "tts": self.tts}
        compute = turn_compute_ms(marks, lambda stage: not stages[stage].capabilities.remote)
        if compute is not None:
            self.load.observe(compute)

    @property
    def chains(self) -> tuple[Chain, ...]:
        languages = tuple(tts.chain for tts in self.tts_languages.values())  # type: ignore[attr-defined]
        return (self.asr.chain, self.tts.chain, *languages, self.llm.chain)  # type: ignore[attr-defined]

    def start(self) -> None:
        """Starts the chains' background probes (in the server's event loop)."""
        for chain in self.chains:
            chain.start()

    async def stop(self) -> None:
        """Stops the probes (the server using these services shuts down; another may start them)."""
        for chain in self.chains:
            await chain.stop()

    async def aclose(self) -> None:
        for chain in self.chains:
            await chain.aclose()

    def status(self) -> dict[str, object]:
        return {chain.stage: chain.status() for chain in self.chains}


def context(config: Config, timeout_s: float) -> BackendContext:
    """What a factory of a stage with this timeout needs from the configuration."""
    return BackendContext(
        language=config.asr.language,
        timeout_s=timeout_s,
        asr_model=config.asr.model,
        asr_threads=config.asr.threads,
        asr_multilingual=config.asr.multilingual_model,
        tts_voice=config.tts.voice,
        tts_threads=config.tts.threads,
        llm_model=config.llm.model,
        llm_api_key=config.llm.api_key,
        llm_threads=config.llm.threads,
        llm_options=config.llm.options,
    )


def build_chain(
    stage: Stage, urls: tuple[str, ...], config: Config, timeout_s: float, language: str | None = None
) -> Chain:
    """Creates each backend of a stage's chain (loading the embedded models: blocking); ``language``:
    the TTS chain of that language (``tts.zh``)."""
    ctx = context(config, timeout_s)
    label: str = stage
    if language is not None:
        ctx = dataclasses.replace(ctx, language=language)
        label = f"{stage}.{language}"
    backends = []
    for url in urls:
        try:
            backend = create(stage, url, ctx)
        except BackendError as exc:
            raise BadBackendURL(f"--{stage}: {url}: {exc}") from None
        log.info("%s: %s (%s)", label.upper(), backend.name, describe_backend(backend))
        backends.append(backend)
    return Chain(label, backends, timeout_s=timeout_s, probe_interval_s=config.server.probe_interval_s)


def describe_backend(backend: Backend) -> str:
    path = getattr(backend, "path", None)
    return f"{type(backend).__name__}, {path}" if path is not None else type(backend).__name__


def load_services(config: Config, llm: LLM | None = None) -> Services:
    """Loads every embedded model and connects nothing yet (blocking: a few seconds). Raises
    models.ModelNotFound with an install hint, or BadBackendURL.

    ``llm``: the application's own LLM backend (``docs/extending.md``), used instead of the chain
    ``config.llm`` names, which is then not loaded."""
    t0 = time.perf_counter()
    silero_session()
    asr = build_chain("asr", config.asr.backends, config, config.asr.timeout_s)
    chains = config.tts.chains
    tts = build_chain("tts", chains.get("", ("embedded",)), config, config.tts.timeout_s)
    tts_languages: dict[str, TTS] = {
        language: TTSChain(build_chain("tts", urls, config, config.tts.timeout_s, language))
        for language, urls in chains.items()
        if language
    }
    if llm is not None:
        log.info("LLM: %s, given by the application", type(llm).__name__)
        llm_chain = Chain(
            "llm", [llm], timeout_s=config.llm.timeout_s, probe_interval_s=config.server.probe_interval_s
        )
    else:
        llm_chain = build_chain("llm", config.llm.chain, config, config.llm.timeout_s)
    end_of_turn = None
    if config.turns.end_of_turn_model:
        name = config.turns.end_of_turn_model
        end_of_turn = SmartTurn(None if name == "smart-turn" else name)
        log.info("end of turn: Smart Turn from %s", end_of_turn.path)
    log.info("models loaded in %.1f s", time.perf_counter() - t0)
    services = Services(
        asr=ASRChain(asr),
        llm=LLMChain(llm_chain),
        tts=TTSChain(tts),
        end_of_turn=end_of_turn,
        tts_languages=tts_languages,
        language=config.asr.language if config.asr.language != "auto" else "en",
        tts_timeout_s=config.tts.timeout_s,
    )
    from ..backends.espeak import installed_voices

    installed_voices()  # read once, here: a language's voice is made on first use, on the event loop
    t1 = time.perf_counter()
    services.asr.warmup()
    services.tts.warmup()
    for voice in services.tts_languages.values():
        voice.warmup()
    services.llm.warmup(config.llm.system_prompt)
    if end_of_turn is not None:
        end_of_turn.warmup()
    log.info("models warmed up in %.1f s", time.perf_counter() - t1)
    log.debug("%d objects kept out of the garbage collector's full passes", freeze_loaded_heap())
    return services
