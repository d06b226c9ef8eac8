"""The conversation: user turns in, spoken replies out, turn-taking and barge-in, and what the client sees.

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

What happens is a matter of the floor and the event alone: ``TRANSITIONS`` at the end of this module,
read row by row, is the whole of turn-taking, and the state the client sees follows from the floor.
The work is in modules of their own: the user turn (``turn``) and its answering (``answer``), the reply
pipeline (``reply``, ``speaker``), speech over the reply (``bargein``) and the rule that judges it
(``turntaking``), the words shown while the user speaks (``partials``); the machine that moves the
floor is ``floor``.

The module is longer than the package's ~400 lines on purpose: what is left is the table and its
thirty handlers of a few lines each, which are read together, row and handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Coroutine
from typing import Any

import numpy as np

from ..audio.vad import (
    SpeechDiscarded,
    SpeechEnded,
    SpeechPaused,
    SpeechProgress,
    SpeechResumed,
    SpeechStarted,
    SpeechSuspected,
    TurnEvent,
    Utterance,
)
from ..backends.llm import History
from ..runtime.tasks import Tasks
from . import events
from .answer import Answerer, ConversationSettings
from .bargein import BargeIn
from .control import ControlError
from .events import EventHub, State
from .floor import (
    Committed,
    CutIn,
    FloorMachine,
    GoOn,
    HoldOver,
    Interrupt,
    ReplyOver,
    Reset,
    Say,
    Speak,
    TakeOver,
    Transition,
    Unanswered,
)
from .language import AUTO, CallASR, CallLanguage, Language
from .partials import Partials
from .playout import Playout
from .services import Services
from .turn import UserTurn
from .turntaking import Floor, Verdict

log = logging.getLogger(__name__)

ECHO_AHEAD_S = 2.0
"""Of the reply, past what was handed to the client when speech over it began, the words its echo may
still hold: the client's buffer and the echo's way back, and ``heard`` placing words pro rata. One
second was too little on a loaded machine (the client's receiver had run dry for 685 ms, the echo
came 650 ms after our voice): "the earth, and its a fascinating", heard over the bot's "...orbits
the Earth, and it's a fascinating...", went two words past it, so under 60 % of its words were the
bot's, and it cut the reply off."""


MAX_QUEUED_SPEECHES = 8
"""``speak`` texts waiting for the floor; past this the oldest goes: an announcement nobody could hear
for that long is stale."""


class Conversation:
    """One call's conversation: fed the turn detector's events and the client's commands, it moves
    the floor by ``TRANSITIONS`` and sends the client what follows."""

    def __init__(
        self,
        services: Services,
        output: Playout,
        channel: EventHub,
        settings: ConversationSettings | None = None,
        *,
        voice: bool = True,
    ) -> None:
        """``voice``: the call has a way to play the bot's voice back; without one (an ingest-only
        client) replies are written, not spoken. ``services.end_of_turn``: a model that tells a complete
        phrase from an unfinished one by its sound; without one, the last words decide."""
        settings = settings or ConversationSettings()
        self.output = output
        self.channel = channel
        self.policy = settings.policy
        self.machine = FloorMachine(TRANSITIONS, self, changed=self._publish)
        self._tasks = Tasks("conversation")
        self.language = CallLanguage(settings.language, changed=self._language_changed)
        """The language the call speaks now (``config``, or detected with ``auto``)."""
        self.asr = CallASR(services.asr, self.language)
        self.answerer = Answerer(
            services,
            output,
            channel,
            settings,
            voice=voice,
            fire=self.machine.fire,
            audible=self._audible,
            spawn=self._tasks.spawn,
            language=self.language,
            asr=self.asr,
        )
        self._services = services
        self.partials = Partials(
            self.asr,
            channel,
            self._tasks,
            mode=settings.partials,
            min_ms=self.policy.min_partial_ms,
            next_turn=lambda: self.turn + 1,
            showing=lambda: not self.busy,
        )
        self.turn = 0
        """Number of the last committed user turn."""
        self.interruptions = 0
        self.ignored = 0
        """Speech over the bot that did not cut it off (each one was reported in an ``ignored`` event)."""
        self._voice_hold: HoldOver | None = None  # the bot's voice held on a suspicion of speech
        self._barge = BargeIn(
            self.policy, self.asr, self._tasks, self._decide, self._bot_said, lambda: self.language.current
        )
        self._published: State = "listening"
        self._current: UserTurn | None = None  # the PENDING turn, or the one the BOT answers
        self._carry: np.ndarray | None = None  # a held, unfinished phrase the user went on from
        self._carry_from: int | None = None
        """Where ``_carry`` begins in the stream, if known: the turn it joins gets each sample once."""
        self._unanswered_end = -1  # end sample of the last utterance that had nothing to answer
        self._speeches: deque[str] = deque(maxlen=MAX_QUEUED_SPEECHES)
        """What the application asked the bot to say once the floor is open."""
        self.ending = False
        """The call is hanging up: no new turn is taken."""
        self._closed = False

    def start(self) -> None:
        self.channel.send(events.state(self.state))

    def update(
        self, *, system_prompt: str | None = None, max_tokens: int | None = None, language: str | None = None
    ) -> None:
        """Changes how the next replies are written (and, with ``language``, heard and spoken); a reply
        under way keeps what it started with."""
        self.answerer.update(system_prompt=system_prompt, max_tokens=max_tokens)
        if language is not None:
            self.language.ask(language)

    def check_language(self, code: str) -> None:
        """Raises ``ControlError`` unless the ASR can hear ``code`` (``auto``: tell languages apart),
        by what it declares: asking an English-only model for Mandarin would fail every turn."""
        known = self.asr.capabilities.languages
        if not known or (code in known if code != AUTO else len(known) > 1):
            return
        what = "tell languages apart" if code == AUTO else f"hear {code!r}"
        raise ControlError(
            "unsupported", f"the ASR cannot {what} (it knows {', '.join(known[:8])})", "language"
        )

    def _language_changed(self, new: Language, detected: bool) -> None:
        log.info("the call's language is now %s (%s)", new.code, "detected" if detected else "asked")
        self.channel.send(events.language(new.code, self.language.asked, detected))

    @property
    def history(self) -> History:
        return self.answerer.history

    @property
    def floor(self) -> Floor:
        return self.machine.floor

    @property
    def busy(self) -> bool:
        """A committed turn is being answered (thinking or speaking)."""
        return self.floor in (Floor.BOT, Floor.OVERLAP)

    @property
    def state(self) -> State:
        """What the client is told the bot is doing: answering once a turn is committed, speaking from
        the first frame of its voice, listening otherwise."""
        if not self.busy:
            return "listening"
        return "speaking" if self._current is not None and self._current.audible else "thinking"

    def _publish(self) -> None:
        if self.state != self._published:
            self._published = self.state
            self.channel.send(events.state(self._published))
        if self._speeches and self.floor is Floor.OPEN and not self._closed:
            # Not from inside the row that opened the floor: the next one is fired on its own.
            asyncio.get_running_loop().call_soon(self._speak_queued)

    def _speak_queued(self) -> None:
        if self._speeches and self.floor is Floor.OPEN and not self._closed:
            self.machine.fire(Speak(self._speeches.popleft(), now=True))

    def _audible(self, turn: UserTurn) -> None:
        self._services.turn_audible(turn.metrics.marks)
        self._publish()

    # -- events in ---------------------------------------------------------------------------------

    def on_turn_event(self, event: TurnEvent) -> None:
        """Called by the call for every turn event, in order, on the event loop."""
        if self._closed or self.ending:
            return
        if isinstance(event, SpeechStarted):
            self.channel.send(events.vad_start(self.state))
            self.partials.utterance_starts()
        row = self.machine.fire(event)
        if not isinstance(event, SpeechProgress):
            log.debug("%s on %s floor: %s", type(event).__name__, self.floor.value, row or "nothing")

    def interrupt(self) -> bool:
        """The client asked the bot to stop (``{"type": "interrupt"}``); False if it was not talking."""
        return self.machine.fire(Interrupt()) is not None

    def say(self, text: str) -> None:
        """A typed user message: it cuts off a reply in progress, like speech would, and becomes the
        next turn, answered as if it had been spoken (with no audio, the ASR is skipped)."""
        self.machine.fire(Say(text))

    def reset(self) -> None:
        """Forgets the conversation: any reply in progress stops, and the history is cleared."""
        self.machine.fire(Reset())

    def speak(self, text: str, now: bool = False) -> None:
        """The bot says ``text`` verbatim, recorded in the history as its own: ``now`` cuts off whatever
        is going on (a reply, a turn being answered); otherwise it waits until the floor is open."""
        self.machine.fire(Speak(text, now))

    def hang_up(self, last_words: str = "") -> Coroutine[Any, Any, None]:
        """Ends the conversation politely: from now on no new turn is taken; the coroutine returned
        stops a reply under way after the sentence playing, says ``last_words`` (if any), and returns
        once all is played."""
        self.ending = True
        self._speeches.clear()
        return self._play_out(last_words)

    async def _play_out(self, last_words: str) -> None:
        turn = self._current
        if turn is not None and turn.committed.is_set() and turn.task is not None:
            turn.task.cancel()  # nothing more is written or synthesized
            played = self.output.played_total
            end = next((e for _t, s, e in turn.spans if s <= played < e), played)
            self.output.keep(end - played)
            self.output.resume()
        else:
            self._abandon()
        await self.output.wait_idle()
        if last_words:
            self._current = None
            self.machine.fire(Speak(last_words, now=True))
            turn = self._current
            if turn is not None and turn.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(turn.task)
            await self.output.wait_idle()

    # -- the handlers of TRANSITIONS ---------------------------------------------------------------

    def _partial(self, event: SpeechProgress) -> None:
        self.partials.progress(event.audio, self._carry)

    def _prepare(self, event: SpeechPaused | SpeechEnded) -> None:
        self._begin(event, ended=isinstance(event, SpeechEnded))

    def _already_unanswered(self, event: SpeechEnded) -> bool:
        return event.end_sample == self._unanswered_end

    def _hold(self, _event: SpeechStarted) -> None:
        # The user goes on after a phrase whose turn had closed (an unfinished one, held): it is kept
        # back until this new speech shows whether it is a continuation or only a noise.
        assert self._current is not None
        self._current.free.clear()

    def _abandon(self, _event: object = None) -> None:
        turn, self._current = self._current, None
        if turn is not None and turn.task is not None:
            turn.task.cancel()

    def _pending_ends(self, event: SpeechEnded) -> None:
        turn = self._current
        if turn is not None and turn.end_sample == event.end_sample:
            turn.ended.set()
        else:
            self._begin(event, ended=True)

    def _release(self, _event: SpeechDiscarded) -> None:
        assert self._current is not None
        self._current.free.set()  # only a noise after the held phrase: it may still be the whole turn

    def _hold_voice(self, _event: SpeechSuspected) -> None:
        """The front-end marked another voice over the bot's, not yet a turn: the bot holds its voice
        for ``suspect_hold_ms`` and goes on unless a turn opens (an overlap then takes it from here)."""
        self.output.pause()
        hold = self._voice_hold = HoldOver()
        self._tasks.spawn(self._end_hold(hold), "voice-hold")

    async def _end_hold(self, hold: HoldOver) -> None:
        await asyncio.sleep(self.policy.suspect_hold_ms / 1000)
        self.machine.fire(hold)

    def _is_held(self, event: HoldOver) -> bool:
        return event is self._voice_hold

    def _hold_over(self, _event: HoldOver) -> None:
        log.info("speech suspected over the reply opened no turn: the bot goes on")
        self._voice_hold = None
        self.output.resume()

    def _overlap_starts(self, event: SpeechStarted | SpeechResumed) -> None:
        self._voice_hold = None  # the overlap resumes the voice, or cuts it off
        self.output.pause()  # at once: whatever the speech turns out to be, the bot stops talking over it
        if isinstance(event, SpeechStarted):
            self._barge.starts(event.arrival, event.echo, event.sample, event.marked)
        else:
            self._barge.starts(event.arrival, event.echo)

    def _bot_said(self) -> str:
        """The reply's words handed to the client, and ``ECHO_AHEAD_S`` more: ``heard`` places words
        within a piece pro rata, and what the client had buffered when the bot paused still plays
        and echoes."""
        turn = self._current
        ahead = round(ECHO_AHEAD_S * self.output.sample_rate)
        return turn.heard(self.output.played_total + ahead) if turn is not None else ""

    def _overlap_follows(self, event: SpeechStarted) -> None:
        self._barge.follows(event.arrival, event.echo, event.sample, event.marked)

    def _overlap_pauses(self, _event: SpeechPaused) -> None:
        self._barge.pauses()

    def _overlap_resumes(self, event: SpeechResumed) -> None:
        self._barge.resumes(event.arrival)

    def _overlap_ends(self, event: SpeechEnded) -> None:
        self._barge.ends(event)

    def _overlap_discarded(self, event: SpeechDiscarded) -> None:
        self._barge.discarded(event.arrival)

    def _decide(self, verdict: Verdict, reason: str, text: str, utterance: Utterance | None) -> None:
        if verdict is Verdict.GO_ON:
            self.machine.fire(GoOn(reason, text))
        elif utterance is None:
            self.machine.fire(CutIn(reason))
        else:
            self.machine.fire(TakeOver(utterance, text, reason))

    def _go_on(self, event: GoOn) -> None:
        log.info("speech over the reply ignored (%s): %r", event.reason, event.text)
        self._barge.clear()
        self.output.resume()
        self.ignored += 1
        self.channel.send(events.ignored(self.turn, event.reason, event.text))

    def _cut_in(self, event: CutIn) -> None:
        log.info("speech over the reply lasted: it cuts in")
        before = self._barge.before()
        self._cut_off(event.reason)
        if before is not None:  # the pieces of it that ended first: the turn's first words
            self._carry, self._carry_from = before.audio, before.start_sample

    def _take_over(self, event: TakeOver) -> None:
        log.info("speech over the reply is a bid for the turn: %r", event.text)
        self._cut_off(event.reason)
        self._begin(event.utterance, ended=True, text=event.text)

    def _client_interrupt(self, _event: Interrupt) -> None:
        self._cut_off("client")

    def _say(self, event: Say) -> None:
        self._cut_off("client")
        self._carry = None
        self._abandon()
        now = asyncio.get_running_loop().time()
        typed = Utterance(np.zeros(0, dtype=np.int16), -1, -1, now, 0)
        self._begin(typed, ended=True, text=event.text)

    def _may_speak(self, event: Speak) -> bool:
        return event.now or self.floor is Floor.OPEN

    def _speak(self, event: Speak) -> None:
        self._cut_off("client")
        self._carry = None
        self._abandon()
        now = asyncio.get_running_loop().time()
        turn = UserTurn(Utterance(np.zeros(0, dtype=np.int16), -1, -1, now, 0), np.zeros(0, np.int16), True)
        turn.spoken = event.text
        self._current = turn
        turn.task = self._tasks.spawn(self.answerer.run(turn, None, self.turn + 1), "speak")

    def _queue_speech(self, event: Speak) -> None:
        self._speeches.append(event.text)

    def _reset(self, _event: Reset) -> None:
        self._cut_off("client")
        self._abandon()
        self._carry = None
        self.history.turns.clear()

    def _is_current(self, event: Committed | Unanswered | ReplyOver) -> bool:
        return event.turn is self._current

    def _commit(self, event: Committed) -> None:
        """The silence lasted: this is the user's turn. The caller then releases what it held back."""
        turn = event.turn
        self.turn += 1
        turn.number = self.turn
        turn.metrics.mark("endpoint_ms")
        self._carry = None
        self.partials.turn_committed()
        if turn.spoken is None:
            self.channel.send(events.transcript(turn.number, turn.text, final=True))

    def _forget(self, event: Unanswered) -> None:
        self._current = None
        self._unanswered_end = event.turn.end_sample

    def _reply_over(self, _event: ReplyOver) -> None:
        # Speech that began over the reply is now simply the user's (the table's OVERLAP row).
        self._current = None
        self._barge.clear()
        self.output.resume()

    def _judged_over_reply(self, event: ReplyOver) -> bool:
        overlap = self._barge.overlap
        return self._is_current(event) and overlap is not None and not overlap.ongoing

    def _reply_gone(self, _event: ReplyOver) -> None:
        # The speech over it has ended and its words are being judged: they still decide, a bid as
        # the next turn, anything else as an open floor (the detector will not report its end again).
        self._current = None
        self.output.resume()

    def _no_reply(self, _event: GoOn) -> bool:
        return self._current is None

    # -- the work ----------------------------------------------------------------------------------

    def _with_carry(self, utterance: Utterance) -> np.ndarray:
        carry = self._carry
        if carry is None:
            return utterance.audio
        if self._carry_from is not None and utterance.start_sample >= 0:  # its pre-roll may reach back
            carry = carry[: max(0, utterance.start_sample - self._carry_from)]
        return np.concatenate([carry, utterance.audio])

    def _begin(self, utterance: Utterance, ended: bool, text: str | None = None) -> None:
        """A new pending turn from this utterance (or typed ``text``), replacing any pending one."""
        if self._closed:
            return
        held = self._current
        if held is not None and not held.committed.is_set():
            if held.ended.is_set():
                self._carry, self._carry_from = held.audio, None  # the user went on from a held phrase
            self._abandon()
        turn = UserTurn(utterance, self._with_carry(utterance), ended)
        turn.live = self.partials.stream_for(carried=self._carry is not None)
        self._current = turn
        turn.task = self._tasks.spawn(self.answerer.run(turn, text, self.turn + 1), "turn")

    def _cut_off(self, reason: str) -> None:
        """Cuts the committed reply off, if there is one, and forgets any speech over it; the row that
        called this moves the floor."""
        self._barge.clear()
        turn = self._current
        if turn is None or not turn.committed.is_set():
            return
        self.output.resume()
        heard = turn.heard(self.output.played_total)
        self.output.clear()
        assert turn.task is not None
        turn.task.cancel()
        self._current = None
        self.interruptions += 1
        if heard:
            self.history.add(None if turn.spoken is not None else turn.text, heard, turn.steps)
        turn.metrics.mark("interrupted_ms")
        self.channel.send(events.interrupted(turn.number, heard, reason))
        self.channel.send(events.metrics(turn.number, turn.metrics.as_dict()))
        log.info("turn %d interrupted (%s) after %r", turn.number, reason, heard)

    async def close(self) -> None:
        self._closed = True
        self._barge.clear()
        await self._tasks.cancel_all()
        await self.partials.close()
        self._current = None


# The rows below, with short names: C for Conversation, and the floors and the detector's events.
C = Conversation
OPEN, USER, PENDING, BOT, OVERLAP = Floor.OPEN, Floor.USER, Floor.PENDING, Floor.BOT, Floor.OVERLAP
Started, Suspected, Progress, Paused, Resumed, Ended, Discarded = (
    SpeechStarted,
    SpeechSuspected,
    SpeechProgress,
    SpeechPaused,
    SpeechResumed,
    SpeechEnded,
    SpeechDiscarded,
)

TRANSITIONS: tuple[Transition, ...] = (
    # floor,    event,   goes to (None: stays), the conversation's handler
    Transition(OPEN, Started, USER),
    Transition(OPEN, Progress, None, C._partial),  # a partial transcript
    Transition(OPEN, Paused, PENDING, C._prepare),  # speech left over from a reply, or an unanswered pause
    Transition(OPEN, Ended, None, when=C._already_unanswered),  # the pause found no words in this audio
    Transition(OPEN, Ended, PENDING, C._prepare),
    Transition(USER, Progress, None, C._partial),
    Transition(USER, Paused, PENDING, C._prepare),  # transcribe and answer it, held back
    Transition(USER, Ended, PENDING, C._prepare),  # a turn cut at max_turn_s, or by mute
    Transition(USER, Discarded, OPEN),  # a cough
    Transition(PENDING, Started, None, C._hold),  # the user goes on after a closed phrase: wait and see
    Transition(PENDING, Progress, None, C._partial),
    Transition(PENDING, Paused, None, C._prepare),  # the held phrase and its continuation
    Transition(PENDING, Resumed, USER, C._abandon),  # it was a breath, not the end
    Transition(PENDING, Ended, None, C._pending_ends),  # the silence lasted: the turn may be committed
    Transition(PENDING, Discarded, None, C._release),  # only a noise after the held phrase
    Transition(PENDING, Committed, BOT, C._commit, when=C._is_current),  # the reply goes out
    Transition(PENDING, Unanswered, OPEN, C._forget, when=C._is_current),  # no words, or the ASR failed
    Transition(BOT, Suspected, None, C._hold_voice),  # the bot's voice holds for a while
    Transition(BOT, HoldOver, None, C._hold_over, when=C._is_held),  # no turn came: it goes on
    Transition(BOT, Started, OVERLAP, C._overlap_starts),  # the bot's voice pauses
    Transition(BOT, Resumed, OVERLAP, C._overlap_starts),  # the user went on after an early commit
    Transition(BOT, ReplyOver, OPEN, C._reply_over, when=C._is_current),
    Transition(BOT, Interrupt, OPEN, C._client_interrupt),
    Transition(OVERLAP, Started, None, C._overlap_follows),  # begun again while its words are judged
    Transition(OVERLAP, Paused, None, C._overlap_pauses),  # judged only when it ends
    Transition(OVERLAP, Resumed, None, C._overlap_resumes),  # cut in if it has lasted interrupt_after_ms
    Transition(OVERLAP, Ended, None, C._overlap_ends),  # judged by its words
    Transition(OVERLAP, Discarded, None, C._overlap_discarded),  # too short for a word: the bot goes on
    Transition(OVERLAP, GoOn, OPEN, C._go_on, when=C._no_reply),  # and the reply ended meanwhile
    Transition(OVERLAP, GoOn, BOT, C._go_on),  # not a bid for the turn: an ``ignored`` event says why
    Transition(OVERLAP, CutIn, USER, C._cut_in),  # it lasted: the reply is cut off
    Transition(OVERLAP, TakeOver, PENDING, C._take_over),  # its words are the next turn
    Transition(OVERLAP, ReplyOver, None, C._reply_gone, when=C._judged_over_reply),  # its words decide
    Transition(OVERLAP, ReplyOver, USER, C._reply_over, when=C._is_current),  # the speech is the user's
    Transition(OVERLAP, Interrupt, OPEN, C._client_interrupt),
    Transition(None, Say, PENDING, C._say),  # from any floor: a typed turn cuts off whatever was going on
    Transition(None, Reset, OPEN, C._reset),
    Transition(None, Speak, PENDING, C._speak, when=C._may_speak),  # said at once, committed at once
    Transition(None, Speak, None, C._queue_speech),  # said once the floor is open
)
"""Every (floor, event) pair that does something; any other pair leaves everything as it is (a pause
or end of the detector's turn after the conversation already committed it, a noise while the floor is
open, a client's interrupt with nothing to cut off)."""

del C, OPEN, USER, PENDING, BOT, OVERLAP, Started, Suspected, Progress, Paused, Resumed, Ended, Discarded
