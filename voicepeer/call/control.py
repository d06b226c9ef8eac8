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
| ``speak`` | ``text``, ``interrupt`` | the bot says ``text`` verbatim: once the floor is open, or at once |
| ``hangup`` | ``text`` | the call ends after the sentence playing now (and ``text``, if given) |
| ``reset`` | | the reply in progress stops and the history is cleared |
| ``config`` | ``SETTINGS``, ``context``, ``tools`` | changes this call's settings within their bounds |
| ``playout`` | the receiver's counters (``receiver.FIELDS``, | the echo canceller follows the client's |
| | ``receiver.OPTIONAL_FIELDS``) | playout of the bot's voice where its receiver ran dry or |
| | | squeezed it (``voicepeer.audio.receiver``) |
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from ..audio.receiver import FIELDS as RECEIVER_FIELDS
from ..audio.receiver import OPTIONAL_FIELDS as RECEIVER_OPTIONAL_FIELDS
from ..config import OPTIONS, Config, Declared

MAX_SAY_CHARS = 2000
"""The longest typed message: about what a person says in two minutes."""

SETTINGS: dict[str, Declared] = {d.name: d for d in OPTIONS if d.option.live is not None}
"""What ``config`` may change, by field name: the options declared ``live`` (``voicepeer.config``),
whose bounds keep a client from making its call useless or expensive."""
assert len(SETTINGS) == sum(d.option.live is not None for d in OPTIONS), "live options need distinct names"


def _public(self: Any) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _of(cls: type, config: Config) -> Any:
    """A call's settings at its start: the server's configuration."""
    return cls(**{name: getattr(getattr(config, d.section), name) for name, d in SETTINGS.items()})


CallSettings = dataclasses.make_dataclass(
    "CallSettings",
    [(name, declared.kind) for name, declared in SETTINGS.items()],
    frozen=True,
    namespace={
        "__doc__": "The settings one call may change while it runs; ``of(config)`` gives their start.",
        "__module__": __name__,
        "public": _public,
        "of": classmethod(_of),
    },
)
"""A frozen dataclass with a field per entry of ``SETTINGS``: a new live option needs no edit here."""


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
    "speak": frozenset({"text", "interrupt"}),
    "hangup": frozenset({"text"}),
    "config": frozenset(SETTINGS) | {"context", "tools"},
    "playout": frozenset(RECEIVER_FIELDS) | frozenset(RECEIVER_OPTIONAL_FIELDS),
}

MAX_CONTEXT_KEYS = 32
MAX_CONTEXT_CHARS = 8_000
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def check_fields(message: dict[str, Any]) -> None:
    """Unknown fields are refused rather than ignored: a typo must not look like success."""
    allowed = ALLOWED_FIELDS[message["type"]]
    for name in message:
        if name != "type" and name not in allowed:
            shown = name if len(name) <= 40 else name[:37] + "..."
            raise ControlError("bad_field", f"{message['type']} takes no field {shown!r}", shown)


def say_text(message: dict[str, Any], optional: bool = False) -> str:
    """The command's ``text``, blanks collapsed (``optional``: "" when it has none)."""
    if optional and message.get("text") is None:
        return ""
    text = message.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ControlError("bad_value", '"text" must be a non-empty string', "text")
    if len(text) > MAX_SAY_CHARS:
        raise ControlError("bad_value", f'"text" is at most {MAX_SAY_CHARS} characters', "text")
    return " ".join(text.split())


def speak_interrupts(message: dict[str, Any]) -> bool:
    value = message.get("interrupt", False)
    if not isinstance(value, bool):
        raise ControlError("bad_value", '"interrupt" must be true or false', "interrupt")
    return value


def parse_context(value: Any, field: str = "context") -> dict[str, str | None]:
    """A call's variables: ``{name: text}`` (numbers and booleans as text; null removes one)."""
    if not isinstance(value, dict) or len(value) > MAX_CONTEXT_KEYS:
        raise ControlError(
            "bad_value", f'"{field}" must be an object of at most {MAX_CONTEXT_KEYS} names', field
        )
    out: dict[str, str | None] = {}
    total = 0
    for name, item in value.items():
        if not _IDENTIFIER.match(name):
            raise ControlError("bad_value", f'"{field}" names are identifiers of up to 64 characters', field)
        if item is None:
            out[name] = None
            continue
        if isinstance(item, bool):
            item = "true" if item else "false"
        elif isinstance(item, int | float):
            item = str(item)
        if not isinstance(item, str):
            raise ControlError("bad_value", f'"{field}.{name}" must be text, a number or a boolean', field)
        total += len(item)
        out[name] = item
    if total > MAX_CONTEXT_CHARS:
        raise ControlError("bad_value", f'"{field}" holds at most {MAX_CONTEXT_CHARS} characters', field)
    return out


def _check(name: str, value: Any) -> None:
    declared = SETTINGS[name]
    live = declared.option.live
    assert live is not None
    if declared.kind is str:
        if not isinstance(value, str):
            raise ControlError("bad_value", f'"{name}" must be a string', name)
        size = len(value.strip())
    else:
        # bool is an int in Python, and 1.0 is not a count of anything.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ControlError("bad_value", f'"{name}" must be an integer', name)
        size = value
    if not live.low <= size <= live.high:
        what = " long" if declared.kind is str else ""
        raise ControlError("bad_value", f'"{name}" must be {live.low} to {live.high} {live.unit}{what}', name)
    if declared.option.convert is not None:
        try:
            declared.option.convert(value)
        except ValueError as exc:
            raise ControlError("bad_value", f'"{name}": {exc}', name) from None


def apply_config(settings: Any, message: dict[str, Any]) -> Any:
    """The settings with the command's changes, all checked before any is applied."""
    changes = {k: v for k, v in message.items() if k not in ("type", "context", "tools")}
    if not changes:
        if "context" in message or "tools" in message:
            return settings
        raise ControlError(
            "bad_value", f"config needs at least one of {', '.join([*SETTINGS, 'context', 'tools'])}"
        )
    for name, value in changes.items():
        _check(name, value)
    for name, value in changes.items():
        convert = SETTINGS[name].option.convert
        if convert is not None:
            changes[name] = convert(value)
        elif isinstance(value, str):
            changes[name] = value.strip()
    return dataclasses.replace(settings, **changes)
