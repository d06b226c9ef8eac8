"""The audio front-end: echo cancellation, then noise suppression and gain, on the 16 kHz speech path.

It sits between the decoded microphone frames and the VAD/ASR. The echo canceller's far end is the
exact audio the outbound track handed to aiortc (``FarEndReference`` listens to the track), so the peer
can remove its own voice even when the browser's canceller is off or does not cover the output the user
listens on.

Pairing keeps the two streams on one timeline: the outbound track releases a 20 ms frame every 20 ms
and the client's microphone carries 20 ms of audio per frame, so once the first microphone chunk has
been paired with the reference sent just then, each later sample of the microphone pairs with the
reference one sample later, however late the microphone's packets arrive (a loaded server, a burst
from a starved client). What breaks a timeline is stated, not guessed: audio missing from the
microphone's own timeline (its RTP timestamps jump: lost packets, DTX) skips as much reference, and a
stall of the outbound track long enough to make the client's receiver run dry (it restarts its
clock) puts as much silence into the reference, because the client played nothing then. Earlier,
reference older than 200 ms was dropped as "stale": under load each late burst of the microphone
shifted the pairing for good, by up to seconds a call, and the bot heard itself.

The echo path's delay (network round trip plus the client's buffers) is
found by the canceller's own delay estimation while it is short. AEC3 finds none beyond ~500 ms (an
8 s test: 56-60 dB of echo removed at 150-450 ms, under 1 dB at 600 ms and more), and a loaded client
or a slow network gives that: a Chromium on the same two busy cores sent the bot's voice back 600-900
ms after it left. So the front-end measures the delay itself (``EchoCoupling.lag_ms``, a cross-
correlation it computes anyway) and holds the reference back by all but ``ALIGN_SLACK_MS`` of it.

On a loudspeaker the user's voice over the bot's is what barge-in depends on, and what AEC3's
suppressor takes most from. The front-end therefore also says where the canceller found more than the
echo (``DoubleTalk``, from how much it removed against how much it removes from the echo alone), and the
turn detector opens a turn there as soon as in silence, on a lower speech probability (AEC3's
suppressor pulls the voice down). What the canceller lets through when it has lost the echo (a client
squeezing its playout moves the echo's delay in steps; the first reply comes before any delay is
known) is the bot's own voice at a delay it does not cancel: the front-end checks for that
(``EchoLeak``) and keeps it from the turn detector.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from .delayline import MAX_DELAY_S, DelayLine
from .echo import FRAME, EchoCanceller, make_canceller
from .echopath import (
    BEYOND_ECHO_DB,
    LEAK_EVERY_FRAMES,
    NEAR_FLOOR_DBFS,
    SPECTRUM_SPAN_MS,
    SPECTRUM_UNREPORTED_LATER_MS,
    DoubleTalk,
    EchoCoupling,
    EchoLeak,
    EchoSpectrum,
    far_active,
)
from .formats import SPEECH_RATE, WEBRTC_RATE, Resampler, SampleBuffer
from .receiver import PlayoutEdit

log = logging.getLogger(__name__)

MAX_REFERENCE_MS = 3000
"""Reference waiting for its microphone chunk longer than this means the microphone stopped (a client
that stopped sending without a word): the oldest is dropped, and the pairing starts again at "now"
when it comes back. Late microphone audio under load arrives well within it."""

STALL_S = 0.22
"""Frames handed to aiortc this far apart (nominally 20 ms) mean the outbound track restarted its clock
(``MAX_LATE_S``): the client's receiver ran dry, and played silence for the missing time."""


ECHO_REACH_MS = 700
"""How long after the (held-back) reference carried the bot's voice its echo can still reach the
microphone: what is left of the echo's delay once the reference is held back (up to
``ALIGN_SLACK_MS`` + ``REALIGN_MS``, 420 ms) plus the room's tail."""


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


MAX_PENDING_EDITS = 32
"""The client's playout edits kept for the next microphone frame: reports come every 100 ms, and the
microphone's audio at least as often unless the call is muted or the microphone stopped, when old
edits point at reference long gone."""


WORDS_HANGOVER_FRAMES = 30
"""10 ms frames after the last one found to hold the user's voice over the echo during which the ASR
still gets the words canceller's output: the gaps between a talker's syllables are part of the words."""


class FarEndReference:
    """What the bot sent, at 16 kHz, on the timeline the client played it, queued until the microphone
    chunk it pairs with arrives.

    The queue's length is the pairing's offset. It starts at "now" (the newest frame when the first
    microphone chunk comes) and grows only where a microphone chunk found no reference yet (the two
    streams' jitter): that chunk is paired with silence and the reference pairs with the next one.

    All methods run on the event loop: ``on_frame`` as a ``Playout`` listener, ``take`` and ``skip``
    from the session's inbound task. No locking needed.
    """

    def __init__(self) -> None:
        self._resampler = Resampler(WEBRTC_RATE, SPEECH_RATE)
        self._buffer = SampleBuffer()
        self._max = MAX_REFERENCE_MS * SPEECH_RATE // 1000
        self._anchored = False
        self._last_sent_at: float | None = None
        self._padded = 0  # silence handed to the microphone since the last frame came
        self._owed = 0  # reference to drop as it comes: its microphone audio never came
        self.dropped = 0
        """Samples dropped unpaired (the microphone stopped for over ``MAX_REFERENCE_MS``)."""
        self.stalled = 0
        """Samples of silence put in for outbound stalls."""
        self.skipped = 0
        """Samples dropped for audio missing from the microphone's timeline."""

    def on_frame(self, pcm: np.ndarray, _pts: int, sent_at: float, _voiced: bool) -> None:
        if self._anchored and self._last_sent_at is not None and sent_at - self._last_sent_at > STALL_S:
            # The client played silence for the stall. Microphone chunks handled during it, before
            # this frame came, were paired with silence already: that much of it is not put in again.
            gap = round((sent_at - self._last_sent_at - pcm.size / WEBRTC_RATE) * SPEECH_RATE)
            gap = max(0, gap - self._padded)
            self._push(np.zeros(gap, dtype=np.int16))
            self.stalled += gap
        self._last_sent_at = sent_at
        self._padded = 0
        self._push(self._resampler.push(pcm))
        if not self._anchored:
            # Until the microphone's first chunk, only the newest frame matters: that is "now".
            self._buffer.pop(max(0, len(self._buffer) - pcm.size * SPEECH_RATE // WEBRTC_RATE))
            return
        overflow = len(self._buffer) - self._max
        if overflow > 0:
            self._buffer.pop(overflow)
            self.dropped += overflow
            self._anchored = False
            self._owed = 0

    def _push(self, pcm: np.ndarray) -> None:
        if self._owed:
            drop = min(self._owed, pcm.size)
            self._owed -= drop
            pcm = pcm[drop:]
        self._buffer.push(pcm)

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` reference samples (for the next ``n`` of the microphone), padded with silence
        if the track has not sent them yet."""
        self._anchored = True
        out = self._buffer.pop(n)
        if out is None:
            out = np.zeros(n, dtype=np.int16)
            have = self._buffer.pop_all()
            out[: have.size] = have
            self._padded += n - have.size
        return out

    def skip(self, n: int) -> None:
        """``n`` samples of the microphone's timeline never came: as much reference goes unpaired
        (what is not sent yet is dropped when it comes)."""
        self.skipped += n
        if n > self._max:  # the microphone was gone a long while: start again at "now"
            self._buffer.clear()
            self._owed = 0
            self._anchored = False
            return
        have = min(n, len(self._buffer))
        self._buffer.pop(have)
        self._owed += n - have


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
    near_voice: np.ndarray
    """Per sample (bool): ``over_echo``, and what the canceller let through there is mostly not the bot's
    voice (``EchoLeak.near_voice``): the user, whatever the VAD makes of what the canceller's suppressor
    left of them."""
    beyond_echo: np.ndarray
    """Per sample (bool): ``near_voice``, and the microphone's spectrum rises above anything the bot's
    echo could put there (``EchoSpectrum``): surer still that it is the user."""


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
        self._line = DelayLine(SPEECH_RATE)  # the reference on its way to the canceller
        self._aligned_frames_ago = 10**9  # the same as ``_far_frames_ago``, for the held-back reference
        self.coupling = EchoCoupling(expected=echo_expected)
        self.double_talk = DoubleTalk()
        self.leak = EchoLeak()
        self.spectrum = EchoSpectrum()
        self._leaking = False
        self._leak_due = 0  # frames until the next leak check
        # The echo's delay and the reference's hold-back when the canceller last took the echo off: the
        # one less the other is the delay it cancels, wherever the measurement has moved since, and it
        # is proven where both are still the same.
        self._proven_at: tuple[int, int] | None = None
        self._reported = False  # the client has reported a move of its playout in this call
        self.leaked_frames = 0
        """10 ms frames of the bot's own voice the canceller let through (``EchoLeak``), kept from the VAD."""
        self._edits: list[PlayoutEdit] = []  # the client's playout edits reported, not yet applied
        self._edits_lock = threading.Lock()
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
                return Cleaned(empty, empty, *[np.zeros(0, dtype=bool)] * 3)
            return self._process(near, far)

    def _process(self, near: np.ndarray, far: np.ndarray) -> Cleaned:
        out: list[np.ndarray] = []
        words: list[np.ndarray] = []
        talk: list[bool] = []
        user: list[bool] = []
        beyond: list[bool] = []
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
                self.leak.push(mic, ref, cancelled)
                self.spectrum.push(mic, ref)
                over = self.double_talk.push(mic, cancelled, self._aligned_frames_ago == 0)
                if self.double_talk.cancelling and self.coupling.lag_ms is not None:
                    self._proven_at = (self.coupling.lag_ms, self.delay_ms)
                    if self.double_talk.cancelled:  # the echo alone, not a silence the run went over
                        self.spectrum.learn(self.coupling.lag_ms)
                elif self.double_talk.erle_db is None:  # reset: the echo path changed
                    self._proven_at = None
                leaked = self._leaked()
                over = over and not leaked
                self._over_frames_ago = 0 if over else self._over_frames_ago + 1
                if heard is not None and self._echo_only():
                    heard = cancelled
                if self.coupling.present:
                    mic = np.zeros_like(cancelled) if leaked else cancelled
            if self._processor is not None:
                mic = np.frombuffer(self._processor.Process10ms(mic.tobytes()).audio, dtype=np.int16)
            out.append(mic)
            talk.append(over and self.coupling.present)
            proven = self._proven_at == (self.coupling.lag_ms, self.delay_ms)
            user.append(talk[-1] and self.leak.near_voice(proven))
            beyond.append(user[-1] and self._beyond_echo())
            if not self.coupling.seen:
                words.append(raw)
            else:
                words.append(heard if heard is not None else mic)
        if not out:
            empty = np.zeros(0, dtype=np.int16)
            return Cleaned(empty, empty, *[np.zeros(0, dtype=bool)] * 3)
        return Cleaned(
            np.concatenate(out),
            np.concatenate(words),
            np.repeat(np.array(talk), FRAME),
            np.repeat(np.array(user), FRAME),
            np.repeat(np.array(beyond), FRAME),
        )

    def _beyond_echo(self) -> bool:
        """The microphone's spectrum in this frame rises ``BEYOND_ECHO_DB`` above anything the bot's echo
        near its delay could make (``EchoSpectrum``): a voice of its own, not the echo squeezed."""
        lag = self.coupling.lag_ms
        if lag is None:
            return False
        later = SPECTRUM_SPAN_MS if self._reported else SPECTRUM_UNREPORTED_LATER_MS
        excess = self.spectrum.excess(lag, later)
        return excess is not None and excess >= BEYOND_ECHO_DB

    def _leaked(self) -> bool:
        """The canceller let the bot's own voice through in this frame (``EchoLeak``): the VAD's path gets
        silence for it, and it is no double talk. Checked only where it matters, when the bot's echo
        may be in the microphone and the canceller let something through, every few frames."""
        if not self.echo_possible or self.double_talk.out_db < NEAR_FLOOR_DBFS:
            self._leaking, self._leak_due = False, 0
            return False
        if self._leak_due:
            self._leak_due -= 1
        else:
            proven = self._proven_at
            cancels = None if proven is None else proven[0] - proven[1] + self.delay_ms
            self._leaking = self.leak.leaked(self.coupling.lag_ms, cancels)
            # A leak is checked again at the next frame: the user may start under it, and every frame
            # held from the VAD would cost their onset 10 ms.
            self._leak_due = 0 if self._leaking else LEAK_EVERY_FRAMES - 1
        self.leaked_frames += self._leaking
        return self._leaking

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

    def playout_moved(self, edit: PlayoutEdit) -> None:
        """The client's receiver moved its playout of the bot's voice (``voicepeer.audio.receiver``):
        it played concealment when our audio reached it late, or squeezed the voice. The echo moves
        with it, at once; the cross-correlation would find it only a second later, while the
        canceller lets the echo through and the double-talk rule takes it for the user. Any thread."""
        with self._edits_lock:
            if len(self._edits) >= MAX_PENDING_EDITS:  # no microphone audio for a while (muted)
                del self._edits[0]  # its point has left the line's history anyway
            self._edits.append(edit)

    @property
    def delay_ms(self) -> int:
        """How long the reference is held back before the canceller sees it (see the module's notes)."""
        return round(self._line.delay * 1000 / SPEECH_RATE)

    def _hold_back(self, ref: np.ndarray) -> np.ndarray:
        """The reference frame that pairs with this microphone frame once the echo delay measured so far
        is taken out; the delay moves when the measurement has moved by ``REALIGN_MS``, and with the
        client's playout as it reports it."""
        if self._edits:  # every 10 ms frame: the lock only when an edit was reported
            with self._edits_lock:
                edits, self._edits = self._edits, []
            for edit in edits:
                self._apply(edit)
        lag = self.coupling.lag_ms
        if lag is not None:
            target = max(0, lag - ALIGN_SLACK_MS)
            if abs(target - self.delay_ms) >= REALIGN_MS:
                log.info("echo delay %d ms: the canceller's reference is held back %d ms", lag, target)
                self._line.set_delay(target * SPEECH_RATE // 1000)
                self.double_talk.reset()
        return self._line.push_pop(ref, FRAME)

    def _apply(self, edit: PlayoutEdit) -> None:
        """One edit of the client's playout, where it happened (``DelayLine.edit``). The client's
        figures are bounded as the line's delay is: no real edit is longer."""
        limit = MAX_DELAY_S * 1000
        edit = PlayoutEdit(max(-limit, min(limit, edit.ms)), max(0.0, min(limit, edit.back_ms)))
        self._reported = True
        samples = round(edit.ms * SPEECH_RATE / 1000)
        self._line.edit(samples, round(edit.back_ms * SPEECH_RATE / 1000))
        self.coupling.moved(edit.ms)
        big = abs(edit.ms) >= REALIGN_MS
        if big:  # the canceller loses the echo for a while: double talk is judged afresh
            self.double_talk.reset()
        log.log(
            logging.INFO if big else logging.DEBUG,
            "the client's playout moved %+d ms %d ms back: the reference is held back %d ms",
            edit.ms,
            edit.back_ms,
            self.delay_ms,
        )

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
