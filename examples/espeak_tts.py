"""A third-party TTS backend, whole: espeak-ng as the ``espeak://VOICE`` scheme of ``--tts``.

A package adds a backend without a fork by declaring an entry point in the ``voicepeer.backends``
group, named ``<stage>.<scheme>``, whose object is a factory ``(url, BackendContext) -> Backend``. In
the package's ``pyproject.toml``::

    [project.entry-points."voicepeer.backends"]
    "tts.espeak" = "espeak_tts:tts"

Once it is installed, ``voicepeer serve --tts espeak://en-us,embedded`` speaks with espeak-ng and
falls back to the embedded Piper voice; a program may instead call
``voicepeer.backends.registry.register("tts", "espeak", tts)``.

What the backend owes the chain: its ``capabilities`` (the rate it speaks at before its first piece, so
a fallback is resampled to the chain's rate), a bounded wait, a ``BackendError`` with a short message
for every failure, and a ``probe`` that says whether it can speak now.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import wave
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import numpy as np

from voicepeer.backends.base import BackendError, Capabilities
from voicepeer.backends.registry import BackendContext
from voicepeer.backends.tts import TTS

RATE = 22_050
"""espeak-ng's output rate."""

MAX_WAV_BYTES = 20 * RATE * 2
"""Twenty seconds of speech: more for one piece of a reply is a runaway, not speech."""


class EspeakTTS(TTS):
    """One ``espeak-ng --stdout`` process per piece of text, off the event loop (a subprocess)."""

    sample_rate = RATE

    def __init__(self, voice: str = "en-us", words_per_minute: int = 170) -> None:
        self.voice = voice
        self.words_per_minute = words_per_minute
        # Another process, but on this machine: cheap, and it speaks a piece only once it has it whole.
        self.capabilities = Capabilities(sample_rate=RATE, languages=(voice.split("-")[0],))

    async def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        program = shutil.which("espeak-ng")
        if program is None:
            raise BackendError("espeak-ng is not installed")
        proc = await asyncio.create_subprocess_exec(
            program, "--stdout", "-v", self.voice, "-s", str(self.words_per_minute), "--", text,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            data = b""
            while len(data) <= MAX_WAV_BYTES and (more := await proc.stdout.read(1 << 16)):
                data += more
            if len(data) > MAX_WAV_BYTES:
                proc.kill()
            await proc.wait()
        finally:
            if proc.returncode is None:  # cancelled (the user interrupted): no orphan process
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if proc.returncode != 0 or len(data) > MAX_WAV_BYTES:
            raise BackendError(f"espeak-ng failed on a piece of {len(text)} characters")
        yield pcm_of(data)

    async def probe(self) -> None:
        async for _ in self.synthesize("Hi."):
            return


def pcm_of(wav_bytes: bytes) -> np.ndarray:
    """The int16 mono samples of espeak-ng's WAV. Written to a pipe, its header cannot say how long
    the audio is (the sizes are left at their maximum), so the samples are whatever follows it."""
    try:
        with wave.open(io.BytesIO(wav_bytes)) as wav:
            layout = (wav.getsampwidth(), wav.getnchannels(), wav.getframerate())
    except (wave.Error, EOFError) as exc:
        raise BackendError(f"espeak-ng gave no WAV: {exc}") from None
    if layout != (2, 1, RATE):
        raise BackendError(f"espeak-ng spoke in an unexpected format {layout}")
    start = wav_bytes.index(b"data") + 8
    usable = (len(wav_bytes) - start) // 2 * 2
    return np.frombuffer(wav_bytes[start : start + usable], dtype="<i2").copy()


def tts(url: str, context: BackendContext) -> EspeakTTS:
    """The factory: ``espeak://VOICE`` (``espeak://en-us``, ``espeak://fr``)."""
    return EspeakTTS(urlsplit(url).hostname or context.language)
