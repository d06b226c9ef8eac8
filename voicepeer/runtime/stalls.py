"""Why an outbound frame left late: the process's own doing, or the machine's.

The event loop releases every outbound audio frame, so a frame that leaves late means the loop's thread
did not get back to it in time. From the outside all stalls look alike; what a user can fix differs:

- ``gc``: a garbage-collector pass was running (it holds the interpreter, in whichever thread);
- ``trim``: ``malloc_trim`` was returning memory (it holds the allocator's locks the loop also needs);
- ``loop``: the loop's thread ran our callbacks long enough to make the frame late by itself (10 ms,
  or half the stall), whatever else waited meanwhile;
- ``blocked``: the loop's thread slept although its frame was due: it waited for the interpreter lock
  (another of our threads holding it, maybe one the kernel had taken off its core), for another lock
  of ours, or in a blocking call made on the loop;
- ``cpu``: the loop's thread was ready but waited for a core, and our own threads kept one busy;
- ``machine``: it waited for a core that other processes had; or it slept, and so did a process that
  shares nothing with ours but the machine (``runtime.witness``: all but 10 ms of the stall, and at
  least 10 ms), while our other threads ran under 10 ms: a wake-up the machine delayed, which from
  inside looks like ``blocked``;
- ``sender``: the loop was free, but aiortc's sender asked for the frame only after its slot (it
  encodes each frame in the loop's executor, and that thread came back late: it waited for the
  interpreter lock or a core), and the witness saw the loop mostly in its selector. The outbound
  track gives when it was asked (``transport.tracks``);
- ``unexplained``: no scheduler statistics here (not Linux).

Only ``machine`` (and what cannot be told) is not ours. The kernel tells a thread's time on a core and
its time waiting for one (``/proc/<tid>/schedstat``, nanoseconds); what is left of the stall it slept.
``LoopMonitor`` takes a sample every 10 ms, so when a track finds a frame late, ``StallClock.explain``
compares a fresh sample with the one from just before the frame was due.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from .priorities import realtime_priority
from .witness import NOTHING, Witness

log = logging.getLogger(__name__)

CAUSES = ("gc", "trim", "loop", "blocked", "cpu", "sender", "machine", "unexplained")
OWN_CAUSES = frozenset({"gc", "trim", "loop", "blocked", "cpu", "sender"})

SAMPLES = 64
"""Samples kept: at one per 10 ms, the last ~0.6 s, more than any frame's wait for its slot."""

OWN_RUN_S = 0.010
"""The loop's thread running this long within a stall is enough, by itself, to make a frame late (a
gap is a frame 10 ms past its slot): the stall is the loop's, whatever else waited meanwhile. Likewise
a stall the witness saw all but this much of is the machine's."""

PAUSES = 32
"""Process-wide pauses (GC passes, trims) remembered."""


_Raw = tuple[float, bytes, float]
"""A sample as read: monotonic time, the loop thread's schedstat, the process's CPU time."""


@dataclass(frozen=True)
class Sample:
    at: float
    """``time.monotonic()``, the clock asyncio's loop runs on."""
    ran_s: float
    """The loop thread's time on a core, ever."""
    waited_s: float
    """The loop thread's time ready but waiting for a core, ever."""
    process_s: float
    """CPU time of every thread of this process, ever."""


@dataclass(frozen=True)
class Stall:
    cause: str
    late_s: float
    ran_s: float
    waited_s: float
    slept_s: float
    paused_s: float
    own_threads_s: float
    """Core time our other threads took over the window."""
    witness_late_s: float = 0.0
    """How long, within the stall, the witness process also waited past its wake-up."""
    loop_seen: dict[str, int] = field(default_factory=dict)
    """Where the witness saw the loop's thread asleep within the stall (kernel functions, each with
    how many of its wake-ups saw it there): what a ``blocked`` stall waited for."""


class StallClock:
    """Samples of the loop thread's scheduling, and the process's pauses, to explain late frames."""

    def __init__(self, witness: Witness | None = None) -> None:
        self.witness = witness if witness is not None else Witness()
        self._samples: deque[_Raw] = deque(maxlen=SAMPLES)
        self._pauses: deque[tuple[str, float, float]] = deque(maxlen=PAUSES)
        self._gc_started: dict[int, float] = {}
        self._open: dict[int, float] = {}  # trims under way, by thread
        self._fd: int | None = None
        self._thread: int | None = None
        self._users = 0
        self._cores = 1

    # -- the loop thread -----------------------------------------------------------------------

    def attach(self) -> None:
        """Called from the loop's thread: its schedstat is the one sampled from now on."""
        self._users += 1
        if self._thread == threading.get_native_id() and self._fd is not None:
            if not self.witness.running and self.witness.start(self._thread):
                log.info("stall witness restarted")
            return
        self._thread = threading.get_native_id()
        self.witness.stop()  # it watches the loop's thread, which this one now is
        self._cores = (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        )
        self.close()
        try:
            self._fd = os.open(f"/proc/self/task/{self._thread}/schedstat", os.O_RDONLY)
        except OSError:
            pass  # not Linux, or no schedstat: every late frame is "unexplained"
        if self.explain_gc not in gc.callbacks:
            gc.callbacks.append(self.explain_gc)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.witness.nice = os.getpriority(os.PRIO_PROCESS, self._thread)
            self.witness.rt_priority = realtime_priority(self._thread)
            self.witness.start(self._thread)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def detach(self) -> None:
        self._users = max(0, self._users - 1)
        if self._users:
            return  # another server in this process still runs on the loop
        self.close()
        self.witness.stop()
        self._thread = None
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self.explain_gc)

    def sample(self) -> _Raw | None:
        """Takes a sample: one ``pread`` and two clock reads, parsed only if a frame is late (~2 us every
        10 ms)."""
        if self._fd is None:
            return None
        try:
            raw = (time.monotonic(), os.pread(self._fd, 128, 0), time.process_time())
        except OSError:
            return None
        self._samples.append(raw)
        return raw

    @staticmethod
    def _parse(raw: _Raw) -> Sample | None:
        at, schedstat, process_s = raw
        try:
            ran_ns, waited_ns = schedstat.split()[:2]
            return Sample(at=at, ran_s=int(ran_ns) / 1e9, waited_s=int(waited_ns) / 1e9, process_s=process_s)
        except ValueError:
            return None

    # -- pauses of the whole process -----------------------------------------------------------

    def explain_gc(self, phase: str, info: dict[str, int]) -> None:
        """A ``gc.callbacks`` hook: remembers when each collection ran."""
        ident = threading.get_ident()
        if phase == "start":
            self._gc_started[ident] = time.monotonic()
        elif (start := self._gc_started.pop(ident, None)) is not None:
            self._pauses.append(("gc", start, time.monotonic()))

    @contextlib.contextmanager
    def pause(self, kind: str) -> Iterator[None]:
        """Marks a stretch in which this process holds something the loop may need (``trim``)."""
        ident = threading.get_ident()
        start = self._open[ident] = time.monotonic()
        try:
            yield
        finally:
            self._open.pop(ident, None)
            self._pauses.append((kind, start, time.monotonic()))

    # -- a late frame ------------------------------------------------------------------------

    def explain(self, due: float, now: float | None = None, asked: float | None = None) -> Stall:
        """Why the loop came back only now to a frame due at ``due`` (``time.monotonic()``); ``asked``:
        when the frame's consumer (aiortc's sender) asked for it, if it was asked at all."""
        raw_end = self.sample()
        end = self._parse(raw_end) if raw_end is not None else None
        now = end.at if end is not None else (now if now is not None else time.monotonic())
        late = max(0.0, now - due)
        paused = {"gc": 0.0, "trim": 0.0}
        # Pauses still under way count up to now: the thread that holds one may not have run since
        # the loop got going again.
        ongoing = [("gc", t, now) for t in list(self._gc_started.values())]
        ongoing += [("trim", t, now) for t in list(self._open.values())]
        for kind, start, stop in [*self._pauses, *ongoing]:
            overlap = min(stop, now) - max(start, due)
            if overlap > 0:
                paused[kind] = paused.get(kind, 0.0) + overlap
        raw_begin = next((s for s in reversed(self._samples) if s[0] <= due), None)
        begin = self._parse(raw_begin) if raw_begin is not None else None
        if end is None or begin is None or raw_begin is raw_end:
            cause = self._by_pause(paused, late) or "unexplained"
            return Stall(cause, late, 0, 0, 0, sum(paused.values()), 0)
        window = end.at - begin.at
        ran = end.ran_s - begin.ran_s
        waited = end.waited_s - begin.waited_s
        # Before ``due`` the loop was meant to be asleep, waiting for the frame's slot.
        slept = max(0.0, window - ran - waited - (due - begin.at))
        own_threads = max(0.0, (end.process_s - begin.process_s) - ran)
        cause = self._by_pause(paused, late)
        if cause is None and ran >= min(late / 2, OWN_RUN_S):
            cause = "loop"  # our callbacks alone held the loop long enough to make the frame late
        record = self.witness.record() or NOTHING  # one read for both questions
        witnessed, seen = record.late_within(due, now), record.loop_seen(due, now)
        if cause is None:
            share = {"loop": ran, "blocked": slept, "waited": waited}
            cause = max(share, key=share.__getitem__)
            if cause == "waited":
                # Who had the cores the loop may run on? Ours if our other threads took at least half
                # of the core time the loop did not; otherwise other processes or the hypervisor.
                taken = self._cores * window - ran
                cause = "cpu" if own_threads >= taken / 2 else "machine"
            elif (
                cause == "blocked"
                and witnessed >= OWN_RUN_S
                and late - witnessed < OWN_RUN_S
                and own_threads < OWN_RUN_S
            ):
                # The witness, which none of our locks can hold, slept past its time over so much of
                # the stall that without that stretch the frame would not have been late, and no
                # thread of ours ran long enough to have held the loop meanwhile.
                cause = "machine"
        if cause == "blocked" and asked is not None and asked - due >= late / 2 and _idle(seen):
            # The loop slept because it had nothing to do: the sender asked for the frame that late.
            cause = "sender"
        return Stall(cause, late, ran, waited, slept, sum(paused.values()), own_threads, witnessed, seen)

    @staticmethod
    def _by_pause(paused: dict[str, float], late: float) -> str | None:
        kind = max(paused, key=paused.__getitem__)
        return kind if paused[kind] >= max(0.005, late / 3) else None


IDLE_WAITS = frozenset({"do_epoll_wait", "ep_poll"})
"""The wait channels of a thread in ``epoll_wait`` (Linux 5.x-6.x, and older): asyncio's selector, the
loop waiting for work. A ``poll`` or ``select`` of a blocking call made on the loop is not among them."""


def _idle(seen: dict[str, int]) -> bool:
    """The witness saw the loop's thread asleep, mostly in its selector (a wake-up of the loop in
    between may have waited for a lock)."""
    idle = sum(n for where, n in seen.items() if where in IDLE_WAITS)
    return idle > sum(seen.values()) - idle


_clock = StallClock()


def stall_clock() -> StallClock:
    """The process's one clock: there is one event loop whose stalls it explains."""
    return _clock
