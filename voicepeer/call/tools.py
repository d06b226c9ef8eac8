"""Tools the model may call: the application's functions, declared in OpenAI's ``tools`` schema and run
as signed webhooks (``webhook.py``) or, in a program that embeds voicepeer, as Python callables.

A declaration is OpenAI's entry plus where it runs::

    {"type": "function",
     "function": {"name": "get_weather", "description": "...", "parameters": {JSON schema}},
     "webhook": "https://app.example/tools/weather"}

The webhook gets ``POST {"call": id, "tool": name, "arguments": {...}}`` and answers JSON, which goes
to the model as the tool's result. A callable gets ``(arguments, ToolContext)`` and returns anything
JSON can hold. Every declaration is checked where it comes in (``parse_tools``): a bad ``--tools`` file
stops the server at start, a bad ``config`` command is refused with the field named.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema

from ..backends.llm import ToolCall, ToolSpec
from ..runtime.workers import run_tool
from .webhook import WebhookError, Webhooks

log = logging.getLogger(__name__)

MAX_TOOLS = 32
MAX_DECLARATION_BYTES = 64 * 1024
"""All of a set's declarations together, as JSON: they are part of every prompt."""
MAX_RESULT_CHARS = 8_000
"""A tool's result as the model gets it (JSON text); a longer one is refused, not cut mid-JSON."""
MAX_ARGUMENT_CHARS = 8_000

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""OpenAI's rule for a function's name."""


@dataclass(frozen=True)
class ToolContext:
    """What a tool's callable learns of the call it serves."""

    call_id: str
    context: dict[str, str]
    """The call's variables (``config``'s ``context``, or the per-call token's)."""


ToolFunction = Callable[[dict[str, Any], ToolContext], Awaitable[Any] | Any]


class ToolError(Exception):
    """A tool could not be run or failed; the message is safe to show the client."""


@dataclass(frozen=True)
class Tool:
    """One tool: its declaration for the model and where it runs (a webhook URL or a callable)."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    webhook: str | None = None
    function: ToolFunction | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise ValueError(f"tool name {self.name[:70]!r} is not 1-64 of A-Z a-z 0-9 _ -")
        if (self.webhook is None) == (self.function is None):
            raise ValueError(f"tool {self.name!r} needs a webhook URL or a function, and only one")
        if self.webhook is not None:
            parts = urlsplit(self.webhook)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"tool {self.name!r}: the webhook must be an http(s) URL")
        if not isinstance(self.description, str):
            raise ValueError(f"tool {self.name!r}: the description must be text")
        if not isinstance(self.parameters, dict) or self.parameters.get("type", "object") != "object":
            raise ValueError(f"tool {self.name!r}: parameters must be a JSON schema of an object")
        try:
            jsonschema.Draft202012Validator.check_schema(self.parameters)
        except jsonschema.SchemaError as exc:
            raise ValueError(
                f"tool {self.name!r}: parameters is not a valid JSON schema: {exc.message}"
            ) from None

    @classmethod
    def of(cls, function: ToolFunction, parameters: dict[str, Any] | None = None, **details: Any) -> Tool:
        """A tool run by ``function``, named after it and described by its docstring unless told."""
        return cls(
            name=details.pop("name", function.__name__),
            description=details.pop("description", inspect.getdoc(function) or ""),
            parameters=parameters or {"type": "object", "properties": {}},
            function=function,
        )

    def spec(self) -> ToolSpec:
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}

    def check(self, arguments: str) -> dict[str, Any]:
        """The model's arguments, parsed and checked against the schema (``ToolError`` if they fail)."""
        if len(arguments) > MAX_ARGUMENT_CHARS:
            raise ToolError(f"the arguments for {self.name} are over {MAX_ARGUMENT_CHARS} characters")
        try:
            value = json.loads(arguments or "{}")
        except (ValueError, RecursionError):
            raise ToolError(f"the arguments for {self.name} are not JSON") from None
        if not isinstance(value, dict):
            raise ToolError(f"the arguments for {self.name} are not a JSON object")
        error = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(self.parameters).iter_errors(value)
        )
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "arguments"
            raise ToolError(
                f"the arguments for {self.name} do not match its schema ({where}: {error.message[:120]})"
            )
        return value


def _declaration(entry: object, index: int) -> Tool:
    if not isinstance(entry, dict):
        raise ValueError(f"tool {index}: not a JSON object")
    unknown = set(entry) - {"type", "function", "webhook"}
    if unknown:
        raise ValueError(f"tool {index}: unknown field {sorted(unknown)[0][:40]!r}")
    if entry.get("type", "function") != "function":
        raise ValueError(f'tool {index}: "type" must be "function"')
    function = entry.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ValueError(f'tool {index}: "function" must be an object with a "name"')
    extra = set(function) - {"name", "description", "parameters", "strict"}
    if extra:
        raise ValueError(f"tool {index}: unknown field function.{sorted(extra)[0][:40]}")
    webhook = entry.get("webhook")
    if not isinstance(webhook, str):
        raise ValueError(f'tool {index}: "webhook" must be the URL the tool is run at')
    return Tool(
        name=function["name"],
        description=function.get("description", ""),
        parameters=function.get("parameters") or {"type": "object", "properties": {}},
        webhook=webhook,
    )


def parse_tools(value: object) -> tuple[Tool, ...]:
    """Webhook tools from their JSON declarations (a list, or its text). Raises ValueError, naming the
    tool and the field at fault."""
    if isinstance(value, str | bytes):
        if len(value) > MAX_DECLARATION_BYTES:
            raise ValueError(f"the tools' declarations are over {MAX_DECLARATION_BYTES} bytes")
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"the tools are not JSON: {exc}") from None
    if not isinstance(value, list):
        raise ValueError("the tools must be a JSON list of declarations")
    if len(value) > MAX_TOOLS:
        raise ValueError(f"at most {MAX_TOOLS} tools")
    if len(json.dumps(value)) > MAX_DECLARATION_BYTES:
        raise ValueError(f"the tools' declarations are over {MAX_DECLARATION_BYTES} bytes")
    tools = tuple(_declaration(entry, i) for i, entry in enumerate(value))
    names = [t.name for t in tools]
    if len(set(names)) < len(names):
        raise ValueError("two tools have the same name")
    return tools


def load_tools(text: str) -> tuple[Tool, ...]:
    """``--tools``: a file of declarations, or (``VOICEPEER_TOOLS``) the JSON list itself."""
    text = text.strip()
    if not text:
        return ()
    if text.startswith("["):
        return parse_tools(text)
    path = Path(text)
    try:
        data = path.read_bytes()[: MAX_DECLARATION_BYTES + 1]
    except OSError as exc:
        raise ValueError(f"cannot read the tools file {text}: {exc.strerror}") from None
    return parse_tools(data)


def merge(base: Iterable[Tool], more: Iterable[Tool]) -> tuple[Tool, ...]:
    """``base`` with ``more`` added, a tool of ``more`` replacing one of the same name."""
    by_name = {t.name: t for t in base}
    by_name.update((t.name, t) for t in more)
    return tuple(by_name.values())


@dataclass
class ToolOutcome:
    """A run tool: the result the model gets (JSON text), or the error that stopped it."""

    call: ToolCall
    result: str = ""
    error: str | None = None
    ms: float = 0.0
    value: Any = None
    """The result as the tool returned it (what ``result`` is the JSON text of)."""

    @property
    def ok(self) -> bool:
        return self.error is None


class Toolbox:
    """A call's tools and how to run them: checked arguments, a timeout, a bounded JSON result."""

    def __init__(
        self,
        tools: Sequence[Tool],
        webhooks: Webhooks | None,
        call_id: str,
        context: dict[str, str],
        timeout_s: float,
    ) -> None:
        self.tools = {t.name: t for t in tools}
        self.webhooks = webhooks
        self.call_id = call_id
        self.context = context
        self.timeout_s = timeout_s

    def __bool__(self) -> bool:
        return bool(self.tools)

    @property
    def specs(self) -> list[ToolSpec]:
        return [t.spec() for t in self.tools.values()]

    async def run(self, call: ToolCall) -> ToolOutcome:
        """Runs one call; never raises but for cancellation (the outcome holds the error)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = ToolOutcome(call)
        try:
            result = await self._run(call)
            text = json.dumps(result, ensure_ascii=False)
            if len(text) > MAX_RESULT_CHARS:
                raise ToolError(f"{call.name} returned over {MAX_RESULT_CHARS} characters")
            outcome.result, outcome.value = text, result
        except (ToolError, WebhookError) as exc:
            outcome.error = str(exc)
        except TimeoutError:
            outcome.error = f"{call.name} did not finish within {self.timeout_s:g} s"
        except (TypeError, ValueError) as exc:  # a callable's result JSON cannot hold
            outcome.error = f"{call.name} returned something that is not JSON: {type(exc).__name__}"
        except Exception as exc:  # the application's own code raised
            outcome.error = f"{call.name} failed: {type(exc).__name__}"
            log.exception("tool %s failed", call.name)
        if outcome.error is not None:
            outcome.result = json.dumps({"error": outcome.error})
        outcome.ms = round((loop.time() - started) * 1000, 1)
        return outcome

    async def _run(self, call: ToolCall) -> Any:
        tool = self.tools.get(call.name)
        if tool is None:
            raise ToolError(f"the model called {call.name[:64]!r}, which is not a tool of this call")
        arguments = tool.check(call.arguments)
        async with asyncio.timeout(self.timeout_s):
            if tool.function is not None:
                context = ToolContext(self.call_id, dict(self.context))
                if inspect.iscoroutinefunction(tool.function):
                    return await tool.function(arguments, context)
                # A plain function may block (a database, a file): off the loop, which paces the audio.
                result = await run_tool(tool.function, arguments, context)
                return await result if inspect.isawaitable(result) else result
            if self.webhooks is None:
                raise ToolError("webhook tools need a webhook secret")
            assert tool.webhook is not None
            payload = {"call": self.call_id, "tool": tool.name, "arguments": arguments}
            return await self.webhooks.post(tool.webhook, payload, self.timeout_s)
