"""The application's part of the configuration: its tools, its per-turn hook, the greeting, and the
secret their webhooks are signed with (``voicepeer.call.tools``, ``voicepeer.call.hook``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..call.tools import load_tools
from .option import option


def _tools_text(text: str) -> str:
    load_tools(text)  # a bad file stops the server at start, naming the tool and the field
    return text.strip()


@dataclass(frozen=True)
class AppConfig:
    """Tools the model may call, a hook on each turn, and what the bot says first."""

    tools: str | None = field(
        default=None,
        metadata=option(
            "--tools",
            "tools the model may call: a JSON file (or, in VOICEPEER_TOOLS, the JSON itself) listing "
            'OpenAI tool declarations, each with a "webhook" URL',
            convert=_tools_text,
            metavar="FILE",
        ),
    )
    hook: str | None = field(
        default=None,
        metadata=option("--hook", "URL that gets each final user turn first and may answer it (signed POST)"),
    )
    webhook_secret: str | None = field(
        default=None,
        metadata=option(
            "--webhook-secret",
            "key of the HMAC that signs every tool and hook request; none: --auth-token's",
            secret=True,
        ),
    )
    webhook_allow: tuple[str, ...] = field(
        default=(),
        metadata=option(
            "--webhook-allow",
            "URL prefixes a call's own tools (the config command) may name as webhooks; none: only "
            "the webhooks of --tools and --hook",
            metavar="PREFIX,...",
        ),
    )
    tool_timeout_s: float = field(
        default=8.0,
        metadata=option(
            "--tool-timeout", "seconds a tool may take before the user hears an apology", low=0, above=True
        ),
    )
    tool_rounds: int = field(
        default=3,
        metadata=option(
            "--tool-rounds", "rounds of tool calls one reply may make before it must answer", low=1, high=10
        ),
    )
    tool_choice: str = field(
        default="auto",
        metadata=option(
            "--tool-choice",
            "auto = the model decides whether to call a tool; required = it calls one for every turn",
            choices=("auto", "required"),
        ),
    )
    tool_filler: str = field(
        default="One moment.",
        metadata=option("--tool-filler", "said while a tool runs past --tool-filler-after; empty: nothing"),
    )
    tool_filler_after_s: float = field(
        default=1.0,
        metadata=option("--tool-filler-after", "seconds a tool may run before the filler is said", low=0),
    )
    hook_timeout_s: float = field(
        default=1.5,
        metadata=option(
            "--hook-timeout",
            "seconds the hook may take before the model answers without it",
            low=0,
            above=True,
        ),
    )
    greeting: str = field(
        default="",
        metadata=option("--greeting", "said by the bot when a call connects; empty: the user speaks first"),
    )
