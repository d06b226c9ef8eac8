"""Reply generation: the LLM interface, the embedded llama.cpp backend, and bounded chat history.

The OpenAI-compatible HTTP backend, ``OpenAICompatibleLLM``, is in ``openai/chat.py`` with the other
HTTP ones."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from ..runtime import models
from ..runtime.priorities import lower_priority
from ..runtime.workers import priority
from . import toolprompt
from .base import Backend, BackendError, Capabilities

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant. Your words are spoken aloud, so answer in one or two short "
    "sentences of plain text, with no lists, markdown or emoji."
)
"""Kept after ``bench/replies.py`` tried others on SmolLM2-135M: a 135M model follows the gist of an
instruction, not its details, so the cap (``LLMOptions.max_sentences``) and the history
(``History.drop_repeats``) keep replies brief and varied, not the wording. The runs:
docs/decisions/llm-replies.md."""

Message = dict[str, Any]
"""A chat message as OpenAI's chat completions define it: ``{"role": "system" | "user" | "assistant" |
"tool", "content": ...}``, an assistant's with ``tool_calls``, a tool's with ``tool_call_id``."""

ToolSpec = dict[str, Any]
"""A tool as OpenAI's ``tools`` list holds it: ``{"type": "function", "function": {"name", "description",
"parameters"}}``."""

ToolChoice = Literal["auto", "required", "none"]
"""``auto``: the model may call a tool or answer; ``required``: it must call one (an application whose
every turn needs its data); ``none``: it must answer (the last round of a turn)."""


@dataclass(frozen=True)
class ToolCall:
    """A tool the model asked for: what a stream yields, among its text, once the call is whole."""

    id: str
    name: str
    arguments: str
    """JSON text, as the model wrote it (it may not parse: the caller checks)."""

    def as_dict(self) -> dict[str, Any]:
        """The entry of an assistant message's ``tool_calls``."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def assistant_message(text: str, calls: Sequence[ToolCall]) -> Message:
    """The assistant's message of a round that called tools: what it said first, if anything, and the
    calls (``content`` is null without text, as OpenAI writes it)."""
    return {"role": "assistant", "content": text or None, "tool_calls": [c.as_dict() for c in calls]}


def tool_message(call_id: str, content: str) -> Message:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


class LLMError(BackendError):
    """The backend failed or timed out; the message is safe to show to the user."""


@dataclass(frozen=True)
class LLMOptions:
    """How a reply is generated. Each backend holds its defaults here; a call may ask for other values
    per request (a ``config`` command changes ``max_tokens``), so a shared backend is never mutated."""

    max_tokens: int = 96
    """A bound for a run-on sentence (~70 words); ``max_sentences`` ends most replies long before."""
    temperature: float = 0.3
    """Low, for brief replies: 0.7 doubled the length of SmolLM2's (docs/decisions/llm-replies.md)."""
    repeat_penalty: float = 1.0
    """llama.cpp's penalty on tokens of the last 64 (prompt included); 1.0 is none. Not sent over HTTP
    (not in the OpenAI API). Off: on SmolLM2 it made replies longer or repetitive
    (docs/decisions/llm-replies.md)."""
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    """OpenAI's penalties, sent over HTTP only when not 0 (some servers reject what they lack). Off:
    neither helped SmolLM2 (docs/decisions/llm-replies.md)."""
    max_sentences: int | None = 2
    """The reply stops after this many sentences (None: no cap). Applied by the consumer of the stream
    (``voicepeer.call.text.SpeechChunker``), which then closes it, so the backend generates no more.
    Two, because a small model told "one or two short sentences" writes up to five, and with one the
    history turns into a template (docs/decisions/reply-length.md)."""


class LLM(Backend, abc.ABC):
    """Streams a reply to a chat history, token by token (each item is a piece of text), and, for a
    backend whose ``capabilities.tools`` says so, the tools the model calls (``ToolCall`` items, each
    once whole; a round that calls tools ends after its calls)."""

    options: LLMOptions = LLMOptions()
    capabilities = Capabilities(streaming_output=True)

    @abc.abstractmethod
    def stream(
        self,
        messages: list[Message],
        options: LLMOptions | None = None,
        tools: Sequence[ToolSpec] = (),
        tool_choice: ToolChoice = "auto",
    ) -> AsyncIterator[str | ToolCall]:
        """``options``: None for the backend's own. ``tools``: given only to a backend that declares
        ``capabilities.tools``; one that does not may ignore them."""

    def warmup(self, system_prompt: str) -> None:
        """Runs once at load (blocking) so the first user does not pay for lazy initialisation."""
        return None  # optional: backends with nothing to warm keep this


@dataclass(frozen=True)
class Exchange:
    """One turn of the history: the user's words (None when the bot spoke first: a greeting, an
    announcement), the messages of the tools the reply called on the way, and the reply as it was
    heard."""

    user: str | None
    reply: str
    steps: tuple[Message, ...] = ()


_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]{0,63})\}")


def render_prompt(template: str, context: dict[str, str]) -> str:
    """The system prompt with ``{name}`` replaced by the call's context variable ``name``; any other
    braces (JSON in a prompt, a variable the call has not set) are left as they are."""
    if not context:
        return template
    return _VARIABLE.sub(lambda m: context.get(m.group(1), m.group(0)), template)


@dataclass
class History:
    """One session's conversation, bounded so a long call neither grows memory nor the prompt forever.

    It forgets in blocks, not a turn at a time: the LLM server (llama.cpp's prefix cache, and most
    hosted ones) reuses the prompt up to its first change, and a window sliding by one turn would change
    the prompt right after the system prompt, and re-read the whole history, every turn. Dropping the
    older half at once re-reads it once every ``max_turns // 2`` turns (docs/decisions/history.md).
    """

    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_turns: int = 6
    turns: list[Exchange] = field(default_factory=list)
    drop_repeats: bool = True
    """A reply that repeats one the history holds (``repeats``) is not added, nor its question, and the
    turns it repeats are forgotten: a small model copies the replies in its prompt, so one repeated
    template turns into the answer to everything. Forgetting a turn in the middle re-reads the turns
    after it, so it happens only after a repeat (docs/decisions/history.md)."""
    context: dict[str, str] = field(default_factory=dict)
    """The call's variables for ``{name}`` in the system prompt (``render_prompt``)."""
    instruction: str = ""
    """Said after the system prompt, in the same message: the language to answer in, when it is not
    the prompt's own (``voicepeer.call.language.Language.reply_instruction``)."""

    def messages(self, user_text: str | None, extra: Sequence[Message] = ()) -> list[Message]:
        """The prompt for a reply to ``user_text`` (None: the history alone), with ``extra`` messages
        for this reply only (an application's context) just before it."""
        system = render_prompt(self.system_prompt, self.context)
        if self.instruction:
            system = f"{system}\n\n{self.instruction}"
        msgs: list[Message] = [{"role": "system", "content": system}]
        for turn in self.turns:
            if turn.user is not None:
                msgs.append({"role": "user", "content": turn.user})
            msgs.extend(turn.steps)
            msgs.append({"role": "assistant", "content": turn.reply})
        msgs.extend(extra)
        if user_text is not None:
            msgs.append({"role": "user", "content": user_text})
        return msgs

    def add(self, user_text: str | None, reply: str, steps: Sequence[Message] = ()) -> bool:
        """Returns False when the turn was not kept (a repeat, with ``drop_repeats``)."""
        if self.drop_repeats:
            kept = [turn for turn in self.turns if not repeats(reply, turn.reply)]
            if len(kept) < len(self.turns):
                self.turns[:] = kept
                return False
        self.turns.append(Exchange(user_text, reply, tuple(steps)))
        if len(self.turns) > self.max_turns:
            del self.turns[: len(self.turns) - max(1, self.max_turns // 2)]
        return True


_WORD = re.compile(r"[a-z0-9']+")


def _trigrams(text: str) -> set[tuple[str, ...]]:
    w = _WORD.findall(text.lower())
    return {tuple(w[i : i + 3]) for i in range(len(w) - 2)}


def repeats(reply: str, earlier: str, opening_words: int = 3) -> bool:
    """True when ``reply`` is ``earlier`` again, give or take a word (over half of its word trigrams
    are in it), or the same template (it opens with the same ``opening_words`` words, and has more)."""
    words = _WORD.findall(reply.lower())
    if len(words) > opening_words and _WORD.findall(earlier.lower())[:opening_words] == words[:opening_words]:
        return True
    grams = _trigrams(reply)
    return bool(grams) and len(grams & _trigrams(earlier)) > len(grams) / 2


_END = object()


class LlamaCppLLM(LLM):
    """An embedded GGUF model run by llama.cpp in a worker thread (SmolLM2-135M by default).

    One model per process. llama.cpp contexts are not re-entrant, so generations are serialised by a
    lock; a cancelled stream stops at the next token, which frees the model within a few milliseconds.
    """

    def __init__(
        self,
        model_path: str | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        options: LLMOptions | None = None,
        chat_format: str | None = None,
    ) -> None:
        from llama_cpp import Llama

        self.path = models.gguf_path(model_path)
        self.options = options or LLMOptions()
        threads = n_threads or max(1, os.cpu_count() or 1)
        # chat_format None: the template in the GGUF's metadata (or llama-cpp-python's guess from it).
        self._llama = Llama(
            model_path=str(self.path), n_ctx=n_ctx, n_threads=threads, chat_format=chat_format, verbose=False
        )
        template = str(self._llama.metadata.get("tokenizer.chat_template", ""))
        # Tools need a prompt format the model knows; ChatML's is ``toolprompt``'s.
        self.capabilities = Capabilities(streaming_output=True, tools=toolprompt.is_chatml(template))
        self._lock = threading.Lock()
        # Its own thread: generations are serial anyway, and queued or stuck ones must never occupy the
        # shared inference pool that ASR and TTS of every session need.
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="voicepeer-llm", initializer=lower_priority
        )

    def warmup(self, system_prompt: str) -> None:
        # Besides paging the weights in, this leaves the system prompt in llama.cpp's KV cache:
        # llama-cpp-python reuses the longest common token prefix, so a turn only evaluates its new part.
        messages = History(system_prompt=system_prompt).messages("Hello.")
        with self._lock:
            self._llama.create_chat_completion(messages=messages, max_tokens=1)

    def _generate(
        self,
        messages: list[Message],
        options: LLMOptions,
        emit,
        cancelled: threading.Event,
        tools: Sequence[ToolSpec] = (),
        tool_choice: ToolChoice = "auto",
    ) -> None:
        if cancelled.is_set():  # abandoned while it waited in the queue: skip the prompt evaluation
            return
        if tools:
            with self._lock:
                self._generate_with_tools(messages, options, emit, cancelled, tools, tool_choice)
            return
        with self._lock:
            chunks = self._llama.create_chat_completion(
                messages=messages,
                stream=True,
                max_tokens=options.max_tokens,
                temperature=options.temperature,
                repeat_penalty=options.repeat_penalty,
                presence_penalty=options.presence_penalty,
                frequency_penalty=options.frequency_penalty,
            )
            for chunk in chunks:
                if cancelled.is_set():
                    break
                priority.wait_turn()  # let ASR/TTS that a user is waiting on have the cores
                delta = chunk["choices"][0].get("delta", {}).get("content")
                if delta:
                    emit(delta)

    def _generate_with_tools(
        self,
        messages: list[Message],
        options: LLMOptions,
        emit,
        cancelled: threading.Event,
        tools: Sequence[ToolSpec],
        tool_choice: ToolChoice,
    ) -> None:
        """A message (streamed) or one tool call, decided by a constrained first step (``toolprompt``)."""
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

        llama = self._llama
        # The same prompt in every round, told to answer or not: its prefix (the system prompt with
        # the tools, the history) stays in llama.cpp's cache from round to round and turn to turn. A
        # round 3 with a prompt of its own re-read the ~240 tokens in the next turn's round 1: 850 ms.
        prompt = toolprompt.render(messages, tools)
        common = {
            "temperature": options.temperature,
            "repeat_penalty": options.repeat_penalty,
            "presence_penalty": options.presence_penalty,
            "frequency_penalty": options.frequency_penalty,
        }
        names = [t["function"]["name"] for t in tools]
        name = None
        if tool_choice == "required":
            name = names[0] if len(names) == 1 else self._pick(prompt, names)
        elif tool_choice == "auto":
            # The decision is the first word alone (a token or two), the tool's name only if there is
            # a choice: each token under a grammar is a step of the model, forced or not.
            grammar = LlamaGrammar.from_string(toolprompt.DECISION, verbose=False)
            first = llama.create_completion(prompt=prompt, grammar=grammar, temperature=0.0, max_tokens=3)
            if first["choices"][0]["text"].startswith("f"):  # type: ignore[index]
                name = names[0] if len(names) == 1 else self._pick(prompt, names)
        if cancelled.is_set():
            return
        if name is None:
            chunks = llama.create_completion(
                prompt=prompt + "message:\n",
                stream=True,
                max_tokens=options.max_tokens,
                stop=[toolprompt.END],
                **common,  # type: ignore[arg-type]
            )
            for chunk in chunks:
                if cancelled.is_set():
                    break
                priority.wait_turn()
                if text := chunk["choices"][0]["text"]:  # type: ignore[index]
                    emit(text)
            return
        tool = next(t for t in tools if t["function"]["name"] == name)
        try:
            schema = json.dumps(tool["function"].get("parameters") or {"type": "object"})
            grammar = LlamaGrammar.from_json_schema(schema, verbose=False)
        except Exception:  # a schema llama.cpp's converter does not take: any JSON object
            grammar = LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        done = llama.create_completion(
            prompt=f"{prompt}functions.{name}:\n",
            grammar=grammar,
            max_tokens=4 * options.max_tokens,
            stop=[toolprompt.END],
            **common,  # type: ignore[arg-type]
        )
        arguments = done["choices"][0]["text"].strip()  # type: ignore[index]
        emit(ToolCall(f"call_{uuid.uuid4().hex[:24]}", name, arguments))

    def _pick(self, prompt: str, names: list[str]) -> str:
        """Which of several tools, under a grammar of their names."""
        from llama_cpp.llama_grammar import LlamaGrammar

        grammar = LlamaGrammar.from_string(toolprompt.names_grammar(names), verbose=False)
        chosen = self._llama.create_completion(
            prompt=prompt + "functions.", grammar=grammar, temperature=0.0, max_tokens=32
        )
        name = chosen["choices"][0]["text"].strip()  # type: ignore[index]
        # Cut short by max_tokens: the first of the names it began.
        return name if name in names else next((n for n in names if n.startswith(name)), names[0])

    async def stream(
        self,
        messages: list[Message],
        options: LLMOptions | None = None,
        tools: Sequence[ToolSpec] = (),
        tool_choice: ToolChoice = "auto",
    ) -> AsyncIterator[str | ToolCall]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(item: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed while the thread ran (shutdown)
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                self._generate(messages, options or self.options, emit, cancelled, tools, tool_choice)
            except Exception as exc:
                log.exception("llama.cpp generation failed")
                emit(LLMError(f"the embedded model failed: {exc}"))
            finally:
                emit(_END)

        future = loop.run_in_executor(self._executor, work)
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, Exception):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            cancelled.set()
            # The generator may be closed from a cancelled task; wait for the thread without blocking it.
            future.add_done_callback(lambda f: f.exception())
