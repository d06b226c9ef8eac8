"""Scripted backends for the turn logic: the real ASR, LLM, TTS and end-of-turn interfaces with fixed
outputs and fixed delays, so a test decides what each model says and how long it takes.

They are doubles of the models, not of the conversation: everything between them (the floor, the
reply pipeline, the playout) is the real code. The real models have tests of their own.

The ASR reads words off the audio: ``ScriptedASR.speech("Hello.", 1.0)`` is a second of samples that
all hold one code, and transcribing audio gives the phrases of the codes it holds, in order, so a turn
carried over into the next, a partial and an overlap are transcribed as a recogniser would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

from voicepeer.audio.endofturn import EndOfTurn
from voicepeer.audio.formats import SPEECH_RATE
from voicepeer.audio.vad import TurnEvent, TurnParams
from voicepeer.backends.asr import ASR, Transcript
from voicepeer.backends.base import Capabilities
from voicepeer.backends.llm import LLM, LLMError, LLMOptions, Message, ToolCall
from voicepeer.backends.tts import TTS

FIRST_CODE = 1000


class ScriptedASR(ASR):
    def __init__(self, delay_s: float = 0.1) -> None:
        self.delay_s = delay_s
        self.failing = False
        """Every transcription raises while this is set."""
        self.heard: list[str] = []
        """What each transcription returned, in order."""
        self._phrases: dict[int, str] = {}

    def speech(self, text: str, seconds: float) -> np.ndarray:
        """``seconds`` of audio that this recogniser hears as ``text`` ("" for a noise with no words)."""
        code = FIRST_CODE + len(self._phrases)
        self._phrases[code] = text
        return np.full(round(seconds * SPEECH_RATE), code, dtype=np.int16)

    def words_in(self, audio: np.ndarray) -> str:
        if not audio.size:
            return ""
        starts = np.flatnonzero(np.diff(audio)) + 1
        codes = [int(audio[0]), *(int(audio[i]) for i in starts)]
        return " ".join(t for c in codes if (t := self._phrases.get(c)))

    async def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        await asyncio.sleep(self.delay_s)
        if self.failing:
            raise RuntimeError("injected ASR fault")
        text = self.words_in(audio)
        self.heard.append(text)
        return Transcript(text=text, audio_s=audio.size / SPEECH_RATE)


class ScriptedLLM(LLM):
    """Answers each user message with ``replies[message]`` (or ``default``), a word a token."""

    def __init__(
        self,
        replies: dict[str, str] | None = None,
        default: str = "Sure. That is a fine question to ask.",
        first_token_s: float = 0.2,
        token_s: float = 0.02,
    ) -> None:
        self.replies = replies or {}
        self.default = default
        self.first_token_s = first_token_s
        self.token_s = token_s
        self.options = LLMOptions()
        self.fail_after: int | None = None
        """Raise LLMError after this many tokens (0: before the first)."""
        self.stall_after: int | None = None
        """Stop answering, for ever, after this many tokens."""
        self.requests: list[tuple[list[Message], LLMOptions | None]] = []
        self.closed = 0
        """Streams closed, at their end or by their reader."""

        self.tool_calls: dict[str, list[ToolCall]] = {}
        """A user message -> the tools the model calls for it, when it is given tools; after their
        results it answers with them in words (``answer``)."""
        self.tool_choices: list[str] = []
        """``tool_choice`` of each request that had tools."""
        self.capabilities = Capabilities(streaming_output=True, tools=True)

    def answer(self, messages: list[Message]) -> str:
        last = messages[-1]
        if last["role"] == "tool":
            results = [m["content"] for m in messages if m["role"] == "tool"]
            return f"The tool says {results[-1]}."
        return self.replies.get(last["content"], self.default)

    async def stream(
        self, messages: list[Message], options: LLMOptions | None = None, tools=(), tool_choice="auto"
    ) -> AsyncIterator[str | ToolCall]:
        self.requests.append((messages, options))
        if tools:
            self.tool_choices.append(tool_choice)
        last = messages[-1]
        calls = self.tool_calls.get(last["content"]) if last["role"] == "user" else None
        if tools and tool_choice in ("auto", "required") and calls:
            await asyncio.sleep(self.first_token_s)
            for call in calls:
                yield call
            self.closed += 1
            return
        try:
            for i, token in enumerate(re.findall(r"\S+\s*", self.answer(messages))):
                await asyncio.sleep(self.first_token_s if i == 0 else self.token_s)
                if self.fail_after is not None and i >= self.fail_after:
                    raise LLMError("injected LLM fault")
                if self.stall_after is not None and i >= self.stall_after:
                    await asyncio.Event().wait()
                yield token
        finally:
            self.closed += 1


class ScriptedTTS(TTS):
    """Speaks ``speech_s_per_char`` seconds of a steady tone per character, after ``synth_s_per_char``
    seconds of synthesis per character."""

    def __init__(
        self, sample_rate: int = 24_000, speech_s_per_char: float = 0.06, synth_s_per_char: float = 0.005
    ) -> None:
        self.sample_rate = sample_rate
        self.speech_s_per_char = speech_s_per_char
        self.synth_s_per_char = synth_s_per_char
        self.failing = False
        self.spoken: list[str] = []
        """Every piece synthesized, in order."""

    async def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        await asyncio.sleep(len(text) * self.synth_s_per_char)
        if self.failing:
            raise RuntimeError("injected TTS fault")
        self.spoken.append(text)
        yield np.full(round(len(text) * self.speech_s_per_char * self.sample_rate), 3000, dtype=np.int16)


class ScriptedEndOfTurn(EndOfTurn):
    """Judges every turn complete with probability ``p`` (or ``judge(audio)``)."""

    def __init__(self, p: float = 0.9, judge: Callable[[np.ndarray], float] | None = None) -> None:
        self.p = p
        self.judge = judge

    def probability(self, audio: np.ndarray, sample_rate: int = SPEECH_RATE) -> float:
        return self.judge(audio) if self.judge is not None else self.p


class ScriptedDetector:
    """The turn detector, scripted: ``process`` hands out the events due by a chunk's arrival, and
    ``finish`` (the call stops listening) whatever ``on_finish`` makes of the moment."""

    def __init__(self, params: TurnParams | None = None) -> None:
        self.params = params or TurnParams()
        self.script: list[tuple[float, TurnEvent]] = []
        self.on_finish: Callable[[float], list[TurnEvent]] = lambda _arrival: []

    def at(self, when: float, event: TurnEvent) -> None:
        """The detector reports ``event`` with the first chunk that arrives at loop time ``when``."""
        self.script.append((when, event))
        self.script.sort(key=lambda item: item[0])

    def process(self, pcm: np.ndarray, arrival: float, *args: object, **kwargs: object) -> list[TurnEvent]:
        due = [event for when, event in self.script if when <= arrival]
        self.script = self.script[len(due) :]
        return due

    def finish(self, arrival: float) -> list[TurnEvent]:
        return self.on_finish(arrival)

    def update(self, **changes: Any) -> None:
        self.params = dataclasses.replace(self.params, **changes)
