"""Reply generation: the LLM interface, the embedded llama.cpp backend, and bounded chat history.

The OpenAI-compatible HTTP backend, ``OpenAICompatibleLLM``, is in ``openai/chat.py`` with the other
HTTP ones."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import re
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..runtime import models
from ..runtime.workers import lower_priority, priority
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

Message = dict[str, str]


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
    """Streams a reply to a chat history, token by token (each item is a piece of text)."""

    options: LLMOptions = LLMOptions()
    capabilities = Capabilities(streaming_output=True)

    @abc.abstractmethod
    def stream(self, messages: list[Message], options: LLMOptions | None = None) -> AsyncIterator[str]:
        """``options``: None for the backend's own."""

    def warmup(self, system_prompt: str) -> None:
        """Runs once at load (blocking) so the first user does not pay for lazy initialisation."""
        return None  # optional: backends with nothing to warm keep this


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
    turns: list[tuple[str, str]] = field(default_factory=list)
    drop_repeats: bool = True
    """A reply that repeats one the history holds (``repeats``) is not added, nor its question, and the
    turns it repeats are forgotten: a small model copies the replies in its prompt, so one repeated
    template turns into the answer to everything. Forgetting a turn in the middle re-reads the turns
    after it, so it happens only after a repeat (docs/decisions/history.md)."""

    def messages(self, user_text: str) -> list[Message]:
        msgs: list[Message] = [{"role": "system", "content": self.system_prompt}]
        for user, assistant in self.turns:
            msgs.append({"role": "user", "content": user})
            msgs.append({"role": "assistant", "content": assistant})
        msgs.append({"role": "user", "content": user_text})
        return msgs

    def add(self, user_text: str, reply: str) -> bool:
        """Returns False when the turn was not kept (a repeat, with ``drop_repeats``)."""
        if self.drop_repeats:
            kept = [turn for turn in self.turns if not repeats(reply, turn[1])]
            if len(kept) < len(self.turns):
                self.turns[:] = kept
                return False
        self.turns.append((user_text, reply))
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
        self, messages: list[Message], options: LLMOptions, emit, cancelled: threading.Event
    ) -> None:
        if cancelled.is_set():  # abandoned while it waited in the queue: skip the prompt evaluation
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

    async def stream(self, messages: list[Message], options: LLMOptions | None = None) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(item: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed while the thread ran (shutdown)
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                self._generate(messages, options or self.options, emit, cancelled)
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
