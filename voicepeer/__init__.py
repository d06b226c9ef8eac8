"""voicepeer's media peer: sessions, tracks, the speech path and the conversation.

What a program that embeds voicepeer needs is importable from here (``docs/extending.md``)::

    from voicepeer import Config, Tool, create_app, load_services, serve

Each name is imported on first use, so ``import voicepeer`` stays cheap.
"""

from importlib import import_module
from typing import Any

from .runtime import models as _models  # noqa: F401  (sets the hubs' offline switches before anything loads)

__version__ = "0.1.0"

_PUBLIC = {
    "Config": "voicepeer.config",
    "Call": "voicepeer.call.call",
    "Services": "voicepeer.call.services",
    "load_services": "voicepeer.call.services",
    "create_app": "voicepeer.transport.app",
    "serve": "voicepeer.transport.drain",
    "Tool": "voicepeer.call.tools",
    "ToolContext": "voicepeer.call.tools",
    "HookAnswer": "voicepeer.call.hook",
    "HookRequest": "voicepeer.call.hook",
    "LLM": "voicepeer.backends.llm",
    "LLMOptions": "voicepeer.backends.llm",
    "ToolCall": "voicepeer.backends.llm",
    "verify_webhook": "voicepeer.call.webhook",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'voicepeer' has no attribute {name!r}")
    attribute = "verify" if name == "verify_webhook" else name
    return getattr(import_module(module), attribute)
