"""What every backend (ASR, TTS, LLM; embedded or remote) shares: its name, what it can do, its health.

A call never asks which implementation it talks to; it reads ``capabilities`` and behaves accordingly
(a streaming TTS's first audio plays as it arrives; an ASR that is not ``cheap`` is not asked for a
partial transcript every 640 ms). A ``Chain`` (``chain.py``) puts several behind one stage and moves
between them on failure, using ``probe`` to tell when a failed one is back.
"""

from __future__ import annotations

from dataclasses import dataclass


class BackendError(RuntimeError):
    """A backend failed, timed out or answered nonsense; the message is safe to show to the user
    (no secrets, no response bodies beyond a short excerpt)."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared once by its class (or per instance when it depends on the
    server, as a Wyoming server's ``info`` tells)."""

    streaming_input: bool = False
    """ASR: takes the user's audio as it arrives (``ASR.open_stream``), not only a whole turn."""
    partials: bool = False
    """ASR: gives words before the end of the turn."""
    streaming_output: bool = False
    """TTS: audio before the whole piece is synthesized; LLM: tokens as they come."""
    tools: bool = False
    """LLM: calls the tools it is given (OpenAI's ``tools``), yielding ``ToolCall`` items."""
    languages: tuple[str, ...] = ()
    """ISO 639-1 codes it handles; empty: any (or unknown)."""
    sample_rate: int | None = None
    """TTS: the rate of the audio it yields; ASR: the rate it wants (the speech path's 16 kHz)."""
    cheap: bool = True
    """Repeated requests cost little (an in-process model). A remote or metered one is not: the call
    asks it only for what it must (the turn's transcript), unless the operator says otherwise."""
    remote: bool = False
    """Runs in another process: it may be down, slow or garbage, and is probed."""


class UnsupportedLanguage(BackendError):
    """The backend works but does not know the language a request asked for: that request fails,
    and the backend is not taken for down (one call's language must not take the stage from every
    call)."""


MAX_TEXT_CHARS = 16_000
"""Longest transcript or token stream a remote backend may hand us; past it the answer is garbage
(a turn of speech is a few hundred characters), refused rather than held in memory."""


class Backend:
    """The part of every backend the chain and the health endpoint use."""

    name: str = "embedded"
    """How events, logs and ``/healthz`` name it: ``embedded`` or its URL without credentials."""
    capabilities: Capabilities = Capabilities()

    async def probe(self) -> None:
        """Raises ``BackendError`` unless the backend can serve a request now. A remote backend asks
        its server (a health route and, where a live process may have no model yet, a tiny real
        request); an embedded one is loaded, so it is ready."""
        return None

    async def aclose(self) -> None:
        """Releases connections and sessions. Idempotent."""
        return None
