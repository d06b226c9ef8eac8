"""The events protocol on the ``events`` data channel: JSON text messages, one object each.

Server to client (every message has a ``type``):

- ``{"type": "session", "id": str}``: sent once when the channel opens.
- ``{"type": "state", "state": "listening" | "thinking" | "speaking"}``
- ``{"type": "transcript", "turn": int, "final": bool, "text": str}``: the user's words. Partials
  (``final: false``) come while the user speaks and may change; the final one comes when the turn ends.
- ``{"type": "reply", "turn": int, "final": bool, "text": str}``: the bot's words so far (cumulative);
  the final one carries the whole reply.
- ``{"type": "vad", "speech": true, "bot_state": ...}``: the VAD heard the user start speaking.
- ``{"type": "interrupted", "turn": int, "heard": str, "reason": "speech" | "client"}``: the reply to
  ``turn`` was cut off; ``heard`` is the part of it that was played (and is all the history keeps).
- ``{"type": "metrics", "turn": int, ...}``: milliseconds from the end of the user's speech to each stage.
- ``{"type": "error", "code": str, "message": str}``: the session goes on unless the code says otherwise.

Client to server: ``{"type": "ping"}`` (answered by ``{"type": "pong"}``) and ``{"type": "interrupt"}``
(stop the bot's reply now, as if the user had barged in); anything else gets an error event with code
``bad_message``.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

log = logging.getLogger(__name__)

State = Literal["listening", "thinking", "speaking"]
Event = dict[str, Any]

MAX_PENDING = 512
"""Events kept while the channel is not open yet; the oldest go first past this."""


def state(value: State) -> Event:
    return {"type": "state", "state": value}


def transcript(turn: int, text: str, final: bool) -> Event:
    return {"type": "transcript", "turn": turn, "final": final, "text": text}


def reply(turn: int, text: str, final: bool) -> Event:
    return {"type": "reply", "turn": turn, "final": final, "text": text}


def error(code: str, message: str) -> Event:
    return {"type": "error", "code": code, "message": message}


def vad_start(bot_state: State) -> Event:
    """The VAD opened a user turn, and what the bot was doing then (echo shows up as "speaking")."""
    return {"type": "vad", "speech": True, "bot_state": bot_state}


def interrupted(turn: int, heard: str, reason: str) -> Event:
    return {"type": "interrupted", "turn": turn, "heard": heard, "reason": reason}


def metrics(turn: int, values: dict[str, float | int | None]) -> Event:
    return {"type": "metrics", "turn": turn, **values}


CLIENT_MESSAGES = frozenset({"ping", "interrupt"})


class ProtocolError(ValueError):
    pass


def parse_client_message(raw: str | bytes) -> Event:
    """Validates a message from the client; raises ProtocolError with a message fit for the client."""
    if isinstance(raw, bytes):
        raise ProtocolError("binary messages are not part of the protocol; send JSON text")
    try:
        message = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc.msg}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError('a message must be a JSON object with a string "type"')
    if message["type"] not in CLIENT_MESSAGES:
        raise ProtocolError(f"unknown message type {message['type']!r}")
    return message


class EventChannel:
    """Sends events to one client, holding them until its data channel is open.

    The client opens the channel in the offer, but the server can have things to say (its state) before
    SCTP is up; those are queued, not lost. Listeners see every event as it is sent, for logs and tests.
    """

    def __init__(self) -> None:
        self._channel: Any = None
        self._pending: deque[str] = deque(maxlen=MAX_PENDING)
        self._listeners: list[Callable[[Event], None]] = []
        self.sent = 0

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        self._listeners.append(listener)

    def attach(self, channel: Any) -> None:
        """Binds an aiortc RTCDataChannel; flushes the queue once it is open."""
        self._channel = channel
        if channel.readyState == "open":
            self._flush()
        else:
            channel.on("open", self._flush)

    def _flush(self) -> None:
        while self._pending and self._is_open():
            self._channel.send(self._pending.popleft())

    def _is_open(self) -> bool:
        return self._channel is not None and self._channel.readyState == "open"

    def send(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed")
        text = json.dumps(event, separators=(",", ":"))
        if self._is_open():
            self._flush()
            self._channel.send(text)
            self.sent += 1
        else:
            self._pending.append(text)
