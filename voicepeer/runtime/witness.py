"""A process of its own that only sleeps and wakes, to tell the machine's stalls from ours.

From inside the server, a loop that slept past its frame's slot looks the same whether it waited for
the interpreter lock a thread of ours held, or for a wake-up the machine delayed (the hypervisor took
the virtual core, or the kernel ran nothing of ours for a while). A process that shares nothing with
the server but the cores and the kernel cannot be held up by our locks: if it woke late over the
same stretch, the machine delayed everyone; if it woke on time, the stall was ours.

The witness wakes every ``PERIOD_S`` at the loop's own priority (its nice value, or its real-time
priority) and writes each wake-up that came
``LATE_S`` or more late into a ring in memory the two processes share (a ``memfd``: no file to clean
up), with a heartbeat. It exits when the server does. This file runs as a script, on the standard
library alone, so it starts in ~20 ms without importing the server's packages.

At each wake-up it also notes where the loop's thread was (``/proc/<pid>/task/<tid>/wchan``: the
kernel function it sleeps in, or nothing while it runs or waits for a core), which the loop cannot
tell of itself while it sleeps: a stall spent in ``futex`` waits was a lock (the interpreter's or
another of ours), one in ``epoll`` the loop with nothing to do, one in a page fault the memory.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

PERIOD_S = 0.005
"""How often the witness wakes: a frame is a gap at 10 ms past its slot, so a stall that long spans
at least one of its wake-ups."""

LATE_S = 0.004
"""Wake-ups at least this late are recorded."""

SLOTS = 256
"""Late wake-ups remembered: far more than one frame's window holds."""

SEEN_SLOTS = 256
"""Wake-ups at which the loop's thread was seen asleep, remembered: 1.3 s of them at most."""


@dataclass(frozen=True)
class Record:
    """What the witness had written at one moment, read whole."""

    last_woke: float
    """Its last wake-up (``time.monotonic()``); 0.0 before the first."""
    late: list[tuple[float, float]]
    """Late wake-ups: when it woke, how late."""
    seen: list[tuple[float, bytes]]
    """Wake-ups at which the watched thread was asleep: when, and where (its wait channel)."""

    def late_within(self, start: float, end: float) -> float:
        """The longest stretch of ``[start, end]`` (``time.monotonic()``) the witness spent waiting to
        wake up past its time, including a wait it is still in."""
        if self.last_woke == 0.0:
            return 0.0  # not yet started: it proves nothing either way
        # An entry past the header's last wake-up is one written after the header was read.
        stretches = [(woke - late, woke) for woke, late in self.late if woke <= self.last_woke]
        # Not woken since its last wake-up's next slot: it is still waiting, as the loop was.
        if end - self.last_woke > PERIOD_S + LATE_S:
            stretches.append((self.last_woke + PERIOD_S, end))
        return max([0.0, *(min(b, end) - max(a, start) for a, b in stretches)])

    def loop_seen(self, start: float, end: float) -> dict[str, int]:
        """Where the watched thread was seen asleep within ``[start, end]``: the kernel functions
        (wait channels), each with how many wake-ups saw it there."""
        seen: dict[str, int] = {}
        for woke, where in self.seen:
            if start <= woke <= min(end, self.last_woke):
                name = where.rstrip(b"\0").decode("ascii", "replace")
                seen[name] = seen.get(name, 0) + 1
        return seen


NOTHING = Record(0.0, [], [])
"""What a witness that is not running tells: no lateness, no sightings."""

# Late wake-ups written, ever; the last wake-up (monotonic); sightings written, ever.
_HEADER = struct.Struct("<QdQ")
_ENTRY = struct.Struct("<dd")  # when it woke (monotonic), how late
_SEEN = struct.Struct("<d64s")  # when it woke, where the loop's thread slept (its wchan)
_SEEN_AT = _HEADER.size + SLOTS * _ENTRY.size
_SIZE = _SEEN_AT + SEEN_SLOTS * _SEEN.size
_CHECK_PARENT_EVERY = 100


class Witness:
    """The server's side: starts the witness, and reads how late it woke over a stretch of time."""

    def __init__(self, nice: int = 0, rt_priority: int = 0) -> None:
        self.nice = nice
        self.rt_priority = rt_priority
        """The loop's ``SCHED_RR``/``SCHED_FIFO`` priority, 0 for an ordinary thread: the witness runs
        as the loop does, or it would be held up by what cannot hold up the loop."""
        self._fd: int | None = None
        self._buf: mmap.mmap | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, thread: int = 0) -> bool:
        """Starts the witness, watching where ``thread`` (a native thread id of this process, the
        loop's; 0 for none) sleeps; ``False`` where it cannot run (not Linux, no ``memfd``) or would
        prove nothing (a CPU quota), and then every stall the loop slept through stays counted as
        ours."""
        if self.running:
            return True
        self.stop()
        if (quota := cpu_quota()) is not None:
            # The quota throttles the witness with the server once our own threads have used it up:
            # a stall they both slept through may then be ours.
            log.info(
                "no stall witness under the CPU quota %s: stalls the loop slept through count as ours", quota
            )
            return False
        try:
            self._fd = os.memfd_create("voicepeer-witness", os.MFD_CLOEXEC)
            os.ftruncate(self._fd, _SIZE)
            self._buf = mmap.mmap(self._fd, _SIZE)
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-S",
                    __file__,
                    *map(str, (self._fd, self.nice, os.getpid(), thread, self.rt_priority)),
                ],
                pass_fds=(self._fd,),
                # Holds none of the server's pipes: a caller reading them to their end (a supervisor,
                # ``subprocess.run``) must not wait for the witness too.
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                # Not in the server's process group: a Ctrl-C meant for the server is the server's
                # to handle; the witness goes when the server does.
                start_new_session=True,
            )
        except (AttributeError, OSError, ValueError) as exc:
            log.info("no stall witness (%s): stalls the loop slept through count as ours", exc)
            self.stop()
            return False
        return True

    def stop(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=1.0)
            self._proc = None
        if self._buf is not None:
            self._buf.close()
            self._buf = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def record(self) -> Record | None:
        """What the witness has written, read whole; None if it is not running or kept writing under
        the read."""
        buf = self._buf
        if buf is None or not self.running:
            return None
        # The witness writes while this reads: an entry, then the header. A read that saw the header
        # change under it is read again; one that keeps changing proves nothing.
        for _ in range(3):
            header = _HEADER.unpack_from(buf, 0)
            written, last_woke, seen = header
            # The oldest slot of each ring is the next one written over: left out.
            late = [
                _ENTRY.unpack_from(buf, _HEADER.size + (i % SLOTS) * _ENTRY.size)
                for i in range(max(0, written - SLOTS + 1), written)
            ]
            sightings = [
                _SEEN.unpack_from(buf, _SEEN_AT + (i % SEEN_SLOTS) * _SEEN.size)
                for i in range(max(0, seen - SEEN_SLOTS + 1), seen)
            ]
            if _HEADER.unpack_from(buf, 0) == header:
                return Record(last_woke, late, sightings)
        return None


def cpu_quota(root: str = "/sys/fs/cgroup") -> str | None:
    """The CPU quota (cgroup v2 ``cpu.max``, "quota period") of this process's cgroup or the nearest
    ancestor that has one; ``None`` where none is set or cgroups cannot be read."""
    try:
        with open("/proc/self/cgroup") as f:
            path = next((line[3:].strip() for line in f if line.startswith("0::")), None)
    except OSError:
        return None
    if path is None:
        return None
    parts = [p for p in path.split("/") if p]
    for depth in range(len(parts), -1, -1):
        try:
            with open(os.path.join(root, *parts[:depth], "cpu.max")) as f:
                limit = f.read().strip()
        except OSError:
            continue
        if not limit.startswith("max"):
            return limit
    return None


def _watch(fd: int, nice: int, parent: int, thread: int, rt_priority: int = 0) -> None:
    """``parent``: the server's pid, passed down, since it may be gone before this gets to ask;
    ``thread``: its loop's thread, whose sleeps are noted (0: none); ``rt_priority``: the loop's
    real-time priority (0: none)."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    if rt_priority:
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(rt_priority))
    buf = mmap.mmap(fd, _SIZE)
    wchan: int | None = None
    if thread:
        # Where the kernel does not let this process look, the file reads "0": nothing is noted.
        with contextlib.suppress(OSError):  # no such thread (it ended)
            wchan = os.open(f"/proc/{parent}/task/{thread}/wchan", os.O_RDONLY)
    written = seen = 0
    due = time.monotonic() + PERIOD_S
    ticks = 0
    while True:
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        now = time.monotonic()
        late = now - due
        if late >= LATE_S:
            _ENTRY.pack_into(buf, _HEADER.size + (written % SLOTS) * _ENTRY.size, now, late)
            written += 1
            due = now  # a stall is recorded once, not as a run of late wake-ups after it
        if wchan is not None:
            try:
                where = os.pread(wchan, 64, 0).strip()
            except OSError:  # the thread ended
                os.close(wchan)
                wchan, where = None, b""
            if where and where != b"0":  # "0": on a core, or waiting for one
                _SEEN.pack_into(buf, _SEEN_AT + (seen % SEEN_SLOTS) * _SEEN.size, now, where[:64])
                seen += 1
        _HEADER.pack_into(buf, 0, written, now, seen)
        due += PERIOD_S
        ticks += 1
        if ticks % _CHECK_PARENT_EVERY == 0 and os.getppid() != parent:
            return  # the server is gone


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        _watch(*map(int, sys.argv[1:]))
