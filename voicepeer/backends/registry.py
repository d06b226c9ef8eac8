"""Backends by URL: ``embedded``, ``wyoming://host:port``, ``http(s)://host:port/v1``, ``ws(s)://host:port/asr``;
for speech also ``espeak-ng`` (Debian's program, ``espeak-ng?voice=cmn-latn-pinyin``).

A stage (``asr``, ``tts``, ``llm``) is configured as a comma-separated chain of these; each scheme maps
to a factory here. TTS chains may be per language: ``zh=wyoming://host:10200,espeak-ng`` names the
chain that speaks Mandarin (``split_languages``). A package adds its own scheme without a fork
through the ``voicepeer.backends`` entry-point group: an entry point named ``<stage>.<scheme>``
(``tts.kokoro``) whose object is a factory ``(url, BackendContext) -> Backend`` (docs/extending.md
shows one whole).
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from .base import Backend
from .llm import LLMOptions

log = logging.getLogger(__name__)

Stage = Literal["asr", "tts", "llm"]
STAGES: tuple[Stage, ...] = ("asr", "tts", "llm")
ENTRY_POINT_GROUP = "voicepeer.backends"


@dataclass(frozen=True)
class BackendContext:
    """What a factory may need besides its URL, taken from the configuration by the caller (backends
    never read the configuration themselves)."""

    language: str = "en"
    """The server's ``--language``; a request may ask for another (``ASR.transcribe``), and a TTS
    backend is made for the language of its chain."""
    timeout_s: float = 10.0
    """A request's own bound, for the socket timeouts of a remote backend; the chain bounds it too."""
    asr_model: str = "tiny.en"
    asr_threads: int = 0
    asr_multilingual: str | None = None
    """The embedded ASR's model for other languages (``--asr-multilingual-model``)."""
    tts_voice: str | None = None
    tts_threads: int = 0
    llm_model: str | None = None
    llm_api_key: str | None = None
    llm_threads: int = 0
    llm_options: LLMOptions = field(default_factory=LLMOptions)


Factory = Callable[[str, BackendContext], Backend]

_BUILT_IN: dict[tuple[Stage, str], str] = {
    ("asr", "embedded"): "voicepeer.backends.embedded:asr",
    ("tts", "embedded"): "voicepeer.backends.embedded:tts",
    ("llm", "embedded"): "voicepeer.backends.embedded:llm",
    ("asr", "wyoming"): "voicepeer.backends.wyoming:asr",
    ("tts", "wyoming"): "voicepeer.backends.wyoming:tts",
    ("asr", "http"): "voicepeer.backends.openai:asr",
    ("asr", "https"): "voicepeer.backends.openai:asr",
    ("tts", "http"): "voicepeer.backends.openai:tts",
    ("tts", "https"): "voicepeer.backends.openai:tts",
    ("llm", "http"): "voicepeer.backends.openai:llm",
    ("llm", "https"): "voicepeer.backends.openai:llm",
    ("asr", "ws"): "voicepeer.backends.whisperlivekit:asr",
    ("asr", "wss"): "voicepeer.backends.whisperlivekit:asr",
    ("tts", "espeak-ng"): "voicepeer.backends.espeak:tts",
}
"""Resolved on use, so a peer that never talks Wyoming never imports it."""

_registered: dict[tuple[Stage, str], Factory] = {}


class BadBackendURL(ValueError):
    """The chain names a scheme no backend serves for this stage, or a URL without a host."""


def register(stage: Stage, scheme: str, factory: Factory) -> None:
    """Adds (or replaces) the backend for ``scheme`` at ``stage`` in this process."""
    _registered[(stage, scheme.lower())] = factory


def scheme_of(url: str) -> str:
    """A URL's scheme, or a named backend's name (``embedded``, ``espeak-ng?voice=...``)."""
    if "://" not in url:
        return url.split("?", 1)[0].lower()
    return urlsplit(url).scheme.lower()


def display_name(url: str) -> str:
    """The URL without its credentials, as events, logs and ``/healthz`` show it."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def parse_chain(stage: Stage, text: str) -> list[str]:
    """The URLs of a comma-separated chain, checked for a known scheme and a host (no connection is
    made). Raises ``BadBackendURL`` with a message for the operator."""
    urls = [part.strip() for part in text.split(",") if part.strip()]
    if not urls:
        raise BadBackendURL(f"--{stage} names no backend")
    language = ""
    for index, url in enumerate(urls):
        prefix, _, rest = url.partition("=")
        if rest and _LANGUAGE_PREFIX.match(prefix):
            if stage != "tts":
                raise BadBackendURL(f"--{stage}: only --tts has a chain per language ({url!r})")
            language, url = prefix.lower(), rest.strip()
        urls[index] = f"{language}={url}" if language else url
        scheme = scheme_of(url)
        if "://" in url and not urlsplit(url).hostname:
            raise BadBackendURL(f"--{stage}: {url!r} has no host (expected e.g. wyoming://127.0.0.1:10300)")
        if _factory(stage, scheme) is None:
            known = ", ".join(sorted(s for st, s in available() if st == stage))
            raise BadBackendURL(f"--{stage}: no {stage} backend for {scheme!r} URLs (known: {known})")
    return urls


_LANGUAGE_PREFIX = re.compile(r"^[A-Za-z]{2,3}$")


def split_languages(urls: tuple[str, ...] | list[str]) -> dict[str, tuple[str, ...]]:
    """A parsed chain's URLs by language: ``""`` for the first chain (every language it speaks), and
    one entry per ``LANG=`` prefix, in order."""
    chains: dict[str, list[str]] = {}
    for url in urls:
        prefix, _, rest = url.partition("=")
        if rest and _LANGUAGE_PREFIX.match(prefix):
            chains.setdefault(prefix.lower(), []).append(rest)
        else:
            chains.setdefault("", []).append(url)
    return {language: tuple(chain) for language, chain in chains.items()}


def available() -> set[tuple[Stage, str]]:
    """Every (stage, scheme) this process can serve, third-party ones included."""
    found: set[tuple[Stage, str]] = set(_BUILT_IN) | set(_registered)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        stage, _, scheme = ep.name.partition(".")
        if stage in STAGES and scheme:
            found.add((stage, scheme.lower()))  # type: ignore[arg-type]
    return found


def _factory(stage: Stage, scheme: str) -> Factory | None:
    if (stage, scheme) in _registered:
        return _registered[(stage, scheme)]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name.lower() == f"{stage}.{scheme}":
            return ep.load()
    target = _BUILT_IN.get((stage, scheme))
    if target is None:
        return None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def create(stage: Stage, url: str, context: BackendContext) -> Backend:
    """The backend for one URL of a chain (an embedded one loads its model: blocking)."""
    factory = _factory(stage, scheme_of(url))
    if factory is None:
        raise BadBackendURL(f"no {stage} backend for {url!r}")
    backend = factory(url, context)
    backend.name = display_name(url)
    return backend
