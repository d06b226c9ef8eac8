"""aiortc's outbound encoding, on the media path's priority.

aiortc's sender encodes every outbound frame in the event loop's default executor and asks the track
for the next frame only once that is done: a thread of that pool coming back late is a late frame of
the bot's voice. An ordinary thread there waited for a core as long as its frame was late (up to 35 ms
in a barge-in run at nice -5, docs/decisions/cpu-and-memory.md). So the server gives the loop a
default executor that runs aiortc's encoders in a small pool of the media path's helpers, and
everything else put there (``asyncio.to_thread``, name lookups, file reads: an application's code
among them) in ordinary threads, as a plain default executor would.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from aiortc.codecs.base import Encoder

from ..runtime.priorities import normal_priority, raise_helper_priority

ENCODER_THREADS = max(2, os.cpu_count() or 1)
"""Encoding a 20 ms Opus frame takes ~0.2 ms: a thread per core keeps every call's frame from
queueing, and no more real-time threads than cores."""


class MediaExecutor(ThreadPoolExecutor):
    """A default executor that sends aiortc's encodes to real-time helpers, the rest to ordinary
    threads."""

    def __init__(self) -> None:
        super().__init__(thread_name_prefix="voicepeer-default", initializer=normal_priority)
        self.encoders = ThreadPoolExecutor(
            max_workers=ENCODER_THREADS,
            thread_name_prefix="voicepeer-encoder",
            initializer=raise_helper_priority,
        )

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if isinstance(getattr(fn, "__self__", None), Encoder):
            return self.encoders.submit(fn, *args, **kwargs)
        return super().submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.encoders.shutdown(wait, cancel_futures=cancel_futures)
        super().shutdown(wait, cancel_futures=cancel_futures)


_given: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def use_media_executor(loop: asyncio.AbstractEventLoop) -> None:
    """Gives ``loop`` a ``MediaExecutor`` as its default executor, once; the loop shuts it down when
    it closes (``asyncio.run`` does)."""
    if loop in _given:
        return
    _given.add(loop)
    loop.set_default_executor(MediaExecutor())
