"""An asyncio event loop on virtual time: when nothing is ready to run, its clock jumps to the next
scheduled callback instead of waiting for it, so a test of seconds of conversation takes milliseconds
and every timing in it is exact.

Blocking work handed to an executor (``run_blocking``: the resampler, an end-of-turn model) runs at
once on the loop's thread, at no virtual time: a worker thread would finish at a real moment the
virtual clock knows nothing of. A loop with nothing ready and nothing scheduled is stuck for good (a
test waiting for something that cannot happen), and says so rather than hanging.
"""

from __future__ import annotations

import asyncio
import functools
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Stuck(RuntimeError):
    """Nothing is ready and nothing is scheduled: whatever the test awaits will never come."""


class _VirtualSelector(selectors.DefaultSelector):
    """Polls for real file events (the loop's self-pipe) without waiting; a wait becomes a jump of the
    loop's clock."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise Stuck("no callback is ready or scheduled: the test waits for what cannot happen")
        self._loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        super().__init__(_VirtualSelector(self))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += max(0.0, seconds)

    def run_in_executor(self, executor: Any, func: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        future: asyncio.Future[T] = self.create_future()
        try:
            future.set_result(func(*args))
        except BaseException as exc:  # the caller sees it, as it would from a worker
            future.set_exception(exc)
        return future


def run(coro: Coroutine[Any, Any, T], start: float = 1000.0) -> T:
    """Runs ``coro`` to completion on a fresh virtual-time loop, and closes it."""
    loop = VirtualTimeLoop(start)
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


def virtual_time(test: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Makes an async test function a plain one that runs on its own virtual-time loop."""

    @functools.wraps(test)
    def run_test(*args: Any, **kwargs: Any) -> T:
        return run(test(*args, **kwargs))

    return run_test
