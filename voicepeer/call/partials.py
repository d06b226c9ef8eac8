"""Partial transcripts: the user's words shown while they are still speaking.

Two sources, one at a time per utterance. With a streaming ASR (``Capabilities.streaming_input``) each
utterance gets a ``LiveTranscript`` fed at every progress event, and its running hypothesis is the
partial; the first turn made of the utterance takes the stream over for its final transcript. Without
one, a partial is a whole transcription of the turn so far, run only when it is cheap (in process) or
the operator asked for it: to a remote ASR it is one more request, maybe metered.

A partial is a nicety: it never holds up a turn, at most one runs at a time (the next progress event
brings newer audio anyway), and a failure only means no partial.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from ..audio.formats import SPEECH_RATE
from ..backends.asr import ASR
from ..backends.base import BackendError
from ..runtime.tasks import Tasks
from . import events
from .events import EventHub
from .live import LiveTranscript


class Partials:
    """One call's partial transcripts. ``next_turn`` gives the number the words in progress will
    have once committed; ``showing`` says whether a partial may still be shown (not once the bot is
    answering): both are read when a transcription finishes, not when it starts."""

    def __init__(
        self,
        asr: ASR,
        channel: EventHub,
        tasks: Tasks,
        *,
        mode: str,
        min_ms: int,
        next_turn: Callable[[], int],
        showing: Callable[[], bool],
    ) -> None:
        self._asr = asr
        self._channel = channel
        self._tasks = tasks
        self._mode = mode  # "auto", "on" or "off" (the stream still gives the final transcript)
        self._min_samples = min_ms * SPEECH_RATE // 1000
        self._next_turn = next_turn
        self._showing = showing
        self._task: asyncio.Task[None] | None = None
        self.live: LiveTranscript | None = None
        """The current utterance's stream, with a streaming ASR."""
        self._live_sent = ""

    def utterance_starts(self) -> None:
        """A new utterance: a streaming ASR gets a new stream for it (the old one, if no turn took it,
        is abandoned)."""
        old, self.live = self.live, None
        if old is not None:
            self._tasks.spawn(old.aclose(), "live-close")
        if self._asr.capabilities.streaming_input:
            self.live = LiveTranscript(self._asr)

    def stream_for(self, carried: bool) -> LiveTranscript | None:
        """The stream a turn made of the current utterance may take its transcript from: none if the
        turn also carries earlier audio, which the stream never heard, or if a turn already took it."""
        if carried or self.live is None or self.live.done:
            return None
        return self.live

    def progress(self, audio: np.ndarray, carry: np.ndarray | None = None) -> None:
        """The utterance so far (``audio``, 16 kHz) has grown; ``carry`` is a held phrase the user
        went on from, whose words belong to the same turn (the stream has heard it already)."""
        if self.live is not None and not self.live.done:
            if self._task is None or self._task.done():
                self._task = self._tasks.spawn(self._from_stream(self.live, audio), "live-asr")
            return
        if not self._wanted() or (self._task is not None and not self._task.done()):
            return
        if carry is not None:
            audio = np.concatenate([carry, audio])
        if audio.size >= self._min_samples:
            self._task = self._tasks.spawn(self._transcribe(audio), "partial-asr")

    def turn_committed(self) -> None:
        """The words are final now: a partial still running would only arrive after them."""
        if self._task is not None:
            self._task.cancel()

    async def close(self) -> None:
        if self.live is not None:
            await self.live.aclose()

    def _wanted(self) -> bool:
        if self._mode == "auto":
            caps = self._asr.capabilities
            return caps.cheap or (caps.partials and caps.streaming_input)
        return self._mode == "on"

    async def _from_stream(self, live: LiveTranscript, audio: np.ndarray) -> None:
        turn = self._next_turn()
        text = await live.feed(audio)
        if self._mode == "off" or not text or text == self._live_sent:
            return
        if self._next_turn() == turn and self._showing():
            self._live_sent = text
            self._channel.send(events.transcript(turn, text, final=False))

    async def _transcribe(self, audio: np.ndarray) -> None:
        turn = self._next_turn()
        try:
            result = await self._asr.transcribe(audio)
        except BackendError:
            return  # the turn's own transcription reports a failing ASR
        if result.text and self._next_turn() == turn and self._showing():
            self._channel.send(events.transcript(turn, result.text, final=False))
