"""The conversation: user turns in, spoken replies out, turn-taking and barge-in, and what the client sees.

A reply runs as a small pipeline of concurrent stages, so each starts as soon as the one before it has
something: the LLM streams tokens, the chunker cuts them into sentences, TTS speaks each sentence while
the LLM is still writing the next, and the outbound track plays the audio while TTS works on the rest.

Turn-taking is speculative. The turn detector reports a *pause* after ~100 ms of silence; the reply
starts there (transcript, LLM, first TTS piece) while the detector waits to see whether the silence
lasts. If the user goes on, the speculation is thrown away; if the turn ends, the reply is already well
under way and only then is it released to the track and the client. A phrase that sounds unfinished
("... and", "um") is given a longer silence before it counts as the end.

Barge-in: speech that opens a turn while the bot is answering pauses the bot's audio at once. If the
speech lasts (``interrupt_after_ms``) or says something other than a backchannel ("mm-hm"), the reply is
cancelled, the history keeps only what was played, and the new speech becomes the next turn. A cough or
an "mm-hm" lets the bot go on from where it paused.
"""

from __future__ import annotations

import asyncio
import logging
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import events
from .asr import ASR
from .audio import SPEECH_RATE, Resampler
from .events import Event, EventHub, State
from .llm import LLM, History, LLMError, LLMOptions
from .playout import Playout
from .tasks import Tasks
from .text import SpeechChunker, is_backchannel, looks_unfinished
from .tts import TTS
from .vad import (
    SpeechDiscarded,
    SpeechEnded,
    SpeechPaused,
    SpeechProgress,
    SpeechResumed,
    SpeechStarted,
    TurnEvent,
    TurnParams,
    Utterance,
)
from .workers import run_blocking

log = logging.getLogger(__name__)

APOLOGY = "Sorry, I can't answer right now."

MIN_PARTIAL_S = 0.8
"""Turn audio below this gets no partial transcript: whisper guesses wildly on a word and a half."""


@dataclass
class TurnMetrics:
    """Milliseconds from the end of the user's speech (as the server received it) to each stage."""

    speech_end: float
    audio_s: float = 0.0
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str, at: float | None = None) -> None:
        if name not in self.marks:
            now = at if at is not None else asyncio.get_running_loop().time()
            self.marks[name] = round((now - self.speech_end) * 1000, 1)

    def as_dict(self) -> dict[str, float | int | None]:
        return {"audio_ms": round(self.audio_s * 1000), **self.marks}


class UserTurn:
    """One user utterance, from the pause that may end it until its reply is over (or abandoned).

    Until it is *committed* (the silence lasted), everything it produces is held back: its audio waits
    before the outbound track and its events wait before the channel, so a speculation that is thrown
    away leaves no trace the user could notice.
    """

    def __init__(self, utterance: Utterance, audio: np.ndarray, ended: bool) -> None:
        self.audio = audio
        self.end_sample = utterance.end_sample
        self.metrics = TurnMetrics(utterance.speech_end_arrival, audio.size / SPEECH_RATE)
        self.ended = asyncio.Event()
        if ended:
            self.ended.set()
        self.committed = asyncio.Event()
        self.free = asyncio.Event()
        """Cleared while the user has started speaking again after this (held) turn closed."""
        self.free.set()
        self.number = 0
        self.text = ""
        self.task: asyncio.Task[None] | None = None
        self.spans: list[tuple[str, int, int]] = []
        """Spoken pieces and their sample range on the outbound track's ``queued_total`` axis."""
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
        """The part of the reply that was handed to the client, to the word (pro rata within a piece)."""
        parts: list[str] = []
        for text, start, end in self.spans:
            if played_total >= end:
                parts.append(text)
                continue
            if played_total > start:
                words = text.split()
                n = int(len(words) * (played_total - start) / max(1, end - start))
                parts.extend(words[:n])
            break
        return " ".join(parts)


@dataclass
class BargeIn:
    """User speech that began while the bot was answering, until it is judged."""

    onset: float
    speaking: bool = True
    ended: bool = False
    timer: asyncio.Task[None] | None = None
    judge: asyncio.Task[None] | None = None

    def cancel(self) -> None:
        for task in (self.timer, self.judge):
            if task is not None and task is not asyncio.current_task():
                task.cancel()


class Conversation:
    def __init__(
        self,
        asr: ASR,
        llm: LLM,
        tts: TTS,
        output: Playout,
        channel: EventHub,
        history: History | None = None,
        llm_timeout_s: float = 20.0,
        record_dir: str | None = None,
        params: TurnParams | None = None,
        interrupt_after_ms: int = 1000,
        voice: bool = True,
        llm_options: LLMOptions | None = None,
    ) -> None:
        """``voice``: the call has a way to play the bot's voice back; without one (an ingest-only
        client) replies are written, not spoken."""
        self.asr = asr
        self.llm = llm
        self.tts = tts
        self.output = output
        self.channel = channel
        self.history = history or History()
        self.voice = voice
        self.llm_options = llm_options or llm.options
        self.llm_timeout_s = llm_timeout_s
        self.params = params or TurnParams()
        self.interrupt_after_s = interrupt_after_ms / 1000
        self.turn = 0
        """Number of the last committed user turn."""
        self.state: State = "listening"
        self.record_dir = Path(record_dir) if record_dir else None
        self.interruptions = 0
        self._current: UserTurn | None = None  # the newest user turn: speculative, held or answered
        self._barge: BargeIn | None = None
        self._carry: np.ndarray | None = None  # a held, unfinished phrase the user went on from
        self._ignoring = False  # the rest of the detector's current turn was judged a backchannel
        self._unanswered_end = -1  # end sample of the last utterance that had nothing to answer
        self._partial: asyncio.Task[None] | None = None
        self._tasks = Tasks("conversation")
        self._closed = False

    def start(self) -> None:
        self.channel.send(events.state(self.state))

    def _set_state(self, value: State) -> None:
        if value != self.state:
            self.state = value
            self.channel.send(events.state(value))

    @property
    def busy(self) -> bool:
        """A committed turn is being answered (thinking or speaking)."""
        turn = self._current
        return turn is not None and turn.committed.is_set() and turn.task is not None and not turn.task.done()

    @property
    def _speculating(self) -> bool:
        turn = self._current
        return turn is not None and not turn.committed.is_set()

    # -- turn events from the detector ------------------------------------------------------------

    def on_turn_event(self, event: TurnEvent) -> None:
        """Called by the session for every turn event, in order, on the event loop."""
        if self._closed:
            return
        if not isinstance(event, SpeechProgress):
            log.debug("%s (state %s, barge %s)", type(event).__name__, self.state, self._barge is not None)
        if isinstance(event, SpeechStarted):
            self._on_started(event)
        elif isinstance(event, SpeechProgress):
            self._on_progress(event)
        elif isinstance(event, SpeechPaused):
            self._on_paused(event)
        elif isinstance(event, SpeechResumed):
            self._on_resumed(event)
        elif isinstance(event, SpeechEnded):
            self._on_ended(event)
        elif isinstance(event, SpeechDiscarded):
            self._on_discarded()

    def _on_started(self, event: SpeechStarted) -> None:
        self.channel.send(events.vad_start(self.state))
        self._ignoring = False
        turn = self._current
        if turn is not None and self._speculating:
            # The user goes on after a phrase whose turn had closed (an unfinished one, held): it is
            # kept back until this new speech shows whether it is a continuation or only a noise.
            turn.free.clear()
        elif self.busy:
            self._start_barge_in(event.arrival)

    def _on_progress(self, event: SpeechProgress) -> None:
        if self.busy or self._barge is not None or self._ignoring:
            return
        if self._partial is not None and not self._partial.done():
            return  # one partial at a time; the next progress event brings newer audio anyway
        audio = self._with_carry(event.audio)
        if audio.size >= MIN_PARTIAL_S * SPEECH_RATE:
            self._partial = self._tasks.spawn(self._partial_transcript(audio), "partial-asr")

    def _on_paused(self, event: SpeechPaused) -> None:
        if self._ignoring:
            return
        if self._barge is not None:
            # Judged only when it ends: a pause this short is as likely a gap between two words.
            self._barge.speaking = False
            return
        if self.busy:
            return
        self._begin(event, ended=False)

    def _on_resumed(self, event: SpeechResumed) -> None:
        if self._barge is not None:
            barge = self._barge
            barge.speaking = True
            if event.arrival - barge.onset >= self.interrupt_after_s:
                self._interrupt("speech")
            return
        if self._ignoring:
            # The user goes on after what sounded like a backchannel: now it is a bid for the turn.
            self._ignoring = False
            if self.busy:
                self._start_barge_in(event.arrival)
            return
        if self._speculating:
            self._abandon()  # it was a breath, not the end: the speculation is wrong now

    def _on_ended(self, event: SpeechEnded) -> None:
        if self._ignoring:
            self._ignoring = False
            return
        if self._barge is not None:
            # The speech over the reply is over (the detector's turn closed): judge it by its words.
            barge = self._barge
            barge.ended = True
            barge.speaking = False
            barge.judge = self._tasks.spawn(self._judge(barge, event), "barge-in-judge")
            return
        turn = self._current
        if turn is not None and self._speculating and turn.end_sample == event.end_sample:
            turn.ended.set()
            return
        if self.busy or event.end_sample == self._unanswered_end:
            return  # the pause already found no words in exactly this audio
        self._begin(event, ended=True)

    def _on_discarded(self) -> None:
        if self._barge is not None:
            self._let_bot_go_on(self._barge)
        self._ignoring = False
        turn = self._current
        if turn is not None and self._speculating:
            turn.free.set()  # only a noise after the held phrase: it may still be the whole turn

    # -- speculative turns -------------------------------------------------------------------------

    def _with_carry(self, audio: np.ndarray) -> np.ndarray:
        return audio if self._carry is None else np.concatenate([self._carry, audio])

    def _begin(self, utterance: Utterance, ended: bool, text: str | None = None) -> None:
        if self._closed:
            return
        held = self._current
        if held is not None and self._speculating:
            if held.ended.is_set():
                self._carry = held.audio  # the user went on from a held phrase: keep its words
            self._abandon()
        turn = UserTurn(utterance, self._with_carry(utterance.audio), ended)
        self._current = turn
        turn.task = self._tasks.spawn(self._run_turn(turn, text), "turn")

    def _abandon(self) -> None:
        turn, self._current = self._current, None
        if turn is not None and turn.task is not None:
            turn.task.cancel()

    async def _partial_transcript(self, audio: np.ndarray) -> None:
        committed = self.turn
        result = await self.asr.transcribe(audio)
        if result.text and self.turn == committed and not self.busy:
            self.channel.send(events.transcript(self.turn + 1, result.text, final=False))

    def _commit(self, turn: UserTurn) -> None:
        """The silence lasted: this is the user's turn. Releases what the speculation held back."""
        self.turn += 1
        turn.number = self.turn
        turn.metrics.mark("endpoint_ms")
        self._carry = None
        if self._partial is not None:
            self._partial.cancel()
        self.channel.send(events.transcript(turn.number, turn.text, final=True))
        self._set_state("thinking")
        turn.commit(self.channel)

    async def _run_turn(self, turn: UserTurn, text: str | None) -> None:
        m = turn.metrics
        try:
            if text is None:
                try:
                    text = (await self.asr.transcribe(turn.audio)).text
                except Exception as exc:
                    log.exception("ASR failed")
                    await turn.ended.wait()
                    self.channel.send(events.error("asr_failed", f"speech recognition failed: {exc}"))
                    return
            m.mark("transcript_ms")
            turn.text = text
            if not text:
                log.info("nothing recognised in %.1f s of audio", m.audio_s)
                return
            if not turn.ended.is_set():
                self.channel.send(events.transcript(self.turn + 1, text, final=False))
            if looks_unfinished(text) and turn.audio.size:  # typed text is finished when it is sent
                # "I'd like a table for, um": wait longer before taking the turn, and do not spend the
                # CPU on an answer that will probably be thrown away.
                log.info("holding an unfinished phrase: %r", text)
                await turn.ended.wait()
                hold = turn.metrics.speech_end + self.params.hold_silence_ms / 1000
                await asyncio.sleep(max(0.0, hold - asyncio.get_running_loop().time()))
            await turn.free.wait()

            async def commit_when_ended() -> None:
                await turn.ended.wait()
                await turn.free.wait()
                self._commit(turn)
                if self.record_dir is not None:
                    self._record(turn)

            committer = asyncio.get_running_loop().create_task(commit_when_ended())
            try:
                reply = await self._reply(turn)
                await committer
            finally:
                committer.cancel()
            if reply:
                self.history.add(text, reply)
            await self.output.wait_idle()
            m.mark("playout_done_ms")
            self._set_state("listening")
            self.channel.send(events.metrics(turn.number, m.as_dict()))
            log.info("turn %d metrics %s", turn.number, m.as_dict())
        finally:
            if self._current is turn:
                if turn.committed.is_set():
                    self._set_state("listening")
                else:  # nothing to answer (no words, or the ASR failed): no turn is pending any more
                    self._current = None
                    self._unanswered_end = turn.end_sample

    def _record(self, turn: UserTurn) -> None:
        try:
            self.record_dir.mkdir(parents=True, exist_ok=True)
            path = self.record_dir / f"turn-{id(self):x}-{turn.number:03d}.wav"
            with wave.open(str(path), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(SPEECH_RATE)
                w.writeframes(turn.audio.astype(np.int16).tobytes())
        except OSError as exc:
            log.warning("could not record turn %d: %s", turn.number, exc)

    async def _tokens(self, text: str) -> AsyncIterator[str]:
        """The LLM stream with a deadline on each token: a backend that stops answering is dead."""
        stream = self.llm.stream(self.history.messages(text), self.llm_options)
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

    async def _reply(self, turn: UserTurn) -> str:
        """Streams LLM -> sentences -> TTS -> outbound track; returns the reply text that was spoken.

        Runs before the turn is committed; the track and the client get nothing until it is."""
        m = turn.metrics
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        spoken: list[str] = []

        async def write() -> None:
            chunker = SpeechChunker()
            written: list[str] = []
            try:
                async for token in self._tokens(turn.text):
                    m.mark("llm_first_token_ms")
                    for piece in chunker.push(token):
                        sentences.put_nowait(piece)
                        written.append(piece)
                        so_far = " ".join(written)
                        turn.send(self.channel, lambda t=so_far: events.reply(turn.number, t, final=False))
                for piece in chunker.flush():
                    sentences.put_nowait(piece)
            except LLMError as exc:
                log.warning("turn: %s", exc)
                turn.send(self.channel, lambda e=exc: events.error("llm_failed", str(e)))
                if not written:  # nothing of a reply is on its way: apologise instead
                    sentences.put_nowait(APOLOGY)
            finally:
                sentences.put_nowait(None)

        async def write_only() -> None:
            # No way back to the user but events: the reply is the text, "spoken" once committed.
            while (sentence := await sentences.get()) is not None:
                await turn.committed.wait()
                spoken.append(sentence)

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
                    chunks = [chunk async for chunk in self.tts.synthesize(sentence)]
                    # Seconds of audio at a time: resampled off the loop, which paces every frame.
                    pcm = await run_blocking(lambda c=chunks: [resampler.push(x) for x in c])
                    m.mark("tts_first_audio_ms")
                    await turn.committed.wait()
                    start = self.output.queued_total
                    for chunk in pcm:
                        self.output.enqueue(chunk)
                    turn.spans.append((sentence, start, self.output.queued_total))
                    spoken.append(sentence)
                await turn.committed.wait()
                self.output.enqueue(resampler.flush())
                await self.output.wait_idle()
            finally:
                self.output.remove_listener(on_frame)

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(write())
                group.create_task(speak() if self.voice else write_only())
        except* Exception as failure:
            log.error("reply failed", exc_info=failure)
            message = f"the reply failed: {failure.exceptions[0]}"
            turn.send(self.channel, lambda: events.error("reply_failed", message))
        reply_text = " ".join(spoken)
        if reply_text and reply_text != APOLOGY:
            self.channel.send(events.reply(turn.number, reply_text, final=True))
            return reply_text
        return ""

    # -- barge-in ----------------------------------------------------------------------------------

    def _start_barge_in(self, onset: float) -> None:
        self.output.pause()  # at once: whatever the speech turns out to be, the bot stops talking over it
        barge = BargeIn(onset=onset)
        barge.timer = self._tasks.spawn(self._interrupt_if_still_speaking(barge), "barge-in-timer")
        self._barge = barge

    async def _interrupt_if_still_speaking(self, barge: BargeIn) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, barge.onset + self.interrupt_after_s - loop.time()))
        if self._barge is barge and barge.speaking:
            self._interrupt("speech")

    async def _judge(self, barge: BargeIn, utterance: Utterance) -> None:
        """Short speech during the reply: a backchannel lets the bot go on, anything else takes the turn."""
        try:
            text = (await self.asr.transcribe(utterance.audio)).text
        except Exception:
            log.exception("ASR failed on speech during the reply; the bot goes on")
            text = ""
        if self._barge is not barge:
            return
        if is_backchannel(text):
            log.info("backchannel %r: the bot goes on", text)
            self._let_bot_go_on(barge)
            self._ignoring = not barge.ended
            return
        log.info("%r during the reply takes the turn", text)
        self._interrupt("speech")
        self._begin(utterance, ended=barge.ended, text=text)

    def _let_bot_go_on(self, barge: BargeIn) -> None:
        barge.cancel()
        self._barge = None
        self.output.resume()

    def interrupt(self) -> bool:
        """The client asked the bot to stop (``{"type": "interrupt"}``); False if it was not talking."""
        return self._interrupt("client")

    def say(self, text: str) -> None:
        """A typed user message: it cuts off a reply in progress, like speech would, and becomes the
        next turn, answered as if it had been spoken (with no audio, the ASR is skipped)."""
        self._interrupt("client")
        if self._speculating:
            self._abandon()
        self._carry = None
        now = asyncio.get_running_loop().time()
        typed = Utterance(np.zeros(0, dtype=np.int16), -1, -1, now, 0)
        self._begin(typed, ended=True, text=text)

    def reset(self) -> None:
        """Forgets the conversation: any reply in progress stops, and the history is cleared."""
        self._interrupt("client")
        if self._speculating:
            self._abandon()
        self._carry = None
        self.history.turns.clear()

    def _interrupt(self, reason: str) -> bool:
        barge, self._barge = self._barge, None
        if barge is not None:
            barge.cancel()
        turn = self._current
        if turn is None or not self.busy:
            self.output.resume()
            return False
        heard = turn.heard(self.output.played_total)
        self.output.clear()
        self.output.resume()
        assert turn.task is not None
        turn.task.cancel()
        self._current = None
        self.interruptions += 1
        if heard:
            self.history.add(turn.text, heard)
        turn.metrics.mark("interrupted_ms")
        self.channel.send(events.interrupted(turn.number, heard, reason))
        self.channel.send(events.metrics(turn.number, turn.metrics.as_dict()))
        log.info("turn %d interrupted (%s) after %r", turn.number, reason, heard)
        self._set_state("listening")
        return True

    async def close(self) -> None:
        self._closed = True
        if self._barge is not None:
            self._barge.cancel()
        await self._tasks.cancel_all()
        self._current = None
