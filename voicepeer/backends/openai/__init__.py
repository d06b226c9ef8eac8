"""The OpenAI-compatible HTTP API for every stage: ``http(s)://HOST:PORT/v1`` in --asr, --tts, --llm.

- ASR: ``POST /v1/audio/transcriptions`` (multipart: the turn as a 16 kHz WAV, ``model``, ``language``,
  ``response_format=json``): faster-whisper-server, speaches, vLLM, OpenAI.
- TTS: ``POST /v1/audio/speech`` (JSON ``model``, ``input``, ``voice``, ``response_format``):
  local-tts-studio, Kokoro-FastAPI, openedai-speech, OpenAI.
- LLM: ``POST /v1/chat/completions``, streamed as server-sent events: llama.cpp's and llama-cpp-python's
  servers, Ollama, vLLM, OpenAI.

What the API leaves open is taken from the URL's query, which is not part of the backend's name and is
not sent as such:

- ASR: ``?model=NAME`` (default: ``--asr-model`` when it is a name, not a path; else ``whisper-1``),
  ``?language=xx``.
- TTS: ``?voice=NAME`` (default ``alloy``; ``--tts-voice`` names a Piper voice for the embedded
  backend), ``?model=NAME`` (default ``tts-1``), ``?format=wav|pcm`` (default ``wav``), ``?rate=HZ``
  (the rate to yield; default: the server's, asked once at startup).
- LLM: ``?model=NAME`` when ``--llm-model`` names none.

A bearer token for ASR or TTS may ride in the URL's credentials (``https://:TOKEN@host/v1``), which the
backend's name never shows; the LLM takes ``--llm-api-key``.

The modules: ``http`` (the HTTP client every backend here shares: one keep-alive session per
backend, every request timed and every answer read within a bound), ``wav`` (WAV in and out),
``transcription`` (``OpenAIASR``), ``synthesis`` (``OpenAITTS``) and ``chat`` (``OpenAICompatibleLLM``).
The registry's factories, ``asr``, ``tts`` and ``llm``, are re-exported here; the submodules are not
named after them, so that ``openai.asr`` stays the factory.
"""

from ..wav import PCMDecoder, PCMFormat, parse_wav_header, wav_bytes
from .chat import OpenAICompatibleLLM, llm
from .http import Endpoint, HTTPClient
from .synthesis import OPENAI_PCM_RATE, OpenAITTS, max_speech_s, tts, tts_format
from .transcription import OpenAIASR, asr

__all__ = [
    "OPENAI_PCM_RATE",
    "Endpoint",
    "HTTPClient",
    "OpenAIASR",
    "OpenAICompatibleLLM",
    "OpenAITTS",
    "PCMDecoder",
    "PCMFormat",
    "asr",
    "llm",
    "max_speech_s",
    "parse_wav_header",
    "tts",
    "tts_format",
    "wav_bytes",
]
