"""The conversation: one user turn in, one spoken reply out, and the state the client sees.

A turn runs as a small pipeline of concurrent stages, so each starts as soon as the one before it has
something: the LLM streams tokens, the chunker cuts them into sentences, TTS speaks each sentence while
the LLM is still writing the next, and the outbound track plays the audio while TTS works on the rest.

For now the bot is half-duplex: speech that ends while it is thinking or speaking is not answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import events
from .asr import ASR
from .audio import SPEECH_RATE, Resampler
from .events import EventChannel, State
from .llm import LLM, History, LLMError
from .text import SpeechChunker
from .tracks import OutboundAudioTrack
from .tts import TTS
from .vad import SpeechEnded, SpeechStarted, TurnEvent

log = logging.getLogger(__name__)

APOLOGY = "Sorry, I can't answer right now."


@dataclass
class TurnMetrics:
    """Milliseconds from the end of the user's speech (as the server received it) to each stage."""

    turn: int
    speech_end: float
    audio_s: float = 0.0
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str, at: float | None = None) -> None:
        if name not in self.marks:
            now = at if at is not None else asyncio.get_running_loop().time()
            self.marks[name] = round((now - self.speech_end) * 1000, 1)

    def as_dict(self) -> dict[str, float | int | None]:
        return {"audio_ms": round(self.audio_s * 1000), **self.marks}


class Conversation:
    def __init__(
        self,
        asr: ASR,
        llm: LLM,
        tts: TTS,
        output: OutboundAudioTrack,
        channel: EventChannel,
        history: History | None = None,
        llm_timeout_s: float = 20.0,
        record_dir: str | None = None,
    ) -> None:
        self.asr = asr
        self.llm = llm
        self.tts = tts
        self.output = output
        self.channel = channel
        self.history = history or History()
        self.llm_timeout_s = llm_timeout_s
        self.turn = 0
        self.state: State = "listening"
        self.record_dir = Path(record_dir) if record_dir else None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._heard_while_busy = False  # the current user turn began while the bot was busy

    def start(self) -> None:
        self.channel.send(events.state(self.state))

    def _set_state(self, value: State) -> None:
        if value != self.state:
            self.state = value
            self.channel.send(events.state(value))

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    def on_turn_event(self, event: TurnEvent) -> None:
        """Called by the session for every VAD turn event, on the event loop."""
        if self._closed:
            return
        if isinstance(event, SpeechStarted):
            self.channel.send(events.vad_start(self.state))
            # Speech that began during the reply contains the bot's own voice or its echo; it is not
            # answered even if it ends after the reply does.
            self._heard_while_busy = self.busy
            return
        if isinstance(event, SpeechEnded):
            if self.busy or self._heard_while_busy:
                log.info("ignoring %d ms of speech heard while the bot was busy", event.voiced_ms)
                return
            self._task = asyncio.get_running_loop().create_task(self._run_turn(event))
            self._task.add_done_callback(self._turn_done)

    def _turn_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("turn failed", exc_info=task.exception())

    async def close(self) -> None:
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._task = None

    # -- one turn ------------------------------------------------------------------------------

    async def _run_turn(self, ended: SpeechEnded) -> None:
        self.turn += 1
        turn = self.turn
        m = TurnMetrics(
            turn=turn, speech_end=ended.speech_end_arrival, audio_s=ended.audio.size / SPEECH_RATE
        )
        m.mark("endpoint_ms")
        self._set_state("thinking")
        try:
            if self.record_dir is not None:
                try:
                    self._record(turn, ended.audio)
                except OSError as exc:
                    log.warning("could not record turn %d: %s", turn, exc)
            try:
                result = await self.asr.transcribe(ended.audio)
            except Exception as exc:
                log.exception("ASR failed")
                self.channel.send(events.error("asr_failed", f"speech recognition failed: {exc}"))
                return
            m.mark("transcript_ms")
            text = result.text
            if not text:
                log.info("turn %d: nothing recognised in %.1f s of audio", turn, result.audio_s)
                return
            self.channel.send(events.transcript(turn, text, final=True))
            reply = await self._reply(turn, text, m)
            if reply:
                self.history.add(text, reply)
            await self.output.wait_idle()
            m.mark("playout_done_ms")
            self._set_state("listening")
            self.channel.send(events.metrics(turn, m.as_dict()))
            log.info("turn %d metrics %s", turn, m.as_dict())
        finally:
            self._set_state("listening")

    def _record(self, turn: int, audio: np.ndarray) -> None:
        self.record_dir.mkdir(parents=True, exist_ok=True)
        path = self.record_dir / f"turn-{id(self):x}-{turn:03d}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SPEECH_RATE)
            w.writeframes(audio.astype(np.int16).tobytes())

    async def _tokens(self, text: str) -> AsyncIterator[str]:
        """The LLM stream with a deadline on each token: a backend that stops answering is dead."""
        stream = self.llm.stream(self.history.messages(text))
        try:
            while True:
                try:
                    async with asyncio.timeout(self.llm_timeout_s):
                        token = await anext(stream)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise LLMError(
                        f"no answer from the language model within {self.llm_timeout_s:g} s"
                    ) from None
                yield token
        finally:
            await stream.aclose()

    async def _reply(self, turn: int, user_text: str, m: TurnMetrics) -> str:
        """Streams LLM -> sentences -> TTS -> outbound track; returns the reply text that was spoken."""
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        spoken: list[str] = []

        async def write() -> None:
            chunker = SpeechChunker()
            written: list[str] = []
            try:
                async for token in self._tokens(user_text):
                    m.mark("llm_first_token_ms")
                    for piece in chunker.push(token):
                        sentences.put_nowait(piece)
                        written.append(piece)
                        self.channel.send(events.reply(turn, " ".join(written), final=False))
                for piece in chunker.flush():
                    sentences.put_nowait(piece)
            except LLMError as exc:
                log.warning("turn %d: %s", turn, exc)
                self.channel.send(events.error("llm_failed", str(exc)))
                if not written:  # nothing of a reply is on its way: apologise instead
                    sentences.put_nowait(APOLOGY)
            finally:
                sentences.put_nowait(None)

        async def speak() -> None:
            resampler = Resampler(self.tts.sample_rate, self.output.sample_rate)
            first_frame_seen = False

            def on_frame(_pcm: np.ndarray, _pts: int, sent_at: float, voiced: bool) -> None:
                nonlocal first_frame_seen
                if voiced and not first_frame_seen:
                    first_frame_seen = True
                    m.mark("first_frame_sent_ms", sent_at)
                    self._set_state("speaking")

            self.output.add_listener(on_frame)
            try:
                while (sentence := await sentences.get()) is not None:
                    t0 = time.perf_counter()
                    async for pcm in self.tts.synthesize(sentence):
                        m.mark("tts_first_audio_ms")
                        self.output.enqueue(resampler.push(pcm))
                    log.debug("tts %.0f ms for %r", (time.perf_counter() - t0) * 1000, sentence)
                    spoken.append(sentence)
                self.output.enqueue(resampler.flush())
                await self.output.wait_idle()
            finally:
                self.output.remove_listener(on_frame)

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(write())
                group.create_task(speak())
        except* Exception as failure:
            log.error("turn %d: reply failed", turn, exc_info=failure)
            self.channel.send(events.error("reply_failed", f"the reply failed: {failure.exceptions[0]}"))
        reply_text = " ".join(spoken)
        if reply_text and reply_text != APOLOGY:
            self.channel.send(events.reply(turn, reply_text, final=True))
            return reply_text
        return ""
