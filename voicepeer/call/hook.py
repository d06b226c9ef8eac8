"""The per-turn hook: the application sees each final user turn before the model does, and may answer
it itself, give the model more to go on, or let it answer as usual.

A hook is a webhook (``--hook URL``, signed like the tools' webhooks) or, in a program that embeds
voicepeer, an async callable. It gets ``{"call": id, "turn": n, "transcript": text, "context": {...}}``
and answers within ``--hook-timeout`` with a JSON object holding one of:

- ``{"say": "text"}``: the bot says this, verbatim; the model is not asked;
- ``{"context": "text"}``: the model answers with this as a system message just before the turn;
- ``{"messages": [{"role": ..., "content": ...}, ...]}``: messages put before the turn, for this reply;
- ``{}``, ``null`` or an empty 204: the model answers as it would without a hook.

A hook that fails, hangs or answers anything else leaves the model to answer, and the client gets an
``error`` event saying why.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..backends.llm import Message
from .control import MAX_SAY_CHARS
from .webhook import Webhooks

MAX_HOOK_MESSAGES = 16
MAX_CONTEXT_CHARS = 8_000


@dataclass(frozen=True)
class HookRequest:
    call_id: str
    turn: int
    transcript: str
    context: dict[str, str]

    def payload(self) -> dict[str, Any]:
        return {
            "call": self.call_id,
            "turn": self.turn,
            "transcript": self.transcript,
            "context": self.context,
        }


@dataclass(frozen=True)
class HookAnswer:
    say: str | None = None
    messages: tuple[Message, ...] = ()

    @property
    def action(self) -> str:
        """What the hook chose, as the ``hook`` event says it: ``say``, ``context`` or ``none``."""
        return "say" if self.say is not None else "context" if self.messages else "none"


class HookError(ValueError):
    """The hook's answer is not one of the shapes it may take."""


TurnHook = Callable[[HookRequest], Awaitable["HookAnswer | dict[str, Any] | None"]]
"""An application's hook in process: the same request and answers as the webhook's, as objects."""


def parse_answer(value: object) -> HookAnswer:
    """A hook's answer, checked: a ``HookAnswer``, or the webhook's JSON (``HookError`` if neither)."""
    if isinstance(value, HookAnswer):
        return value
    if value is None:
        return HookAnswer()
    if not isinstance(value, dict):
        raise HookError("the hook's answer is not a JSON object")
    unknown = set(value) - {"say", "context", "messages"}
    if unknown:
        raise HookError(f"the hook's answer has an unknown field {sorted(unknown)[0][:40]!r}")
    if len(value) > 1:
        raise HookError("the hook's answer holds one of say, context or messages")
    if "say" in value:
        say = value["say"]
        if not isinstance(say, str) or not say.strip():
            raise HookError('"say" must be non-empty text')
        if len(say) > MAX_SAY_CHARS:
            raise HookError(f'"say" is at most {MAX_SAY_CHARS} characters')
        return HookAnswer(say=" ".join(say.split()))
    if "context" in value:
        context = value["context"]
        if not isinstance(context, str) or len(context) > MAX_CONTEXT_CHARS:
            raise HookError(f'"context" must be text of at most {MAX_CONTEXT_CHARS} characters')
        return HookAnswer(messages=({"role": "system", "content": context},) if context.strip() else ())
    if "messages" in value:
        return HookAnswer(messages=_messages(value["messages"]))
    return HookAnswer()


def _messages(value: object) -> tuple[Message, ...]:
    if not isinstance(value, list) or len(value) > MAX_HOOK_MESSAGES:
        raise HookError(f'"messages" must be a list of at most {MAX_HOOK_MESSAGES}')
    total = 0
    out: list[Message] = []
    for m in value:
        if (
            not isinstance(m, dict)
            or set(m) != {"role", "content"}
            or m["role"] not in ("system", "user", "assistant")
            or not isinstance(m["content"], str)
        ):
            raise HookError('each of "messages" is {"role": system|user|assistant, "content": text}')
        total += len(m["content"])
        out.append({"role": m["role"], "content": m["content"]})
    if total > MAX_CONTEXT_CHARS:
        raise HookError(f'"messages" hold at most {MAX_CONTEXT_CHARS} characters')
    return tuple(out)


def webhook_hook(url: str, webhooks: Webhooks, timeout_s: float) -> TurnHook:
    """The hook as a signed POST to ``url``."""

    async def hook(request: HookRequest) -> Any:
        return await webhooks.post(url, request.payload(), timeout_s)

    return hook
