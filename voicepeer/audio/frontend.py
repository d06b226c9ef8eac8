"""The audio front-end: echo cancellation, then noise suppression and gain, on the 16 kHz speech path.

It sits between the decoded microphone frames and the VAD/ASR. The echo canceller's far end is the
exact audio the outbound track handed to aiortc (``FarEndReference`` listens to the track), so the peer
can remove its own voice even when the browser's canceller is off or does not cover the output the user
listens on.

Pairing the two streams needs no timestamps arithmetic: the outbound track releases a 20 ms frame every
20 ms and the client's microphone delivers one every 20 ms, so each inbound chunk is paired with the
reference sent most recently. The echo path's delay (network round trip plus the client's buffers) is
found by the canceller's own delay estimation while it is short. AEC3 finds none beyond ~500 ms (an
8 s test: 56-60 dB of echo removed at 150-450 ms, under 1 dB at 600 ms and more), and a loaded client
or a slow network gives that: a Chromium on the same two busy cores sent the bot's voice back 600-900
ms after it left. So the front-end measures the delay itself (``EchoCoupling.lag_ms``, a cross-
correlation it computes anyway) and holds the reference back by all but ``ALIGN_SLACK_MS`` of it.

On a loudspeaker the user's voice over the bot's is what barge-in depends on, and what AEC3's
suppressor takes most from. The front-end therefore also says where the canceller found more than the
echo (``DoubleTalk``, from how much it removed against how much it removes from the echo alone), and the
turn detector opens a turn there as soon as in silence, on a lower speech probability (AEC3's
suppressor pulls the voice down).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from .echo import FRAME, EchoCanceller, make_canceller
from .formats import SPEECH_RATE, WEBRTC_RATE, Resampler, SampleBuffer, rms_dbfs

log = logging.getLogger(__name__)

MAX_REFERENCE_MS = 200
"""Reference older than this when the microphone asks for it is stale (the inbound side paused) and is
dropped, so the pairing stays at "now" and the canceller's delay estimate stays valid."""


FAR_ACTIVE_PEAK = 300
"""A reference frame with a peak above this (-40 dBFS) carries the bot's voice, not silence."""

ECHO_REACH_MS = 700
"""How long after the (held-back) reference carried the bot's voice its echo can still reach the
microphone: what is left of the echo's delay once the reference is held back (up to
``ALIGN_SLACK_MS`` + ``REALIGN_MS``, 420 ms) plus the room's tail."""


COUPLING_WINDOW_FRAMES = 100
"""10 ms frames of microphone audio the echo coupling is measured over (1 s)."""

COUPLING_MAX_LAG_FRAMES = 150
"""Longest echo delay looked for: 1.5 s of network round trip, client buffers and room."""

ALIGN_SLACK_MS = 300
"""Delay left for the canceller to find once the reference is held back by the measured echo delay:
room for the delay to drift either way, inside what AEC3 finds on its own (150-450 ms). An echo that
comes back sooner than this is left to AEC3 alone: each move of the reference makes it lose the echo
for about a second (a 300 ms echo at full level passed it uncancelled for 1.1 s after a 150 ms move),
and the bot then hears itself."""

REALIGN_MS = 120
"""A measured delay this far from the one the reference is held back by moves it (each move costs the
canceller a few hundred milliseconds of re-convergence, so small drifts are left to it)."""

UNKNOWN_REACH_MS = 1200
"""``ECHO_REACH_MS`` while no echo delay has been measured yet in a call that expects an echo: the
bot's first words may come back late, and a missed echo makes the bot interrupt itself."""

COUPLING_EVERY_FRAMES = 25
"""A coupling measurement every 250 ms while the bot speaks."""

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

NEAR_MARGIN_DB = 15.0
"""A frame the canceller took this much less off than it takes off its echo holds something the echo
does not explain: the user. Measured over 32 ms windows on three voices, loudspeaker at half and full
level: double talk 2-14 dB removed (median), the echo alone 42 dB or more (5th percentile)."""

NEAR_FLOOR_DBFS = -50.0
"""Below this level a frame the canceller left is too quiet to be the user talking over the bot."""

WORDS_HANGOVER_FRAMES = 30
"""10 ms frames after the last one found to hold the user's voice over the echo during which the ASR
still gets the words canceller's output: the gaps between a talker's syllables are part of the words."""


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

    def _measure(self) -> tuple[float, int]:
        """The peak normalised correlation between microphone and reference, and its echo delay (ms)."""
        m = np.diff(np.concatenate(self._mic).astype(np.float64))  # pre-emphasis: flatter spectra,
        r = np.diff(np.concatenate(self._ref).astype(np.float64))  # fewer chance correlations
        n = 1 << (r.size + m.size).bit_length()
        c = np.fft.irfft(np.fft.rfft(r, n) * np.conj(np.fft.rfft(m, n)), n)[: r.size - m.size + 1]
        # c[k] = sum_t r[t + k] m[t]: k = len(r) - len(m) is no delay, k = 0 the longest one.
        energy = np.concatenate([[0.0], np.cumsum(r * r)])
        r_norm = np.sqrt(energy[m.size :] - energy[: r.size - m.size + 1])
        m_norm = np.sqrt(np.sum(m * m))
        if m_norm < MIC_FLOOR * np.sqrt(m.size):
            return 0.0, 0  # a silent microphone holds no echo (and its codec noise correlates by chance)
        # Only lags where the reference carried the bot's voice over most of the window count: a
        # window holding just the first syllable of a reply normalises anything into a "match".
        loud = r_norm >= REF_FLOOR * np.sqrt(m.size)
        if not loud.any():
            return 0.0, 0
        score = np.where(loud, np.abs(c) / np.maximum(r_norm * m_norm, 1e-9), 0.0)
        k = int(np.argmax(score))
        lag_samples = r.size - m.size - k  # k = len(r) - len(m) is no delay
        return float(score[k]), round(lag_samples * 1000 / SPEECH_RATE)


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
        self.erle_db: float | None = None
        """What the canceller takes off the bot's echo (``ERLE_PERCENTILE`` over the last frames of
        it), or None until ``ERLE_MIN_FRAMES`` of them were seen since the last reset."""

    def reset(self) -> None:
        """The echo path changed (its delay moved): the canceller re-converges, so its removal must be
        measured afresh, once it has settled, before a frame can be judged by it."""
        self._count = 0
        self.erle_db = None
        self._settle = ERLE_SETTLE_FRAMES

    @property
    def converged(self) -> bool:
        """The canceller is known to remove the bot's echo well, so what it leaves can be judged."""
        return self.erle_db is not None and self.erle_db >= ERLE_CONVERGED_DB

    def push(self, mic: np.ndarray, out: np.ndarray, echo_active: bool) -> bool:
        """One frame of the microphone and the canceller's output; ``echo_active``: the (held-back)
        reference carried the bot's voice. Returns whether this frame holds the near end's voice."""
        mic_db = rms_dbfs(mic)
        out_db = rms_dbfs(out)
        removed = mic_db - out_db
        if echo_active and mic_db > NEAR_FLOOR_DBFS:
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


class FarEndReference:
    """What the bot sent, at 16 kHz, queued until the microphone chunk it pairs with arrives.

    Both methods run on the event loop: ``on_frame`` as a ``Playout`` listener, ``take`` from the
    session's inbound task. No locking needed.
    """

    def __init__(self) -> None:
        self._resampler = Resampler(WEBRTC_RATE, SPEECH_RATE)
        self._buffer = SampleBuffer()
        self._max = MAX_REFERENCE_MS * SPEECH_RATE // 1000
        self.dropped = 0

    def on_frame(self, pcm: np.ndarray, _pts: int, _sent_at: float, _voiced: bool) -> None:
        self._buffer.push(self._resampler.push(pcm))
        overflow = len(self._buffer) - self._max
        if overflow > 0:
            self._buffer.pop(overflow)
            self.dropped += overflow

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` reference samples, padded with silence if the track has not sent them yet."""
        out = self._buffer.pop(n)
        if out is None:
            out = np.zeros(n, dtype=np.int16)
            have = self._buffer.pop_all()
            out[: have.size] = have
        return out


class FramePairs:
    """The microphone and the far-end reference paired with it, cut into the cancellers' 10 ms frames.

    Chunks of either arrive at their own sizes; a microphone frame whose reference has not arrived yet
    (the bot was silent, or its audio came late) is paired with silence, so a frame is never held back
    waiting for the far end."""

    def __init__(self) -> None:
        self._near = SampleBuffer()
        self._far = SampleBuffer()

    def push(self, near: np.ndarray, far: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Adds samples of both; yields every whole (microphone, reference) frame now available."""
        self._near.push(near)
        self._far.push(far)
        while (mic := self._near.pop(FRAME)) is not None:
            ref = self._far.pop(FRAME)
            yield mic, ref if ref is not None else np.zeros(FRAME, dtype=np.int16)


class Cleaned(NamedTuple):
    """One chunk of microphone audio through the front-end, at 16 kHz, all three the same length."""

    clean: np.ndarray
    """For the VAD: echo cancelled at all costs, noise suppressed."""
    words: np.ndarray
    """For the ASR: the user's words intact under double talk."""
    over_echo: np.ndarray
    """Per sample (bool): the canceller found more than the bot's echo there (``DoubleTalk``)."""


class FrontEnd:
    """Echo cancellation, then WebRTC noise suppression and automatic gain, in 10 ms frames.

    Blocking (each 10 ms frame costs ~0.1-0.2 ms), so the session runs it in the front-end worker pool;
    state is per stream and calls must not overlap.
    """

    def __init__(
        self,
        aec: str = "aec3",
        noise_suppression: int = 1,
        auto_gain_dbfs: int = 0,
        echo_expected: bool = True,
        words_aec: str | None = "speex",
    ) -> None:
        """``aec`` cancels the echo for the turn detector; ``words_aec`` (None: the same output) for the
        ASR, once an echo has been seen. They want different things: the detector must never take the
        bot's voice for the user's, so AEC3 suppresses anything doubtful; the ASR needs the user's words
        intact while the bot talks (double talk), which is what AEC3's suppressor takes away and Speex's
        linear filter leaves. On a loudspeaker at half level, flite and espeak questions spoken 1.5-5 s
        into the bot's reply came out of AEC3 as "What is it that you like today?" and "I tried to" and
        out of Speex as spoken ("What is the weather like today?", "Five, five.")."""
        self.canceller: EchoCanceller | None = make_canceller(aec)
        separate = words_aec and words_aec != aec and self.canceller is not None
        self.words_canceller: EchoCanceller | None = make_canceller(words_aec) if separate else None
        self._processor = None
        if noise_suppression or auto_gain_dbfs:
            from webrtc_noise_gain import AudioProcessor

            self._processor = AudioProcessor(auto_gain_dbfs, noise_suppression)
        self._pairs = FramePairs()
        self._far_frames_ago = 10**9  # 10 ms frames since the reference last carried sound
        self._held = SampleBuffer()  # the reference held back by ``delay_ms`` for the canceller
        self.delay_ms = 0
        """How long the reference is held back before the canceller sees it (see the module's notes)."""
        self._aligned_frames_ago = 10**9  # the same as ``_far_frames_ago``, for the held-back reference
        self.coupling = EchoCoupling(expected=echo_expected)
        self.double_talk = DoubleTalk()
        self._over_frames_ago = 10**9  # 10 ms frames since ``double_talk`` last found the user's voice
        # A session closing cancels the task awaiting process(), not the worker thread running it; the
        # lock keeps close() from freeing a native canceller under a frame still being processed.
        self._lock = threading.Lock()
        self._closed = False

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        """Microphone and reference samples at 16 kHz (equal counts); returns the cleaned microphone,
        in whole 10 ms frames (a remainder waits for the next call)."""
        return self.process_pair(near, far).clean

    def process_pair(self, near: np.ndarray, far: np.ndarray) -> Cleaned:
        """Like ``process``, and also the microphone for the ASR (the words canceller's output once an
        echo has been seen in this call, else the microphone as it came: the noise suppressor holds the
        state of one stream, so only the VAD's path gets it) and where the user talks over the bot's
        echo (``DoubleTalk``). AEC3's suppressor cuts into the user's words whenever the bot speaks,
        echo or not, and the VAD needs that safety far more than the ASR does."""
        with self._lock:
            if self._closed:
                empty = np.zeros(0, dtype=np.int16)
                return Cleaned(empty, empty, np.zeros(0, dtype=bool))
            return self._process(near, far)

    def _process(self, near: np.ndarray, far: np.ndarray) -> Cleaned:
        out: list[np.ndarray] = []
        words: list[np.ndarray] = []
        talk: list[bool] = []
        for mic, ref in self._pairs.push(near, far):
            self._far_frames_ago = 0 if far_active(ref) else self._far_frames_ago + 1
            self.coupling.push(mic, ref, self._far_frames_ago == 0)
            aligned = self._hold_back(ref)
            self._aligned_frames_ago = 0 if far_active(aligned) else self._aligned_frames_ago + 1
            raw = mic
            heard = self.words_canceller.process(mic, aligned) if self.words_canceller is not None else None
            over = False
            if self.canceller is not None:
                cancelled = self.canceller.process(mic, aligned)
                over = self.double_talk.push(mic, cancelled, self._aligned_frames_ago == 0)
                self._over_frames_ago = 0 if over else self._over_frames_ago + 1
                if heard is not None and self._echo_only():
                    heard = cancelled
                if self.coupling.present:
                    mic = cancelled
            if self._processor is not None:
                mic = np.frombuffer(self._processor.Process10ms(mic.tobytes()).audio, dtype=np.int16)
            out.append(mic)
            talk.append(over and self.coupling.present)
            if not self.coupling.seen:
                words.append(raw)
            else:
                words.append(heard if heard is not None else mic)
        if not out:
            empty = np.zeros(0, dtype=np.int16)
            return Cleaned(empty, empty, np.zeros(0, dtype=bool))
        return Cleaned(np.concatenate(out), np.concatenate(words), np.repeat(np.array(talk), FRAME))

    def _echo_only(self) -> bool:
        """This frame may hold the bot's echo and, as far as a converged canceller can tell, nothing
        else: the ASR then gets AEC3's output (its echo removed, 55-60 dB) instead of the words canceller's,
        whose residual whisper transcribes as the bot's words ("Bill yes" for "yes", "elder" for "no"
        on a loudspeaker: the pre-roll before an answer spoken over the bot is mostly echo)."""
        return (
            self.echo_possible
            and self.double_talk.converged
            and self._over_frames_ago > WORDS_HANGOVER_FRAMES
        )

    def _hold_back(self, ref: np.ndarray) -> np.ndarray:
        """The reference frame that pairs with this microphone frame once the echo delay measured so far
        is taken out; the delay moves only when the measurement has moved by ``REALIGN_MS``."""
        lag = self.coupling.lag_ms
        if lag is not None:
            target = max(0, lag - ALIGN_SLACK_MS)
            if abs(target - self.delay_ms) >= REALIGN_MS:
                change = (target - self.delay_ms) * SPEECH_RATE // 1000
                if change > 0:
                    self._held.push(np.zeros(change, dtype=np.int16))
                else:
                    self._held.pop(min(-change, len(self._held)))
                log.info("echo delay %d ms: the canceller's reference is held back %d ms", lag, target)
                self.delay_ms = target
                self.double_talk.reset()
        self._held.push(ref)
        return self._held.pop(FRAME)

    @property
    def echo_reach_ms(self) -> int:
        """How long after the (held-back) reference last carried the bot's voice its echo may still
        come: ``ECHO_REACH_MS``, or more while the echo delay is still unknown."""
        return ECHO_REACH_MS if self.coupling.lag_ms is not None else UNKNOWN_REACH_MS

    @property
    def echo_possible(self) -> bool:
        """The bot's voice may be in the microphone now: it was sent within the echo's reach and its
        echo has not been shown to be absent."""
        return self.coupling.present and self._aligned_frames_ago * 10 < self.echo_reach_ms

    @property
    def bot_speaking(self) -> bool:
        """The bot's voice is being played, or its echo may still come, whether or not it does."""
        return min(self._far_frames_ago, self._aligned_frames_ago) * 10 < self.echo_reach_ms

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for canceller in (self.canceller, self.words_canceller):
                if canceller is not None:
                    canceller.close()
