"""The tasks one object starts: named, logged if they fail, and all cancelled when it closes.

A session, its call and the call's conversation each start tasks (watchdogs, turns, timers); a task
nobody holds can be garbage-collected mid-flight and a failure nobody awaits is never seen, so each
owner keeps its tasks here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class Tasks:
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any] | None:
        """Starts ``coro``; after ``cancel_all`` nothing starts any more (None)."""
        if self._closed:
            coro.close()
            return None
        task = asyncio.get_running_loop().create_task(coro, name=f"{name}:{self.owner}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    async def cancel_all(self) -> None:
        """Cancels every task but the one calling (a close that runs as one of them) and waits for them
        to finish. Nothing new starts after this."""
        self._closed = True
        others = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        for task in others:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
