"""Control commands: what a client may ask of a call, and the per-call settings it may change.

The same commands arrive on the ``events`` data channel and as ``POST /sessions/{id}/control``; both
hand the parsed JSON object to ``Call.control``, which validates it here first. A bad value is refused
as a whole, with the field it concerns named, and nothing else changes.

| command | fields | effect |
| --- | --- | --- |
| ``ping`` | | answered with ``pong`` |
| ``interrupt`` | | the bot stops its reply now |
| ``mute`` / ``unmute`` | | the call stops / resumes listening; a turn in progress ends there |
| ``say`` | ``text`` | a typed user message, answered in voice like a spoken one |
| ``reset`` | | the reply in progress stops and the history is cleared |
| ``config`` | any of ``SETTINGS`` | changes this call's settings within their bounds |
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

MAX_SAY_CHARS = 2000
"""The longest typed message: about what a person says in two minutes."""


@dataclass(frozen=True)
class Bound:
    kind: type
    low: int
    high: int
    """For text, the length in characters; for numbers, the value."""
    unit: str = ""


SETTINGS: dict[str, Bound] = {
    "system_prompt": Bound(str, 1, 4000, "characters"),
    "max_tokens": Bound(int, 8, 512, "tokens"),
    "end_silence_ms": Bound(int, 150, 3000, "ms"),
}
"""What ``config`` may change, and the bounds that keep a client from making a call useless or
expensive: a 512-token reply is about a minute of speech, and 3 s of silence is as long as a turn
may reasonably wait."""


@dataclass(frozen=True)
class CallSettings:
    """The settings one call may change while it runs; the server's configuration gives their start."""

    system_prompt: str
    max_tokens: int
    end_silence_ms: int

    def public(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ControlError(ValueError):
    """A command the call refuses; ``field`` names the offending field, if one is to blame."""

    def __init__(self, code: str, message: str, field: str | None = None, quiet: bool = False) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field
        self.quiet = quiet
        """Refused without a word on the data channel (the client was told once already)."""


ALLOWED_FIELDS: dict[str, frozenset[str]] = {
    "ping": frozenset(),
    "interrupt": frozenset(),
    "mute": frozenset(),
    "unmute": frozenset(),
    "reset": frozenset(),
    "say": frozenset({"text"}),
    "config": frozenset(SETTINGS),
}


def check_fields(message: dict[str, Any]) -> None:
    """Unknown fields are refused rather than ignored: a typo must not look like success."""
    allowed = ALLOWED_FIELDS[message["type"]]
    for name in message:
        if name != "type" and name not in allowed:
            shown = name if len(name) <= 40 else name[:37] + "..."
            raise ControlError("bad_field", f"{message['type']} takes no field {shown!r}", shown)


def say_text(message: dict[str, Any]) -> str:
    text = message.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ControlError("bad_value", '"text" must be a non-empty string', "text")
    if len(text) > MAX_SAY_CHARS:
        raise ControlError("bad_value", f'"text" is at most {MAX_SAY_CHARS} characters', "text")
    return " ".join(text.split())


def _check(name: str, value: Any) -> None:
    bound = SETTINGS[name]
    if bound.kind is str:
        if not isinstance(value, str):
            raise ControlError("bad_value", f'"{name}" must be a string', name)
        size = len(value.strip())
    else:
        # bool is an int in Python, and 1.0 is not a count of anything.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ControlError("bad_value", f'"{name}" must be an integer', name)
        size = value
    if not bound.low <= size <= bound.high:
        what = "long" if bound.kind is str else ""
        raise ControlError(
            "bad_value",
            f'"{name}" must be {what + " " if what else ""}{bound.low} to {bound.high} {bound.unit}',
            name,
        )


def apply_config(settings: CallSettings, message: dict[str, Any]) -> CallSettings:
    """The settings with the command's changes, all checked before any is applied."""
    changes = {k: v for k, v in message.items() if k != "type"}
    if not changes:
        raise ControlError("bad_value", f"config needs at least one of {', '.join(SETTINGS)}")
    for name, value in changes.items():
        _check(name, value)
    if "system_prompt" in changes:
        changes["system_prompt"] = changes["system_prompt"].strip()
    return dataclasses.replace(settings, **changes)
