"""A call: microphone PCM in, the bot's voice and protocol events out, whatever carries them.

Everything that makes a conversation lives here: the audio front-end (echo cancellation against the
exact audio the bot sent, noise suppression), turn detection, the conversation with its barge-in, the
control commands and the per-call settings. Nothing here knows about aiortc, HTTP or data channels. A
transport is a thin adapter that

- feeds ``hear()`` with the microphone's PCM as it arrives, at whatever rate it has;
- pulls the bot's voice from ``playout.next_frame()``, one 20 ms frame of 48 kHz mono every 20 ms (the
  puller is the clock), unless the call was made without ``voice``;
- subscribes sinks to ``events`` (after sending them ``snapshot()``) and hands client messages to
  ``control()``;
- calls ``close()`` when the call ends, however it ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections.abc import Awaitable, Callable

import numpy as np

from ..audio.capture import UnprocessedCapture
from ..audio.formats import SPEECH_RATE, WEBRTC_RATE, InboundConverter
from ..audio.frontend import FarEndReference, FrontEnd
from ..audio.receiver import PlayoutEdit, PlayoutMoves, ReceiverStats
from ..audio.recorder import CallRecorder
from ..audio.vad import TurnDetector, TurnEvent
from ..config import Config
from ..runtime.limits import TokenBucket
from ..runtime.tasks import Tasks
from ..runtime.workers import run_frontend
from . import events
from .control import (
    CallSettings,
    ControlError,
    apply_config,
    check_fields,
    parse_context,
    say_text,
    speak_interrupts,
)
from .conversation import Conversation, ConversationSettings
from .events import Event, EventHub, EventQueue
from .logic import Logic
from .playout import Playout
from .services import Services
from .tools import MAX_TOOLS, Tool, merge, parse_tools

log = logging.getLogger(__name__)

FLOOD_GAP_S = 1.0
"""Dropped messages closer together than this are one flood, answered with one ``rate_limited``."""


def listen(
    frontend: FrontEnd, detector: TurnDetector, pcm: np.ndarray, reference: np.ndarray, arrival: float
) -> list[TurnEvent]:
    """One chunk of the microphone (16 kHz) and the reference paired with it, through the front-end and
    the turn detector, with everything the front-end knows about the bot's echo passed on. Blocking.
    The one place the two are joined, so a benchmark replays a room exactly as a call hears it."""
    cleaned = frontend.process_pair(pcm, reference)
    return detector.process(
        cleaned.clean,
        arrival,
        frontend.echo_possible,
        keep=cleaned.words,
        bot_speaking=frontend.bot_speaking,
        over_echo=cleaned.over_echo,
        near_voice=cleaned.near_voice,
        beyond_echo=cleaned.beyond_echo,
    )


class Call:
    def __init__(
        self,
        services: Services,
        config: Config,
        *,
        voice: bool = True,
        client_aec: bool = False,
        unprocessed: bool = False,
        call_id: str | None = None,
        logic: Logic | None = None,
        context: dict[str, str] | None = None,
        greeting: str | None = None,
    ) -> None:
        """``voice``: the transport plays the bot's voice back (a WHIP ingest client does not, and is
        answered in text only). ``client_aec``: the client says its microphone has echo cancellation on,
        so the front-end starts out expecting no echo of the bot (and keeps measuring). ``unprocessed``:
        the client also sends the same microphone without its canceller (``hear(..., unprocessed=True)``),
        which the call takes instead if the bot's echo is not in it (``voicepeer.audio.capture``).
        ``logic``: the application's tools, hook and greeting; ``context``: this call's variables (the
        system prompt's ``{name}``s, given to the tools and the hook); ``greeting``: said when the call
        starts, instead of the server's (``""``: none)."""
        self.id = call_id or secrets.token_urlsafe(16)
        self.logic = logic or Logic()
        self.greeting = self.logic.greeting if greeting is None else greeting.strip()
        self.config = config
        self.voice = voice
        self.settings = CallSettings.of(config)
        self.events = EventHub()
        self.playout = Playout(sample_rate=WEBRTC_RATE)
        self.detector = TurnDetector(config.turns.detector)
        self.conversation = Conversation(
            services,
            self.playout,
            self.events,
            ConversationSettings(
                system_prompt=config.llm.system_prompt,
                # The backend's own options (an application's LLM may set its temperature), with the
                # reply limits this server is configured with.
                llm=dataclasses.replace(
                    services.llm.options,
                    max_tokens=config.llm.max_tokens,
                    max_sentences=config.llm.max_sentences,
                ),
                partials=config.asr.partials,
                language=config.asr.language,
                policy=config.turns.policy,
                record_dir=config.server.record_turns_dir,
                logic=self.logic,
                call_id=self.id,
            ),
            voice=voice,
        )
        self.conversation.history.context.update(context or {})
        self.ended = asyncio.Event()
        """Set once the call has hung up (``hangup``): the transport closes it."""
        self.frontend = FrontEnd(
            config.audio.aec,
            config.audio.noise_suppression,
            config.audio.auto_gain_dbfs,
            echo_expected=voice and not client_aec,
            words_aec=None if config.audio.asr_aec == "same" else config.audio.asr_aec,
        )
        self.reference = FarEndReference()
        self.playout_moves = PlayoutMoves()
        """The client's receiver reports (``playout``), as edits of the reference."""
        self._stalled_reported = 0  # ``reference.stalled`` at the last report
        self.playout.add_listener(self.reference.on_frame)
        self.unprocessed = UnprocessedCapture() if unprocessed and voice else None
        if self.unprocessed is not None:
            self.playout.add_listener(self.unprocessed.reference.on_frame)
        self._converter = InboundConverter()
        record_dir = config.server.record_audio_dir
        self.recorder = CallRecorder(record_dir, self.id) if record_dir else None
        # The detector's state is one stream's: a frame and a mute's flush must never run at once.
        self._hearing = asyncio.Lock()
        self._queues: set[EventQueue] = set()
        self._tasks = Tasks(f"call {self.id}")
        rate = config.security.messages_per_second
        self._messages = TokenBucket(rate, 2 * rate) if rate > 0 else None
        self._last_drop = float("-inf")
        self.rate_limited = 0
        """Control messages dropped for coming too fast."""
        self.muted = False
        self.closed = False

    def start(self) -> None:
        self.events.send(events.session(self.id))
        self.conversation.start()
        if self.greeting:
            self.conversation.speak(self.greeting, now=True)

    def snapshot(self) -> list[Event]:
        """What a follower that subscribes now needs to know first: which call, and its state."""
        return [events.session(self.id), events.state(self.conversation.state), events.muted(self.muted)]

    def follow(self, maxsize: int = events.MAX_QUEUED) -> tuple[EventQueue, Callable[[], None]]:
        """A bounded queue of this call's events for a reader at its own pace, starting with the
        snapshot; closed when the call ends. Returns it and the function that stops following."""
        queue = EventQueue(maxsize)
        for event in self.snapshot():
            queue(event)
        if self.closed:
            queue.close()
            return queue, lambda: None
        unsubscribe = self.events.subscribe(queue)
        self._queues.add(queue)

        def stop() -> None:
            unsubscribe()
            self._queues.discard(queue)

        return queue, stop

    @property
    def followers(self) -> frozenset[EventQueue]:
        """The events streams following this call now."""
        return frozenset(self._queues)

    @property
    def turns(self) -> int:
        """User turns answered (or being answered) so far."""
        return self.conversation.turn

    @property
    def interruptions(self) -> int:
        """Replies cut off, by speech over them or by the client."""
        return self.conversation.interruptions

    # -- the microphone ----------------------------------------------------------------------------

    async def hear(
        self,
        pcm: np.ndarray,
        sample_rate: int,
        channels: int = 1,
        arrival: float | None = None,
        *,
        unprocessed: bool = False,
        missing_s: float = 0.0,
    ) -> None:
        """Feeds microphone audio: interleaved int16 samples at ``sample_rate`` Hz, arrived at loop time
        ``arrival`` (now, if not given). Awaits the front-end and turn detection of this chunk, so a
        transport that awaits it also never feeds two chunks at once. ``unprocessed``: a chunk of the
        client's second capture, without its canceller (ignored unless the call was told of one);
        only one of the two captures goes on to the front-end, the other is measured or dropped.
        ``missing_s``: audio of this capture's own timeline that never came before this chunk (lost
        packets, DTX: its RTP timestamps jumped), so the bot's reference stays paired with the right
        moment of the microphone."""
        if self.closed:
            return
        if arrival is None:
            arrival = asyncio.get_running_loop().time()
        capture = self.unprocessed
        if unprocessed:
            if capture is None:
                return
            speech = capture.converter.convert(pcm, sample_rate, channels)
            if missing_s > 0:
                capture.reference.skip(round(missing_s * SPEECH_RATE))
            reference = capture.reference.take(speech.size)
            if capture.choice == "measuring":
                choice = await run_frontend(capture.measure, speech, reference)
                if choice != "measuring" and not self.closed:
                    self.events.send(events.capture(unprocessed=choice == "taken"))
                return
            if capture.choice != "taken":
                return
        else:
            speech = self._converter.convert(pcm, sample_rate, channels)
            if missing_s > 0:
                self.reference.skip(round(missing_s * SPEECH_RATE))
            reference = self.reference.take(speech.size)  # even while muted: the pairing stays on time
            if capture is not None and capture.choice == "taken":
                return
        if self.muted or speech.size == 0:
            return
        async with self._hearing:
            turn_events = await run_frontend(self._process, speech, reference, arrival)
        self._dispatch(turn_events)

    def _process(self, pcm: np.ndarray, reference: np.ndarray, arrival: float) -> list[TurnEvent]:
        """Front-end then turn detection, in one worker-thread hop per chunk."""
        if self.recorder is not None:
            self.recorder.write(pcm, reference)
        return listen(self.frontend, self.detector, pcm, reference, arrival)

    def _dispatch(self, turn_events: list[TurnEvent]) -> None:
        if self.closed:
            return
        for event in turn_events:
            self.conversation.on_turn_event(event)

    # -- control -----------------------------------------------------------------------------------

    def control(self, message: Event) -> Event | None:
        """Carries out a command (already parsed by ``events.parse_client_message``); returns the answer
        meant for the sender only, if any. Raises ``ControlError``, and then nothing has changed."""
        if self.closed:
            raise ControlError("closed", "the call has ended")
        self.admit()
        check_fields(message)
        kind = message["type"]
        if kind == "ping":
            return {"type": "pong"}
        if kind == "playout":
            self._playout_report(message)
            return None
        if self.conversation.ending and kind not in ("mute", "unmute"):
            raise ControlError("ending", "the call is hanging up")
        if kind == "interrupt":
            self.conversation.interrupt()  # an ``interrupted`` event follows if the bot was answering
        elif kind in ("mute", "unmute"):
            self._set_muted(kind == "mute")
        elif kind == "say":
            self.conversation.say(say_text(message))  # typing works while the microphone is muted
        elif kind == "speak":
            self.conversation.speak(say_text(message), now=speak_interrupts(message))
        elif kind == "hangup":
            # From this command on, nothing new is taken; the rest plays out in a task.
            self._tasks.spawn(
                self._hang_up(self.conversation.hang_up(say_text(message, optional=True))), "hangup"
            )
        elif kind == "reset":
            self.conversation.reset()
            self.events.send({"type": "reset"})
        elif kind == "config":
            context = parse_context(message["context"]) if "context" in message else None
            tools = self._call_tools(message["tools"]) if "tools" in message else None
            settings = apply_config(self.settings, message)
            if settings.language != self.settings.language:
                self.conversation.check_language(settings.language)
            self._configure(settings)
            if context is not None:
                variables = self.conversation.history.context
                for name, value in context.items():
                    if value is None:
                        variables.pop(name, None)
                    else:
                        variables[name] = value
            if tools is not None:
                self.conversation.answerer.tools = merge(self.logic.tools, tools)
            self.events.send(self._config_event())
        return None

    def _playout_report(self, message: Event) -> None:
        """The client's receiver statistics: its concealment and squeezing move the echo at once."""
        try:
            stats = ReceiverStats.parse(message)
        except ValueError as exc:
            raise ControlError("bad_value", f'"{exc}" must be a counter of the receiver', str(exc)) from None
        stalled = self.reference.stalled
        ours_ms = (stalled - self._stalled_reported) * 1000 / SPEECH_RATE
        self._stalled_reported = stalled
        edits = self.playout_moves.update(stats, ours_ms)
        if self.playout_moves.reports == 1:
            # An edit of nothing: the front-end (and a recording's replay) learns that this client
            # reports its playout, so the echo's delay is followed and need not be looked for as far.
            edits.insert(0, PlayoutEdit(0.0, 0.0))
        for edit in edits:
            self.frontend.playout_moved(edit)
            if self.recorder is not None:
                self.recorder.edit(edit)

    def _config_event(self) -> Event:
        return {
            "type": "config",
            **self.settings.public(),
            "context": dict(self.conversation.history.context),
            "tools": [t.name for t in self.conversation.answerer.tools],
        }

    def _call_tools(self, value: object) -> tuple[Tool, ...]:
        """A call's own tools, checked: valid declarations, whose webhooks the server allows."""
        if not isinstance(value, list):
            raise ControlError("bad_value", '"tools" must be a JSON list of declarations', "tools")
        try:
            tools = parse_tools(value)
        except ValueError as exc:
            raise ControlError("bad_value", str(exc), "tools") from None
        if len(merge(self.logic.tools, tools)) > MAX_TOOLS:
            raise ControlError("bad_value", f"a call has at most {MAX_TOOLS} tools", "tools")
        for tool in tools:
            if tool.webhook is None or not self.logic.allows(tool.webhook):
                raise ControlError(
                    "bad_value", f"tool {tool.name!r}: the server does not allow its webhook", "tools"
                )
            if self.logic.webhooks is None:
                raise ControlError("bad_value", "this server has no webhook secret", "tools")
        return tools

    async def _hang_up(self, played_out: Awaitable[None]) -> None:
        await played_out
        if not self.closed:
            self.events.send(events.bye("hangup"))
        self.ended.set()

    def admit(self) -> None:
        """Past ``messages_per_second`` (bursts of twice that) a message is dropped. The first drop of
        a flood is answered ``rate_limited``; the rest, until a second passes without a drop, in
        silence, so a flood cannot make the call flood back."""
        if self._messages is None:
            return
        now = asyncio.get_running_loop().time()
        if self._messages.take(now):
            return
        self.rate_limited += 1
        quiet = now - self._last_drop < FLOOD_GAP_S
        self._last_drop = now
        raise ControlError(
            "rate_limited",
            f"more than {self.config.security.messages_per_second} messages a second: dropped",
            quiet=quiet,
        )

    def _set_muted(self, value: bool) -> None:
        if value == self.muted:
            return
        self.muted = value
        self.events.send(events.muted(value))
        if value:
            # The turn in progress ends where the user muted, and is answered: push-to-talk released.
            self._tasks.spawn(self._finish_turn(), "mute")

    async def _finish_turn(self) -> None:
        loop = asyncio.get_running_loop()
        async with self._hearing:
            turn_events = await run_frontend(self.detector.finish, loop.time())
        self._dispatch(turn_events)

    def _configure(self, settings: CallSettings) -> None:
        self.settings = settings
        self.conversation.update(
            system_prompt=settings.system_prompt, max_tokens=settings.max_tokens, language=settings.language
        )
        self.detector.update(end_silence_ms=settings.end_silence_ms)

    # -- lifetime ----------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stops the conversation and ends every follower's stream. Idempotent."""
        if self.closed:
            return
        self.closed = True
        await self._tasks.cancel_all()
        await self.conversation.close()
        self.frontend.close()  # safe under a frame still in the front-end: it holds its own lock
        if self.recorder is not None:
            async with self._hearing:  # not under a chunk being written
                self.recorder.close()
        self.playout.clear()
        for queue in list(self._queues):
            queue.close()
        self._queues.clear()
