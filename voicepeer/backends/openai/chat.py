"""A language model over ``POST /v1/chat/completions``, streamed as server-sent events:
``http(s)://HOST:PORT/v1`` in ``--llm`` (llama.cpp's and llama-cpp-python's servers, Ollama, vLLM, OpenAI).

Every line of the stream and the reply's length are bounded, and every failure is an ``LLMError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Sequence

import aiohttp

from ..base import MAX_TEXT_CHARS, BackendError, Capabilities
from ..llm import LLM, LLMError, LLMOptions, Message, ToolCall, ToolChoice, ToolSpec
from ..registry import BackendContext, BadBackendURL
from .http import (
    CONNECT_TIMEOUT_S,
    MAX_JSON_BYTES,
    Endpoint,
    HTTPClient,
    error_excerpt,
    looks_like_name,
    read_bounded,
)

log = logging.getLogger(__name__)

LLM_READ_TIMEOUT_S = 60.0
"""The chat stream's socket guard. The chain bounds the first token and each next one by
``--llm-timeout``; this only keeps a dead connection from hanging a stream used without a chain."""

MAX_TOOL_CALLS = 8
"""Calls one round of a reply may make; more is a model gone astray."""

MAX_LINE_BYTES = 64 * 1024
"""The longest server-sent event line: a token's delta is a few hundred bytes of JSON."""


async def _lines(chunks: AsyncIterator[bytes], limit: int = MAX_LINE_BYTES) -> AsyncIterator[bytes]:
    """Lines of a byte stream, each bounded (aiohttp's own line reader raises a bare ValueError)."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line
        if len(pending) > limit:
            raise LLMError(f"the language model server sent a line over {limit} bytes")
    if pending:
        yield pending


DRAIN_S = 0.5


async def _drain(response: aiohttp.ClientResponse, limit: int = MAX_LINE_BYTES) -> None:
    """Reads what follows ``[DONE]`` (the chunked body's end, already on its way), so the connection
    goes back to the pool instead of being closed as one with a body half read. A server that keeps
    the stream open or talking after it loses the connection, not the reply."""
    left = limit
    with contextlib.suppress(TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout(DRAIN_S):
            while left > 0 and (data := await response.content.read(left)):
                left -= len(data)


_BARE_CALL = re.compile(r"^\s*functions\.[A-Za-z0-9_-]+:\s*$")


def _plain(content: str) -> str:
    """A tool's JSON result without quotes (``{forecast: sunny, temperature_celsius: 24}``), for a
    server that gets it as a user's turn: llama-cpp-python's function-calling template HTML-escapes
    every quote (``&#34;``), and a small model repeats the escapes. Told to answer after a weather tool,
    SmolLM2-135M on that server put the result in its reply 4 times in 4 this way (greedy), 3 in 4 as
    ``key: value; ...``."""
    try:
        value = json.loads(content)
    except (ValueError, RecursionError):
        return content

    def words(v: object) -> str:
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {words(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(words(x) for x in v) + "]"
        return str(v)

    return words(value)


class _EmptyStream(Exception):
    """A 200 event stream that carried no reply at all."""


class _ToolCallDeltas:
    """Tool calls assembled from a stream's deltas: each call's first delta has its ``index``, ``id``
    and name, the next ones more of its arguments' JSON text."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, str]] = {}

    def __bool__(self) -> bool:
        return bool(self._calls)

    def add(self, deltas: object) -> None:
        if deltas is None:
            return
        if not isinstance(deltas, list) or len(deltas) > MAX_TOOL_CALLS:
            raise TypeError("tool_calls is not a short list")
        for delta in deltas:
            index = delta.get("index", 0)
            if not isinstance(index, int) or not 0 <= index < MAX_TOOL_CALLS:
                raise TypeError("a tool call's index is out of range")
            call = self._calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
            function = delta.get("function") or {}
            for key, value in (
                ("id", delta.get("id")),
                ("name", function.get("name")),
                ("arguments", function.get("arguments")),
            ):
                if value is None:
                    continue
                if not isinstance(value, str):
                    raise TypeError(f"a tool call's {key} is not text")
                if key == "arguments":
                    call[key] += value
                elif not call[key]:  # the id and name come whole, once (llama-cpp-python repeats them)
                    call[key] = value
                if len(call[key]) > MAX_TEXT_CHARS:
                    raise TypeError(f"a tool call's {key} is over {MAX_TEXT_CHARS} characters")

    def finish(self) -> list[ToolCall]:
        found = []
        for index, call in sorted(self._calls.items()):
            # llama-cpp-python's legacy function_call names end in a stray colon ("get_weather:").
            name = call["name"].strip().rstrip(":")
            if not name:
                raise LLMError("the language model server sent a tool call without a name")
            found.append(ToolCall(call["id"] or f"call_{index}", name, call["arguments"] or "{}"))
        return found


class OpenAICompatibleLLM(LLM):
    """Chat completions over HTTP, streamed as server-sent events: Ollama, vLLM, llama.cpp's server,
    llama-cpp-python's server, OpenAI. Nothing is loaded locally; the server owns the model.

    Every failure (refused connection, an HTTP error, a malformed stream) surfaces as ``LLMError``, which
    the conversation turns into an error event and a spoken apology. A stream closed before its end
    (the reply reached its last sentence) closes its connection, which tells the server to stop
    generating; a stream read to its end leaves its connection to the next turn.
    """

    capabilities = Capabilities(streaming_output=True, cheap=False, remote=True, tools=True)

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        options: LLMOptions | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = LLM_READ_TIMEOUT_S,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        endpoint = Endpoint.parse(base_url)
        self.name = endpoint.name
        self.base_url = endpoint.base
        self.path = f"{self.base_url}/chat/completions"
        self.model = model or endpoint.query.get("model") or "default"
        self.api_key = api_key
        self.options = options or LLMOptions()
        self.tool_results = endpoint.query.get("tool_results", "tool")
        if self.tool_results not in ("tool", "user"):
            raise BadBackendURL(f"{self.name}: tool_results is 'tool' or 'user', not {self.tool_results!r}")
        self._streams_tools = True
        """Cleared once the server shows it cannot stream a request with tools."""
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.http = HTTPClient(
            endpoint,
            "the language model server",
            token=api_key,
            connect_timeout_s=connect_timeout_s,
            trace_configs=trace_configs,
        )

    def _body(
        self,
        messages: list[Message],
        options: LLMOptions,
        tools: Sequence[ToolSpec],
        tool_choice: ToolChoice,
        stream: bool,
    ) -> dict[str, object]:
        body: dict[str, object] = {
            "model": self.model,
            "messages": self._adapt(messages),
            "stream": stream,
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
        }
        if tools:
            body["tools"] = list(tools)
            body["tool_choice"] = tool_choice
            if tool_choice == "required" and len(tools) == 1:
                # The same, named: every server that takes tools takes this form (llama-cpp-python's
                # function calling has no "required").
                body["tool_choice"] = {"type": "function", "function": {"name": tools[0]["function"]["name"]}}
        for name in ("presence_penalty", "frequency_penalty"):
            if value := getattr(options, name):
                body[name] = value
        return body

    def _adapt(self, messages: list[Message]) -> list[Message]:
        """The history as this server takes it: an assistant's null content as "", and each tool's
        result as it is (``tool_results=tool``) or as a user message (``tool_results=user``) for a
        server whose chat template has no place for a ``tool`` message (llama-cpp-python's
        ``chatml-function-calling`` drops them, and the model calls the tool again and again)."""
        adapted: list[Message] = []
        names: dict[str, str] = {}
        for message in messages:
            for call in message.get("tool_calls") or ():
                names[call["id"]] = call["function"]["name"]
            if message["role"] == "assistant" and message.get("content") is None:
                # OpenAI's null content beside tool calls; llama-cpp-python's server takes only text.
                adapted.append({**message, "content": ""})
            elif message["role"] == "tool" and self.tool_results == "user":
                name = names.get(message["tool_call_id"], "the tool")
                adapted.append(
                    {"role": "user", "content": f"The result of {name}: {_plain(message['content'])}"}
                )
            else:
                adapted.append(message)
        return adapted

    async def stream(
        self,
        messages: list[Message],
        options: LLMOptions | None = None,
        tools: Sequence[ToolSpec] = (),
        tool_choice: ToolChoice = "auto",
    ) -> AsyncIterator[str | ToolCall]:
        options = options or self.options
        if (
            tool_choice == "auto"
            and self.tool_results == "user"
            and messages
            and messages[-1]["role"] == "tool"
        ):
            # A server that needs this mode (llama-cpp-python's function calling) cannot answer under
            # "auto" once it has results: its grammar lets the message be only another call's name.
            tool_choice = "none"
        try:
            if tools and tool_choice == "auto" and not self._streams_tools:
                items = await self._complete(self._body(messages, options, tools, tool_choice, False))
            else:
                items = None
                body = self._body(messages, options, tools, tool_choice, True)
                said = False
                try:
                    async for item in self._stream(body):
                        said = True
                        yield item
                    return
                except _EmptyStream:
                    if not tools or said:
                        raise LLMError("the language model server ended its reply with no text") from None
                    # llama-cpp-python's server answers a streamed request with tools 200 and no events
                    # ("Automatic streaming tool choice is not supported"): its turns with tools go
                    # unstreamed from now on. The answer after the tools (``none``) still streams.
                    log.info(
                        "%s: no stream for a request with tools; asking unstreamed from now on", self.name
                    )
                    self._streams_tools = False
                    body["stream"] = False
                    items = await self._complete(body)
            if not items and tool_choice == "auto":
                # Free to call a tool, the model chose to answer, and the server lost the answer
                # (llama-cpp-python's function calling constrains that message to nothing): asked to
                # answer, it streams.
                log.info("%s: an empty answer with tools; asking for the answer alone", self.name)
                async for item in self.stream(messages, options, tools, "none"):
                    yield item
                return
            if not items:
                raise LLMError("the language model server answered with no text and no tool call")
            for item in items:
                yield item
        except LLMError:
            raise
        except BackendError as exc:  # a transport failure, named by the HTTP client
            raise LLMError(str(exc)) from None

    async def _stream(self, body: dict[str, object]) -> AsyncIterator[str | ToolCall]:
        timeout = self.http.timeout(read=self.read_timeout_s)
        async with self.http.request("POST", self.path, timeout, lambda: {"json": body}) as response:
            if response.status != 200:
                detail = await error_excerpt(response)
                raise LLMError(f"the language model server answered {response.status}: {detail}")
            if response.content_type != "text/event-stream":
                raise LLMError(
                    f"the language model server answered {response.content_type}, not an event stream"
                )
            total = 0
            events = 0
            calls = _ToolCallDeltas()
            async for raw in _lines(response.content.iter_any()):
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue  # blank separators, comments, event names
                data = line[5:].strip()
                if data == "[DONE]":
                    await _drain(response)
                    if not total and not calls:
                        raise _EmptyStream()  # a clean end with no words: a server that dropped the reply
                    for call in calls.finish():
                        yield call
                    return
                events += 1
                try:
                    delta = json.loads(data)["choices"][0].get("delta") or {}
                    text = delta.get("content")
                    calls.add(delta.get("tool_calls"))
                except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                    raise LLMError(f"malformed stream from the language model server: {exc}") from None
                if text:
                    if not isinstance(text, str):
                        raise LLMError("malformed stream from the language model server: a non-text delta")
                    total += len(text)
                    if total > MAX_TEXT_CHARS:
                        raise LLMError(f"the language model server sent over {MAX_TEXT_CHARS} characters")
                    yield text
            if not events:
                raise _EmptyStream()
            raise LLMError("the language model server's stream ended without [DONE]")

    async def _complete(self, body: dict[str, object]) -> list[str | ToolCall]:
        """One unstreamed completion: its text in one piece, then its tool calls (nothing if it had
        neither)."""
        timeout = self.http.timeout(read=self.read_timeout_s)
        async with self.http.request("POST", self.path, timeout, lambda: {"json": body}) as response:
            await self.http.check(response, json_body=True)
            raw = await read_bounded(response, MAX_JSON_BYTES, self.http.what)
        try:
            message = json.loads(raw)["choices"][0]["message"]
            text = message.get("content") or ""
            calls = _ToolCallDeltas()
            calls.add([{"index": i, **c} for i, c in enumerate(message.get("tool_calls") or ())])
            legacy = message.get("function_call")
            if not calls and isinstance(legacy, dict):
                calls.add([{"index": 0, "function": legacy}])
            if not isinstance(text, str):
                raise TypeError("content is not text")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise LLMError(f"malformed answer from the language model server: {exc}") from None
        if len(text) > MAX_TEXT_CHARS:
            raise LLMError(f"the language model server sent over {MAX_TEXT_CHARS} characters")
        if _BARE_CALL.match(text):
            text = ""  # llama-cpp-python's grammar let the "message" be only a function's name
        return ([text] if text.strip() else []) + list(calls.finish())

    async def probe(self) -> None:
        """``GET /models``, a 200 with JSON. Enough for llama.cpp's and llama-cpp-python's servers and
        vLLM, which answer only once their model is loaded; a generation as a probe would cost a
        server that is up a whole prompt evaluation every few seconds. (Ollama answers before it
        loads a model; its first turn is then slow, not failed.)"""
        timeout = self.http.timeout(total=min(self.read_timeout_s, 10.0))
        async with self.http.request("GET", f"{self.base_url}/models", timeout) as response:
            await self.http.check(response, json_body=True)
            body = await read_bounded(response, MAX_JSON_BYTES, self.http.what)
        try:
            json.loads(body)
        except ValueError:
            raise BackendError(f"{self.http.what} answered malformed JSON on /models") from None

    async def aclose(self) -> None:
        await self.http.aclose()


def llm(url: str, context: BackendContext) -> OpenAICompatibleLLM:
    # ``--llm-model`` names the server's model here, but a GGUF path for the embedded fallback of the
    # same chain: a path is not sent.
    model = (
        context.llm_model
        if looks_like_name(context.llm_model) and not str(context.llm_model).endswith(".gguf")
        else None
    )
    return OpenAICompatibleLLM(url, model=model, api_key=context.llm_api_key, options=context.llm_options)
