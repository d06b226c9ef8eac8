"""A stage's backends in order of preference, with timeouts, fallback and a probe that brings them back.

One chain per stage per process, shared by every call. Requests go to the *active* backend: the first
in order that is not known to be down. A failure or a timeout marks it down and makes the next one
active; the request in flight is retried once there, so the user still gets an answer. A background
probe (``start``) asks every backend that is down (and every one before the active) whether it is
back, and moves the stage back to the first healthy one. Each move is reported to the listeners as a
``Switch``, which the server turns into a ``backend`` event for every call and a metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .base import Backend, BackendError, UnsupportedLanguage

log = logging.getLogger(__name__)

B = TypeVar("B", bound=Backend)
R = TypeVar("R")


@dataclass(frozen=True)
class Switch:
    """The stage moved from one backend to another (``to`` None: every backend is down)."""

    stage: str
    from_: str | None
    to: str | None
    reason: str

    def as_event(self) -> dict[str, object]:
        return {
            "type": "backend",
            "stage": self.stage,
            "from": self.from_,
            "to": self.to,
            "reason": self.reason,
        }


@dataclass
class BackendState:
    backend: Backend
    up: bool | None = None
    """None until probed or used."""
    error: str = ""
    since: float = 0.0
    failures: int = 0
    requests: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.backend.name,
            "state": {None: "unknown", True: "up", False: "down"}[self.up],
            "error": self.error or None,
            "failures": self.failures,
            "requests": self.requests,
        }


def describe(exc: BaseException, timeout_s: float | None = None) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out" if timeout_s is None else f"no answer within {timeout_s:g} s"
    text = str(exc) or type(exc).__name__
    return text[:200]


class Chain(Generic[B]):
    def __init__(
        self, stage: str, backends: list[B], timeout_s: float, probe_interval_s: float = 5.0
    ) -> None:
        if not backends:
            raise ValueError(f"the {stage} chain needs a backend")
        self.stage = stage
        self.timeout_s = timeout_s
        self.probe_interval_s = probe_interval_s
        self.states = [BackendState(b) for b in backends]
        self._active: int | None = 0
        self._listeners: list[Callable[[Switch], None]] = []
        self._task: asyncio.Task[None] | None = None
        self.switches = 0

    # -- which backend ------------------------------------------------------------------------------

    @property
    def backends(self) -> list[B]:
        return [s.backend for s in self.states]  # type: ignore[misc]

    @property
    def active(self) -> B | None:
        """The backend requests go to; None while every one is down."""
        return None if self._active is None else self.states[self._active].backend  # type: ignore[return-value]

    @property
    def active_index(self) -> int | None:
        return self._active

    @property
    def first(self) -> B:
        return self.states[0].backend  # type: ignore[return-value]

    def subscribe(self, listener: Callable[[Switch], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _move(self, reason: str) -> None:
        """Makes the first backend not known to be down active, and tells the listeners if it moved."""
        before = self._active
        after = next((i for i, s in enumerate(self.states) if s.up is not False), None)
        if after == before:
            return
        self._active = after
        self.switches += 1
        name = lambda i: None if i is None else self.states[i].backend.name  # noqa: E731
        switch = Switch(self.stage, name(before), name(after), reason)
        log.warning("%s: %s -> %s (%s)", self.stage, switch.from_, switch.to, reason)
        for listener in list(self._listeners):
            try:
                listener(switch)
            except Exception:
                log.exception("backend listener failed")

    def _mark(self, index: int, up: bool, error: str = "") -> None:
        state = self.states[index]
        if state.up != up:
            state.since = time.monotonic()
        state.up = up
        state.error = error
        if not up:
            state.failures += 1

    def failed(self, index: int, reason: str) -> None:
        """Marks a backend down (a request to it failed) and moves the stage on."""
        self._mark(index, False, reason)
        self._move(f"{self.states[index].backend.name}: {reason}")

    def _take(self) -> int:
        """The backend for the next request. With every one down, an in-process one is still asked (its
        failures are one request's, not an outage: a slow turn behind another call's must not refuse
        the next ones); with only remote ones, the request fails at once rather than wait on a dead
        server, and the probe brings the stage back."""
        index = self._active
        if index is None:
            index = next((i for i, s in enumerate(self.states) if not s.backend.capabilities.remote), None)
        if index is None:
            errors = "; ".join(f"{s.backend.name}: {s.error}" for s in self.states)
            raise BackendError(f"every {self.stage} backend is down ({errors})")
        self.states[index].requests += 1
        return index

    # -- requests -----------------------------------------------------------------------------------

    async def call(self, request: Callable[[B], Awaitable[R]], timeout_s: float | None = None) -> R:
        """``request`` on the active backend, within the timeout; on a failure, once more on the next."""
        timeout_s = timeout_s or self.timeout_s
        for attempt in range(2):
            index = self._take()
            try:
                async with asyncio.timeout(timeout_s):
                    result = await request(self.states[index].backend)  # type: ignore[arg-type]
            except UnsupportedLanguage:
                raise  # the request's fault, not the backend's
            except Exception as exc:
                reason = describe(exc, timeout_s)
                self._log_failure(index, exc, reason)
                self.failed(index, reason)
                if attempt == 1 or self._active in (None, index):
                    raise BackendError(f"{self.stage} {self.states[index].backend.name}: {reason}") from exc
                continue
            self._succeeded(index)
            return result
        raise AssertionError("unreachable")

    async def stream(
        self,
        request: Callable[[B], AsyncIterator[R]],
        first_s: float | None = None,
        gap_s: float | None = None,
    ) -> AsyncIterator[R]:
        """``request``'s items from the active backend. The first must come within ``first_s`` and each
        next within ``gap_s`` (both default to the chain's timeout). A failure before the first item is
        retried once on the next backend; after it, the stream ends in ``BackendError``, since the
        listener has heard the start of something the next backend would say differently."""
        first_s = first_s or self.timeout_s
        gap_s = gap_s or self.timeout_s
        for attempt in range(2):
            index = self._take()
            items = request(self.states[index].backend).__aiter__()  # type: ignore[arg-type]
            started = False
            try:
                while True:
                    wait_s = gap_s if started else first_s
                    try:
                        async with asyncio.timeout(wait_s):
                            item = await anext(items)
                    except StopAsyncIteration:
                        self._succeeded(index)
                        return
                    if not started:
                        started = True
                        self._succeeded(index)
                    yield item
            except Exception as exc:
                reason = describe(exc, wait_s)
                self._log_failure(index, exc, reason)
                self.failed(index, reason)
                if started or attempt == 1 or self._active in (None, index):
                    raise BackendError(f"{self.stage} {self.states[index].backend.name}: {reason}") from exc
            finally:
                aclose = getattr(items, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()

    def _succeeded(self, index: int) -> None:
        was_down = self.states[index].up is False
        self._mark(index, True)
        if was_down:
            self._move("recovered")

    def _log_failure(self, index: int, exc: Exception, reason: str) -> None:
        name = self.states[index].backend.name
        if isinstance(exc, (BackendError, TimeoutError, OSError)):
            log.warning("%s backend %s failed: %s", self.stage, name, reason)
        else:  # not a failure a backend reports: a bug, here or in it
            log.exception("%s backend %s raised", self.stage, name)

    # -- health -------------------------------------------------------------------------------------

    async def probe(self, index: int) -> bool:
        state = self.states[index]
        try:
            # The stage's own timeout: a probe makes a tiny real request, which on a loaded machine
            # takes as long as a small real one may.
            async with asyncio.timeout(self.timeout_s):
                await state.backend.probe()
        except Exception as exc:
            self._mark(index, False, describe(exc))
            return False
        self._mark(index, True)
        return True

    async def probe_all(self) -> None:
        """Probes every backend now (concurrently) and moves the stage to the first healthy one."""
        await asyncio.gather(*(self.probe(i) for i in range(len(self.states))))
        self._move("probed")

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval_s)
            limit = len(self.states) if self._active is None else self._active
            # Those before the active one (to move back) and those known down (for /healthz).
            indices = [i for i, s in enumerate(self.states) if i < limit or s.up is False]
            if indices:
                await asyncio.gather(*(self.probe(i) for i in indices))
                self._move("recovered")

    def start(self) -> None:
        """Starts the background probe in the running loop (a sleep between probes when all is well:
        it costs nothing)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._probe_loop(), name=f"probe-{self.stage}"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def aclose(self) -> None:
        await self.stop()
        for state in self.states:
            with contextlib.suppress(Exception):
                await state.backend.aclose()

    def status(self) -> dict[str, object]:
        active = self.active
        return {
            "active": None if active is None else active.name,
            "backends": [s.as_dict() for s in self.states],
        }
