"""A language model over ``POST /v1/chat/completions``, streamed as server-sent events:
``http(s)://HOST:PORT/v1`` in ``--llm`` (llama.cpp's and llama-cpp-python's servers, Ollama, vLLM, OpenAI).

Every line of the stream and the reply's length are bounded, and every failure is an ``LLMError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence

import aiohttp

from ..base import MAX_TEXT_CHARS, BackendError, Capabilities
from ..llm import LLM, LLMError, LLMOptions, Message
from ..registry import BackendContext
from .http import (
    CONNECT_TIMEOUT_S,
    MAX_JSON_BYTES,
    Endpoint,
    HTTPClient,
    error_excerpt,
    looks_like_name,
    read_bounded,
)

LLM_READ_TIMEOUT_S = 60.0
"""The chat stream's socket guard. The chain bounds the first token and each next one by
``--llm-timeout``; this only keeps a dead connection from hanging a stream used without a chain."""

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


class OpenAICompatibleLLM(LLM):
    """Chat completions over HTTP, streamed as server-sent events: Ollama, vLLM, llama.cpp's server,
    llama-cpp-python's server, OpenAI. Nothing is loaded locally; the server owns the model.

    Every failure (refused connection, an HTTP error, a malformed stream) surfaces as ``LLMError``, which
    the conversation turns into an error event and a spoken apology. A stream closed before its end
    (the reply reached its last sentence) closes its connection, which tells the server to stop
    generating; a stream read to its end leaves its connection to the next turn.
    """

    capabilities = Capabilities(streaming_output=True, cheap=False, remote=True)

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
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.http = HTTPClient(
            endpoint,
            "the language model server",
            token=api_key,
            connect_timeout_s=connect_timeout_s,
            trace_configs=trace_configs,
        )

    def _body(self, messages: list[Message], options: LLMOptions) -> dict[str, object]:
        body: dict[str, object] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
        }
        for name in ("presence_penalty", "frequency_penalty"):
            if value := getattr(options, name):
                body[name] = value
        return body

    async def stream(self, messages: list[Message], options: LLMOptions | None = None) -> AsyncIterator[str]:
        body = self._body(messages, options or self.options)
        timeout = self.http.timeout(read=self.read_timeout_s)
        try:
            async with self.http.request("POST", self.path, timeout, lambda: {"json": body}) as response:
                if response.status != 200:
                    detail = await error_excerpt(response)
                    raise LLMError(f"the language model server answered {response.status}: {detail}")
                if response.content_type != "text/event-stream":
                    raise LLMError(
                        f"the language model server answered {response.content_type}, not an event stream"
                    )
                total = 0
                async for raw in _lines(response.content.iter_any()):
                    line = raw.decode("utf-8", "replace").strip()
                    if not line.startswith("data:"):
                        continue  # blank separators, comments, event names
                    data = line[5:].strip()
                    if data == "[DONE]":
                        await _drain(response)
                        if not total:  # a clean end with no words: a server that dropped the reply
                            raise LLMError("the language model server ended its reply with no text")
                        return
                    try:
                        delta = json.loads(data)["choices"][0].get("delta", {}).get("content")
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                        raise LLMError(f"malformed stream from the language model server: {exc}") from None
                    if delta:
                        if not isinstance(delta, str):
                            raise LLMError(
                                "malformed stream from the language model server: a non-text delta"
                            )
                        total += len(delta)
                        if total > MAX_TEXT_CHARS:
                            raise LLMError(f"the language model server sent over {MAX_TEXT_CHARS} characters")
                        yield delta
                raise LLMError("the language model server's stream ended without [DONE]")
        except LLMError:
            raise
        except BackendError as exc:  # a transport failure, named by the HTTP client
            raise LLMError(str(exc)) from None

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
