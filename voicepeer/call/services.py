"""The shared models of one process: loaded once, then used by every session."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from ..audio.endofturn import EndOfTurn, SmartTurn
from ..audio.vad import silero_session
from ..backends.asr import ASR
from ..backends.base import Backend
from ..backends.chain import Chain
from ..backends.llm import LLM
from ..backends.registry import BackendContext, Stage, create
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

    def turn_audible(self, marks: dict[str, float]) -> None:
        """A turn's first audio went out (its stage ``marks``): its in-process compute is the load."""
        stages = {"asr": self.asr, "llm": self.llm, "tts": self.tts}
        compute = turn_compute_ms(marks, lambda stage: not stages[stage].capabilities.remote)
        if compute is not None:
            self.load.observe(compute)

    @property
    def chains(self) -> tuple[Chain, ...]:
        return (self.asr.chain, self.tts.chain, self.llm.chain)  # type: ignore[attr-defined]

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
        timeout_s=timeout_s,
        asr_model=config.asr.model,
        asr_threads=config.asr.threads,
        tts_voice=config.tts.voice,
        tts_threads=config.tts.threads,
        llm_model=config.llm.model,
        llm_api_key=config.llm.api_key,
        llm_threads=config.llm.threads,
        llm_options=config.llm.options,
    )


def build_chain(stage: Stage, urls: tuple[str, ...], config: Config, timeout_s: float) -> Chain:
    """Creates each backend of a stage's chain (loading the embedded models: blocking)."""
    ctx = context(config, timeout_s)
    backends = []
    for url in urls:
        backend = create(stage, url, ctx)
        log.info("%s: %s (%s)", stage.upper(), backend.name, describe_backend(backend))
        backends.append(backend)
    return Chain(stage, backends, timeout_s=timeout_s, probe_interval_s=config.server.probe_interval_s)


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
    tts = build_chain("tts", config.tts.backends, config, config.tts.timeout_s)
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
        asr=ASRChain(asr), llm=LLMChain(llm_chain), tts=TTSChain(tts), end_of_turn=end_of_turn
    )
    t1 = time.perf_counter()
    services.asr.warmup()
    services.tts.warmup()
    services.llm.warmup(config.llm.system_prompt)
    if end_of_turn is not None:
        end_of_turn.warmup()
    log.info("models warmed up in %.1f s", time.perf_counter() - t1)
    log.debug("%d objects kept out of the garbage collector's full passes", freeze_loaded_heap())
    return services
