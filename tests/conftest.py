from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.speech import SpeechFile, speak
from voicepeer.runtime import models  # noqa: F401  (offline switches first)


@pytest.fixture(scope="session")
def services():
    """The real models, loaded once for the whole test run, as the server does once per process."""
    from voicepeer.call.services import load_services
    from voicepeer.config import Config

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


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """The real server (`python -m voicepeer serve`) in a child process, one per test module."""
    from tests.support.server import ServerProcess

    log = tmp_path_factory.mktemp("server") / "server.log"
    with ServerProcess(log_path=log) as srv:
        yield srv


@pytest.fixture(scope="module")
def pw():
    """Playwright, driving Debian's Chromium (see tests/support/browser.py)."""
    api = pytest.importorskip("playwright.sync_api")
    with api.sync_playwright() as p:
        yield p
