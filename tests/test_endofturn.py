"""Smart Turn v3.2 end-of-turn detection: the real model on real (espeak-ng) speech.

The turns are shaped the way the turn detector hands them on: a few hundred ms of pre-roll, the words,
then ~200 ms of silence (Smart Turn is trained to run once a VAD has heard 200 ms of silence).

Unfinished turns end on a filler ("..., um"): espeak-ng ends every text it is given with a sentence-final
fall, so a bare truncation ("What is the capital of") sounds finished in its voice and the model rightly
scores it so (bench/endofturn.py measures that across voices). The filler is what a speaker who stops
mid-phrase says, and one of the cues the model was trained on.

The clips are made without sox (``speak`` resamples with sox, whose dither differs on every run): the
int8 model's output moves by up to 0.5 on a borderline turn when only the last bit of the samples
changes, and a test must hear the same audio every time. espeak-ng itself is deterministic, and so is
our resampler.
"""

from __future__ import annotations

import statistics
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.support.speech import read_wav, require_tools
from voicepeer.audio.endofturn import FRAMES, N_MELS, WINDOW_SAMPLES, EndOfTurn, SmartTurn, features
from voicepeer.audio.formats import SPEECH_RATE, Resampler
from voicepeer.runtime import models

COMPLETE = [
    "What is the capital of France?",
    "Please tell me a story about a dragon.",
    "How far away is the moon?",
    "Can you recommend a good book to read?",
    "I would like to book a table for two tonight.",
    "What time does the train leave?",
]
UNFINISHED = [
    "What is the capital of, um",
    "I would like to book a table for, um",
    "Can you tell me about the, uh",
    "I was thinking that maybe we could, um",
    "So the thing is, um",
    "Please tell me a story about, uh",
]
"""Six of each. The int8 model's score for one clip differs by CPU (its kernels round differently by
instruction set): "What is the capital of France?" scored 0.86 on one x86-64 machine and 0.49 on
another. So the tests assert what holds across clips with room to spare, never one clip against the
0.5 threshold. On the machine where these were written the unfinished clips (a filler at the end)
scored 0.005-0.007 and the complete ones 0.32-0.97, median 0.87."""


@pytest.fixture(scope="module")
def turn(tmp_path_factory):
    """Factory: ``text`` as the turn detector hands a turn on, int16 at 16 kHz: 320 ms of pre-roll, the
    words, 200 ms of silence."""
    require_tools()
    work = tmp_path_factory.mktemp("endofturn")

    def make(text: str) -> np.ndarray:
        wav = work / "espeak.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text], check=True)
        pcm, rate = read_wav(wav)
        resampler = Resampler(rate, SPEECH_RATE)
        pcm = np.concatenate([resampler.push(pcm), resampler.flush()])
        voiced = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 300)
        words = pcm[voiced[0] : voiced[-1] + 1]
        return np.concatenate([np.zeros(5120, np.int16), words, np.zeros(3200, np.int16)])

    return make


@pytest.fixture(scope="module")
def smart_turn() -> SmartTurn:
    model = SmartTurn()
    model.warmup()
    return model


def test_missing_model_path_is_model_not_found(tmp_path):
    with pytest.raises(models.ModelNotFound, match=str(tmp_path / "nope.onnx")):
        SmartTurn(str(tmp_path / "nope.onnx"))


def test_bundled_model_is_found_without_importing_pipecat():
    import sys

    path = models.smart_turn_path(None)
    assert path.name == "smart-turn-v3.2-cpu.onnx" and path.stat().st_size > 8_000_000
    assert "pipecat" not in sys.modules


def test_silence_gives_constant_features_of_the_exact_shape():
    mel = features(np.zeros(SPEECH_RATE, dtype=np.int16))
    assert mel.shape == (N_MELS, FRAMES) and mel.dtype == np.float32
    # log10 of the 1e-10 floor, shifted and scaled the Whisper way: (-10 + 4) / 4
    np.testing.assert_allclose(mel, -1.5, atol=1e-6)


def test_features_match_transformers_whisper_feature_extractor():
    """Reference values from transformers 5.24 ``WhisperFeatureExtractor(chunk_length=8)`` with
    ``do_normalize=True``, on the same 8 s window (computed once in a throwaway venv: transformers is not
    a dependency). The signal ends abruptly, so the last frame depends on the framing at the end of the
    window, where the end-of-turn cues are: faster-whisper's default padding gives 21.68 there."""
    t = np.arange(3 * SPEECH_RATE) / SPEECH_RATE
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * (300 + 1000 * t) * t)
    pcm = np.round(tone * 32767 * np.minimum(1, t * 4)).astype(np.int16)
    mel = features(pcm)
    columns = [500, 650, 797, 798, 799]
    reference = [-10.1582, -5.6078, -7.8163, -7.419, 37.2528]
    np.testing.assert_allclose(mel[:, columns].sum(axis=0), reference, atol=2e-3)
    assert mel.mean() == pytest.approx(-0.169546, abs=1e-5)


@pytest.mark.slow
def test_another_onnx_model_is_refused():
    from faster_whisper.utils import get_assets_path

    silero = Path(get_assets_path()) / "silero_vad_v6.onnx"
    with pytest.raises(ValueError, match="not a Smart Turn v3 model"):
        SmartTurn(str(silero))


@pytest.mark.slow
def test_wrong_format_is_refused(smart_turn, turn):
    pcm = turn(COMPLETE[0])
    with pytest.raises(ValueError, match="int16"):
        smart_turn.probability(pcm.astype(np.float32) / 32768)
    with pytest.raises(ValueError, match="int16"):
        smart_turn.probability(np.stack([pcm, pcm]))
    with pytest.raises(ValueError, match="16000 Hz"):
        smart_turn.probability(pcm, sample_rate=48_000)
    with pytest.raises(ValueError, match="needs some audio"):
        smart_turn.probability(pcm[:0])


@pytest.mark.slow
def test_complete_phrases_score_far_above_unfinished_ones(smart_turn, turn):
    """Unfinished phrases are judged unfinished by a wide margin (0.006 against the 0.5 threshold), and
    the complete ones, as a group, score far above them: the median clears the highest unfinished score
    by 0.3, which a shift of the 0.37 seen between two CPUs on one clip does not undo for the group."""
    complete = [smart_turn.probability(turn(t)) for t in COMPLETE]
    unfinished = [smart_turn.probability(turn(t)) for t in UNFINISHED]
    assert max(unfinished) < 0.2, unfinished
    assert statistics.median(complete) > max(unfinished) + 0.3, (complete, unfinished)
    assert sum(p > max(unfinished) for p in complete) >= 5, (complete, unfinished)
    assert isinstance(smart_turn, EndOfTurn)


@pytest.mark.slow
def test_only_the_last_eight_seconds_count(smart_turn, turn):
    """What came long before the end of a turn does not change the decision, and a short turn is
    zero-padded in front: leading silence changes nothing, the features are identical."""
    unfinished = turn(UNFINISHED[0])
    earlier = np.tile(turn(COMPLETE[1]), 4)  # ~12 s of finished sentences before it
    long_turn = np.concatenate([earlier, unfinished])
    assert long_turn.size > WINDOW_SAMPLES + SPEECH_RATE
    p_long = smart_turn.probability(long_turn)
    assert p_long == smart_turn.probability(long_turn[-WINDOW_SAMPLES:])
    assert p_long < 0.5
    short = turn(COMPLETE[0])
    padded = np.concatenate([np.zeros(2 * SPEECH_RATE, dtype=np.int16), short])
    assert smart_turn.probability(padded) == pytest.approx(smart_turn.probability(short), abs=1e-6)


@pytest.mark.slow
def test_the_level_of_the_voice_does_not_matter(smart_turn, turn):
    """The waveform is normalised (zero mean, unit variance) before the features, as in training: the
    same turn 6 dB louder gives the same features and decision. (Without it every log-mel value moves
    by log10(4) / 4 = 0.15.)"""
    changes = []
    for text in COMPLETE[:3] + UNFINISHED[:3]:
        quiet = turn(text) // 2
        loud = quiet * 2  # exactly 6 dB up, no rounding
        np.testing.assert_allclose(features(loud), features(quiet), atol=1e-4)
        changes.append(abs(smart_turn.probability(loud) - smart_turn.probability(quiet)))
    # Features equal to 1e-4 still round differently in the int8 kernels now and then: the score moves
    # a little (at most 0.05 on the machine these were written on), never by a decision's worth.
    assert statistics.mean(changes) < 0.1 and max(changes) < 0.25, changes
