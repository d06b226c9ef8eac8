"""The events protocol: JSON objects, one per message, that a call sends to whoever follows it.

The same objects go out on the ``events`` data channel of a WebRTC call and on the call's Server-Sent
Events stream (``GET /sessions/{id}/events``); docs/protocol.md lists them all. A call sends each event
once, to its ``EventHub``; every transport that wants them subscribes a sink.

Server to client (every message has a ``type``):

- ``{"type": "session", "id": str}``: first, when a follower subscribes.
- ``{"type": "state", "state": "listening" | "thinking" | "speaking"}``
- ``{"type": "muted", "muted": bool}``: the call stopped (or resumed) listening.
- ``{"type": "capture", "unprocessed": bool}``: once, in a call whose client sent a second capture
  without its canceller: whether the call now hears that one (no echo in it) or keeps the processed one.
- ``{"type": "transcript", "turn": int, "final": bool, "text": str}``: the user's words. Partials
  (``final: false``) come while the user speaks and may change; the final one comes when the turn ends.
- ``{"type": "reply", "turn": int, "final": bool, "text": str}``: the bot's words so far (cumulative);
  the final one carries the whole reply.
- ``{"type": "vad", "speech": true, "bot_state": ...}``: the VAD heard the user start speaking.
- ``{"type": "interrupted", "turn": int, "heard": str, "reason": "speech" | "client"}``: the reply to
  ``turn`` was cut off; ``heard`` is the part of it that was played (and is all the history keeps).
- ``{"type": "ignored", "turn": int, "reason": "backchannel" | "no_words" | "too_short", "text": str}``:
  speech over the reply to ``turn`` that let the bot go on.
- ``{"type": "metrics", "turn": int, ...}``: milliseconds from the end of the user's speech to each stage.
- ``{"type": "config", ...}``: the call's settings, after a ``config`` command changed them.
- ``{"type": "reset"}``: the history was cleared.
- ``{"type": "tool_call", "turn": int, "id": str, "name": str, "arguments": ...}``: the model called a
  tool; ``{"type": "tool_result", ...}`` says how it went (``ok``, ``ms``, ``result`` or ``error``,
  ``dropped`` if it finished after the reply was cut off).
- ``{"type": "hook", "turn": int, "action": "say" | "context" | "none" | "failed", "ms": float}``: what
  the application's per-turn hook did.
- ``{"type": "bye", "reason": "hangup"}``: the application hung up; the call is being closed.
- ``{"type": "error", "code": str, "message": str[, "field": str]}``: the call goes on unless the code
  says otherwise.
- ``{"type": "draining", "limit_s": float}``: the server is shutting down; the call goes on until it
  ends or for at most ``limit_s`` seconds. A client may finish its turn, or reconnect now (another
  replica takes the new call).

Client to server: the control commands of ``voicepeer.call.control`` (``ping``, ``interrupt``, ``mute``,
``unmute``, ``say``, ``speak``, ``hangup``, ``reset``, ``config``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

log = logging.getLogger(__name__)

State = Literal["listening", "thinking", "speaking"]
Event = dict[str, Any]
Sink = Callable[[Event], None]

MAX_SHOWN_RESULT = 2000
"""A tool's result longer than this (as JSON text) is not repeated in its ``tool_result`` event."""

MAX_PENDING = 512
"""Events a data channel keeps while it is not open yet; the oldest go first past this."""

MAX_QUEUED = 256
"""Events an events-stream reader may fall behind by before the oldest are dropped."""

MAX_BUFFERED_BYTES = 256 << 10
"""Bytes a data channel may hold unsent (a client that does not read it) before new events are dropped:
without a bound, aiortc buffers everything, and a ping's answer waits behind all of it. A call's own
events are small (a transcript, a reply's words), so this holds minutes of them; aiortc's SCTP on a
loaded machine drains it in well under a second, where a megabyte took seconds."""


def session(session_id: str) -> Event:
    return {"type": "session", "id": session_id}


def state(value: State) -> Event:
    return {"type": "state", "state": value}


def muted(value: bool) -> Event:
    return {"type": "muted", "muted": value}


def capture(unprocessed: bool) -> Event:
    return {"type": "capture", "unprocessed": unprocessed}


def transcript(turn: int, text: str, final: bool) -> Event:
    return {"type": "transcript", "turn": turn, "final": final, "text": text}


def reply(turn: int, text: str, final: bool) -> Event:
    return {"type": "reply", "turn": turn, "final": final, "text": text}


def language(code: str, asked: str, detected: bool) -> Event:
    """The call's language changed: ``detected`` in the user's speech (``asked`` is ``auto``), or as
    the ``config`` command asked."""
    return {"type": "language", "language": code, "asked": asked, "detected": detected}


def error(code: str, message: str, field: str | None = None) -> Event:
    event: Event = {"type": "error", "code": code, "message": message}
    if field is not None:
        event["field"] = field
    return event


def vad_start(bot_state: State) -> Event:
    """The VAD opened a user turn, and what the bot was doing then (echo shows up as "speaking")."""
    return {"type": "vad", "speech": True, "bot_state": bot_state}


def interrupted(turn: int, heard: str, reason: str) -> Event:
    return {"type": "interrupted", "turn": turn, "heard": heard, "reason": reason}


def ignored(turn: int, reason: str, text: str) -> Event:
    """Speech over the reply to ``turn`` that did not cut the bot off, and why: ``backchannel`` (its
    words were a hum or an acknowledgement), ``no_words`` (the ASR found none) or ``too_short`` (shorter
    than a word). Nothing the user says is dropped without the client being told."""
    return {"type": "ignored", "turn": turn, "reason": reason, "text": text}


def metrics(turn: int, values: dict[str, float | int | None]) -> Event:
    return {"type": "metrics", "turn": turn, **values}


def tool_call(turn: int, call_id: str, name: str, arguments: str) -> Event:
    """The model called a tool; ``arguments`` parsed when they are JSON, as the model wrote them if not."""
    try:
        parsed: Any = json.loads(arguments)
    except (ValueError, RecursionError):
        parsed = arguments[:1000]
    return {"type": "tool_call", "turn": turn, "id": call_id, "name": name, "arguments": parsed}


def tool_result(turn: int, outcome: Any, dropped: bool = False) -> Event:
    """A tool finished (``outcome``: ``voicepeer.call.tools.ToolOutcome``). ``dropped``: it finished after
    the reply was cut off, and its result went nowhere."""
    event: Event = {
        "type": "tool_result",
        "turn": turn,
        "id": outcome.call.id,
        "name": outcome.call.name,
        "ok": outcome.ok,
        "ms": outcome.ms,
        "dropped": dropped,
    }
    if outcome.ok:
        event["result"] = outcome.value if len(outcome.result) <= MAX_SHOWN_RESULT else None
    else:
        event["error"] = outcome.error
    return event


def hook(turn: int, action: str, ms: float, error: str | None = None) -> Event:
    """What the application's per-turn hook did: ``say``, ``context``, ``none`` or ``failed``."""
    event: Event = {"type": "hook", "turn": turn, "action": action, "ms": ms}
    if error is not None:
        event["error"] = error
    return event


def bye(reason: str) -> Event:
    """The call is ending: ``hangup`` (the application asked) or ``closed``."""
    return {"type": "bye", "reason": reason}


def draining(limit_s: float) -> Event:
    return {"type": "draining", "limit_s": limit_s}


def encode(event: Event) -> str:
    return json.dumps(event, separators=(",", ":"))


class EventHub:
    """Where a call sends its events: each goes to every subscribed sink, in order.

    A sink must not block or raise (the data channel and the stream queue below are made so); one that
    raises anyway is logged and kept, so a broken follower never silences the others.
    """

    def __init__(self) -> None:
        self._sinks: list[Sink] = []

    def subscribe(self, sink: Sink) -> Callable[[], None]:
        """Adds ``sink``; returns the function that removes it."""
        self._sinks.append(sink)

        def unsubscribe() -> None:
            if sink in self._sinks:
                self._sinks.remove(sink)

        return unsubscribe

    def send(self, event: Event) -> None:
        for sink in list(self._sinks):
            try:
                sink(event)
            except Exception:
                log.exception("event sink failed")


class EventChannel:
    """An aiortc ``RTCDataChannel`` as a sink: events wait until the channel is open, then go in order.

    SCTP comes up after the offer/answer, and the call may have things to say before it does; those are
    queued (at most ``MAX_PENDING``), not lost. Once open, a channel the client does not read holds at
    most ``MAX_BUFFERED_BYTES``: later events are dropped, and the client is told how many (an
    ``events_dropped`` error) once it reads again. An answer to the client's own message (``answer``)
    is never dropped: the client's rate limit bounds those, and a client that pings a congested
    channel must get its pong once the backlog drains, not silence. Sending never raises: a channel
    that closes under us is the transport's business, not the call's.
    """

    def __init__(self, channel: Any) -> None:
        self._channel = channel
        self._pending: deque[str] = deque(maxlen=MAX_PENDING)
        self.sent = 0
        self.dropped = 0
        self._unreported = 0
        if channel.readyState == "open":
            self._flush()
        else:
            channel.on("open", self._flush)

    def _is_open(self) -> bool:
        return self._channel.readyState == "open"

    def _flush(self) -> None:
        while self._pending and self._is_open():
            self._send(self._pending.popleft())

    def _send(self, text: str) -> None:
        try:
            self._channel.send(text)
            self.sent += 1
        except Exception as exc:  # closed between the check and the send, or SCTP refused it
            log.info("event not sent on the data channel: %s", exc)

    def __call__(self, event: Event) -> None:
        text = encode(event)
        if not self._is_open():
            self._pending.append(text)
            return
        self._flush()
        if self._channel.bufferedAmount > MAX_BUFFERED_BYTES:
            self.dropped += 1
            self._unreported += 1
            return
        if self._unreported:
            n, self._unreported = self._unreported, 0
            self._send(
                encode(error("events_dropped", f"{n} events were dropped: the client did not read them"))
            )
        self._send(text)

    def answer(self, event: Event) -> None:
        """Sends an answer to the client's own message, past the backlog bound."""
        text = encode(event)
        if not self._is_open():
            self._pending.append(text)
            return
        self._flush()
        self._send(text)


class EventQueue:
    """A sink for a reader that pulls at its own pace (an events stream over HTTP).

    The call never waits for a reader: past ``maxsize`` queued events the oldest are dropped, and the
    reader is told how many with an ``error`` event (code ``events_dropped``) before the next one it
    gets. ``close()`` ends the stream once what is queued has been read.
    """

    def __init__(self, maxsize: int = MAX_QUEUED) -> None:
        self._events: deque[Event] = deque()
        self._maxsize = maxsize
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0
        self._unreported = 0

    def __len__(self) -> int:
        return len(self._events)

    def __call__(self, event: Event) -> None:
        if self._closed:
            return
        if len(self._events) >= self._maxsize:
            self._events.popleft()
            self.dropped += 1
            self._unreported += 1
        self._events.append(event)
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    @property
    def closed(self) -> bool:
        return self._closed

    async def get(self) -> Event | None:
        """The next event, or None once the queue is closed and drained."""
        while not self._events:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        if self._unreported:
            n, self._unreported = self._unreported, 0
            return error("events_dropped", f"{n} events were dropped: this reader fell behind")
        return self._events.popleft()


CLIENT_MESSAGES = frozenset(
    {"ping", "interrupt", "mute", "unmute", "say", "speak", "hangup", "reset", "config", "playout"}
)

MAX_MESSAGE_BYTES = 16 * 1024
"""A client message larger than this is refused before it is parsed."""


class ProtocolError(ValueError):
    """A client message that is not part of the protocol; the text is fit to send back."""


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_client_message(raw: str | bytes) -> Event:
    """Validates the envelope of a client message (a JSON object with a known string ``type``); what
    each command's fields mean is ``voicepeer.call.control``'s business. Raises ProtocolError, never anything
    else: a message must not be able to end a call."""
    if isinstance(raw, bytes):
        raise ProtocolError("binary (or non-UTF-8) messages are not part of the protocol; send JSON text")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"a message is at most {MAX_MESSAGE_BYTES} bytes")
    try:
        message = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc.msg}") from None
    except (RecursionError, ValueError) as exc:  # nesting too deep, an integer of thousands of digits
        raise ProtocolError(f"not acceptable JSON: {type(exc).__name__}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError('a message must be a JSON object with a string "type"')
    if message["type"] not in CLIENT_MESSAGES:
        raise ProtocolError(f"unknown message type {_short(message['type'])}")
    return message
