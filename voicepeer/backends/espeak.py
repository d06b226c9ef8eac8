"""eSpeak NG as a TTS backend: Debian's ``espeak-ng`` program, one process per piece of text.

It speaks about a hundred languages in one small package, robotically: the voice of last resort for a
language no other voice on the machine speaks (the call falls back to it for a language without a
chain of its own), and the offline voice for Mandarin, for which no Piper voice ships in a package.
Mandarin uses ``cmn-latn-pinyin`` (``VOICES``): espeak-ng 1.51's ``cmn`` voice (Debian 12) reads each
character's pinyin with English letter sounds ("jin one tian one"), which no listener understands.

``espeak-ng`` or ``espeak-ng?voice=NAME&speed=WPM`` in ``--tts``; without a voice, the chain's
language picks it (``VOICES``). The text goes on stdin, never on the command line, so no text can be
taken for an option; the WAV comes back on stdout and is played as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import subprocess
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl

import numpy as np

from .base import BackendError, Capabilities
from .registry import BackendContext
from .tts import TTS
from .wav import PCMDecoder

PROGRAM = "espeak-ng"
RATE = 22050
"""espeak-ng's output rate, whatever the voice."""
VOICES = {"zh": "cmn-latn-pinyin+f3", "en": "en-us", "yue": "yue", "ja": "ja"}
"""The voice for a language where it is not the language's own code. Mandarin's is the +f3 variant:
whisper base heard six questions in it at a character error rate of 0.24-0.41, against 0.57-0.62 for
the plain voice and 0.42-0.76 for the other variants tried (docs/benchmarks.md, "Languages")."""
DEFAULT_SPEED = 175
"""Words a minute, espeak-ng's own default: slower (130, 150) was no better heard."""
READ_BYTES = 8192
MAX_TEXT_CHARS = 4000


def voice_for(language: str) -> str:
    return VOICES.get(language, language)


@functools.cache
def installed_voices() -> frozenset[str]:
    """The voice and language names espeak-ng knows (blocking, the first time: it runs the program)."""
    program = shutil.which(PROGRAM)
    if program is None:
        return frozenset()
    try:
        listing = subprocess.run(
            [program, "--voices"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    names: set[str] = set()
    for line in listing.stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 5:
            names.add(fields[1].lower())  # the language, e.g. cmn-latn-pinyin
            names.add(fields[4].rsplit("/", 1)[-1].lower())  # the voice file, e.g. cmn-Latn-pinyin
    return frozenset(names)


class EspeakTTS(TTS):
    """One espeak-ng voice (``voice``, with a ``+variant`` if wanted) at ``speed`` words a minute."""

    def __init__(
        self, voice: str, speed: int = DEFAULT_SPEED, language: str | None = None, timeout_s: float = 10.0
    ) -> None:
        program = shutil.which(PROGRAM)
        if program is None:
            raise BackendError(f"{PROGRAM} is not installed (Debian: apt-get install espeak-ng)")
        base = voice.split("+", 1)[0].lower()
        if base not in installed_voices():
            raise BackendError(f"{PROGRAM} has no voice {voice!r} (espeak-ng --voices lists them)")
        self.program = program
        self.voice = voice
        self.speed = speed
        self.timeout_s = timeout_s
        self.path = f"{program} -v {voice}"
        self.sample_rate = RATE
        self.capabilities = Capabilities(
            streaming_output=True, sample_rate=RATE, languages=(language,) if language else ()
        )

    async def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        text = text[:MAX_TEXT_CHARS]
        process = await asyncio.create_subprocess_exec(
            self.program,
            "-v",
            self.voice,
            "-s",
            str(self.speed),
            "--stdout",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert process.stdin is not None and process.stdout is not None
        decoder = PCMDecoder()
        try:
            process.stdin.write(text.encode() + b"\n")
            process.stdin.close()
            while True:
                async with asyncio.timeout(self.timeout_s):
                    data = await process.stdout.read(READ_BYTES)
                if not data:
                    break
                pcm = decoder.feed(data)
                if pcm.size:
                    yield pcm
            async with asyncio.timeout(self.timeout_s):
                code = await process.wait()
            if code != 0:
                raise BackendError(f"{PROGRAM} exited with status {code}")
            decoder.finish()
        except TimeoutError:
            raise BackendError(f"{PROGRAM} gave no audio within {self.timeout_s:g} s") from None
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()

    def warmup(self) -> None:
        subprocess.run(
            [self.program, "-v", self.voice, "-q", "hello"], capture_output=True, timeout=10, check=False
        )


def tts(url: str, context: BackendContext) -> EspeakTTS:
    """``espeak-ng[?voice=NAME&speed=WPM]``: the voice of the chain's language unless one is named."""
    query = dict(parse_qsl(url.partition("?")[2]))
    unknown = set(query) - {"voice", "speed"}
    if unknown:
        raise BackendError(f"espeak-ng takes voice and speed, not {', '.join(sorted(unknown))}")
    try:
        speed = int(query.get("speed", DEFAULT_SPEED))
    except ValueError:
        raise BackendError("espeak-ng's speed is words a minute, a whole number") from None
    if not 80 <= speed <= 450:
        raise BackendError("espeak-ng's speed is 80 to 450 words a minute")
    language = context.language if context.language != "auto" else "en"
    return EspeakTTS(
        query.get("voice") or voice_for(language), speed, language=language, timeout_s=context.timeout_s
    )
