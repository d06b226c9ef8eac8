"""Silero streaming VAD and turn segmentation on real (espeak-ng) speech."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tests.support.speech import read_wav
from voicepeer.audio.formats import SPEECH_RATE
from voicepeer.audio.vad import (
    WINDOW,
    SileroVAD,
    SpeechDiscarded,
    SpeechEnded,
    SpeechPaused,
    SpeechProgress,
    SpeechStarted,
    SpeechSuspected,
    TurnDetector,
    TurnParams,
)


def run(detector: TurnDetector, pcm: np.ndarray, chunk: int = 320) -> list:
    events = []
    for i in range(0, pcm.size, chunk):
        events += detector.process(pcm[i : i + chunk], arrival=i / SPEECH_RATE)
    return events


@pytest.fixture(scope="module")
def two_questions(make_speech):
    a = make_speech("What time is it in Tokyo?", rate=SPEECH_RATE, lead_s=1.0, tail_s=1.2)
    b = make_speech("And how is the weather there today?", rate=SPEECH_RATE, lead_s=0.0, tail_s=1.0)
    pa, pb = read_wav(a.path)[0], read_wav(b.path)[0]
    bounds = [
        (a.speech_start_s, a.speech_end_s),
        (pa.size / SPEECH_RATE + b.speech_start_s, pa.size / SPEECH_RATE + b.speech_end_s),
    ]
    return np.concatenate([pa, pb]), bounds


def test_streaming_probabilities_match_silero_on_the_whole_file(two_questions):
    pcm, _ = two_questions
    vad = SileroVAD()
    n = pcm.size // 512 * 512
    streamed = np.array([vad(pcm[i : i + 512]) for i in range(0, n, 512)])
    assert streamed.max() > 0.9 and np.median(streamed) < 0.5
    from faster_whisper.vad import get_vad_model

    batch = get_vad_model()(pcm[:n].astype(np.float32) / 32768).reshape(-1)
    assert np.mean(np.abs(streamed - batch) < 0.05) > 0.95


def test_two_questions_give_two_turns_with_accurate_boundaries(two_questions):
    pcm, bounds = two_questions
    events = run(TurnDetector(TurnParams(end_silence_ms=500)), pcm)
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    ends = [e for e in events if isinstance(e, SpeechEnded)]
    assert len(starts) == 2 and len(ends) == 2
    for start, end, (t0, t1) in zip(starts, ends, bounds, strict=True):
        assert start.sample / SPEECH_RATE == pytest.approx(t0, abs=0.15)
        assert end.end_sample / SPEECH_RATE == pytest.approx(t1, abs=0.2)
        # The turn's audio covers the whole utterance: pre-roll before the onset, a tail after the end.
        assert end.start_sample / SPEECH_RATE <= t0
        assert (end.start_sample + end.audio.size) / SPEECH_RATE >= t1
        # The end is timestamped when the last voiced audio arrived, not when the silence timer fired.
        assert end.speech_end_arrival == pytest.approx(t1, abs=0.2)


def test_stationary_noise_and_clicks_open_no_turn():
    rng = np.random.default_rng(1)
    noise = (rng.normal(0, 300, SPEECH_RATE * 4)).astype(np.int16)
    for k in range(1, 8):  # short clicks every half second
        noise[k * 8000 : k * 8000 + 40] = 20000
    assert run(TurnDetector(), noise) == []


def test_a_long_monologue_is_cut_at_max_turn(two_questions):
    pcm, _ = two_questions
    speech = np.concatenate([pcm] * 3)
    events = run(TurnDetector(TurnParams(max_turn_s=2.0, end_silence_ms=2000)), speech)
    ends = [e for e in events if isinstance(e, SpeechEnded)]
    assert ends and all(e.audio.size <= 2.0 * SPEECH_RATE + 512 * 4 for e in ends)


def test_while_echo_is_possible_a_turn_needs_stronger_and_longer_speech(two_questions):
    pcm, _ = two_questions
    cut = pcm[: int(1.25 * SPEECH_RATE)]  # one second of silence, then only the onset of the question
    assert any(isinstance(e, SpeechStarted) for e in run(TurnDetector(), cut))
    gated = TurnDetector()
    events = []
    for i in range(0, cut.size, 320):
        events += gated.process(cut[i : i + 320], arrival=i / SPEECH_RATE, echo_possible=True)
    assert not any(isinstance(e, SpeechStarted) for e in events)
    # The whole question still opens a turn while echo is possible: real barge-in stays possible.
    full = TurnDetector()
    events = []
    for i in range(0, pcm.size, 320):
        events += full.process(pcm[i : i + 320], arrival=i / SPEECH_RATE, echo_possible=True)
    assert any(isinstance(e, SpeechStarted) for e in events)


def test_speech_the_front_end_found_over_the_echo_opens_a_turn_as_soon_as_in_silence(two_questions):
    pcm, _ = two_questions
    cut = pcm[: int(1.25 * SPEECH_RATE)]  # the onset that the echo thresholds alone do not open on
    marked = np.ones(cut.size, dtype=bool)

    def onsets(detector: TurnDetector, over_echo: np.ndarray) -> list[SpeechStarted]:
        events = []
        for i in range(0, cut.size, 320):
            events += detector.process(
                cut[i : i + 320], i / SPEECH_RATE, echo_possible=True, over_echo=over_echo[i : i + 320]
            )
        return [e for e in events if isinstance(e, SpeechStarted)]

    started = onsets(TurnDetector(), marked)
    in_silence = [e for e in run(TurnDetector(), cut) if isinstance(e, SpeechStarted)]
    assert started and in_silence and started[0].sample <= in_silence[0].sample + 512
    # The marks alone open nothing: the window must still sound like speech.
    silent = TurnDetector()
    for _ in range(0, SPEECH_RATE, 320):
        assert not silent.process(np.zeros(320, np.int16), 0.0, echo_possible=True, over_echo=marked[:320])
    with pytest.raises(ValueError):
        TurnDetector().process(cut[:320], 0.0, over_echo=marked[:100])


def marked_run(windows: int, echo_possible: bool, beyond: bool = False) -> list:
    """A fresh detector's events for silence that the front-end marked as the user's over the echo for
    ``windows`` VAD windows (and beyond the echo's spectrum too, with ``beyond``), then half a second
    unmarked, in 20 ms chunks."""
    detector = TurnDetector()
    quiet = np.zeros(320, np.int16)
    marks = np.repeat([True, False], [windows * WINDOW, SPEECH_RATE // 2])
    events = []
    for i in range(0, marks.size - 320 + 1, 320):
        chunk = marks[i : i + 320]
        events += detector.process(
            quiet,
            i / SPEECH_RATE,
            echo_possible=echo_possible,
            over_echo=chunk,
            near_voice=chunk,
            beyond_echo=chunk if beyond else None,
        )
    return events


def test_a_short_run_of_marks_over_the_echo_is_reported_as_suspected_speech_once():
    # Three windows (96 ms) of the front-end's marks are reported, once, from where they began, so the
    # bot can hold its voice; two more open the turn. Not where no echo is possible.
    windows = TurnParams().suspect_ms // (WINDOW * 1000 // SPEECH_RATE)
    assert windows == 3
    for n, echo_possible, kinds in (
        (windows - 1, True, []),
        (windows + 1, True, [SpeechSuspected]),
        (windows + 2, True, [SpeechSuspected, SpeechStarted]),
        (windows + 1, False, []),
    ):
        events = marked_run(n, echo_possible=echo_possible)
        found = [type(e) for e in events if isinstance(e, SpeechSuspected | SpeechStarted)]
        assert found == kinds, (n, echo_possible, events)
        if kinds:
            assert events[0].sample == 0


def test_the_users_voice_the_front_end_found_opens_a_turn_whatever_the_vad_says():
    # "Stop," over the bot: the canceller's suppressor left the VAD nothing to hear (here, silence),
    # but the front-end found the user over the echo, and the microphone was not the bot's voice.
    # Five windows of that (160 ms) open a turn, and it is not dropped as a noise for being short;
    # four do not.
    quiet = np.zeros(320, np.int16)
    marked = np.ones(320, dtype=bool)
    window_ms = WINDOW * 1000 // SPEECH_RATE
    windows = TurnParams().over_echo_alone_ms // window_ms
    assert windows == 5
    # Where the microphone's spectrum also rises above what the bot's echo can have, three (96 ms)
    # open one; two do not, and neither do three that the marks alone do not back.
    beyond = TurnParams().over_echo_beyond_ms // window_ms
    assert beyond == 3
    for n, opens, near_too in (
        (windows - 1, False, False),
        (windows, True, False),
        (beyond - 1, False, True),
        (beyond, True, True),
    ):
        found = marked_run(n, echo_possible=True, beyond=near_too)
        assert any(isinstance(e, SpeechStarted) for e in found) is opens, (n, near_too, found)
    unbacked = TurnDetector()
    assert not any(
        isinstance(e, SpeechStarted)
        for k in range(5)  # 100 ms
        for e in unbacked.process(
            quiet, k * 0.02, echo_possible=True, over_echo=marked, near_voice=~marked, beyond_echo=marked
        )
    )
    detector = TurnDetector()
    events = []
    for k in range(12):  # 240 ms of it, then none
        events += detector.process(quiet, k * 0.02, echo_possible=True, over_echo=marked, near_voice=marked)
    started = [e for e in events if isinstance(e, SpeechStarted)]
    assert len(started) == 1 and started[0].echo
    assert started[0].sample == 0
    for k in range(12, 50):
        events += detector.process(quiet, k * 0.02, echo_possible=True, over_echo=~marked, near_voice=~marked)
    assert any(isinstance(e, SpeechEnded) for e in events), events
    # Not while no echo is possible, nor on the double-talk marks alone (the microphone may be the
    # bot's own voice let through at the delay the canceller is aligned to).
    for kwargs in (
        {"echo_possible": False, "near_voice": marked},
        {"echo_possible": True, "near_voice": ~marked},
    ):
        other = TurnDetector()
        assert not any(
            isinstance(e, SpeechStarted)
            for k in range(12)
            for e in other.process(quiet, k * 0.02, over_echo=marked, **kwargs)
        )


def test_a_pause_comes_first_with_exactly_the_audio_the_end_will_carry(two_questions):
    pcm, bounds = two_questions
    events = run(TurnDetector(TurnParams(end_silence_ms=300, pause_ms=96)), pcm)
    kinds = [type(e) for e in events]
    first_end = kinds.index(SpeechEnded)
    paused = events[first_end - 1]
    ended = events[first_end]
    # The speculative transcript starts on the pause, so it must be the very audio of the end.
    assert isinstance(paused, SpeechPaused)
    assert np.array_equal(paused.audio, ended.audio) and paused.end_sample == ended.end_sample
    assert paused.speech_end_arrival == ended.speech_end_arrival
    assert ended.end_sample / SPEECH_RATE == pytest.approx(bounds[0][1], abs=0.2)
    # Partials: the growing turn, every ~640 ms while the user speaks.
    progress = [e for e in events[:first_end] if isinstance(e, SpeechProgress)]
    assert progress and all(b.audio.size > a.audio.size for a, b in itertools.pairwise(progress))


def test_speech_after_a_short_pause_resumes_the_same_turn(two_questions):
    pcm, bounds = two_questions
    # The two questions about 0.5 s apart: past the pause, short of the 1 s end.
    words = pcm[: int((bounds[0][1] + 0.1) * SPEECH_RATE)]
    gap = np.zeros(int(0.4 * SPEECH_RATE), dtype=np.int16)
    rest = pcm[int((bounds[1][0] - 0.05) * SPEECH_RATE) :]
    events = run(TurnDetector(TurnParams(end_silence_ms=1000)), np.concatenate([words, gap, rest]))
    kinds = [type(e).__name__ for e in events if not isinstance(e, SpeechProgress)]
    assert kinds[:4] == ["SpeechStarted", "SpeechPaused", "SpeechResumed", "SpeechPaused"], kinds
    assert kinds.count("SpeechEnded") == 1


def test_a_turn_too_short_to_be_speech_is_discarded_not_dropped_silently(two_questions):
    pcm, bounds = two_questions
    t0 = bounds[0][0]
    blip = pcm[int((t0 - 0.3) * SPEECH_RATE) : int((t0 + 0.2) * SPEECH_RATE)]  # 200 ms of a word
    silence = np.zeros(SPEECH_RATE, dtype=np.int16)
    events = run(TurnDetector(TurnParams(min_speech_ms=400)), np.concatenate([silence, blip, silence]))
    assert [type(e) for e in events] == [SpeechStarted, SpeechDiscarded], events
