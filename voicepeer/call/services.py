"""The shared models of one process: loaded once, then used by every session."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ..audio.endofturn import EndOfTurn, SmartTurn
from ..audio.vad import silero_session
from ..backends.asr import ASR, WhisperASR
from ..backends.llm import LLM, LlamaCppLLM, OpenAICompatibleLLM
from ..backends.tts import TTS, PiperTTS
from ..config import Config
from ..runtime.memory import freeze_loaded_heap

log = logging.getLogger(__name__)


@dataclass
class Services:
    asr: ASR
    llm: LLM
    tts: TTS
    end_of_turn: EndOfTurn | None = None
    """None: turns end on silence and their last words alone."""


def load_services(config: Config, llm: LLM | None = None) -> Services:
    """Loads every model (blocking: a few seconds). Raises models.ModelNotFound with an install hint.

    ``llm``: the application's own LLM backend (``docs/extending.md``), used instead of the one
    ``config.llm`` names, which is then not loaded."""
    t0 = time.perf_counter()
    silero_session()
    asr = WhisperASR(config.asr.model, cpu_threads=config.asr.threads)
    log.info("ASR: faster-whisper %s from %s", config.asr.model, asr.path)
    tts = PiperTTS(config.tts.voice, threads=config.tts.threads)
    log.info("TTS: piper voice %s (%d Hz)", tts.path.name, tts.sample_rate)
    options = config.llm.options
    if llm is not None:
        log.info("LLM: %s, given by the application", type(llm).__name__)
    elif config.llm.url:
        llm = OpenAICompatibleLLM(config.llm.url, config.llm.model, config.llm.api_key, options=options)
        log.info("LLM: OpenAI-compatible server at %s, model %s", llm.base_url, llm.model)
    else:
        llm = LlamaCppLLM(config.llm.model, n_threads=config.llm.threads or None, options=options)
        log.info("LLM: llama.cpp %s", llm.path.name)
    end_of_turn = None
    if config.turns.end_of_turn_model:
        name = config.turns.end_of_turn_model
        end_of_turn = SmartTurn(None if name == "smart-turn" else name)
        log.info("end of turn: Smart Turn from %s", end_of_turn.path)
    log.info("models loaded in %.1f s", time.perf_counter() - t0)
    t1 = time.perf_counter()
    asr.warmup()
    tts.warmup()
    llm.warmup(config.llm.system_prompt)
    if end_of_turn is not None:
        end_of_turn.warmup()
    log.info("models warmed up in %.1f s", time.perf_counter() - t1)
    log.debug("%d objects kept out of the garbage collector's full passes", freeze_loaded_heap())
    return Services(asr=asr, llm=llm, tts=tts, end_of_turn=end_of_turn)
