"""The echo cancellers on synthetic signals: a delayed, filtered copy of the reference goes away, an
independent near-end signal stays."""

from __future__ import annotations

import numpy as np
import pytest

from voicepeer.audio.echo import CANCELLERS, FRAME, make_canceller
from voicepeer.audio.formats import SPEECH_RATE


def speechlike(seconds: float, seed: int) -> np.ndarray:
    """Noise shaped like speech: band-limited and syllable-modulated (4 Hz), around -20 dBFS."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SPEECH_RATE)
    x = np.convolve(rng.normal(0, 1, n), np.hanning(16), mode="same")
    envelope = 0.5 + 0.5 * np.abs(np.sin(2 * np.pi * 2 * np.arange(n) / SPEECH_RATE + seed))
    x = x * envelope
    return (x / np.std(x) * 3000).astype(np.int16)


def through_room(far: np.ndarray, delay_ms: int, gain_db: float) -> np.ndarray:
    ir = np.zeros(int(0.06 * SPEECH_RATE))
    ir[0], ir[40], ir[200] = 1.0, 0.4, -0.2
    d = delay_ms * SPEECH_RATE // 1000
    y = np.convolve(far.astype(np.float64), ir)[: far.size] * 10 ** (gain_db / 20)
    return np.concatenate([np.zeros(d), y])[: far.size]


def run(name: str, mic: np.ndarray, far: np.ndarray) -> np.ndarray:
    canceller = make_canceller(name)
    out = np.concatenate(
        [canceller.process(mic[i : i + FRAME], far[i : i + FRAME]) for i in range(0, mic.size, FRAME)]
    )
    canceller.close()
    return out


def db(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * np.log10(np.sum(a.astype(np.float64) ** 2) / max(np.sum(b.astype(np.float64) ** 2), 1.0))


@pytest.mark.parametrize(("name", "settle_s", "min_erle_db"), [("aec3", 2, 20), ("speex", 6, 15)])
def test_a_delayed_copy_of_the_reference_is_removed(name, settle_s, min_erle_db):
    far = speechlike(10, seed=1)
    echo = through_room(far, delay_ms=120, gain_db=-6)
    out = run(name, np.clip(echo, -32768, 32767).astype(np.int16), far)
    tail = slice(settle_s * SPEECH_RATE, None)
    assert db(echo[tail], out[tail]) >= min_erle_db


@pytest.mark.parametrize("name", list(CANCELLERS))
def test_an_independent_near_end_survives_when_the_far_end_is_silent(name):
    far = speechlike(10, seed=1)
    far[7 * SPEECH_RATE :] = 0  # the bot stops talking; the user talks alone
    near = np.zeros_like(far)
    near[7 * SPEECH_RATE :] = speechlike(3, seed=2)
    mic = np.clip(through_room(far, 120, -6) + near, -32768, 32767).astype(np.int16)
    out = run(name, mic, far)
    seg = slice(int(7.5 * SPEECH_RATE), None)
    # The user's signal comes through at about its own level, and as itself (both cancellers delay
    # their output by a few milliseconds, so the match is taken at the best lag up to 20 ms).
    assert abs(db(out[seg], near[seg])) < 3
    assert best_correlation(out[seg], near[seg], max_lag=320) > 0.8


def best_correlation(out: np.ndarray, ref: np.ndarray, max_lag: int) -> float:
    o, r = out.astype(np.float64), ref.astype(np.float64)[: out.size - max_lag]
    return max(float(np.corrcoef(o[lag : lag + r.size], r)[0, 1]) for lag in range(max_lag + 1))


def test_frames_of_the_wrong_size_and_unknown_names_are_refused():
    with pytest.raises(ValueError, match="160-sample"):
        make_canceller("speex").process(np.zeros(100, np.int16), np.zeros(100, np.int16))
    with pytest.raises(ValueError, match="unknown echo canceller"):
        make_canceller("nlms9000")
    assert make_canceller("off") is None
