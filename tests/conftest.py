from __future__ import annotations

from pathlib import Path

import pytest

from peer import models  # noqa: F401  (offline switches first)
from tests.support.speech import SpeechFile, speak


@pytest.fixture(scope="session")
def services():
    """The real models, loaded once for the whole test run, as the server does once per process."""
    from peer.config import Config
    from peer.services import load_services

    return load_services(Config())


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("speech")


@pytest.fixture(scope="session")
def make_speech(speech_dir: Path):
    """Factory: spoken text as a WAV made with espeak-ng + sox, cached per arguments for the run."""
    cache: dict[tuple, SpeechFile] = {}

    def make(text: str, *, rate: int = 48_000, lead_s: float = 1.0, tail_s: float = 2.0, **kw) -> SpeechFile:
        key = (text, rate, lead_s, tail_s, tuple(sorted(kw.items())))
        if key not in cache:
            path = speech_dir / f"speech{len(cache)}_{rate}.wav"
            cache[key] = speak(text, path, rate=rate, lead_s=lead_s, tail_s=tail_s, **kw)
        return cache[key]

    return make
