"""The worker threads that run model inference off the event loop.

One pool per process, shared by every session: the models themselves are shared, and the CPU has only
so many cores, so more threads would only make each call slower. CTranslate2, onnxruntime and llama.cpp
release the GIL while they compute, so the loop keeps pacing audio while they run.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, Protocol, TypeVar

from .memory import release_free_memory
from .priorities import lower_priority, normal_priority, raise_helper_priority

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger(__name__)


@functools.cache
def executor() -> ThreadPoolExecutor:
    """The inference pool: ASR, LLM and TTS calls of every session, at a lower CPU priority."""
    return ThreadPoolExecutor(max_workers=6, thread_name_prefix="voicepeer-infer", initializer=lower_priority)


@functools.cache
def frontend_executor() -> ThreadPoolExecutor:
    """A separate small pool for the per-frame audio front-end (VAD), so a 20 ms frame never queues
    behind a seconds-long ASR or LLM call in the inference pool."""
    return ThreadPoolExecutor(
        max_workers=2, thread_name_prefix="voicepeer-frontend", initializer=raise_helper_priority
    )


@functools.cache
def tools_executor() -> ThreadPoolExecutor:
    """The application's own blocking functions (tools), as ordinary threads: code we do not know must
    not run at the media path's priority."""
    return ThreadPoolExecutor(
        max_workers=8, thread_name_prefix="voicepeer-tools", initializer=normal_priority
    )


async def _run_in(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args, **kwargs))


class SoundSource(Protocol):
    """Something that sends a voice in real time (a call's playout)."""

    @property
    def sounding(self) -> bool:
        """It has audio queued to send."""
        ...


class IdleTrim:
    """Returns freed native memory to the system once the inference pool has been idle a moment, and
    no call's voice is being sent.

    Trimming takes ~11 ms with the models loaded and makes the next inference fault its pages in
    again, so it waits until no ASR or TTS has run for ``delay_s``: between turns, not between the
    sentences of one reply. And it holds glibc's arena locks: the event loop, which allocates for every
    outbound frame, waited 11-24 ms behind it, and a frame of the bot's voice left late. A reply is
    synthesized well ahead of its playout, so the pool went idle while the bot still spoke, and most
    replies had a trim under them. So it also waits until no ``watch``-ed voice is sounding, for at most
    ``max_wait_s`` (on a server whose calls never all go quiet, memory must still go back). Lives on
    the event loop; the trim itself runs in the pool.
    """

    def __init__(self, delay_s: float = 0.5, max_wait_s: float = 20.0) -> None:
        self.delay_s = delay_s
        self.max_wait_s = max_wait_s
        self.trims = 0
        self.deferred = 0
        """Times a due trim waited for a voice to go quiet."""
        self._inflight = 0
        self._handle: asyncio.TimerHandle | None = None
        self._due: float | None = None
        self._voices: weakref.WeakSet[SoundSource] = weakref.WeakSet()

    def watch(self, voice: SoundSource) -> None:
        """Trims wait while ``voice`` sounds (held weakly: a call's playout goes with the call)."""
        self._voices.add(voice)

    def begin(self) -> None:
        self._inflight += 1
        self._due = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def end(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            loop = asyncio.get_running_loop()
            self._due = loop.time() + self.delay_s
            self._handle = loop.call_later(self.delay_s, self._fire)

    def _fire(self) -> None:
        self._handle = None
        if self._inflight or self._due is None:
            return
        loop = asyncio.get_running_loop()
        if any(v.sounding for v in list(self._voices)) and loop.time() - self._due < self.max_wait_s:
            self.deferred += 1
            self._handle = loop.call_later(self.delay_s, self._fire)
            return
        self._due = None
        self.trims += 1
        executor().submit(release_free_memory)


idle_trim = IdleTrim()


async def run_blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Runs a blocking model call in the inference pool and awaits its result."""
    idle_trim.begin()
    try:
        return await _run_in(executor(), fn, *args, **kwargs)
    finally:
        idle_trim.end()


async def run_tool(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Runs an application's blocking function in the tools pool and awaits its result, in a copy of
    the caller's context variables (as ``asyncio.to_thread`` would)."""
    context = contextvars.copy_context()
    return await _run_in(tools_executor(), context.run, fn, *args, **kwargs)


async def run_frontend(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Runs a blocking per-frame audio call in the front-end pool and awaits its result."""
    return await _run_in(frontend_executor(), fn, *args, **kwargs)


class CpuPriority:
    """Lets latency-critical inference run ahead of work that can wait, on a CPU with few cores.

    ASR and TTS are urgent: a user is waiting for exactly that result. A local LLM mostly is not: once
    the first phrase of a reply has been written it runs far ahead of playback, and every core it holds
    slows the synthesis of the phrase the user is waiting to hear. So the embedded LLM calls
    ``wait_turn`` between tokens and pauses while urgent work runs (its KV cache simply waits), with a
    bound so it can never starve.
    """

    def __init__(self) -> None:
        self._urgent = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def urgent(self) -> Iterator[None]:
        with self._cond:
            self._urgent += 1
        try:
            yield
        finally:
            with self._cond:
                self._urgent -= 1
                if self._urgent == 0:
                    self._cond.notify_all()

    def wait_turn(self, max_wait_s: float = 1.0) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._urgent == 0, timeout=max_wait_s)


priority = CpuPriority()
