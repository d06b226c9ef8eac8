"""One option's declaration, kept on its ``Config`` field (``field(metadata=option(...))``).

The CLI flag, the environment variable, the ``config`` control command's bounds, ``--help`` and
docs/configuration.md are all read from it, so an option is written once and the five cannot drift.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

ENV_PREFIX = "VOICEPEER_"
_KEY = "voicepeer.option"


@dataclass(frozen=True)
class Live:
    """A call may change the option while it runs (the ``config`` control command) within these bounds.

    They are narrower than the server's on purpose: a client must not make its own call useless or
    expensive. For text the bounds are on its length, without the surrounding blanks."""

    low: int
    high: int
    unit: str


@dataclass(frozen=True)
class Option:
    """How an option is given and checked; its type and default are the field's own."""

    flag: str
    help: str
    env: str
    """The environment variable, without ``VOICEPEER_``."""
    low: float | None = None
    high: float | None = None
    above: bool = False
    """``low`` itself is refused: a timeout of 0 s is a typo, not a wish."""
    choices: tuple[str, ...] = ()
    none: tuple[object, ...] = ()
    """Values that stand for None (``off``, 0), besides the empty string, for a field that may be None."""
    secret: bool = False
    """--help says whether it is set, never what it is."""
    shown: str | None = None
    """The default as the docs show it, when the value depends on the machine or is too long."""
    metavar: str | None = None
    convert: Callable[[str], object] | None = None
    """Parses the text instead of the type's conversion, raising ValueError (a value with a shape)."""
    live: Live | None = None


def option(flag: str, help: str, *, env: str | None = None, **details: Any) -> dict[str, Option]:
    """Field metadata declaring an option. The environment variable defaults to the flag's name:
    ``--llm-url`` is ``VOICEPEER_LLM_URL``."""
    env = env or flag.removeprefix("--").replace("-", "_").upper()
    return {_KEY: Option(flag, help, env, **details)}


def parse_bool(text: str) -> bool:
    """1/true/yes/on or 0/false/no/off, as a flag or an environment variable may say it."""
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


@dataclass(frozen=True)
class Declared:
    """An option where it lives in ``Config``: ``llm.max_tokens``, with its type and default."""

    section: str
    name: str
    kind: type
    """``str``, ``int``, ``float``, ``bool``, or ``tuple`` for a list of strings."""
    optional: bool
    """The field may be None (``str | None``)."""
    default: object
    option: Option

    @property
    def path(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.option.env

    @property
    def dest(self) -> str:
        """The argparse attribute, named after the flag as argparse would (``llm_threads``)."""
        return self.option.flag.removeprefix("--").replace("-", "_")

    def parse(self, text: str) -> object:
        """The value from a flag's or an environment variable's text; ValueError says what is wrong.

        Out-of-range numbers are refused here, before any model loads: a negative thread count or
        timeout is a typo that would otherwise fail deep in a runtime or quietly disable a limit, and an
        infinite TTL would fail only when a credential is minted."""
        opt, text = self.option, str(text)
        if self.kind is tuple:
            if opt.convert is not None:
                return opt.convert(text)
            return tuple(item.strip() for item in text.split(",") if item.strip())
        if self.optional and text.strip().lower() in ("", *(n for n in opt.none if isinstance(n, str))):
            return None
        if opt.convert is not None:
            return opt.convert(text)
        if self.kind is bool:
            return parse_bool(text)
        if self.kind in (int, float):
            value = self._number(text)
            return None if self.optional and value in opt.none else value
        if opt.choices and text not in opt.choices:
            raise ValueError(f"expected one of {', '.join(opt.choices)}, got {text!r}")
        return text

    def _number(self, text: str) -> int | float:
        opt = self.option
        try:
            value = self.kind(text)
        except (TypeError, ValueError):
            raise ValueError(f"expected {self.kind.__name__}, got {text!r}") from None
        low_ok = opt.low is None or (value > opt.low if opt.above else value >= opt.low)
        if not math.isfinite(value) or not low_ok or (opt.high is not None and value > opt.high):
            raise ValueError(f"expected {self.range()}, got {text!r}")
        return value

    def range(self) -> str:
        """The values the server accepts, in words: ``at least 0 and at most 65535``."""
        opt = self.option
        parts = []
        if opt.low is not None:
            parts.append(f"{'more than' if opt.above else 'at least'} {opt.low:g}")
        if opt.high is not None:
            parts.append(f"at most {opt.high:g}")
        return " and ".join(parts) or "any value"

    def show(self, value: object) -> str:
        """A value as --help and the docs write it (a secret is only said to be set)."""
        if self.option.secret:
            return "set" if value else "none"
        if value is None or value == () or value == "":
            words = [n for n in self.option.none if isinstance(n, str)]
            return str(words[0]) if words else "none"
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, float):
            return f"{value:g}"
        if isinstance(value, tuple):
            return ",".join(value)
        return str(value)


def declared(root: type) -> tuple[Declared, ...]:
    """Every option of a configuration whose fields are sections (dataclasses of options), in order."""
    found = []
    for name, section in sections(root):
        hints = typing.get_type_hints(section)
        for f in dataclasses.fields(section):
            if _KEY in f.metadata:
                kind, optional = _kind(hints[f.name])
                default = f.default_factory() if f.default is dataclasses.MISSING else f.default
                found.append(Declared(name, f.name, kind, optional, default, f.metadata[_KEY]))
    return tuple(found)


def sections(root: type) -> Iterator[tuple[str, type]]:
    """The sections of a configuration: (field name, dataclass)."""
    hints = typing.get_type_hints(root)
    for section in dataclasses.fields(root):
        yield section.name, hints[section.name]


def _kind(hint: object) -> tuple[type, bool]:
    """The base type of an annotation (``str | None`` -> ``str``, optional) and whether None is allowed."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (base,) = (a for a in args if a is not type(None))
        return _kind(base)[0], True
    if typing.get_origin(hint) is tuple:
        return tuple, False
    assert isinstance(hint, type) and hint in (str, int, float, bool), f"unsupported option type {hint!r}"
    return hint, False
