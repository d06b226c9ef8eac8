"""The in-process models as chain members: ``embedded`` in ``--asr``, ``--tts`` or ``--llm``."""

from __future__ import annotations

import logging
from pathlib import Path

from ..runtime.models import ModelNotFound, whisper_model_dir
from .asr import WhisperASR
from .llm import LlamaCppLLM
from .registry import BackendContext
from .tts import PiperTTS

log = logging.getLogger(__name__)


def asr(_url: str, context: BackendContext) -> WhisperASR:
    """Whisper for English, and a multilingual Whisper for the rest. Without the multilingual model
    installed an English server still runs (calls that ask for another language get an error); a
    server whose own ``--language`` is another needs it."""
    multilingual = context.asr_multilingual
    if multilingual is not None:
        try:
            whisper_model_dir(multilingual)
        except ModelNotFound as exc:
            if context.language != "en":
                raise
            log.warning("ASR: English only (%s)", exc)
            multilingual = None
    return WhisperASR(
        context.asr_model,
        cpu_threads=context.asr_threads,
        language=context.language,
        multilingual=multilingual,
    )


def tts(_url: str, context: BackendContext) -> PiperTTS:
    return PiperTTS(context.tts_voice, threads=context.tts_threads)


def llm(_url: str, context: BackendContext) -> LlamaCppLLM:
    # ``--llm-model`` names a GGUF for this backend and a server's model for a remote one; in a chain
    # with both (``--llm http://gpu:8000/v1,embedded``) the embedded fallback takes the bundled model
    # unless the name is a GGUF file.
    model = context.llm_model
    if model is not None and not (model.endswith(".gguf") or Path(model).is_file()):
        model = None
    return LlamaCppLLM(model, n_threads=context.llm_threads or None, options=context.llm_options)
