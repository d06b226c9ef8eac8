"""Voice activity detection and end-of-turn segmentation on the 16 kHz speech path.

The detector is Silero VAD v6, the ONNX file faster-whisper ships in its wheel, so it is on disk whenever
ASR is. The ONNX session is shared by every session in the process (onnxruntime sessions are safe to run
from several threads); the recurrent state and the 64-sample context are per stream, which is what makes
it streamable: faster-whisper's own wrapper resets them on every call because it works on whole files.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from .formats import SPEECH_RATE, SampleBuffer, to_float32

WINDOW = 512
"""Samples per Silero window at 16 kHz (32 ms); the model accepts no other size at this rate."""

CONTEXT = 64
"""Samples of the previous window Silero v5+/v6 expects in front of each window."""


@functools.cache
def silero_session():  # -> onnxruntime.InferenceSession
    """The process-wide Silero ONNX session, loaded once."""
    from faster_whisper.vad import get_vad_model

    return get_vad_model().session


class SileroVAD:
    """Streaming speech probability per 32 ms window, with state carried across calls."""

    def __init__(self) -> None:
        self._session = silero_session()
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)

    def __call__(self, window: np.ndarray) -> float:
        """Speech probability of one window of ``WINDOW`` int16 samples at 16 kHz. Blocking (~0.1 ms)."""
        if window.size != WINDOW:
            raise ValueError(f"Silero needs {WINDOW} samples at {SPEECH_RATE} Hz, got {window.size}")
        x = to_float32(window)
        batch = np.concatenate([self._context, x])[None, :]
        probs, self._h, self._c = self._session.run(None, {"input": batch, "h": self._h, "c": self._c})
        self._context = x[-CONTEXT:]
        return float(np.asarray(probs).reshape(-1)[0])


@dataclass(frozen=True)
class TurnParams:
    """How speech is segmented into user turns. Times in milliseconds."""

    threshold: float = 0.5
    """Probability above which a window counts as speech."""
    release: float = 0.35
    """Probability below which a window counts as silence again (hysteresis against flutter)."""
    start_ms: int = 96
    """Continuous speech needed to open a turn; shorter bursts (clicks, a cough) are ignored."""
    echo_threshold: float = 0.85
    """The speech probability needed while the bot's voice may be echoing back: residual echo that
    the canceller leaves (Opus and the client's playout are not linear) scores in between."""
    echo_start_ms: int = 256
    """Continuous speech needed to open a turn while the bot's voice may be echoing back."""
    over_echo_threshold: float = 0.35
    """The speech probability that is enough, while the bot's voice may be echoing back, in windows
    where the echo canceller found more than the echo (``echopath.DoubleTalk``): its suppressor
    pulls a voice under the bot's down to 0.3-0.8, and the echo alone never gets there once it has
    converged."""
    over_echo_start_ms: int = 96
    """Continuous speech needed to open a turn in such windows: the same as in silence."""
    over_echo_alone_ms: int = 160
    """Windows where the echo canceller found more than the echo, and the microphone is not the bot's
    voice either (``FrontEnd``'s ``near_voice``), open a turn after this long whatever the speech
    probability: the canceller's suppressor takes an unvoiced onset down with the echo. espeak-ng's
    "Stop," over the bot had the marks right for six windows in a row while the VAD scored it
    0.03-0.17, and the turn opened 600-750 ms later, on "please"; slt's had them for four or five
    (replayed, 192 ms, the value before, missed it in all five recorded runs, 160 ms found it in
    three). Shorter opens turns on the bot's own voice where a client squeezes its playout back: at
    128 ms, two in one such replay."""
    suspect_ms: int = 96
    """Windows marked as a voice other than the bot's over its echo (``near_voice``) for this long,
    not yet a turn, are reported (``SpeechSuspected``) so the bot can hold its voice: a short "Stop,"
    over a loud echo is marked for 130-160 ms and then taken whole by the canceller's suppressor, and
    its turn opens only on the words after it, 0.5-1 s later. 0: never."""
    over_echo_beyond_ms: int = 96
    """The same for such windows where the microphone's spectrum also rises above anything the bot's
    echo could put there (``FrontEnd``'s ``beyond_echo``, ``echopath.EchoSpectrum``): a second sign,
    independent of the canceller, that it is not the bot's voice squeezed by the client, so a run as
    short as a word's onset in silence will do. slt's "Stop," over a loud echo was marked for only
    130-160 ms before AEC3's suppressor took it whole. Replayed over 153 recorded loudspeaker calls, 7
    onsets came 130-930 ms sooner (slt's "Stop," in 4 of 7 runs), none later; the bot's voice alone
    opened no turn by it, there or in the replayed squeeze scenes (at 64 ms, two there)."""
    pause_ms: int = 96
    """Silence after which the turn so far is handed on as a ``SpeechPaused``: the conversation starts
    transcribing (and answering) it while it waits to see whether the user goes on. It is also the
    tail of silence kept after the last voiced window, so a paused turn and the ended one are the same
    audio and the speculative transcript stays valid."""
    end_silence_ms: int = 300
    """Silence that closes a turn. The conversation may commit a turn sooner, or wait longer, by how
    the phrase ends (``voicepeer.call.turntaking.TurnPolicy``)."""
    partial_interval_ms: int = 640
    """Turn audio between two ``SpeechProgress`` events, which drive partial transcripts; 0: none."""
    pre_roll_ms: int = 320
    """Audio kept from before the detected onset, so the first phoneme reaches the ASR."""
    overlap_pre_roll_ms: int = 800
    """The same while the bot is speaking. An echo canceller (the browser's or ours) pulls down the
    first syllables of speech that overlaps the bot's, and the stricter echo thresholds need longer to
    open a turn, so the onset is found late; the words before it must still reach the ASR."""
    min_speech_ms: int = 250
    """Turns with less voiced audio than this are dropped as noise."""
    max_turn_s: float = 30.0
    """A turn is cut here even without a pause, bounding memory and ASR time."""


@dataclass
class SpeechStarted:
    """A user turn opened. ``sample`` is the onset in the 16 kHz stream clock."""

    sample: int
    arrival: float
    """Loop time at which the audio containing the onset arrived."""
    echo: bool = False
    """The bot's voice may be in this audio (``FrontEnd.echo_possible``): a loudspeaker call."""
    marked: bool = False
    """Opened on the front-end's marks of a voice that is not the bot's (``near_voice``), not on the
    VAD: someone other than the bot speaks from ``sample`` on, whatever the pre-roll before it holds."""


@dataclass
class SpeechSuspected:
    """The front-end marked a voice other than the bot's over its echo for ``suspect_ms``, not yet long
    enough to open a turn. ``sample`` is where the marks began in the 16 kHz stream clock."""

    sample: int
    arrival: float


@dataclass
class Utterance:
    """The user's speech up to a silence; ``audio`` is int16 at 16 kHz, pre-roll and tail included."""

    audio: np.ndarray
    start_sample: int
    end_sample: int
    """End of the last voiced window, in the 16 kHz stream clock."""
    speech_end_arrival: float
    """Loop time at which the last voiced audio arrived: the user's end of speech as the server saw it."""
    voiced_ms: int


@dataclass
class SpeechPaused(Utterance):
    """The user went silent for ``pause_ms`` in an open turn: maybe the end, maybe a breath."""


@dataclass
class SpeechEnded(Utterance):
    """A user turn closed after ``end_silence_ms`` of silence (or at ``max_turn_s``)."""


@dataclass
class SpeechResumed:
    """Speech came back after a ``SpeechPaused`` in the same turn: the pause was not its end."""

    arrival: float
    echo: bool = False
    """As ``SpeechStarted.echo``."""


@dataclass
class SpeechProgress:
    """The turn so far, every ``partial_interval_ms`` of it while the user speaks (for partials)."""

    audio: np.ndarray
    voiced_ms: int


@dataclass
class SpeechDiscarded:
    """A turn closed with less voiced audio than ``min_speech_ms``: a cough, a click, a short noise."""

    arrival: float


TurnEvent = (
    SpeechStarted
    | SpeechSuspected
    | SpeechProgress
    | SpeechPaused
    | SpeechResumed
    | SpeechEnded
    | SpeechDiscarded
)


class TurnDetector:
    """Cuts the continuous 16 kHz stream into user turns.

    Blocking (it runs Silero), so the session calls it from a worker thread; all state lives here, and
    calls for one stream must not overlap.
    """

    def __init__(self, params: TurnParams | None = None, vad: SileroVAD | None = None) -> None:
        self.params = params or TurnParams()
        self.vad = vad or SileroVAD()
        self._pending = SampleBuffer()
        self._pending_keep = SampleBuffer()  # the audio the turns are made of, when it differs
        self._position = 0  # samples of the stream consumed by the VAD
        self._window_ms = WINDOW * 1000 / SPEECH_RATE
        self._history: list[np.ndarray] = []  # windows before the onset, for the pre-roll
        self._in_turn = False
        self._run = 0  # consecutive speech windows while not in a turn
        self._run_over_echo = 0  # the same, counting windows of speech over the bot's echo
        self._run_marked = 0  # the same, counting windows the front-end marked, whatever the VAD says
        self._run_beyond = 0  # the same, counting those also marked beyond the echo's spectrum
        self._least_voiced_ms = 0  # the voiced audio the open turn needs not to be a noise
        self._pending_over = SampleBuffer()  # per sample, 1 where the front-end found speech over the echo
        self._pending_near = SampleBuffer()  # the same where the microphone is not the bot's voice either
        self._silence = 0  # consecutive silent windows while in a turn
        self._voiced = 0
        self._turn: list[np.ndarray] = []
        self._turn_start = 0
        self._last_voiced_end = 0
        self._last_voiced_arrival = 0.0
        self._paused = False  # a SpeechPaused was sent for the current silence
        self._next_progress = 0  # stream position of the next SpeechProgress

    def update(self, **changes: Any) -> None:
        """Changes some of the ``TurnParams`` (``end_silence_ms=600``). They apply from the next window
        on, to a turn in progress too; an unknown name raises TypeError."""
        self.params = dataclasses.replace(self.params, **changes)

    def _windows(self, ms: float) -> int:
        return max(1, round(ms / self._window_ms))

    def process(
        self,
        pcm: np.ndarray,
        arrival: float,
        echo_possible: bool = False,
        keep: np.ndarray | None = None,
        bot_speaking: bool = False,
        over_echo: np.ndarray | None = None,
        near_voice: np.ndarray | None = None,
        beyond_echo: np.ndarray | None = None,
    ) -> list[TurnEvent]:
        """Feeds int16 samples at 16 kHz that arrived at loop time ``arrival``; returns turn events.

        ``echo_possible`` says the bot's voice may be in this audio (it spoke within the echo path's
        reach): a turn then needs ``echo_threshold`` and ``echo_start_ms`` to open. ``bot_speaking``:
        the bot's voice is being played, echo or not; a turn that opens then keeps a longer pre-roll.

        ``keep``, if given, is the same stretch of audio processed differently, and is what the turns
        are made of: the VAD may want the echo cancelled at all costs while the ASR wants the words
        intact (see ``FrontEnd.process_pair``). ``over_echo``, per sample, marks where the front-end
        found the user talking over the bot's echo: a window mostly so marked opens a turn on
        ``over_echo_threshold`` and ``over_echo_start_ms``; ``near_voice`` marks those where the
        microphone is not the bot's voice either, which open one after ``over_echo_alone_ms`` whatever
        the speech probability, or after ``over_echo_beyond_ms`` where ``beyond_echo`` marks them too."""
        named = (
            ("keep", keep),
            ("over_echo", over_echo),
            ("near_voice", near_voice),
            ("beyond_echo", beyond_echo),
        )
        for name, other in named:
            if other is not None and other.size != pcm.size:
                raise ValueError(f"{name} has {other.size} samples for {pcm.size}")
        self._pending.push(pcm)
        self._pending_keep.push(pcm if keep is None else keep)
        marks = np.zeros(pcm.size, np.int16) if over_echo is None else np.asarray(over_echo, np.int16)
        self._pending_over.push(marks)
        # 1 where only ``near_voice`` marks the sample, 2 where ``beyond_echo`` does too.
        near = np.zeros(pcm.size, np.int16) if near_voice is None else np.asarray(near_voice, np.int16)
        if beyond_echo is not None:
            near = near + (np.asarray(beyond_echo, np.int16) & near)
        self._pending_near.push(near)
        events: list[TurnEvent] = []
        p = self.params
        while (window := self._pending.pop(WINDOW)) is not None:
            kept = self._pending_keep.pop(WINDOW)
            over = self._pending_over.pop(WINDOW)
            near_window = self._pending_near.pop(WINDOW)
            prob = self.vad(window)
            # Speech over the bot's echo, as the front-end found it: counts as voiced as much as
            # speech in silence does, or a "Stop," over the bot is too short to be a turn.
            over_echo_speech = (
                echo_possible and prob >= p.over_echo_threshold and 2 * int(over.sum()) >= WINDOW
            )
            marked = echo_possible and 2 * int(np.count_nonzero(near_window)) >= WINDOW
            beyond = marked and 2 * int(np.count_nonzero(near_window == 2)) >= WINDOW
            start = self._position
            self._position += WINDOW
            if not self._in_turn:
                self._history.append(kept)
                threshold, start_ms = (
                    (p.echo_threshold, p.echo_start_ms) if echo_possible else (p.threshold, p.start_ms)
                )
                self._run = self._run + 1 if prob >= threshold else 0
                self._run_over_echo = self._run_over_echo + 1 if over_echo_speech else 0
                self._run_marked = self._run_marked + 1 if marked else 0
                suspected = p.suspect_ms > 0 and self._run_marked == self._windows(p.suspect_ms)
                self._run_beyond = self._run_beyond + 1 if beyond else 0
                by_marks = self._run_marked >= self._windows(p.over_echo_alone_ms) or (
                    self._run_beyond >= self._windows(p.over_echo_beyond_ms)
                )
                if (
                    self._run >= self._windows(start_ms)
                    or self._run_over_echo >= self._windows(p.over_echo_start_ms)
                    or by_marks
                ):
                    run = max(self._run, self._run_over_echo, self._run_marked)
                    # Opened on the marks, the speech is someone else's from the first marked window.
                    onset_run = self._run_marked if by_marks else run
                    # Opened on the marks alone, the turn holds the user's voice for as long as they
                    # lasted: "Stop," over the bot is not a noise for being shorter than a word in
                    # silence must be.
                    self._least_voiced_ms = (
                        min(p.min_speech_ms, p.over_echo_beyond_ms, p.over_echo_alone_ms)
                        if by_marks
                        else p.min_speech_ms
                    )
                    pre_roll = p.overlap_pre_roll_ms if bot_speaking else p.pre_roll_ms
                    self._turn = self._history[-(run + self._windows(pre_roll)) :]
                    self._turn_start = self._position - WINDOW * len(self._turn)
                    self._in_turn = True
                    self._voiced = run
                    self._silence = 0
                    self._last_voiced_end = self._position
                    self._last_voiced_arrival = arrival
                    self._paused = False
                    self._next_progress = self._turn_start + self._windows(p.partial_interval_ms) * WINDOW
                    events.append(
                        SpeechStarted(self._position - WINDOW * onset_run, arrival, echo_possible, by_marks)
                    )
                elif suspected:
                    events.append(SpeechSuspected(self._position - WINDOW * self._run_marked, arrival))
                longest = max(p.pre_roll_ms, p.overlap_pre_roll_ms) + max(
                    p.start_ms,
                    p.echo_start_ms,
                    p.over_echo_start_ms,
                    p.over_echo_alone_ms,
                    p.over_echo_beyond_ms,
                )
                self._history = self._history[-self._windows(longest) :]
                continue
            self._turn.append(kept)
            # After a pause, only clear speech counts as resuming: a fading word must not cancel the
            # speculative answer that the pause started.
            # The front-end's marks say the user is there as much as the VAD does (see
            # ``over_echo_alone_ms``), or "Stop," would end as a noise too short to be a turn.
            if prob >= (p.threshold if self._paused else p.release) or marked:
                self._silence = 0
                if prob >= p.threshold or over_echo_speech or marked:
                    self._voiced += 1
                self._last_voiced_end = start + WINDOW
                self._last_voiced_arrival = arrival
                if self._paused:
                    self._paused = False
                    events.append(SpeechResumed(arrival, echo_possible))
            else:
                self._silence += 1
            too_long = (self._position - self._turn_start) >= p.max_turn_s * SPEECH_RATE
            if self._silence >= self._windows(p.end_silence_ms) or too_long:
                events.extend(self._close(arrival))
                continue
            if (
                not self._paused
                and self._silence >= self._windows(p.pause_ms)
                and self._voiced_ms() >= self._least_voiced_ms
            ):
                self._paused = True
                events.append(SpeechPaused(**self._utterance()))
            if p.partial_interval_ms and self._silence == 0 and self._position >= self._next_progress:
                self._next_progress = self._position + self._windows(p.partial_interval_ms) * WINDOW
                events.append(SpeechProgress(np.concatenate(self._turn), self._voiced_ms()))
        return events

    def finish(self, arrival: float) -> list[TurnEvent]:
        """Ends the stream here (the call stopped listening): a turn in progress closes now, as if its
        silence had lasted, and the next audio starts afresh."""
        events = self._close(arrival) if self._in_turn else []
        self._pending.clear()
        self._pending_keep.clear()
        self._pending_over.clear()
        self._pending_near.clear()
        self._history = []
        self._run = 0
        self._run_over_echo = 0
        self._run_marked = 0
        self._run_beyond = 0
        self.vad.reset()
        return events

    def _voiced_ms(self) -> int:
        return round(self._voiced * self._window_ms)

    def _utterance(self) -> dict:
        """The turn so far, trimmed ``pause_ms`` after its last voiced window."""
        audio = np.concatenate(self._turn) if self._turn else np.zeros(0, dtype=np.int16)
        tail = WINDOW * self._windows(self.params.pause_ms)
        end = min(audio.size, self._last_voiced_end - self._turn_start + tail)
        return {
            "audio": audio[:end],
            "start_sample": self._turn_start,
            "end_sample": self._last_voiced_end,
            "speech_end_arrival": self._last_voiced_arrival,
            "voiced_ms": self._voiced_ms(),
        }

    def _close(self, arrival: float) -> list[TurnEvent]:
        utterance = self._utterance()
        self._in_turn = False
        self._paused = False
        self._turn = []
        self._history = []
        self._run = 0
        self._run_over_echo = 0
        self._run_marked = 0
        self._run_beyond = 0
        if utterance["voiced_ms"] < self._least_voiced_ms:
            return [SpeechDiscarded(arrival)]
        return [SpeechEnded(**utterance)]
