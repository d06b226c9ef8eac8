"""A conversation with scripted backends (``tests.support.scripted``), driven on the virtual clock
(``tests.support.clock``) by the turn detector's events at explicit times.

``Dialogue`` stands where a call would: it feeds ``Conversation.on_turn_event`` as the detector would
have (``speak`` schedules a whole utterance, ``at`` any one event), pulls the playout once every 20 ms
as an outbound track does, and records every event the conversation sends with the time it was sent.
``CallLine`` does the same through a whole ``Call``, for what the call adds (mute, config). Times are
seconds from the start. On the way out both add the floor transitions they went through to
``ROWS_RAN``, which ``tests/test_floor.py`` checks against the table.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from tests.support.eventlog import EventLog
from tests.support.scripted import ScriptedASR, ScriptedDetector, ScriptedEndOfTurn, ScriptedLLM, ScriptedTTS
from voicepeer.audio.formats import SPEECH_RATE, WEBRTC_FRAME_SAMPLES, WEBRTC_RATE
from voicepeer.audio.vad import (
    SpeechEnded,
    SpeechPaused,
    SpeechProgress,
    SpeechStarted,
    TurnEvent,
    TurnParams,
    Utterance,
)
from voicepeer.backends.chain import Chain
from voicepeer.backends.stages import LLMChain
from voicepeer.call.call import Call
from voicepeer.call.conversation import Conversation, ConversationSettings
from voicepeer.call.events import EventHub
from voicepeer.call.floor import Transition
from voicepeer.call.logic import Logic
from voicepeer.call.playout import Playout
from voicepeer.call.services import Services
from voicepeer.config import Config

FRAME_S = WEBRTC_FRAME_SAMPLES / WEBRTC_RATE
_DETECTOR = TurnParams()
PAUSE_S = _DETECTOR.pause_ms / 1000
"""When the detector reports a pause after the last voiced audio."""
END_S = _DETECTOR.end_silence_ms / 1000
"""When it closes the turn."""
PROGRESS_S = _DETECTOR.partial_interval_ms / 1000
"""Turn audio between two progress events."""

ROWS_RAN: Counter[Transition] = Counter()
"""Every transition any dialogue of this test run went through."""


class Line(EventLog):
    """What both harnesses share: the clock, the user's speech as the detector reports it, and what
    the conversation sent."""

    def __init__(self, asr: ScriptedASR) -> None:
        super().__init__()
        self.asr = asr
        self.t0 = 0.0
        self.voiced: list[float] = []
        """When each frame with the bot's voice in it was handed out."""

    def _on_frame(self, _pcm: np.ndarray, _pts: int, at: float, voiced: bool) -> None:
        if voiced:
            self.voiced.append(at - self.t0)

    # -- time --------------------------------------------------------------------------------------

    @property
    def now(self) -> float:
        return asyncio.get_running_loop().time() - self.t0

    async def until(self, t: float) -> None:
        """Lets the conversation run until ``t``."""
        await asyncio.sleep(max(0.0, t - self.now))

    async def first(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
        """The first event that satisfies ``predicate``, waiting for it; stamped with its time in ``"t"``."""
        t, event = await self.wait_for(predicate, timeout)
        return {**event, "t": round(t - self.t0, 3)}

    # -- the user ----------------------------------------------------------------------------------

    def at(self, t: float, event: TurnEvent) -> None:
        """The detector reports ``event`` at ``t``."""
        raise NotImplementedError

    def utterance(self, kind: type[Utterance], audio: np.ndarray, start: float, end: float) -> Any:
        """The detector's ``kind`` (paused or ended) for ``audio`` voiced from ``start`` to ``end``."""
        return kind(
            audio=audio,
            start_sample=round(start * SPEECH_RATE),
            end_sample=round(end * SPEECH_RATE),
            speech_end_arrival=self.t0 + end,
            voiced_ms=round((end - start) * 1000),
        )

    def speak(
        self,
        text: str,
        at: float,
        seconds: float = 1.0,
        *,
        pause: bool = True,
        end: bool = True,
        echo: bool = False,
        marked: bool = False,
        pre_roll: tuple[tuple[str, float], ...] = (),
    ) -> np.ndarray:
        """The detector's events for ``text`` spoken from ``at`` for ``seconds`` and silence after it:
        started at once, progress while it lasts, paused and ended after their silences. Returns its
        audio. ``echo``: the detector found it where the bot's echo may be (a loudspeaker call);
        ``marked``: on the front-end's marks (``SpeechStarted.marked``); ``pre_roll``: (words,
        seconds) of the audio the turn keeps from before the onset, which its utterances carry first."""
        audio = self.asr.speech(text, seconds)
        self.at(at, SpeechStarted(round(at * SPEECH_RATE), self.t0 + at, echo, marked))
        begin = at - sum(lead for _, lead in pre_roll)
        audio = np.concatenate([*(self.asr.speech(words, lead) for words, lead in pre_roll), audio])
        k = 1
        while k * PROGRESS_S < seconds:
            heard = audio[: round((at - begin + k * PROGRESS_S) * SPEECH_RATE)]
            self.at(at + k * PROGRESS_S, SpeechProgress(heard, round(k * PROGRESS_S * 1000)))
            k += 1
        stop = at + seconds
        if pause:
            self.at(stop + PAUSE_S, self.utterance(SpeechPaused, audio, begin, stop))
        if end:
            self.at(stop + END_S, self.utterance(SpeechEnded, audio, begin, stop))
        return audio

    # -- what was sent -----------------------------------------------------------------------------

    def kinds(self) -> list[str]:
        """The events sent, in order, by type (a state by its value); partial transcripts and replies
        left out."""
        return [
            m["state"] if m["type"] == "state" else m["type"]
            for _, m in self.events
            if not (m["type"] in ("transcript", "reply") and not m["final"])
        ]

    def states(self) -> list[str]:
        return [m["state"] for m in self.messages("state")]

    def final(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages(kind) if m["final"]]


class Dialogue(Line):
    """A conversation on its own, fed the detector's events and pulled by a virtual outbound track."""

    def __init__(
        self,
        *,
        asr: ScriptedASR | None = None,
        llm: ScriptedLLM | None = None,
        tts: ScriptedTTS | None = None,
        end_of_turn: ScriptedEndOfTurn | None = None,
        settings: ConversationSettings | None = None,
        voice: bool = True,
        llm_timeout_s: float | None = None,
    ) -> None:
        """``llm_timeout_s``: the LLM stage's timeout (None: the default a bare backend gets)."""
        super().__init__(asr or ScriptedASR())
        self.llm = llm or ScriptedLLM()
        self.tts = tts or ScriptedTTS()
        self.playout = Playout()
        self.hub = EventHub()
        self.hub.subscribe(self.record)
        stage = (
            self.llm if llm_timeout_s is None else LLMChain(Chain("llm", [self.llm], timeout_s=llm_timeout_s))
        )
        services = Services(asr=self.asr, llm=stage, tts=self.tts, end_of_turn=end_of_turn)
        self.conversation = Conversation(services, self.playout, self.hub, settings, voice=voice)
        self.playout.add_listener(self._on_frame)
        self._puller: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Dialogue:
        loop = asyncio.get_running_loop()
        self.t0 = loop.time()
        self.conversation.start()
        self._puller = loop.create_task(self._pull())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._puller is not None
        self._puller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._puller
        await self.conversation.close()
        ROWS_RAN.update(self.conversation.machine.ran)

    async def _pull(self) -> None:
        loop = asyncio.get_running_loop()
        n = 0
        while True:
            n += 1
            await asyncio.sleep(max(0.0, self.t0 + n * FRAME_S - loop.time()))
            self.playout.next_frame(loop.time())

    def at(self, t: float, event: TurnEvent) -> None:
        asyncio.get_running_loop().call_at(self.t0 + t, self.conversation.on_turn_event, event)


class CallLine(Line):
    """A whole ``Call`` with scripted backends and a scripted turn detector, on a virtual line: the
    microphone sends 20 ms of silence every 20 ms (the detector's script says what it "heard"), and
    the playout is pulled as often."""

    def __init__(
        self, *, llm: ScriptedLLM | None = None, config: Config | None = None, logic: Logic | None = None
    ) -> None:
        super().__init__(ScriptedASR())
        self.llm = llm or ScriptedLLM()
        self.tts = ScriptedTTS()
        services = Services(asr=self.asr, llm=self.llm, tts=self.tts)
        self.call = Call(services, config or Config(), client_aec=True, logic=logic)
        self.detector = ScriptedDetector(self.call.detector.params)
        self.call.detector = self.detector  # type: ignore[assignment]
        self.call.events.subscribe(self.record)
        self.call.playout.add_listener(self._on_frame)
        self._line: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CallLine:
        loop = asyncio.get_running_loop()
        self.t0 = loop.time()
        self.call.start()
        self._line = loop.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._line is not None
        self._line.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._line
        await self.call.close()
        ROWS_RAN.update(self.call.conversation.machine.ran)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        silence = np.zeros(WEBRTC_FRAME_SAMPLES, dtype=np.int16)
        n = 0
        while True:
            n += 1
            await asyncio.sleep(max(0.0, self.t0 + n * FRAME_S - loop.time()))
            now = loop.time()
            self.call.playout.next_frame(now)
            await self.call.hear(silence, WEBRTC_RATE, 1, now)

    def at(self, t: float, event: TurnEvent) -> None:
        self.detector.at(self.t0 + t, event)
