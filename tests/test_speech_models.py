"""The real models, end to end per stage: whisper hears espeak, llama streams, piper speaks what whisper
can hear back."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.support.speech import read_wav
from voicepeer.audio.formats import SPEECH_RATE, Resampler, rms_dbfs
from voicepeer.backends.asr import LEAD_KEEP_MS, WhisperASR
from voicepeer.backends.llm import History

pytestmark = pytest.mark.slow


def words(text: str) -> set[str]:
    return {w.strip(".,?!").lower() for w in text.split()}


async def test_whisper_tiny_transcribes_a_spoken_question(services, make_speech):
    sf = make_speech("Tell me about the weather in London.", rate=SPEECH_RATE)
    pcm = read_wav(sf.path)[0]
    result = await services.asr.transcribe(pcm)
    # The content words, not the whole sentence to the letter: whisper's int8 decode can differ by CPU
    # on a function word ("about" / "of"), never on what the question is about.
    heard = words(result.text)
    assert {"weather", "london"} <= heard and len(heard & {"tell", "me", "about", "the", "in"}) >= 3, heard
    # The file's second of silence before the words is cut to LEAD_KEEP_MS before whisper hears it.
    lead_kept = sf.speech_start_s - LEAD_KEEP_MS / 1000
    assert result.audio_s == pytest.approx(pcm.size / SPEECH_RATE - lead_kept, abs=0.03)


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


async def test_long_turns_take_faster_whispers_windowed_path(services, make_speech):
    sf = make_speech("Tell me about the weather in London.", rate=SPEECH_RATE, lead_s=14.0, tail_s=17.0)
    pcm = read_wav(sf.path)[0]
    assert pcm.size > 30 * SPEECH_RATE
    result = await services.asr.transcribe(pcm)
    assert {"weather", "london"} <= words(result.text)


async def test_silence_and_noise_transcribe_to_nothing(services):
    rng = np.random.default_rng(0)
    for audio in (np.zeros(SPEECH_RATE * 2, np.int16), rng.normal(0, 200, SPEECH_RATE * 2).astype(np.int16)):
        assert (await services.asr.transcribe(audio)).text == ""


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
    # Piper's synthesis is stochastic (its duration and noise are sampled), and tiny.en occasionally
    # mishears one word of it; two of the three content words must come back.
    assert len({"weather", "paris", "sunny"} & words(heard.text)) >= 2, heard.text


def test_a_decoder_loop_is_cut_to_one_period():
    from voicepeer.backends.asr import _drop_repetition

    assert _drop_repetition([1, 2, 3, 4, 1, 2, 3, 4, 1, 2]) == [1, 2, 3, 4]
    assert _drop_repetition([1, 2, 3, 4, 5]) == [1, 2, 3, 4, 5]
    assert _drop_repetition([5, 6, 5, 6, 5, 6]) == [5, 6, 5, 6, 5, 6]  # short periods are real speech


def test_thread_options_reach_the_runtimes(monkeypatch):
    """``--llm-threads`` and ``--tts-threads`` are what llama.cpp and onnxruntime are given (a second
    model instance each, loaded from the same installed files)."""
    from voicepeer.cli import build_parser, config_from_args

    monkeypatch.delenv("VOICEPEER_LLM_THREADS", raising=False)
    config = config_from_args(build_parser().parse_args(["--llm-threads", "1", "--tts-threads", "1"]))
    assert (config.llm.threads, config.tts.threads) == (1, 1)

    from voicepeer.backends.llm import LlamaCppLLM
    from voicepeer.backends.tts import PiperTTS

    llm = LlamaCppLLM(n_threads=config.llm.threads)
    assert llm._llama.n_threads == 1
    tts = PiperTTS(threads=config.tts.threads)
    assert tts._voice.session.get_session_options().intra_op_num_threads == 1
    assert PiperTTS()._voice.session.get_session_options().intra_op_num_threads == 0
    assert tts.synthesize_blocking("One thread.")[0].size > 0


def test_loaded_models_are_out_of_the_collectors_full_passes(services):
    """A full collection stops the event loop for as long as it walks the heap; the models' objects live
    as long as the process, so loading freezes them and a full pass walks only what calls create."""
    import gc

    assert gc.get_freeze_count() > 20_000
    tracked = {id(o) for o in gc.get_objects()}
    voice, whisper = services.tts.chain.first, services.asr.chain.first  # the embedded backends
    assert id(voice._voice) not in tracked and id(whisper._english.model) not in tracked
    # Reference counting still frees what calls create, frozen heap or not.
    before = len(gc.get_objects())
    for _ in range(3):
        garbage = [[i] for i in range(10_000)]
        del garbage
    gc.collect()
    assert len(gc.get_objects()) < before + 1_000
