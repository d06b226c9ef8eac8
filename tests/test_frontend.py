"""The front-end stage: reference pairing, exact framing, noise suppression, speech intact."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.speech import read_wav
from tests.test_echo import speechlike, through_room
from voicepeer.audio.echo import FRAME
from voicepeer.audio.echopath import (
    BEYOND_ECHO_DB,
    NEAR_VOICE_BELOW,
    RESIDUAL_NEAR_BELOW,
    SPECTRUM_SPAN_MS,
    SPECTRUM_UNREPORTED_LATER_MS,
    EchoCoupling,
    EchoLeak,
    EchoSpectrum,
)
from voicepeer.audio.formats import SPEECH_RATE, WEBRTC_FRAME_SAMPLES, rms_dbfs
from voicepeer.audio.frontend import ALIGN_SLACK_MS, MAX_REFERENCE_MS, FarEndReference, FrontEnd

TONE = (np.sin(2 * np.pi * 440 * np.arange(WEBRTC_FRAME_SAMPLES) / 48000) * 8000).astype(np.int16)
SILENT = np.zeros(WEBRTC_FRAME_SAMPLES, dtype=np.int16)
BLOCK = 320  # 20 ms at 16 kHz


def send(ref: FarEndReference, pattern: str, start: float, step: float = 0.02) -> float:
    """Frames as the track hands them out: ``1`` a tone, ``0`` silence, ``step`` seconds apart from
    ``start``; returns the time of the next one."""
    for i, mark in enumerate(pattern):
        ref.on_frame(TONE if mark == "1" else SILENT, 0, start + i * step, mark == "1")
    return start + len(pattern) * step


def heard(ref: FarEndReference, frames: int) -> str:
    """What the microphone's next ``frames`` 20 ms chunks are paired with, as ``send`` spells it."""
    out = ""
    for _ in range(frames):
        block = ref.take(BLOCK).astype(np.float64)
        out += "1" if np.sqrt(np.mean(block[40:-40] ** 2)) > 1000 else "0"
    return out


def test_the_reference_starts_at_the_newest_frame_sent_when_the_microphone_first_comes():
    ref = FarEndReference()
    send(ref, "1111111110", 0.0)  # nobody taking yet: only "now" will matter
    assert heard(ref, 3) == "000"  # the newest frame was silence; then nothing more was sent
    send(ref, "1", 0.2)  # the next frame on time: it pairs with the next chunk
    assert heard(ref, 1) == "1"


def test_a_late_microphone_keeps_its_pairing_however_long_it_was_late():
    ref = FarEndReference()
    t = send(ref, "0", 0.0)
    assert heard(ref, 1) == "0"
    t = send(ref, "1101100111011110011101", t)  # 440 ms sent while the microphone's packets wait
    assert heard(ref, 22) == "1101100111011110011101"  # the burst, each chunk with its own reference
    assert ref.dropped == 0
    send(ref, "10", t)
    assert heard(ref, 2) == "10"


def test_an_outbound_stall_is_silence_in_the_reference_as_the_client_played_it():
    ref = FarEndReference()
    t = send(ref, "1", 0.0)
    assert heard(ref, 1) == "1"
    t = send(ref, "11", t)
    send(ref, "11", t + 0.3)  # the loop stalled: the next frame left 300 ms late
    assert heard(ref, 2 + 15 + 2) == "11" + "0" * 15 + "11"
    assert ref.stalled == 15 * BLOCK


def test_silence_already_paired_during_a_stall_is_not_put_in_twice():
    ref = FarEndReference()
    t = send(ref, "1", 0.0)
    assert heard(ref, 1) == "1"
    t = send(ref, "1", t)
    assert heard(ref, 1 + 10) == "1" + "0" * 10  # the microphone's chunks of the stall came first
    send(ref, "11", t + 0.3)
    assert heard(ref, 5 + 2) == "0" * 5 + "11"  # 15 frames of stall in all, then the voice on time


def test_audio_missing_from_the_microphones_timeline_skips_its_reference():
    ref = FarEndReference()
    t = send(ref, "0", 0.0)
    assert heard(ref, 1) == "0"
    t = send(ref, "0011", t)
    ref.skip(2 * BLOCK)  # two frames of the microphone were lost
    assert heard(ref, 2) == "11"
    ref.skip(3 * BLOCK)  # lost before their reference was sent: it goes when it comes
    send(ref, "00011", t)
    assert heard(ref, 2) == "11"
    assert ref.skipped == 5 * BLOCK


def test_a_microphone_gone_for_seconds_starts_again_at_now():
    ref = FarEndReference()
    t = send(ref, "0", 0.0)
    heard(ref, 1)
    t = send(ref, "1" * (MAX_REFERENCE_MS // 20 + 10) + "0", t)
    assert ref.dropped > 0
    assert heard(ref, 2) == "00"  # the newest frame, then nothing: the old voice is not replayed


@pytest.mark.parametrize("aec", ["aec3", "speex", "off"])
def test_output_is_whole_10ms_frames_across_uneven_calls(aec):
    fe = FrontEnd(aec=aec)
    total_in, total_out = 0, 0
    rng = np.random.default_rng(0)
    for n in (320, 100, 517, 3, 960, 320):
        x = rng.normal(0, 500, n).astype(np.int16)
        out = fe.process(x, np.zeros(n, np.int16))
        assert out.size % 160 == 0
        total_in, total_out = total_in + n, total_out + out.size
    assert total_out == total_in // 160 * 160
    fe.close()


@pytest.mark.parametrize(("level", "min_db"), [(1, 5), (2, 10)])
def test_noise_suppression_lowers_stationary_noise(level, min_db):
    fe = FrontEnd(aec="off", noise_suppression=level)
    noise = np.random.default_rng(1).normal(0, 600, SPEECH_RATE * 3).astype(np.int16)
    out = fe.process(noise, np.zeros_like(noise))
    settled = slice(SPEECH_RATE, None)
    assert rms_dbfs(out[settled]) < rms_dbfs(noise[settled]) - min_db


@pytest.mark.slow
def test_speech_through_the_front_end_is_still_understood(services, make_speech):
    sf = make_speech("Tell me about the weather in London.", rate=SPEECH_RATE)
    speech = read_wav(sf.path)[0]
    # A quiet room's noise floor (about -50 dBFS) under the question.
    noise = np.random.default_rng(2).normal(0, 100, speech.size)
    noisy = np.clip(speech + noise, -32768, 32767).astype(np.int16)
    fe = FrontEnd()  # the defaults a call runs with
    out = fe.process(noisy, np.zeros_like(noisy))  # the bot is silent: nothing to cancel
    text = services.asr.chain.first.transcribe_blocking(out).text.lower()
    assert "weather" in text and "london" in text


def test_closing_while_a_frame_is_processed_is_safe():
    """close() runs on the loop while a worker thread may still be inside process()."""
    import threading

    fe = FrontEnd(aec="speex")
    x = np.random.default_rng(0).normal(0, 500, SPEECH_RATE * 5).astype(np.int16)
    worker = threading.Thread(target=fe.process, args=(x, x))
    worker.start()
    fe.close()
    worker.join()
    assert fe.process(x[:320], x[:320]).size == 0  # closed: nothing more is processed


def coupling_over(mic: np.ndarray, far: np.ndarray, expected: bool) -> list[tuple[float, bool]]:
    coupling = EchoCoupling(expected=expected)
    states = []
    for i in range(0, mic.size - FRAME + 1, FRAME):
        coupling.push(mic[i : i + FRAME], far[i : i + FRAME], far_active=True)
        states.append((i / SPEECH_RATE, coupling.present))
    return states


def test_the_echo_coupling_is_found_when_there_is_an_echo_and_ruled_out_when_there_is_none():
    far = speechlike(6.0, seed=1)
    near = speechlike(6.0, seed=2)
    silence = np.zeros_like(far)
    # No echo: a silent microphone, or a user talking over the bot, is ruled out after ~1.5 s of it.
    for mic in (silence, near):
        states = coupling_over(mic, far, expected=True)
        assert states[0][1] and not states[-1][1]
        assert next(t for t, present in states if not present) < 3.5
    # A -20 dB room echo; a -6 dB one with the user talking over it all along: found, and kept.
    for mic in (through_room(far, 150, -20), through_room(far, 300, -6) + near):
        mic = np.clip(mic, -32768, 32767).astype(np.int16)
        states = coupling_over(mic, far, expected=False)
        assert states[-1][1] and next(t for t, present in states if present) < 2.0


def test_a_client_without_echo_gets_its_words_past_the_canceller_while_the_bot_speaks():
    far = speechlike(6.0, seed=1)
    near = np.concatenate([np.zeros(3 * SPEECH_RATE, np.int16), speechlike(3.0, seed=2)])
    fe = FrontEnd("aec3", noise_suppression=0, echo_expected=False)
    clean, words, *_ = fe.process_pair(near, far)
    fe.close()
    speech = slice(3 * SPEECH_RATE, 6 * SPEECH_RATE)
    # AEC3's suppressor would take ~13 dB off a user it hears over the bot's voice (double talk).
    assert rms_dbfs(clean[speech]) == pytest.approx(rms_dbfs(near[speech]), abs=1.0)
    assert np.array_equal(words, near[: words.size])


def test_the_first_syllable_of_a_reply_is_not_taken_for_an_echo_of_the_user():
    # The user's question ends as the bot's reply begins: a reference window that is silent but for
    # the reply's first 60 ms once normalised any microphone into a "perfect" match.
    n = int(1.5 * SPEECH_RATE)
    mic = np.zeros(n, np.int16)
    mic[: int(1.3 * SPEECH_RATE)] = speechlike(1.3, seed=3)
    far = np.zeros(n, np.int16)
    far[-int(0.06 * SPEECH_RATE) :] = speechlike(0.06, seed=4)
    coupling = EchoCoupling(expected=False)
    for i in range(0, n - FRAME + 1, FRAME):
        coupling.push(mic[i : i + FRAME], far[i : i + FRAME], far_active=bool(far[i : i + FRAME].any()))
    assert not coupling.present and coupling.last < 0.3


def test_an_echo_that_comes_back_later_than_aec3_looks_is_still_cancelled():
    # A busy client or a slow network: the bot's voice comes back 800 ms after it left, beyond the
    # ~500 ms AEC3 searches. The front-end measures the delay and holds the reference back by it.
    far = speechlike(10.0, seed=1)
    mic = np.clip(through_room(far, 800, -6), -32768, 32767).astype(np.int16)
    fe = FrontEnd("aec3", noise_suppression=0, echo_expected=True)
    clean = np.concatenate([fe.process(mic[i : i + 320], far[i : i + 320]) for i in range(0, far.size, 320)])
    fe.close()
    assert fe.coupling.lag_ms == pytest.approx(800, abs=30)
    assert fe.delay_ms == pytest.approx(800 - ALIGN_SLACK_MS, abs=30)
    tail = slice(6 * SPEECH_RATE, 10 * SPEECH_RATE)
    assert rms_dbfs(clean[tail]) < rms_dbfs(mic[tail]) - 20, "the late echo was left in"
    # Without the measurement (as at the start of a call), its echo is taken as possible for longer.
    assert FrontEnd("off", noise_suppression=0).echo_reach_ms > fe.echo_reach_ms


@pytest.mark.parametrize("delay_ms, gain_db", [(150, -6), (300, 0), (700, -6)])
def test_the_user_talking_over_the_echo_is_told_from_the_echo(make_speech, delay_ms, gain_db):
    # A loudspeaker: the bot's voice comes back into the microphone, and after a few seconds the user
    # talks over it. AEC3's suppressor pulls the user's voice down to speech probabilities where its
    # residual echo also scores, so the VAD is told where the canceller found more than the echo.
    bot = read_wav(make_speech(BOT_STORY, rate=SPEECH_RATE, lead_s=0.0, tail_s=0.0, gain_db=0.0).path)[0]
    question = make_speech("What is the weather like today?", rate=SPEECH_RATE, lead_s=0.0, tail_s=0.0)
    user = read_wav(question.path)[0]
    far = bot[: 9 * SPEECH_RATE]
    start = 6 * SPEECH_RATE
    near = np.zeros(far.size)
    near[start : start + user.size] = user
    mic = np.clip(through_room(far, delay_ms, gain_db) + near, -32768, 32767).astype(np.int16)
    fe = FrontEnd("aec3", echo_expected=True)
    over = np.concatenate(
        [fe.process_pair(mic[i : i + 320], far[i : i + 320]).over_echo for i in range(0, mic.size, 320)]
    )
    fe.close()
    frames = over[: over.size // FRAME * FRAME].reshape(-1, FRAME)[:, 0]
    loud = np.array([rms_dbfs(near[i : i + FRAME]) > -40 for i in range(0, frames.size * FRAME, FRAME)])
    echo_alone = np.ones(frames.size, dtype=bool)
    echo_alone[: 2 * SPEECH_RATE // FRAME] = False  # the canceller's first seconds are not judged
    echo_alone[start // FRAME : (start + user.size) // FRAME] = False
    assert frames[echo_alone].mean() < 0.01, "the echo alone was taken for the user"
    assert frames[loud].mean() > 0.5, "the user's voice over the echo was not found"


def test_the_bots_voice_let_through_at_a_moved_delay_is_told_from_the_user(make_speech):
    # A loaded client squeezed its playout: the echo comes 430 ms after the bot's voice, the canceller
    # still cancels it at 400. What it lets through matches the reference at the new delay; a voice
    # the bot never sent does not, nor does the user talking over the echo once louder than it (here
    # by 12 dB; at 6 dB, windows of a user's words scored 0.44-0.72 against 0.92 for the echo alone:
    # while the canceller has lost the echo, a quieter user waits until it finds it again).
    bot = read_wav(make_speech(BOT_STORY, rate=SPEECH_RATE, lead_s=0.0, tail_s=0.0).path)[0]
    other = make_speech(
        "What is the weather like today?", rate=SPEECH_RATE, lead_s=0.0, tail_s=0.0, engine="flite"
    )
    user = read_wav(other.path)[0]
    far = bot[: 3 * SPEECH_RATE]
    near = np.zeros(far.size)
    start = far.size - 8 * SPEECH_RATE // 10  # the last 160 ms, which are checked, are in the question
    near[start:] = user[: far.size - start]

    def leak_over(mic: np.ndarray) -> EchoLeak:
        leak = EchoLeak()
        mic = np.clip(mic, -32768, 32767).astype(np.int16)
        for i in range(0, far.size, FRAME):
            leak.push(mic[i : i + FRAME], far[i : i + FRAME], mic[i : i + FRAME])  # nothing cancelled
        return leak

    alone = leak_over(through_room(far, 430, -6))
    assert alone.leaked(lag_ms=430, cancels_ms=400)
    assert alone.last[1] == pytest.approx(430, abs=2)
    assert alone.leaked(lag_ms=None, cancels_ms=None), "any delay counts before one is measured"
    talking = leak_over(through_room(far, 430, -12) + near)
    assert not talking.leaked(lag_ms=430, cancels_ms=400), "the user was taken for a leak"
    assert not leak_over(near).leaked(lag_ms=None, cancels_ms=None), "a voice the bot never sent"


def test_a_user_under_a_louder_echo_the_canceller_removes_is_told_from_the_bots_voice(make_speech):
    # A user's "Stop," as loud as the bot's echo: the microphone still matches the reference (0.6 or
    # more), but what a working canceller leaves of it does not. Where the canceller has not been seen
    # to cancel the echo where it now is, or let the echo through, the window stays the bot's voice.
    bot = read_wav(make_speech(BOT_STORY, rate=SPEECH_RATE, lead_s=0.0, tail_s=0.0).path)[0]
    user = read_wav(make_speech("Stop, please stop.", rate=SPEECH_RATE, lead_s=0.0, tail_s=0.0).path)[0]
    far = bot[: 3 * SPEECH_RATE]
    near = np.zeros(far.size)
    start = far.size - 8 * SPEECH_RATE // 10
    near[start:] = 0.5 * user[: far.size - start]
    echo = through_room(far, 430, -6)
    mic = np.clip(echo + near, -32768, 32767).astype(np.int16)

    def checked(out: np.ndarray) -> EchoLeak:
        leak = EchoLeak()
        out = np.clip(out, -32768, 32767).astype(np.int16)
        for i in range(0, far.size, FRAME):
            leak.push(mic[i : i + FRAME], far[i : i + FRAME], out[i : i + FRAME])
        assert not leak.leaked(lag_ms=430, cancels_ms=430), "the echo was cancelled where it is"
        return leak

    cancelled = checked(near + 0.01 * echo)
    assert cancelled.last[0] >= NEAR_VOICE_BELOW, cancelled.last  # the microphone alone cannot tell
    assert cancelled.residual < RESIDUAL_NEAR_BELOW, cancelled.residual
    assert cancelled.near_voice(proven=True)
    assert not cancelled.near_voice(proven=False), "a canceller not seen to cancel here was trusted"
    let_through = checked(mic)
    assert let_through.residual >= RESIDUAL_NEAR_BELOW and not let_through.near_voice(proven=True)


BOT_STORY = (
    "Once upon a time there was a dragon named Erebo. He was a magnificent creature with scales as black "
    "as the night sky, and a body that could move at incredible speeds. One day a young dragon stumbled "
    "upon his throne, which was made of a stone that shone like the sun."
)


def test_a_voice_the_bot_never_sent_rises_above_the_spectrum_its_echo_can_have(make_speech):
    # The bot's voice comes back at -6 dB, 300 ms late; a user's "Stop," starts over it at 3.2 s in
    # another voice. Against the loudest the reference was near the echo's delay (times the room's gain,
    # learned on the echo alone), the user's first 160 ms stand out in some bands (median 11 dB here);
    # the bot's voice squeezed by a client does not (-10 dB at most). A receiver that ran dry and did
    # not say so plays the echo 493 ms later: near the old delay it stands out like a voice (23-56 dB),
    # which is why a client that does not report its playout is looked at over 600 ms (at most 0.4).
    bot = read_wav(make_speech(BOT_STORY, rate=SPEECH_RATE, lead_s=0.0, tail_s=0.0).path)[0]
    stop = make_speech("Stop, please stop.", rate=SPEECH_RATE, lead_s=0.0, tail_s=0.0, engine="flite")
    far = bot[: 4 * SPEECH_RATE]
    start = 32 * SPEECH_RATE // 10
    user = np.zeros(far.size)
    user[start:] = read_wav(stop.path)[0][: far.size - start]
    # From 2 s on, 3 ms of every 100 squeezed out (30 ms a second, as a loaded Chromium did): 36 ms
    # sooner by the user's onset, within the moves the front-end follows from a client's reports.
    cut = [far[: 2 * SPEECH_RATE]] + [far[i : i + 1552] for i in range(2 * SPEECH_RATE, far.size, 1600)]
    squeezed = np.pad(np.concatenate(cut), (0, far.size - sum(c.size for c in cut)))
    dry = np.concatenate([np.zeros(493 * SPEECH_RATE // 1000), far])[: far.size]
    lag = 300

    def excess(played: np.ndarray, voice: float = 0.0, later_ms: int = SPECTRUM_SPAN_MS) -> np.ndarray:
        """Over the user's first 160 ms (or the same stretch without them): the echo of ``played`` from
        2 s on, learned on the echo of the reference before."""
        spectrum = EchoSpectrum()
        straight = through_room(far, lag, -6)
        mic = np.clip(
            np.concatenate(
                [
                    straight[: 2 * SPEECH_RATE],
                    (through_room(played, lag, -6) + voice * user)[2 * SPEECH_RATE :],
                ]
            ),
            -32768,
            32767,
        ).astype(np.int16)
        found = []
        for i in range(0, far.size - FRAME + 1, FRAME):
            spectrum.push(mic[i : i + FRAME], far[i : i + FRAME])
            echoed = far[max(0, i - lag * SPEECH_RATE // 1000) :][:FRAME]
            if i < 2 * SPEECH_RATE and i >= lag * SPEECH_RATE // 1000 and rms_dbfs(echoed) > -40:
                spectrum.learn(lag)
            if start + 480 <= i < start + 2560:
                found.append(spectrum.excess(lag, later_ms))
        return np.array(found)

    assert np.median(excess(far, voice=1.0)) > BEYOND_ECHO_DB
    assert excess(squeezed).max() < BEYOND_ECHO_DB - 6
    assert np.median(excess(dry)) > BEYOND_ECHO_DB, "moved out of the span, the echo looks like a voice"
    assert excess(dry, later_ms=SPECTRUM_UNREPORTED_LATER_MS).max() < BEYOND_ECHO_DB
