"""The conversation: user turns in, spoken replies out, turn-taking and barge-in, and what the client sees.

A reply runs as a small pipeline of concurrent stages, so each starts as soon as the one before it has
something: the LLM streams tokens, the chunker cuts them into sentences, TTS speaks each sentence while
the LLM is still writing the next, and the outbound track plays the audio while TTS works on the rest.

Turn-taking is speculative. The turn detector reports a *pause* after ~100 ms of silence; the reply
starts there (transcript, LLM, first TTS piece) while the detector waits to see whether the silence
lasts. If the user goes on, the speculation is thrown away; if the turn ends, the reply is already well
under way and only then is it released to the track and the client. An end-of-turn model (Smart Turn)
listens to how the phrase ends: a complete one ends the turn after a short silence, an unfinished one
("I'd like a table for, um") is given a longer one. Without the model, the last words decide.

Barge-in: speech that opens a turn while the bot is answering pauses the bot's audio at once. If the
speech lasts (``interrupt_after_ms``) or says anything but a hum or an acknowledgement ("mm-hm",
"okay"), the reply is cancelled, the history keeps only what was played, and the new speech becomes the
next turn. Otherwise the bot goes on from where it paused, and an ``ignored`` event says why.

Which of these applies is a matter of the floor and the detector's event alone: the table and the
interrupt rule are in ``voicepeer.call.turntaking``; this module does the work.
"""

from __future__ import annotations

import asyncio
import logging
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..audio.formats import SPEECH_RATE, Resampler
from ..audio.vad import (
    SpeechDiscarded,
    SpeechEnded,
    SpeechPaused,
    SpeechProgress,
    SpeechResumed,
    SpeechStarted,
    TurnEvent,
    Utterance,
)
from ..backends.asr import ASR
from ..backends.llm import LLM, History, LLMError, LLMOptions
from ..backends.tts import TTS
from ..runtime.tasks import Tasks
from ..runtime.workers import run_blocking
from . import events
from .events import Event, EventHub, State
from .playout import Playout
from .text import SpeechChunker, looks_unfinished, split_to_fit
from .turntaking import TRANSITIONS, Floor, Overlap, TurnPolicy, Verdict, judge_overlap

if TYPE_CHECKING:
    from .endofturn import EndOfTurn

log = logging.getLogger(__name__)

APOLOGY = "Sorry, I can't answer right now."

SYNTHESIS_MARGIN_S = 0.25
"""A reply's next piece should be ready this long before the audio ahead of it runs out: the
estimate of its synthesis time is an average, and the loop takes a few frames to queue it."""


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
        return {"audio_ms": round(self.audio_s * 1000), **self.marks, **extra}


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
        policy: TurnPolicy | None = None,
        voice: bool = True,
        llm_options: LLMOptions | None = None,
        end_of_turn: EndOfTurn | None = None,
    ) -> None:
        """``voice``: the call has a way to play the bot's voice back; without one (an ingest-only
        client) replies are written, not spoken. ``end_of_turn``: a model that tells a complete phrase
        from an unfinished one by its sound; without one, the last words decide."""
        self.asr = asr
        self.llm = llm
        self.tts = tts
        self.output = output
        self.channel = channel
        self.history = history or History()
        self.voice = voice
        self.llm_options = llm_options or llm.options
        self.llm_timeout_s = llm_timeout_s
        self.policy = policy or TurnPolicy()
        self.end_of_turn = end_of_turn
        self.turn = 0
        """Number of the last committed user turn."""
        self.state: State = "listening"
        self.floor = Floor.OPEN
        self.record_dir = Path(record_dir) if record_dir else None
        self.interruptions = 0
        self.ignored = 0
        """Speech over the bot that did not cut it off (each one was reported in an ``ignored`` event)."""
        self._current: UserTurn | None = None  # the PENDING turn, or the one the BOT answers
        self._overlap: Overlap | None = None  # the speech being judged, in OVERLAP
        self._carry: np.ndarray | None = None  # a held, unfinished phrase the user went on from
        self._unanswered_end = -1  # end sample of the last utterance that had nothing to answer
        self._partial_task: asyncio.Task[None] | None = None
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
        return self.floor in (Floor.BOT, Floor.OVERLAP)

    # -- turn events from the detector ------------------------------------------------------------

    def on_turn_event(self, event: TurnEvent) -> None:
        """Called by the call for every turn event, in order, on the event loop. What it does depends
        only on the floor and the event's kind: ``voicepeer.call.turntaking.TRANSITIONS``."""
        if self._closed:
            return
        if isinstance(event, SpeechStarted):
            self.channel.send(events.vad_start(self.state))
        action = TRANSITIONS.get((self.floor, type(event)))
        if not isinstance(event, SpeechProgress):
            log.debug("%s on %s floor: %s", type(event).__name__, self.floor.value, action or "nothing")
        if action is not None:
            getattr(self, f"_{action}")(event)

    def _user_starts(self, _event: SpeechStarted) -> None:
        self.floor = Floor.USER

    def _partial(self, event: SpeechProgress) -> None:
        if self._partial_task is not None and not self._partial_task.done():
            return  # one partial at a time; the next progress event brings newer audio anyway
        audio = self._with_carry(event.audio)
        if audio.size >= self.policy.min_partial_ms * SPEECH_RATE // 1000:
            self._partial_task = self._tasks.spawn(self._partial_transcript(audio), "partial-asr")

    def _prepare(self, event: Utterance) -> None:
        ended = isinstance(event, SpeechEnded)
        if ended and event.end_sample == self._unanswered_end and self.floor is not Floor.PENDING:
            self.floor = Floor.OPEN  # the pause already found no words in exactly this audio
            return
        self._begin(event, ended=ended)

    def _drop(self, _event: SpeechDiscarded) -> None:
        self.floor = Floor.OPEN

    def _hold(self, _event: SpeechStarted) -> None:
        # The user goes on after a phrase whose turn had closed (an unfinished one, held): it is kept
        # back until this new speech shows whether it is a continuation or only a noise.
        assert self._current is not None
        self._current.free.clear()

    def _abandon(self, _event: SpeechResumed | None = None) -> None:
        turn, self._current = self._current, None
        if turn is not None and turn.task is not None:
            turn.task.cancel()
        self.floor = Floor.USER

    def _pending_ends(self, event: SpeechEnded) -> None:
        turn = self._current
        if turn is not None and turn.end_sample == event.end_sample:
            turn.ended.set()
        else:
            self._begin(event, ended=True)

    def _release(self, _event: SpeechDiscarded) -> None:
        assert self._current is not None
        self._current.free.set()  # only a noise after the held phrase: it may still be the whole turn

    # -- speech over the reply ---------------------------------------------------------------------

    def _overlap_starts(self, event: SpeechStarted | SpeechResumed) -> None:
        self.output.pause()  # at once: whatever the speech turns out to be, the bot stops talking over it
        overlap = Overlap(onset=event.arrival)
        self._overlap = overlap
        self.floor = Floor.OVERLAP
        self._tasks.spawn(self._interrupt_if_still_speaking(overlap), "overlap-timer")

    def _overlap_pauses(self, _event: SpeechPaused) -> None:
        # Judged only when it ends: a pause this short is as likely a gap between two words.
        assert self._overlap is not None
        self._overlap.speaking = False

    def _overlap_resumes(self, event: SpeechResumed) -> None:
        assert self._overlap is not None
        self._overlap.speaking = True
        self._apply(self._overlap, *judge_overlap(self.policy, self._overlap, event.arrival))

    def _overlap_ends(self, event: SpeechEnded) -> None:
        overlap = self._overlap
        assert overlap is not None
        overlap.ended = True
        overlap.speaking = False
        self._tasks.spawn(self._judge(overlap, event), "overlap-judge")

    def _overlap_discarded(self, event: SpeechDiscarded) -> None:
        assert self._overlap is not None
        self._apply(self._overlap, *judge_overlap(self.policy, self._overlap, event.arrival, discarded=True))

    async def _interrupt_if_still_speaking(self, overlap: Overlap) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, overlap.onset + self.policy.interrupt_after_ms / 1000 - loop.time()))
        if self._overlap is overlap:
            self._apply(overlap, *judge_overlap(self.policy, overlap, loop.time()))

    async def _judge(self, overlap: Overlap, utterance: Utterance) -> None:
        """Speech over the reply that ended before it was long enough to cut in: judged by its words."""
        try:
            text = (await self.asr.transcribe(utterance.audio)).text
        except Exception:
            log.exception("ASR failed on speech during the reply; the bot goes on")
            text = ""
        if self._overlap is not overlap:
            return
        verdict, reason = judge_overlap(self.policy, overlap, asyncio.get_running_loop().time(), text=text)
        self._apply(overlap, verdict, reason, text)
        if verdict is Verdict.INTERRUPT:
            self._begin(utterance, ended=True, text=text)

    def _apply(self, overlap: Overlap, verdict: Verdict, reason: str, text: str = "") -> None:
        if self._overlap is not overlap or verdict is Verdict.WAIT:
            return
        if verdict is Verdict.INTERRUPT:
            self._interrupt(reason)
            self.floor = Floor.OPEN if overlap.ended else Floor.USER
            return
        log.info("speech over the reply ignored (%s): %r", reason, text)
        self._overlap = None
        self.floor = Floor.BOT
        self.output.resume()
        self.ignored += 1
        self.channel.send(events.ignored(self.turn, reason, text))

    # -- speculative turns -------------------------------------------------------------------------

    def _with_carry(self, audio: np.ndarray) -> np.ndarray:
        return audio if self._carry is None else np.concatenate([self._carry, audio])

    def _begin(self, utterance: Utterance, ended: bool, text: str | None = None) -> None:
        """A new PENDING turn from this utterance (or typed ``text``), replacing any pending one."""
        if self._closed:
            return
        held = self._current if self.floor is Floor.PENDING else None
        if held is not None:
            if held.ended.is_set():
                self._carry = held.audio  # the user went on from a held phrase: keep its words
            self._abandon()
        turn = UserTurn(utterance, self._with_carry(utterance.audio), ended)
        self._current = turn
        self.floor = Floor.PENDING
        turn.task = self._tasks.spawn(self._run_turn(turn, text), "turn")

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
        self.floor = Floor.BOT
        if self._partial_task is not None:
            self._partial_task.cancel()
        self.channel.send(events.transcript(turn.number, turn.text, final=True))
        self._set_state("thinking")
        turn.commit(self.channel)
        if self.record_dir is not None:
            self._record(turn)

    async def _complete(self, turn: UserTurn) -> bool | None:
        """The end-of-turn model's verdict on the turn's sound: complete, not known to be, or None
        without a model (or for typed text)."""
        if self.end_of_turn is None or not turn.audio.size:
            return None
        pad = np.zeros(self.policy.end_of_turn_pad_ms * SPEECH_RATE // 1000, dtype=np.int16)
        try:
            p = await run_blocking(self.end_of_turn.probability, np.concatenate([turn.audio, pad]))
        except Exception:
            log.exception("end-of-turn model failed; the turn ends on silence alone")
            return None
        turn.metrics.mark("end_of_turn_ms")
        turn.metrics.end_of_turn = round(p, 3)
        return p >= self.policy.end_of_turn_threshold

    async def _turn_over(self, turn: UserTurn, complete: bool | None) -> None:
        """Returns once the silence after the turn has lasted long enough for the phrase: a short one
        for a phrase the model judges complete, the detector's end of turn otherwise."""
        if complete:
            at = turn.metrics.speech_end + self.policy.complete_silence_ms / 1000
            await asyncio.sleep(max(0.0, at - asyncio.get_running_loop().time()))
        else:
            await turn.ended.wait()
        await turn.free.wait()

    async def _run_turn(self, turn: UserTurn, text: str | None) -> None:
        m = turn.metrics
        try:
            complete = asyncio.ensure_future(self._complete(turn))
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
                verdict = await complete
            finally:
                complete.cancel()
            if not verdict and turn.audio.size and looks_unfinished(text):
                # "I'd like a table for, um": wait longer before taking the turn, and do not spend the
                # CPU on an answer that will probably be thrown away.
                log.info("holding an unfinished phrase: %r", text)
                await turn.ended.wait()
                hold = turn.metrics.speech_end + self.policy.hold_silence_ms / 1000
                await asyncio.sleep(max(0.0, hold - asyncio.get_running_loop().time()))
            await turn.free.wait()

            async def commit_when_over() -> None:
                await self._turn_over(turn, verdict)
                self._commit(turn)

            committer = asyncio.get_running_loop().create_task(commit_when_over())
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
                self._current = None
                if turn.committed.is_set():
                    self._reply_over()
                else:  # nothing to answer (no words, or the ASR failed): no turn is pending any more
                    self._unanswered_end = turn.end_sample
                    self.floor = Floor.OPEN

    def _reply_over(self) -> None:
        """The reply ended by itself: speech that began over it is now simply the user's."""
        self._set_state("listening")
        self.floor = Floor.USER if self.floor is Floor.OVERLAP else Floor.OPEN
        self._overlap = None
        self.output.resume()

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
            chunker = SpeechChunker(max_sentences=self.llm_options.max_sentences)
            written: list[str] = []
            try:
                async for token in self._tokens(turn.text):
                    m.mark("llm_first_token_ms")
                    for piece in chunker.push(token):
                        sentences.put_nowait(piece)
                        written.append(piece)
                        so_far = " ".join(written)
                        turn.send(self.channel, lambda t=so_far: events.reply(turn.number, t, final=False))
                    if chunker.done:
                        break  # the reply is long enough: leaving the loop stops the model's stream
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
            pace = self.tts.pace
            rest: str | None = None
            first = True
            try:
                while (sentence := rest or await sentences.get()) is not None:
                    rest = None
                    if not first and turn.committed.is_set():
                        # What is left to play is the time this piece has: cut it if it would not be
                        # ready by then, and speak the rest next, while the head plays.
                        ahead_s = self.output.buffered_samples / self.output.sample_rate
                        budget_s = ahead_s - SYNTHESIS_MARGIN_S
                        if pace.estimate(sentence) > budget_s:
                            cut = split_to_fit(sentence, pace.chars_within(budget_s))
                            if cut is not None:
                                sentence, rest = cut
                    first = False
                    started = asyncio.get_running_loop().time()
                    chunks = [chunk async for chunk in self.tts.synthesize(sentence)]
                    # Seconds of audio at a time: resampled off the loop, which paces every frame.
                    pcm = await run_blocking(lambda c=chunks: [resampler.push(x) for x in c])
                    pace.observe(sentence, asyncio.get_running_loop().time() - started)
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

    # -- the client ------------------------------------------------------------------------------

    def interrupt(self) -> bool:
        """The client asked the bot to stop (``{"type": "interrupt"}``); False if it was not talking."""
        return self._interrupt("client")

    def say(self, text: str) -> None:
        """A typed user message: it cuts off a reply in progress, like speech would, and becomes the
        next turn, answered as if it had been spoken (with no audio, the ASR is skipped)."""
        self._interrupt("client")
        self._carry = None
        if self.floor is Floor.PENDING:
            self._abandon()
        now = asyncio.get_running_loop().time()
        typed = Utterance(np.zeros(0, dtype=np.int16), -1, -1, now, 0)
        self._begin(typed, ended=True, text=text)

    def reset(self) -> None:
        """Forgets the conversation: any reply in progress stops, and the history is cleared."""
        self._interrupt("client")
        if self.floor is Floor.PENDING:
            self._abandon()
        self._carry = None
        self.floor = Floor.OPEN
        self.history.turns.clear()

    def _interrupt(self, reason: str) -> bool:
        """Cuts the committed reply off; False if there was none. The floor is left to the caller."""
        self._overlap = None
        self.output.resume()
        turn = self._current
        if turn is None or not self.busy:
            return False
        heard = turn.heard(self.output.played_total)
        self.output.clear()
        assert turn.task is not None
        turn.task.cancel()
        self._current = None
        self.floor = Floor.OPEN
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
        self._overlap = None
        await self._tasks.cancel_all()
        self._current = None
