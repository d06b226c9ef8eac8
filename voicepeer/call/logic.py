"""The application's logic that every call of a server shares: its tools, its per-turn hook, the
greeting, the webhook client, and the limits on what a call may add to them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..backends.llm import ToolChoice
from ..config import Config
from .hook import TurnHook, webhook_hook
from .services import Services
from .tools import Tool, load_tools, merge
from .webhook import Webhooks


class LogicError(ValueError):
    """A configuration of tools or hook the server cannot start with (a usage error)."""


@dataclass
class Logic:
    tools: tuple[Tool, ...] = ()
    hook: TurnHook | None = None
    greeting: str = ""
    webhooks: Webhooks | None = None
    tool_timeout_s: float = 8.0
    tool_rounds: int = 3
    tool_choice: ToolChoice = "auto"
    """The first round's: ``required`` makes the model call a tool for every turn."""
    tool_filler: str = "One moment."
    tool_filler_after_s: float = 1.0
    hook_timeout_s: float = 1.5
    webhook_allow: tuple[str, ...] = field(default=())
    """URL prefixes a call's own tools may use as webhooks (a client must not make the server post
    wherever it likes)."""

    @classmethod
    def from_config(cls, config: Config, tools: Sequence[Tool] = (), hook: TurnHook | None = None) -> Logic:
        """The configuration's tools and hook, with the program's own ``tools`` (callables or webhooks)
        and ``hook`` (a callable, instead of ``--hook``). Raises ``LogicError``."""
        app = config.app
        try:
            declared = load_tools(app.tools) if app.tools else ()
        except ValueError as exc:
            raise LogicError(str(exc)) from None
        every = merge(declared, tools)
        secret = app.webhook_secret or config.security.auth_token
        webhook_urls = [t.webhook for t in every if t.webhook] + (
            [app.hook] if app.hook and hook is None else []
        )
        if webhook_urls and not secret:
            raise LogicError(
                "tool and hook webhooks are signed: set --webhook-secret (or --auth-token, whose key they "
                "then share)"
            )
        webhooks = Webhooks(secret) if secret else None
        if hook is None and app.hook:
            assert webhooks is not None
            hook = webhook_hook(app.hook, webhooks, app.hook_timeout_s)
        allow = app.webhook_allow or tuple(_origin(url) for url in webhook_urls)
        return cls(
            tools=every,
            hook=hook,
            greeting=app.greeting.strip(),
            webhooks=webhooks,
            tool_timeout_s=app.tool_timeout_s,
            tool_rounds=app.tool_rounds,
            tool_choice="required" if app.tool_choice == "required" else "auto",
            tool_filler=app.tool_filler.strip(),
            tool_filler_after_s=app.tool_filler_after_s,
            hook_timeout_s=app.hook_timeout_s,
            webhook_allow=allow,
        )

    def unusable_with(self, services: Services) -> str | None:
        """Why these tools cannot be served with ``services``, if they cannot: no backend of the LLM
        chain calls tools (an embedded model whose chat template is not ChatML)."""
        if not self.tools:
            return None
        backends = services.llm.chain.backends  # type: ignore[attr-defined]
        if any(backend.capabilities.tools for backend in backends):
            return None
        names = ", ".join(backend.name for backend in backends)
        return f"tools are configured, but no LLM backend ({names}) can call them"

    def allows(self, url: str) -> bool:
        return any(url == p or url.startswith(p.rstrip("/") + "/") for p in self.webhook_allow)

    async def aclose(self) -> None:
        if self.webhooks is not None:
            await self.webhooks.aclose()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
