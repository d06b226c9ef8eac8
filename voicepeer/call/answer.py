"""Answering a user turn, from the pause that may end it to the end of its reply.

The turn starts speculatively: the transcript, the end-of-turn model's verdict and the reply all run
while the detector waits to see whether the silence lasts, and the reply is released only once it has
(``silence_lasted``). The floor moves by what this fires (``Committed``, ``ReplyOver``, ``Unanswered``),
each of which the conversation's table takes only from the turn it holds: a turn it has let go of
fires into nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from ..audio.recorder import TurnRecorder
from ..backends.asr import ASR
from ..backends.base import BackendError
from ..backends.llm import DEFAULT_SYSTEM_PROMPT, History, LLMOptions, Message
from . import events
from .events import EventHub
from .floor import Committed, ReplyOver, Unanswered
from .hook import HookAnswer, HookError, HookRequest, parse_answer
from .language import CallLanguage
from .logic import Logic
from .playout import Playout
from .reply import Reply
from .services import Services
from .speaker import Speaker
from .toolloop import Aside, Spawn, ToolLoop
from .tools import Tool, Toolbox
from .turn import UserTurn, hold_if_unfinished, judge_end, silence_lasted
from .turntaking import TurnPolicy
from .webhook import WebhookError

log = logging.getLogger(__name__)

ASR_APOLOGY = "Sorry, I can't make out what you say right now."
"""Said when the ASR failed on a turn (every backend of it down): the user learns it was heard."""


async def _said(text: str) -> AsyncIterator[str]:
    yield text


@dataclass(frozen=True)
class ConversationSettings:
    """What a conversation starts with; ``Conversation.update`` changes some of it while it runs."""

    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    llm: LLMOptions | None = None
    """How replies are generated; None: the LLM backend's own options."""
    language: str = "en"
    """The call's language at its start: an ISO 639-1 code or ``auto`` (``voicepeer.call.language``)."""
    partials: str = "auto"
    """Partial transcripts while the user speaks: ``auto`` asks only an ASR that is cheap or
    streams (a remote one is not asked every 640 ms), ``on`` any, ``off`` none."""
    policy: TurnPolicy = field(default_factory=TurnPolicy)
    record_dir: str | None = None
    """Debugging: each committed turn's audio is written there (``TurnRecorder``)."""
    logic: Logic | None = None
    """The application's tools, hook and greeting; None: none."""
    call_id: str = ""
    """What tools and the hook are told the call is."""


class Answerer:
    """Answers turns with ``services``: transcribes, waits for the floor, replies (spoken on ``output``
    if the call has a ``voice``, written otherwise) and remembers the exchange in ``history``."""

    def __init__(
        self,
        services: Services,
        output: Playout,
        channel: EventHub,
        settings: ConversationSettings,
        *,
        voice: bool,
        fire: Callable[[object], object],
        audible: Callable[[UserTurn], None],
        spawn: Spawn,
        language: CallLanguage,
        asr: ASR,
    ) -> None:
        """``fire``: moves the floor (``FloorMachine.fire``). ``audible``: a reply's voice started.
        ``spawn``: starts a task the conversation owns (a tool left to finish after a cut-off).
        ``language``: the call's; ``asr``: the stage's, in that language (``CallASR``)."""
        self.asr = asr
        self.language = language
        self.llm = services.llm
        self.end_of_turn = services.end_of_turn
        self.output = output
        self.channel = channel
        self.policy = settings.policy
        self.history = History(system_prompt=settings.system_prompt, drop_repeats=True)
        """Its ``context`` holds the call's variables, which the tools and the hook are also given."""
        self.llm_options = settings.llm or self.llm.options
        self.speaker = Speaker(services.tts_for, language, output, audible) if voice else None
        self.recorder = TurnRecorder(settings.record_dir, f"{id(self):x}") if settings.record_dir else None
        self.logic = settings.logic or Logic()
        self.call_id = settings.call_id
        self.tools: tuple[Tool, ...] = self.logic.tools
        """The server's tools, and the ones this call added (``config``'s ``tools``)."""
        self._fire = fire
        self._spawn = spawn

    def update(self, *, system_prompt: str | None = None, max_tokens: int | None = None) -> None:
        """Changes how the next replies are written; a reply under way keeps what it started with."""
        if system_prompt is not None:
            self.history.system_prompt = system_prompt
        if max_tokens is not None:
            self.llm_options = dataclasses.replace(self.llm_options, max_tokens=max_tokens)

    async def run(self, turn: UserTurn, text: str | None, number: int) -> None:
        """Answers ``turn`` (typed ``text``: its words, without the ASR); ``number``: the number it will
        have once committed, for its partial transcript. A turn the application speaks (``spoken``) is
        said at once."""
        replied = False
        try:
            if turn.spoken is not None:
                await self._reply(turn, True)
                replied = True
                return
            complete = asyncio.ensure_future(judge_end(turn, self.end_of_turn, self.policy))
            try:
                heard = await self._transcribe(turn, text, number)
                if heard is None:
                    return
                verdict = await complete
            finally:
                complete.cancel()
            await hold_if_unfinished(turn, self.policy, verdict, self.language.current)
            await self._reply(turn, verdict, apology=None if heard else ASR_APOLOGY)
            replied = True  # _reply fired ReplyOver itself, before the turn's metrics
        finally:
            if not replied:
                self._fire(ReplyOver(turn) if turn.committed.is_set() else Unanswered(turn))

    async def _answer(self, turn: UserTurn) -> AsyncIterator[str | Aside]:
        """The reply's words: the hook's, or the model's (with the call's tools, if it has some and the
        model takes them)."""
        extra: tuple[Message, ...] = ()
        if self.logic.hook is not None:
            await turn.committed.wait()  # the application sees final turns only
            answer = await self._ask_hook(turn)
            if answer.say is not None:
                return _said(answer.say)
            extra = answer.messages
        self.history.instruction = self.language.instruction
        messages = self.history.messages(turn.text, extra)
        if self.tools and self.llm.capabilities.tools:
            toolbox = Toolbox(
                self.tools, self.logic.webhooks, self.call_id, self.history.context, self.logic.tool_timeout_s
            )
            loop = ToolLoop(
                self.llm,
                messages,
                self.llm_options,
                toolbox,
                turn,
                self.channel,
                self._spawn,
                rounds=self.logic.tool_rounds,
                filler=self.logic.tool_filler,
                filler_after_s=self.logic.tool_filler_after_s,
                first_choice=self.logic.tool_choice,
            )
            turn.steps = loop.steps
            return loop.run()
        return self.llm.stream(messages, self.llm_options)  # type: ignore[return-value]

    async def _ask_hook(self, turn: UserTurn) -> HookAnswer:
        """The hook's answer, or an empty one (the model answers) if it fails or runs out of time."""
        assert self.logic.hook is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        request = HookRequest(self.call_id, turn.number, turn.text, dict(self.history.context))
        failure = None
        try:
            async with asyncio.timeout(self.logic.hook_timeout_s):
                answer = parse_answer(await self.logic.hook(request))
        except TimeoutError:
            failure = f"the hook did not answer within {self.logic.hook_timeout_s:g} s"
        except (WebhookError, HookError) as exc:
            failure = str(exc)
        except Exception as exc:
            log.exception("the hook failed")
            failure = f"the hook failed: {type(exc).__name__}"
        ms = round((loop.time() - started) * 1000, 1)
        if failure is not None:
            self.channel.send(events.hook(turn.number, "failed", ms, failure))
            self.channel.send(events.error("hook_failed", failure))
            return HookAnswer()
        turn.metrics.mark("hook_ms")
        self.channel.send(events.hook(turn.number, answer.action, ms))
        return answer

    async def _transcribe(self, turn: UserTurn, text: str | None, number: int) -> bool | None:
        """The turn's words (typed ``text`` as it is) into ``turn.text``: True if there are some, None
        if there is nothing to answer, False if the ASR failed (the turn is answered with an apology:
        a user who spoke must not be met with silence)."""
        if text is None:
            try:
                heard = await turn.live.finish(turn.audio) if turn.live is not None else None
                heard = heard or await self.asr.transcribe(turn.audio)
                text = heard.text
                self.language.heard(heard.language, text)
            except Exception as exc:
                if not isinstance(exc, BackendError):
                    log.exception("ASR failed")
                await turn.ended.wait()
                self.channel.send(events.error("asr_failed", f"speech recognition failed: {exc}"))
                turn.text = ""
                return False
        turn.metrics.mark("transcript_ms")
        turn.text = text
        if not text:
            log.info("nothing recognised in %.1f s of audio", turn.metrics.audio_s)
            return None
        if not turn.ended.is_set():
            self.channel.send(events.transcript(number, text, final=False))
        return True

    async def _reply(self, turn: UserTurn, complete: bool | None, apology: str | None = None) -> None:
        """Replies to the turn (with ``apology`` instead of the LLM's words, when the turn could not
        be heard), releasing the reply once the silence after it has lasted."""

        async def commit_when_over() -> None:
            if turn.spoken is None:
                await silence_lasted(turn, self.policy, complete)
            if self._fire(Committed(turn)) is not None:
                turn.commit(self.channel)
                if self.recorder is not None:
                    self.recorder.write(turn.number, turn.audio)

        committer = asyncio.get_running_loop().create_task(commit_when_over())
        try:
            reply = Reply(turn, self.channel)
            if turn.spoken is not None:
                stream: AsyncIterator[str | Aside] = _said(turn.spoken)
            elif apology is not None:
                stream = _said(apology)
            else:
                stream = await self._answer(turn)
            speak = self.speaker.speak if self.speaker is not None else None
            text = await reply.run(stream, self.llm_options.max_sentences, speak)
            await committer
        finally:
            committer.cancel()
        if text and apology is None:
            self.history.add(None if turn.spoken is not None else turn.text, text, turn.steps)
        await self.output.wait_idle()
        turn.metrics.mark("playout_done_ms")
        self._fire(ReplyOver(turn))
        self.channel.send(events.metrics(turn.number, turn.metrics.as_dict()))
        log.info("turn %d metrics %s", turn.number, turn.metrics.as_dict())
