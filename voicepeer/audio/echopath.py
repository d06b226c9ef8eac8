"""What the front-end knows about the bot's echo: whether it comes back at all (``EchoCoupling``), with
what delay, and where the user talks over it (``DoubleTalk``).

Both are measurements, not processing: the front-end (``frontend.FrontEnd``) and the unprocessed
capture (``capture.UnprocessedCapture``) decide with them which audio the turn detector and the ASR
hear. The thresholds were measured on loudspeaker and headphone rooms through Opus and Chromium; the
reasons are in docs/decisions/echo-cancellers.md.
"""

from __future__ import annotations

import logging
from collections import deque
from itertools import islice

import numpy as np

from .formats import SPEECH_RATE, rms_dbfs

log = logging.getLogger(__name__)


FAR_ACTIVE_PEAK = 300
"""A reference frame with a peak above this (-40 dBFS) carries the bot's voice, not silence."""


COUPLING_WINDOW_FRAMES = 100
"""10 ms frames of microphone audio the echo coupling is measured over (1 s)."""


COUPLING_MAX_LAG_FRAMES = 150
"""Longest echo delay looked for: 1.5 s of network round trip, client buffers and room."""


COUPLING_EVERY_FRAMES = 25
"""A coupling measurement every 250 ms while the bot speaks."""


MOVED_WINDOW_MS = 40
"""Moves of the echo's delay (``EchoCoupling.moved``) that, added up, make the window start again: it
holds the echo from before them, and would measure a lag that moves the reference back. Fewer
leave its measurement within ``frontend.REALIGN_MS`` of the truth."""


ECHO_COUPLED = 0.3
"""Peak normalised cross-correlation between the (pre-emphasised) reference and the microphone above
which the bot's voice is taken to come back. Unrelated speech stays below 0.1; a loudspeaker echo
through Opus scores well above 0.5."""


NO_ECHO_AFTER = 6
"""Measurements in a row below ``ECHO_COUPLED`` (1.5 s of the bot speaking) before the echo path is
declared empty, in a call where no echo was seen yet."""


ECHO_GONE_AFTER = 20
"""The same once an echo was seen (5 s of the bot speaking): double talk lowers the measurement too,
and a loudspeaker rarely stops echoing in the middle of a call."""


MIC_FLOOR = 8.0
"""RMS of the pre-emphasised microphone (about -70 dBFS) below which it counts as silent."""


REF_FLOOR = 150.0
"""RMS of the pre-emphasised reference (about -35 dBFS of speech) a lag's window needs to count."""


ERLE_WINDOW_FRAMES = 100
"""10 ms frames of the bot's echo over which the canceller's echo removal is tracked (1 s of them)."""


ERLE_MIN_FRAMES = 50
"""Frames of the bot's echo before the removal is trusted."""


ERLE_SETTLE_FRAMES = 50
"""Frames of the bot's echo left out after the reference moved: AEC3 goes on cancelling for a few
hundred ms, then loses the echo for up to a second while it finds the new delay. Measured over that,
its removal would look converged (the good frames are the top quarter) while the echo passes."""


ERLE_PERCENTILE = 75
"""What the canceller takes off its echo: the frames where the user talks too (double talk) lower the
removal, so a high percentile of the window, not its mean."""


ERLE_CONVERGED_DB = 30.0
"""Removal above which the canceller is taken to have converged on the echo. AEC3 takes 55-60 dB
(median) off the bot's voice in a loudspeaker room, through Opus and Chromium as well as on a linear
line; before it converges, or for a few hundred ms after the echo's delay moved, it takes 0-20 dB."""


CANCELLED_RUN_FRAMES = 15
"""10 ms frames of the echo in a row the canceller must take ``ERLE_CONVERGED_DB`` off to be known to
cancel it where it is (``DoubleTalk.cancelling``)."""


NEAR_MARGIN_DB = 15.0
"""A frame the canceller took this much less off than it takes off its echo holds something the echo
does not explain: the user. Measured over 32 ms windows on three voices, loudspeaker at half and full
level: double talk 2-14 dB removed (median), the echo alone 42 dB or more (5th percentile)."""


NEAR_FLOOR_DBFS = -50.0
"""Below this level a frame the canceller left is too quiet to be the user talking over the bot."""


class EchoCoupling:
    """Tells whether the bot's voice comes back in the microphone at all.

    Most clients cancel echo themselves (the browser's AEC is on by default), so what reaches us holds
    none. A canceller fed a loud reference and a microphone without echo is still harmful: AEC3's
    suppressor treats the user's voice as double talk and takes ~13 dB off it, which hides a barge-in
    from the VAD. So the front-end measures the coupling and, while it is absent, uses the microphone
    as it came (the canceller keeps adapting, so it is ready the moment an echo appears).
    """

    def __init__(self, expected: bool = True) -> None:
        self._mic: deque[np.ndarray] = deque(maxlen=COUPLING_WINDOW_FRAMES)
        self._ref: deque[np.ndarray] = deque(maxlen=COUPLING_WINDOW_FRAMES + COUPLING_MAX_LAG_FRAMES)
        self._since = 0
        self._moved = 0.0  # ms the echo's delay moved since the window started, either way
        self._moved_fraction = 0.0
        self._quiet = 0
        self.seen = False
        """An echo was measured at some point in this call."""
        self.present = expected
        """Assumed until shown otherwise (unless the client cancels echo itself): a missed echo makes
        the bot interrupt itself."""
        self.last = 0.0
        self.lag_ms: int | None = None
        """Echo delay at the last measurement that found the echo: how long after the reference frame
        the microphone hears it."""

    def push(self, mic: np.ndarray, ref: np.ndarray, far_active: bool) -> None:
        self._mic.append(mic)
        self._ref.append(ref)
        self._since += 1
        if not far_active or self._since < COUPLING_EVERY_FRAMES or len(self._mic) < self._mic.maxlen:
            return
        self._since = 0
        self.last, lag = self._measure()
        if self.last >= ECHO_COUPLED:
            self.lag_ms = lag
            self._quiet = 0
            if not self.present:
                log.info("echo coupling %.2f: the bot's voice comes back; cancelling it", self.last)
            self.seen = self.present = True
        else:
            self._quiet += 1
            if self.present and self._quiet >= (ECHO_GONE_AFTER if self.seen else NO_ECHO_AFTER):
                log.info("echo coupling %.2f: no echo of the bot's voice", self.last)
                self.present = False

    def moved(self, ms: float) -> None:
        """The echo's delay moved by ``ms``, as the client said (``FrontEnd.playout_moved``): the lag is
        that much longer, and once the moves add up to ``MOVED_WINDOW_MS`` the window, which still
        holds the echo from before, starts again, or its next measurement would move the reference
        back."""
        if self.lag_ms is not None:
            total = ms + self._moved_fraction  # whole ms on the lag, the rest kept for the next
            self.lag_ms += round(total)
            self._moved_fraction = total - round(total)
        self._moved += abs(ms)
        if self._moved >= MOVED_WINDOW_MS:
            self._mic.clear()
            self._ref.clear()
            self._since = 0
            self._moved = 0

    def _measure(self) -> tuple[float, int]:
        """The peak normalised correlation between microphone and reference, and its echo delay (ms)."""
        m = np.diff(np.concatenate(self._mic).astype(np.float64))  # pre-emphasis: flatter spectra,
        r = np.diff(np.concatenate(self._ref).astype(np.float64))  # fewer chance correlations
        if np.sqrt(np.sum(m * m)) < MIC_FLOOR * np.sqrt(m.size):
            return 0.0, 0  # a silent microphone holds no echo (and its codec noise correlates by chance)
        return best_lag(m, r)


def best_lag(m: np.ndarray, r: np.ndarray) -> tuple[float, int]:
    """The peak normalised cross-correlation of the (pre-emphasised) microphone ``m`` with the reference
    ``r`` that ends with it and reaches further back, and its delay in ms (0: ``r``'s last samples).

    Only lags where the reference carried the bot's voice over most of the window count: a window
    holding just the first syllable of a reply normalises anything into a "match"."""
    n = 1 << (r.size + m.size).bit_length()
    c = np.fft.irfft(np.fft.rfft(r, n) * np.conj(np.fft.rfft(m, n)), n)[: r.size - m.size + 1]
    # c[k] = sum_t r[t + k] m[t]: k = len(r) - len(m) is no delay, k = 0 the longest one.
    energy = np.concatenate([[0.0], np.cumsum(r * r)])
    r_norm = np.sqrt(np.maximum(energy[m.size :] - energy[: r.size - m.size + 1], 0.0))
    m_norm = np.sqrt(np.sum(m * m))
    loud = r_norm >= REF_FLOOR * np.sqrt(m.size)
    if not loud.any() or m_norm == 0:
        return 0.0, 0
    score = np.where(loud, np.abs(c) / np.maximum(r_norm * m_norm, 1e-9), 0.0)
    k = int(np.argmax(score))
    lag_samples = r.size - m.size - k
    return float(score[k]), round(lag_samples * 1000 / SPEECH_RATE)


LEAK_WINDOW_FRAMES = 16
"""10 ms frames of microphone audio the leak check (``EchoLeak``) looks at: short enough that the echo's
delay holds still within them while the client's receiver squeezes its playout a pitch period at a
time."""


LEAK_SPAN_MS = 120
"""How far from the coupling's echo delay the leak check looks for the bot's voice: the steps of a
receiver that squeezes its buffer back, between two of the coupling's measurements (11-59 ms seen)."""


LEAK_CORRELATION = 0.5
"""Normalised correlation of a ``LEAK_WINDOW_FRAMES`` window of the microphone with the reference above
which the window is the bot's voice. A leaked echo scored 0.59-0.76 in a loaded loudspeaker room; a user
starting to talk over the bot 0.13-0.30 (the echo under the voice lowers it in proportion)."""


LEAK_MOVED_MS = 5
"""The echo found this far from the delay the canceller was given has moved: the canceller lost it."""


LEAK_ALONE = 0.92
"""Correlation above which the window is the bot's voice and little else, even at the delay the canceller
was given: a user's voice 7 dB under the echo would already bring it below this. A canceller that lost
the echo by itself (re-converging) let such windows through (0.93-0.97) and the bot heard itself."""


NEAR_VOICE_BELOW = 0.6
"""A microphone window matching the reference less than this is mostly not the bot's voice: the onsets
of users talking over the bot scored 0.18-0.53 in recorded barge-ins, the bot's voice let through at
the delay the canceller was aligned to 0.84-0.97 (under ``LEAK_ALONE``, so not kept from the marks)."""


RESIDUAL_NEAR_BELOW = 0.3
"""A canceller's output matching the reference less than this (near where the microphone matched it) is
not the bot's voice: a user's "Stop," 20 dB under a loud echo that the canceller removed scored
0.12-0.22 while the microphone, mostly echo, matched at 0.63-0.65."""


LEAK_WIDE_EVERY = 5
"""Every this many leak checks that find nothing near the known delays, one looks at every lag."""


LEAK_EVERY_FRAMES = 4
"""A leak check every this many 10 ms frames while the canceller lets something through: each costs
~0.7 ms near a known delay and ~2.5 ms at every lag up to ``COUPLING_MAX_LAG_FRAMES``, so ~3 % of a
core while a user talks over the bot."""


class EchoLeak:
    """Tells whether what the canceller let through is the bot's own voice at a delay it has not followed.

    A client on loaded cores squeezes and stretches its playout: the echo's delay moves in steps of a few
    to tens of ms. AEC3 loses the echo at each step for a few hundred ms and lets it through almost
    untouched, and the double-talk rule (``DoubleTalk``) and the VAD take it for the user: the bot
    heard itself (three times in one reply, at steps of 11-59 ms). The microphone then matches the
    reference at the new delay almost as well as before (0.6-0.76 over 160 ms), where a user talking over
    the bot matches it at 0.13-0.30: the user's voice is not in the reference. Until the canceller has
    been seen to cancel the echo (at the start, and after the echo path changed), the bot's voice at
    any delay is a leak: the first reply's echo passes a canceller that has not converged yet.

    The cost: while the canceller has lost the echo, a user talking over it is heard only where their
    voice is louder than the echo (by ~10 dB; at 6 dB, 160 ms windows of a question scored 0.44-0.72).
    Before this check, such speech opened a turn no sooner than the leaked echo did.
    """

    def __init__(self) -> None:
        self._mic: deque[np.ndarray] = deque(maxlen=LEAK_WINDOW_FRAMES)
        self._out: deque[np.ndarray] = deque(maxlen=LEAK_WINDOW_FRAMES)
        self._ref: deque[np.ndarray] = deque(maxlen=LEAK_WINDOW_FRAMES + COUPLING_MAX_LAG_FRAMES)
        self.last: tuple[float, int] = (0.0, 0)
        """The last check's correlation and the echo delay (ms) it was found at."""
        self.residual = 0.0
        """The last check's correlation of the canceller's output with the reference near that delay
        (0 where the microphone matched under ``NEAR_VOICE_BELOW`` and it was not looked at; kept
        from the last check that got that far, as ``last`` is)."""
        self._guess: int | None = None  # the delay a leak was last found at, away from the canceller's
        self._wide_in = 0  # checks until the next one at every lag

    def push(self, mic: np.ndarray, ref: np.ndarray, out: np.ndarray) -> None:
        """One 10 ms frame of the microphone, the reference paired with it (not held back) and the
        canceller's output for it."""
        self._mic.append(mic)
        self._ref.append(ref)
        self._out.append(out)

    def near_voice(self, proven: bool) -> bool:
        """What the canceller let through in the last check's window is mostly not the bot's voice: the
        microphone did not match the reference (a user as loud as the echo), or the canceller's output
        did not (a user under a louder echo), where the canceller is ``proven``: seen to cancel the echo
        where it now is. Just after the echo moved, a canceller re-converging lets through a filtered,
        suppressed bot voice that matches the reference at no single delay (0.14-0.24)."""
        return self.last[0] < NEAR_VOICE_BELOW or (proven and self.residual < RESIDUAL_NEAR_BELOW)

    def leaked(self, lag_ms: int | None, cancels_ms: int | None) -> bool:
        """The microphone's last frames are the bot's voice at a delay the canceller does not cancel, or
        the bot's voice alone (``LEAK_ALONE``). ``lag_ms``: the echo's delay as last measured (None:
        not yet, and every lag is looked at); ``cancels_ms``: the delay the canceller was last seen to
        cancel (None: not since the echo path last changed, and the bot's voice at any delay is a
        leak). The two differ when the echo has moved and the canceller lost it."""
        if len(self._mic) < LEAK_WINDOW_FRAMES:
            return False
        m = np.diff(np.concatenate(self._mic).astype(np.float64))
        if np.sqrt(np.sum(m * m)) < MIC_FLOOR * np.sqrt(m.size):
            return False
        # Near the delay a leak was last found at, then near the known ones, then (now and then, as it
        # costs three times as much) at every lag: a receiver that ran dry moves the echo by as long.
        ref = np.concatenate(self._ref)
        score, found = 0.0, 0
        for around in dict.fromkeys((self._guess, lag_ms, cancels_ms)):
            if around is not None and score < LEAK_CORRELATION:
                score, found = max((score, found), self._search(m, ref, around))
        if score < LEAK_CORRELATION and (lag_ms is None or self._wide_in == 0):
            score, found = self._search(m, ref, None)
            self._wide_in = LEAK_WIDE_EVERY
        self._wide_in = max(0, self._wide_in - 1)
        self.last = (score, found)
        self.residual = 0.0
        if score >= NEAR_VOICE_BELOW:
            out = np.diff(np.concatenate(self._out).astype(np.float64))
            self.residual = self._search(out, ref, found)[0]
        if score < LEAK_CORRELATION:
            self._guess = None
            return False
        moved = cancels_ms is None or abs(found - cancels_ms) >= LEAK_MOVED_MS
        self._guess = found if moved and found != lag_ms else None
        return moved or score >= LEAK_ALONE

    @staticmethod
    def _search(m: np.ndarray, ref: np.ndarray, around_ms: int | None) -> tuple[float, int]:
        """The best correlation of ``m`` with the reference kept, ``ref``, within ``LEAK_SPAN_MS`` of
        ``around_ms`` (None: at every lag kept), and its delay in ms."""
        longest = ref.size - m.size - 1
        nearest = 0 if around_ms is None else max(0, around_ms - LEAK_SPAN_MS) * SPEECH_RATE // 1000
        furthest = (
            longest if around_ms is None else min(longest, (around_ms + LEAK_SPAN_MS) * SPEECH_RATE // 1000)
        )
        if furthest <= nearest:
            return 0.0, 0
        start, end = longest - furthest, ref.size - nearest
        score, found = best_lag(m, np.diff(ref[start:end].astype(np.float64)))
        return score, found + nearest * 1000 // SPEECH_RATE


SPECTRUM_WINDOW = 512
"""Samples of the microphone and the reference whose spectra ``EchoSpectrum`` compares: one VAD window
(32 ms), ending at the frame just pushed."""


SPECTRUM_BANDS_HZ = (100, 300, 500, 700, 900, 1200, 1500, 1900, 2400, 3000, 3700, 4500, 5500, 6500, 7900)
"""Edges of the bands compared: narrow where voices differ by their pitch and first formant."""


SPECTRUM_SPAN_MS = 60
"""How far either side of the echo's delay the reference's spectra are looked at: the delay drifts by
this much while a client's receiver stretches and squeezes its playout between two measurements, and
the front-end follows the larger moves a client reports (``FrontEnd.playout_moved``)."""


SPECTRUM_UNREPORTED_LATER_MS = 600
"""How much later than its measured delay the echo may come from a client that does not report its
playout (any WebRTC stack but ours): a receiver that ran dry plays the rest of the reply that much
later (493 ms in a loaded Chromium) until the cross-correlation measures it again, a second on. At
``SPECTRUM_SPAN_MS`` the bot's voice so moved rose 9-12 dB above the reference near the old delay."""


SPECTRUM_TOP_BANDS = 3
"""The excess is the mean of the bands the echo explains least: a voice over the bot's is louder than
it in a few bands (its own pitch and formants), not in all."""


SPECTRUM_LEARN_RATE = 0.05
"""Weight of one frame of the echo alone in the per-band echo gain (a time constant of ~200 ms of it)."""


SPECTRUM_NOISE_RISE_DB = 0.05
"""How fast, per frame, the microphone's noise floor estimate may rise (5 dB/s): a minimum tracker."""


SPECTRUM_NOISE_MARGIN_DB = 10.0
"""A band counts only this far above the microphone's own noise floor: where the echo is quieter than
the room's noise, the noise would otherwise look like a voice the echo does not explain."""


BEYOND_ECHO_DB = 6.0
"""Mean excess of the ``SPECTRUM_TOP_BANDS`` bands above which the microphone holds a voice the bot's
echo cannot. Users' onsets over the bot in recorded loudspeaker calls rose 6-16 dB above (slt's
"Stop," 6-8 dB in its first 40-60 ms, questions 10-40 dB); the bot's voice alone, squeezed back by a
client that reports it (the replayed scenes of ``tests/test_receiver.py``), opened no turn by it at
4 dB or more, one at 0 dB."""


_SILENT_BAND_DB = 30.0  # ``band_levels`` of digital silence
_EDGES = [round(hz * SPECTRUM_WINDOW / SPEECH_RATE) for hz in SPECTRUM_BANDS_HZ]
_HANN = np.hanning(SPECTRUM_WINDOW)
_SILENT_LEVELS = np.full(len(SPECTRUM_BANDS_HZ) - 1, _SILENT_BAND_DB)
_SILENT_LEVELS.flags.writeable = False


def band_levels(window: np.ndarray) -> np.ndarray:
    """Energy (dB) of a ``SPECTRUM_WINDOW`` of int16 samples in each of the ``SPECTRUM_BANDS_HZ`` bands."""
    power = np.abs(np.fft.rfft(window * _HANN)) ** 2
    sums = np.add.reduceat(power[_EDGES[0] : _EDGES[-1]], np.array(_EDGES[:-1]) - _EDGES[0])
    return 10 * np.log10(sums + 10 ** (_SILENT_BAND_DB / 10))


class EchoSpectrum:
    """Tells how far the microphone's spectrum rises above what the bot's echo can put there.

    The bot's voice comes back time-stretched and squeezed by the client's receiver, so near its delay
    the microphone matches the reference at no single lag (``EchoLeak`` scores it like a user) and the
    canceller, losing it, lets it through (``DoubleTalk`` marks it). Its spectrum is still the bot's:
    in every band, no louder than the loudest the reference was near the delay, times the room's gain
    in that band. A user's voice brings its own pitch and formants: some bands rise well above that.

    The room's gain per band is learned from frames the canceller is seen to cancel (the echo alone);
    until then nothing is judged (``excess`` stays None)."""

    def __init__(self) -> None:
        self._mic = np.zeros(SPECTRUM_WINDOW)
        self._ref = np.zeros(SPECTRUM_WINDOW)
        later = max(SPECTRUM_SPAN_MS, SPECTRUM_UNREPORTED_LATER_MS) // 10
        self._ref_levels: deque[np.ndarray] = deque(maxlen=COUPLING_MAX_LAG_FRAMES + later + 1)
        self._mic_levels = np.zeros(len(SPECTRUM_BANDS_HZ) - 1)
        self._noise: np.ndarray | None = None  # the microphone's floor, per band (a minimum tracker)
        self._pushed = 0
        self.gain: np.ndarray | None = None
        """Per band, what the room adds to the reference on its way into the microphone (dB)."""

    def push(self, mic: np.ndarray, ref: np.ndarray) -> None:
        """One 10 ms frame of the microphone and of the reference paired with it (not held back)."""
        n = mic.size
        self._mic[:-n], self._mic[-n:] = self._mic[n:], mic
        self._ref[:-n], self._ref[-n:] = self._ref[n:], ref
        # The reference is silent most of a call (the user's turns): its levels are then known.
        self._ref_levels.append(band_levels(self._ref) if self._ref.any() else _SILENT_LEVELS)
        self._mic_levels = band_levels(self._mic)
        self._pushed += 1
        if self._pushed * n < SPECTRUM_WINDOW:
            return  # the window still holds the zeros it started with: no floor to learn from
        floor = self._noise
        self._noise = (
            self._mic_levels
            if floor is None
            else np.minimum(floor + SPECTRUM_NOISE_RISE_DB, self._mic_levels)
        )

    def learn(self, lag_ms: int) -> None:
        """The last frame is the bot's echo alone, at ``lag_ms``: the room's gain moves toward it, in the
        bands the reference carried sound in."""
        frames = lag_ms // 10
        if not 0 <= frames < len(self._ref_levels):  # squeezes reported past the measured delay
            return
        ref = self._ref_levels[-1 - frames]
        gain = self._mic_levels - ref
        if self.gain is None:
            self.gain = gain
        else:
            sounding = ref > _SILENT_BAND_DB + 20
            self.gain[sounding] += SPECTRUM_LEARN_RATE * (gain[sounding] - self.gain[sounding])

    def excess(self, lag_ms: int, later_ms: int = SPECTRUM_SPAN_MS) -> float | None:
        """The mean of the ``SPECTRUM_TOP_BANDS`` largest excesses (dB) of the last window over the
        loudest echo the reference could have made from ``SPECTRUM_SPAN_MS`` before ``lag_ms`` to
        ``later_ms`` after it, and over the microphone's noise floor; None until the room's gain is
        known."""
        nearest = max(0, (lag_ms - SPECTRUM_SPAN_MS) // 10)
        furthest = (lag_ms + later_ms) // 10
        if self.gain is None or self._noise is None or not 0 <= furthest < len(self._ref_levels):
            return None
        kept = len(self._ref_levels)
        echo = np.max(list(islice(self._ref_levels, kept - 1 - furthest, kept - nearest)), axis=0) + self.gain
        explained = np.maximum(echo, self._noise + SPECTRUM_NOISE_MARGIN_DB)
        return float(np.sort(self._mic_levels - explained)[-SPECTRUM_TOP_BANDS:].mean())


class DoubleTalk:
    """Tells, frame by frame, whether the microphone holds more than the bot's echo: the user talking
    over the bot.

    The VAD alone cannot tell early enough on a loudspeaker: AEC3's suppressor pulls a user's voice
    under the bot's down to speech probabilities of 0.3-0.8, where residual echo also scores, so the
    detector needed 0.85 for 256 ms and found onsets a second late or not at all (8 of 15 utterances
    missed on three voices). What the canceller takes off is the clearer sign: once converged it takes
    40-60 dB off the echo, and only a few dB off a frame where someone else speaks.
    """

    def __init__(self) -> None:
        # A ring of the last ERLE_WINDOW_FRAMES removals (order does not matter to a percentile).
        self._removed = np.zeros(ERLE_WINDOW_FRAMES)
        self._count = 0
        self._settle = 0  # echo frames still to leave out after a reset
        self._cancelled_run = 0  # frames of the echo in a row the canceller took off
        self.out_db = -120.0
        """The level of the canceller's output in the last frame (dBFS)."""
        self.cancelled = False
        """The last frame was the bot's echo, and the canceller took ``ERLE_CONVERGED_DB`` off it."""
        self.erle_db: float | None = None
        """What the canceller takes off the bot's echo (``ERLE_PERCENTILE`` over the last frames of
        it), or None until ``ERLE_MIN_FRAMES`` of them were seen since the last reset."""

    def reset(self) -> None:
        """The echo path changed (its delay moved): the canceller re-converges, so its removal must be
        measured afresh, once it has settled, before a frame can be judged by it."""
        self._count = 0
        self.erle_db = None
        self._settle = ERLE_SETTLE_FRAMES
        self._cancelled_run = 0

    @property
    def cancelling(self) -> bool:
        """The canceller has just taken ``ERLE_CONVERGED_DB`` off ``CANCELLED_RUN_FRAMES`` frames of the
        echo in a row: it cancels the echo where it now is. (Single frames say little: its suppressor
        takes that much off the quiet tail of a syllable whose onset it let through.)"""
        return self._cancelled_run >= CANCELLED_RUN_FRAMES

    @property
    def converged(self) -> bool:
        """The canceller is known to remove the bot's echo well, so what it leaves can be judged."""
        return self.erle_db is not None and self.erle_db >= ERLE_CONVERGED_DB

    def push(self, mic: np.ndarray, out: np.ndarray, echo_active: bool) -> bool:
        """One frame of the microphone and the canceller's output; ``echo_active``: the (held-back)
        reference carried the bot's voice. Returns whether this frame holds the near end's voice."""
        mic_db = rms_dbfs(mic)
        out_db = self.out_db = rms_dbfs(out)
        removed = mic_db - out_db
        self.cancelled = echo_active and mic_db > NEAR_FLOOR_DBFS and removed >= ERLE_CONVERGED_DB
        if echo_active and mic_db > NEAR_FLOOR_DBFS:
            self._cancelled_run = self._cancelled_run + 1 if self.cancelled else 0
            if self._settle:
                self._settle -= 1  # the canceller is still finding the moved echo
            else:
                self._removed[self._count % ERLE_WINDOW_FRAMES] = removed
                self._count += 1
                n = min(self._count, ERLE_WINDOW_FRAMES)
                if n >= ERLE_MIN_FRAMES:
                    self.erle_db = _percentile(self._removed[:n], ERLE_PERCENTILE)
        return self.converged and out_db >= NEAR_FLOOR_DBFS and removed <= self.erle_db - NEAR_MARGIN_DB


def _percentile(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear interpolation) by partition: this runs for every 10 ms frame
    of the bot's echo, and numpy's general function costs ~25 times as much (~70 us a frame here)."""
    rank = q / 100 * (values.size - 1)
    lo = int(rank)
    hi = min(lo + 1, values.size - 1)
    part = np.partition(values, (lo, hi))
    return float(part[lo] + (part[hi] - part[lo]) * (rank - lo))


def far_active(frame: np.ndarray) -> bool:
    """The reference frame carries the bot's voice, not silence."""
    return bool(np.abs(frame).max(initial=0) > FAR_ACTIVE_PEAK)
