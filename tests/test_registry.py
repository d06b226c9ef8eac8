"""Backends by URL: which schemes a stage takes, how a URL is shown, and a third-party backend added
through the ``voicepeer.backends`` entry-point group (``examples/espeak_tts.py``, installed here as a
real distribution on ``sys.path``, as pip would)."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicepeer.backends.registry import (
    BackendContext,
    BadBackendURL,
    available,
    create,
    display_name,
    parse_chain,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_a_chain_is_parsed_in_order_and_each_scheme_checked():
    urls = "wyoming://127.0.0.1:10300, http://gpu:8000/v1 ,embedded,"
    assert parse_chain("asr", urls) == ["wyoming://127.0.0.1:10300", "http://gpu:8000/v1", "embedded"]
    assert parse_chain("asr", "wss://asr.example.com/asr") == ["wss://asr.example.com/asr"]
    assert parse_chain("llm", "https://api.example.com/v1") == ["https://api.example.com/v1"]


@pytest.mark.parametrize(
    ("stage", "text", "match"),
    [
        ("asr", "", "names no backend"),
        (
            "asr",
            "grpc://asr:50051",
            "no asr backend for 'grpc'.*known: embedded, http, https, ws, wss, wyoming",
        ),
        ("tts", "ws://127.0.0.1:8000/asr", "no tts backend for 'ws'"),
        ("llm", "wyoming://127.0.0.1:10300", "no llm backend for 'wyoming'"),
        ("asr", "wyoming://:10300", "has no host"),
        ("tts", "http:///v1", "has no host"),
    ],
)
def test_a_chain_naming_what_no_backend_serves_is_refused_with_what_is_known(stage, text, match):
    with pytest.raises(BadBackendURL, match=match):
        parse_chain(stage, text)


def test_events_and_health_show_a_url_without_its_credentials():
    assert (
        display_name("https://user:sk-secret@api.example.com:8443/v1?key=x")
        == "https://api.example.com:8443/v1"
    )
    assert display_name("wyoming://asr:10300") == "wyoming://asr:10300"
    assert display_name("embedded") == "embedded"


@pytest.fixture
def espeak_installed(tmp_path, monkeypatch):
    """``examples/espeak_tts.py`` as an installed distribution declaring the ``tts.espeak`` entry point."""
    dist = tmp_path / "voicepeer_espeak-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: voicepeer-espeak\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[voicepeer.backends]\ntts.espeak = espeak_tts:tts\n")
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.syspath_prepend(str(tmp_path))


async def test_a_package_adds_a_backend_through_an_entry_point(espeak_installed):
    assert ("tts", "espeak") in available()
    assert parse_chain("tts", "espeak://en-us,embedded") == ["espeak://en-us", "embedded"]
    voice = create("tts", "espeak://en-us", BackendContext())
    assert voice.name == "espeak://en-us" and voice.sample_rate == 22_050
    await voice.probe()
    chunks = [chunk async for chunk in voice.synthesize("Good morning, how can I help?")]
    seconds = sum(c.size for c in chunks) / voice.sample_rate
    assert 1.0 < seconds < 5.0 and max(int(abs(c).max()) for c in chunks) > 3000


@pytest.mark.slow
async def test_a_third_party_voice_is_understood_by_the_embedded_asr(espeak_installed, services):
    voice = create("tts", "espeak://en-us", BackendContext())
    import numpy as np

    from voicepeer.audio.formats import SPEECH_RATE, Resampler

    resampler = Resampler(voice.sample_rate, SPEECH_RATE)
    pcm = [resampler.push(c) async for c in voice.synthesize("What is the weather like in London today?")]
    text = (await services.asr.transcribe(np.concatenate([*pcm, resampler.flush()]))).text.lower()
    assert sum(word in text for word in ("weather", "london", "today")) >= 2, text
