"""One user turn: its audio and words, what its reply holds back until the turn is the user's, its
timings, and the waits that decide when the silence after it has lasted long enough.

A turn starts speculatively, at the turn detector's first pause, and its reply is prepared while the
detector waits to see whether the silence lasts. Until the turn is *committed*, everything it produces
is held back: its audio before the outbound track, its events before the channel, so a speculation
that is thrown away leaves no trace the user could notice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..audio.endofturn import EndOfTurn
from ..audio.formats import SPEECH_RATE
from ..audio.vad import Utterance
from ..runtime.workers import run_blocking
from .events import Event, EventHub
from .language import ENGLISH, Language
from .live import LiveTranscript
from .text import is_wide, join_pieces, looks_unfinished
from .turntaking import TurnPolicy

log = logging.getLogger(__name__)


@dataclass
class TurnMetrics:
    """Milliseconds from the end of the user's speech (as the server received it) to each stage."""

    speech_end: float
    audio_s: float = 0.0
    marks: dict[str, float] = field(default_factory=dict)
    end_of_turn: float | None = None
    """The end-of-turn model's probability that the phrase was complete, if it judged."""

    def mark(self, name: str, at: float | None = None) -> None:
        if name not in self.marks:
            now = at if at is not None else asyncio.get_running_loop().time()
            self.marks[name] = round((now - self.speech_end) * 1000, 1)

    def as_dict(self) -> dict[str, float | int | None]:
        extra = {} if self.end_of_turn is None else {"end_of_turn": self.end_of_turn}
        # The end of speech on the wall clock, so that a client with a synchronised clock (the same
        # host, NTP) can split its own voice-to-voice time into uplink, server and downlink.
        wall = time.time() - asyncio.get_running_loop().time() + self.speech_end
        ms = {"audio_ms": round(self.audio_s * 1000), **self.marks, **extra}
        return ms | {"speech_end_at": round(wall, 4)}


class UserTurn:
    """One user utterance, from the pause that may end it until its reply is over (or abandoned)."""

    def __init__(self, utterance: Utterance, audio: np.ndarray, ended: bool) -> None:
        self.audio = audio
        self.end_sample = utterance.end_sample
        self.metrics = TurnMetrics(utterance.speech_end_arrival, audio.size / SPEECH_RATE)
        self.metrics.mark("pause_ms")  # the detector's pause: where the (speculative) answer starts
        self.ended = asyncio.Event()
        """The detector closed the turn: its silence lasted ``end_silence_ms``."""
        if ended:
            self.ended.set()
        self.committed = asyncio.Event()
        self.free = asyncio.Event()
        """Cleared while the user has started speaking again after this (held) turn closed."""
        self.free.set()
        self.number = 0
        self.text = ""
        self.task: asyncio.Task[None] | None = None
        self.audible = False
        """The reply's voice has started to play."""
        self.spans: list[tuple[str, int, int]] = []
        """Spoken pieces and their sample range on the outbound track's ``queued_total`` axis."""
        self.live: LiveTranscript | None = None
        """A streaming ASR's stream of this very audio, which gives the transcript (``call.live``)."""
        self.spoken: str | None = None
        """Words the application has the bot say (``speak``, a greeting): a turn with no user in it,
        committed at once and said verbatim."""
        self.steps: list[dict[str, Any]] = []
        """The tool calls and results of its reply, in OpenAI's format, for the history."""
        self._held: list[Callable[[], Event]] = []

    def send(self, channel: EventHub, make: Callable[[], Event]) -> None:
        """Sends an event of this turn's reply, or holds it until the turn is committed (``make``
        builds it then, when the turn has its number)."""
        if self.committed.is_set():
            channel.send(make())
        else:
            self._held.append(make)

    def commit(self, channel: EventHub) -> None:
        """Lets the reply through: its audio to the track, its held events to the client."""
        self.committed.set()
        for make in self._held:
            channel.send(make())
        self._held.clear()

    def heard(self, played_total: int) -> str:
        """The part of the reply that was handed to the client, to the word (pro rata within a piece;
        to the character in a script without spaces)."""
        parts: list[str] = []
        for text, start, end in self.spans:
            if played_total >= end:
                parts.append(text)
                continue
            if played_total > start:
                share = (played_total - start) / max(1, end - start)
                if is_wide(text):
                    parts.append(text[: int(len(text) * share)])
                else:
                    words = text.split()
                    parts.append(" ".join(words[: int(len(words) * share)]))
            break
        return join_pieces([part for part in parts if part])


async def judge_end(turn: UserTurn, model: EndOfTurn | None, policy: TurnPolicy) -> bool | None:
    """The end-of-turn model's verdict on the turn's sound: complete, not known to be, or None without
    a model (or for typed text)."""
    if model is None or not turn.audio.size:
        return None
    pad = np.zeros(policy.end_of_turn_pad_ms * SPEECH_RATE // 1000, dtype=np.int16)
    try:
        p = await run_blocking(model.probability, np.concatenate([turn.audio, pad]))
    except Exception:
        log.exception("end-of-turn model failed; the turn ends on silence alone")
        return None
    turn.metrics.mark("end_of_turn_ms")
    turn.metrics.end_of_turn = round(p, 3)
    return p >= policy.end_of_turn_threshold


async def hold_if_unfinished(
    turn: UserTurn, policy: TurnPolicy, complete: bool | None, lang: Language = ENGLISH
) -> None:
    """Returns when the turn may be answered: at once, unless it sounds unfinished ("I'd like a table
    for, um") and the model did not judge it complete; then after ``hold_silence_ms`` of silence, so no
    CPU goes to an answer that will probably be thrown away. Either way not while the user speaks again
    after it (``free``)."""
    if not complete and turn.audio.size and looks_unfinished(turn.text, lang):
        log.info("holding an unfinished phrase: %r", turn.text)
        await turn.ended.wait()
        await _until(turn.metrics.speech_end + policy.hold_silence_ms / 1000)
    await turn.free.wait()


async def silence_lasted(turn: UserTurn, policy: TurnPolicy, complete: bool | None) -> None:
    """Returns once the silence after the turn has lasted long enough for the phrase: a short one for a
    phrase the model judges complete, the detector's end of turn otherwise."""
    if complete:
        await _until(turn.metrics.speech_end + policy.complete_silence_ms / 1000)
    else:
        await turn.ended.wait()
    await turn.free.wait()


async def _until(at: float) -> None:
    await asyncio.sleep(max(0.0, at - asyncio.get_running_loop().time()))
