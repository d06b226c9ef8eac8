"""Tool calling for a ChatML model run in process: the prompt and the two constrained steps that decide
between a message and a call.

It follows llama-cpp-python's ``chatml-function-calling`` format (the tools listed in the system prompt
as ``functions.NAME:`` with their JSON schema; a reply begins ``message:`` or ``functions.NAME:``), which
any ChatML model (SmolLM2, Qwen) follows under a grammar. That handler itself is not used: it drops
``tool`` messages from the prompt (the model never sees a tool's result, so it calls the tool again), and
under ``tool_choice: "auto"`` constrains the message that follows its decision to a function name or
nothing. Here the decision is one constrained step, a message is then streamed token by token, and a
call's arguments are generated under a grammar made from its JSON schema.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .llm import Message, ToolSpec

START, END = "<|im_start|>", "<|im_end|>"

INSTRUCTIONS = (
    "\n\nYou can respond to users messages with either a single message or one or more function calls."
    "\n\nTo respond with a message begin the message with 'message:', use the following format:"
    "\n\nmessage:\n<message>"
    "\n\nTo respond with one or more function calls begin the message with 'functions.<function_name>:', "
    "use the following format:"
    '\n\nfunctions.<function_name>:\n{ "arg1": "value1", "arg2": "value2" }'
)


def is_chatml(chat_template: str) -> bool:
    """Whether a GGUF's chat template is ChatML, the format this prompt is written in."""
    return START in chat_template and END in chat_template


def _system(content: str, tools: Sequence[ToolSpec]) -> str:
    if not tools:
        return content
    listed = "".join(
        f"\nfunctions.{t['function']['name']}:\n"
        f"{t['function'].get('description', '')}\n"
        f"{json.dumps(t['function'].get('parameters', {}))}\n"
        for t in tools
    )
    return f"{content}\n\nYou have access to the following functions:\n{listed}{INSTRUCTIONS}"


def _assistant(message: Message, tools: bool) -> str:
    parts = []
    if message.get("content"):
        parts.append(f"message:\n{message['content']}" if tools else str(message["content"]))
    for call in message.get("tool_calls") or ():
        function = call["function"]
        parts.append(f"functions.{function['name']}:\n{function['arguments']}")
    return "\n".join(parts)


def render(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> str:
    """The whole prompt, up to the assistant's turn. A tool's result is a ``tool`` turn of its own."""
    out = []
    for message in messages:
        role = message["role"]
        if role == "system":
            text = _system(str(message.get("content") or ""), tools)
        elif role == "assistant":
            text = _assistant(message, bool(tools))
        else:
            text = str(message.get("content") or "")
        out.append(f"{START}{role}\n{text}{END}\n")
    out.append(f"{START}assistant\n")
    return "".join(out)


def decision_grammar(tools: Sequence[ToolSpec]) -> str:
    """GBNF for the first words of the reply: ``message:`` or ``functions.NAME:`` of a listed tool.
    Tool names are ``[A-Za-z0-9_-]`` (checked where tools are declared), safe in a GBNF literal."""
    names = " | ".join(f'"functions.{t["function"]["name"]}:"' for t in tools)
    return f'root ::= functions | "message:"\nfunctions ::= {names}\n'
