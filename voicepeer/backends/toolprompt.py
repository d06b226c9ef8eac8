"""Tool calling for a ChatML model run in process: the prompt and the two constrained steps that decide
between a message and a call.

It follows llama-cpp-python's ``chatml-function-calling`` format (the tools listed in the system prompt
as ``functions.NAME:`` with their JSON schema; a reply begins ``message:`` or ``functions.NAME:``), which
any ChatML model (SmolLM2, Qwen) follows under a grammar. Every round of a reply uses the same prompt,
so its prefix stays in llama.cpp's cache. That handler itself is not used: it drops
``tool`` messages from the prompt (the model never sees a tool's result, so it calls the tool again), and
under ``tool_choice: "auto"`` constrains the message that follows its decision to a function name or
nothing. Here the decision is one constrained step, a message is then streamed token by token, a
call's arguments are generated under a grammar made from its JSON schema, and a tool's result is shown
to the model as the user's turn (``render``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .llm import Message, ToolSpec

START, END = "<|im_start|>", "<|im_end|>"

INSTRUCTIONS = (
    "\n\nUse a function only when the user asks for what it gives. To use one, reply functions.NAME: then "
    "its JSON arguments. Otherwise reply message: then your answer in one or two short sentences."
)
"""After the list of functions. Not llama-cpp-python's own wording: its ``<message>`` placeholders came
back in 12 of 16 of SmolLM2-135M's answers ("<message> You can respond with..."); these in none, and
the answers after a weather tool carried its result 8 times in 8 either way."""


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
    """The whole prompt, up to the assistant's turn.

    A tool's result is a user turn ("The result of get_weather: {...}"): ChatML models of this size
    were not trained on a ``tool`` role. Told to answer after a weather tool, SmolLM2-135M put the
    result in its reply 24 times in 24 this way (four cities, three histories, two seeds), 13 in 24
    with a ``tool`` turn, 20 with a system turn."""
    names = {}
    out = []
    for message in messages:
        role = message["role"]
        if role == "system":
            text = _system(str(message.get("content") or ""), tools)
        elif role == "assistant":
            text = _assistant(message, bool(tools))
            names.update((c["id"], c["function"]["name"]) for c in message.get("tool_calls") or ())
        elif role == "tool":
            role = "user"
            name = names.get(message.get("tool_call_id"), "the tool")
            text = f"The result of {name}: {message.get('content')}"
        else:
            text = str(message.get("content") or "")
        out.append(f"{START}{role}\n{text}{END}\n")
    out.append(f"{START}assistant\n")
    return "".join(out)


DECISION = 'root ::= "functions" | "message"\n'
"""GBNF for the reply's first word: a call or a message."""


def names_grammar(names: Sequence[str]) -> str:
    """GBNF for the name of one of the tools, after ``functions.``. Tool names are ``[A-Za-z0-9_-]``
    (checked where tools are declared), safe in a GBNF literal."""
    return "root ::= " + " | ".join(f'"{name}"' for name in names) + "\n"
