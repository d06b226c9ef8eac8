"""Speech recognition and synthesis on a Wyoming server: ``wyoming://HOST:PORT`` in ``--asr`` / ``--tts``.

Wyoming is Home Assistant's protocol for its voice servers (wyoming-faster-whisper, wyoming-piper and
many others). It is small enough to speak here without the ``wyoming`` package: over one TCP
connection each side writes events, an event being one JSON line ``{"type", "version", "data"?,
"data_length"?, "payload_length"?}``, then ``data_length`` bytes of JSON merged over the line's own
``data``, then ``payload_length`` bytes of payload (PCM for ``audio-chunk``).

- ASR: ``transcribe`` {language}, ``audio-start`` {rate, width, channels}, ``audio-chunk``s,
  ``audio-stop`` -> ``transcript`` {text}. The server closes the connection after it: one per turn.
- TTS: ``synthesize`` {text, voice?} -> ``audio-start``, ``audio-chunk``s, ``audio-stop``. A server
  whose ``info`` says ``supports_synthesize_streaming`` (wyoming-piper >= 1.6) gets the streaming
  form instead (``synthesize-start``, ``synthesize-chunk``, ``synthesize``, ``synthesize-stop``) and
  ends with ``synthesize-stopped``, with an audio-start/stop pair per sentence.
- Health: ``describe`` -> ``info``, the programs and models the server has.

Everything read is bounded (a header line, an event's data and payload, a transcript, the audio of one
piece of text, the events skipped while waiting) and every wait has a timeout, since a remote server
may be hung or answer garbage; each of those failures is a short ``BackendError``.

The modules: ``protocol`` (events, the bounded connection, ``describe``, the URL), ``transcription``
(``WyomingASR``) and ``synthesis`` (``WyomingTTS``). The registry's factories, ``asr`` and ``tts``, are
re-exported here; the submodules are not named after them, so that ``wyoming.asr`` stays the factory.
"""

from .protocol import PROTOCOL_VERSION, Connection, Event, describe
from .synthesis import TTS_DEFAULT_RATE, WyomingTTS, tts
from .transcription import WyomingASR, asr

__all__ = [
    "PROTOCOL_VERSION",
    "TTS_DEFAULT_RATE",
    "Connection",
    "Event",
    "WyomingASR",
    "WyomingTTS",
    "asr",
    "describe",
    "tts",
]
