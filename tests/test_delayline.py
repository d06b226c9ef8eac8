"""The reference's delay line: held back, and edited where the client's playout was edited."""

from __future__ import annotations

import numpy as np

from voicepeer.audio.delayline import HISTORY_S, MAX_DELAY_S, DelayLine

RATE = 16_000


def ramp(start: int, n: int) -> np.ndarray:
    """Samples that say where they are in the stream."""
    return (np.arange(start, start + n) % 30_000).astype(np.int16)


def run(line: DelayLine, start: int, n: int, step: int = 160) -> tuple[np.ndarray, int]:
    out = [line.push_pop(ramp(i, step), step) for i in range(start, start + n, step)]
    return np.concatenate(out), start + n


def test_the_line_holds_the_reference_back_by_its_delay():
    line = DelayLine(RATE)
    line.set_delay(800)
    out, _ = run(line, 0, 3200)
    assert line.delay == 800
    assert (out[:800] == 0).all()
    assert (out[800:] == ramp(0, 2400)).all()
    line.set_delay(300)  # a new measurement: the oldest held samples are dropped
    assert line.delay == 300
    assert line.push_pop(ramp(3200, 160), 160)[0] == 3200 - 300


def test_a_longer_delay_hands_out_again_what_came_in_that_long_ago():
    # The echo's delay is first measured while the bot speaks: what the line handed out at no delay
    # is what echoes now, so the canceller gets it again rather than silence.
    line = DelayLine(RATE)
    _, at = run(line, 0, 3200)
    line.set_delay(800)
    assert line.delay == 800
    out, at = run(line, at, 1600)
    assert (out == ramp(3200 - 800, 1600)).all()
    # Longer than the line keeps: silence for what it no longer has, then the oldest it has.
    line = DelayLine(RATE)
    longest, kept = round(MAX_DELAY_S * RATE), round(HISTORY_S * RATE)
    _, at = run(line, 0, longest)
    line.set_delay(longest)
    out, _ = run(line, at, longest)
    assert (out[: longest - kept] == 0).all()
    assert (out[longest - kept :] == ramp(longest - kept, kept)).all()


def test_silence_played_before_samples_still_held_is_inserted_before_them():
    line = DelayLine(RATE)
    line.set_delay(1600)
    _, at = run(line, 0, 3200)  # handed out up to 1600; 1600..3200 held
    # The client played 480 samples of silence before sample 2400: 800 back from the newest.
    assert line.edit(480, 800) == 480
    assert line.delay == 1600 + 480
    out, _ = run(line, at, 3200)
    assert (out[:800] == ramp(1600, 800)).all()
    assert (out[800:1280] == 0).all()
    assert (out[1280:] == ramp(2400, 3200 - 1280)).all()


def test_silence_played_before_samples_already_handed_out_hands_them_out_again():
    line = DelayLine(RATE)
    _, at = run(line, 0, 3200)  # no delay: everything handed out
    # Silence 480 long before sample 2400, reported when the newest was 3200: the line goes on from
    # where the voice would be had it been played so (the delay grows by the silence).
    assert line.edit(480, 800) == 480
    out, _ = run(line, at, 1600)
    assert (out == ramp(3200 - 480, 1600)).all()


def test_samples_squeezed_out_are_cut_where_they_were_held_or_handed_out():
    line = DelayLine(RATE)
    line.set_delay(1600)
    _, at = run(line, 0, 3200)
    assert line.edit(-160, 800) == -160  # 160 samples from 2400 on were cut: held
    out, at = run(line, at, 1600)
    assert (out[:800] == ramp(1600, 800)).all()
    assert (out[800:] == ramp(2560, 800)).all()
    assert line.edit(-160, 2400) == -160  # from 2400 back: handed out already, so the next are skipped
    out, _ = run(line, at, 160)
    assert out[0] == ramp(3360 + 160, 1)[0]


def test_a_cut_of_audio_not_come_yet_cannot_be_made():
    line = DelayLine(RATE)
    run(line, 0, 1600)
    assert line.edit(-160, 0) == 0
    assert line.delay == 0


def test_the_line_keeps_only_its_history_however_often_it_is_edited():
    line = DelayLine(RATE)
    at = 0
    for _ in range(100):  # ten seconds, an edit every 100 ms (a receiver squeezing all along)
        _, at = run(line, at, 1600)
        line.edit(-8, 800)
        line.edit(8, 800)
    assert HISTORY_S * RATE - 16 <= len(line._history) <= HISTORY_S * RATE
    assert line.delay == 0


def test_an_edit_cannot_hold_the_reference_back_past_the_longest_delay():
    # The edits come from the client's counters: one claiming an hour of silence is bounded.
    line = DelayLine(RATE)
    run(line, 0, 1600)
    line.edit(3600 * RATE, 0)
    assert line.delay == MAX_DELAY_S * RATE
    line.set_delay(10**12)
    assert line.delay == MAX_DELAY_S * RATE
    line.edit(-(10**12), 10**12)
    assert line.delay == 0
