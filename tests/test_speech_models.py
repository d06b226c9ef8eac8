"""The real models, end to end per stage: whisper hears espeak, llama streams, piper speaks what whisper
can hear back."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from peer.asr import WhisperASR
from peer.audio import SPEECH_RATE, Resampler, rms_dbfs
from peer.llm import History
from tests.support.speech import read_wav

pytestmark = pytest.mark.slow


def words(text: str) -> set[str]:
    return {w.strip(".,?!").lower() for w in text.split()}


async def test_whisper_tiny_transcribes_a_spoken_question(services, make_speech):
    sf = make_speech("Please tell me a joke about cats.", rate=SPEECH_RATE)
    pcm = read_wav(sf.path)[0]
    result = await services.asr.transcribe(pcm)
    assert {"tell", "joke"} <= words(result.text) and "cat" in result.text.lower()
    assert result.audio_s == pytest.approx(pcm.size / SPEECH_RATE)


async def test_whisper_base_from_the_split_wheels(services, tmp_path, monkeypatch):
    monkeypatch.setenv("VOICEPEER_CACHE", str(tmp_path))
    asr = WhisperASR("base")
    assert asr.path.parent == tmp_path and (asr.path / "model.bin").stat().st_size > 140_000_000
    speech = await spoken_16k(services, "Please tell me a joke about cats and dogs.")
    result = await asr.transcribe(speech)
    assert {"tell", "joke", "cats", "dogs"} <= words(result.text), result.text
    assert WhisperASR("base").path == asr.path  # joined once, reused


async def spoken_16k(services, text: str) -> np.ndarray:
    """Piper's voice for ``text``, resampled to the speech path's 16 kHz."""
    pcm = np.concatenate([c async for c in services.tts.synthesize(text)])
    r = Resampler(services.tts.sample_rate, SPEECH_RATE)
    return np.concatenate([r.push(pcm), r.flush()])


async def test_llm_streams_a_reply_in_several_tokens(services):
    tokens = [t async for t in services.llm.stream(History().messages("What is the capital of France?"))]
    assert len(tokens) > 2
    assert "".join(tokens).strip()


async def test_an_abandoned_llm_stream_frees_the_model(services):
    stream = services.llm.stream(History().messages("Count from one to fifty."))
    assert await anext(stream)
    await stream.aclose()
    # The lock is released at the next token; a new reply must come promptly, not after 96 tokens.
    tokens = await asyncio.wait_for(
        asyncio.create_task(_collect(services.llm.stream(History().messages("Say hello.")))), 30
    )
    assert tokens


async def _collect(stream) -> list[str]:
    return [t async for t in stream]


async def test_piper_speaks_what_whisper_hears_back(services):
    text = "The weather in Paris is sunny today."
    chunks = [c async for c in services.tts.synthesize(text)]
    pcm = np.concatenate(chunks)
    assert services.tts.sample_rate == 22050 and pcm.dtype == np.int16
    assert 1.0 < pcm.size / 22050 < 5.0 and rms_dbfs(pcm) > -30
    heard = await services.asr.transcribe(await spoken_16k(services, text))
    assert {"weather", "paris", "sunny"} <= words(heard.text)
