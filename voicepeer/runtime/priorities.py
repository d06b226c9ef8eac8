"""How the kernel is asked to run each of our threads: the media path first, inference last.

The event loop paces every outbound frame of the bot's voice, and a few helper threads sit on its path
(the front-end, aiortc's encoder and inbound decoders). Model inference is throughput work that can
lose a few percent. A nice value orders threads only among themselves, and on Linux's fair scheduler
buys a share of the CPU, not a prompt wake-up: a loop at nice -5 still waited 10-37 ms for a core
behind our nice +5 inference, and the autogroup puts another session's processes (a browser, a
second server) beside ours as equals. A real-time thread (``SCHED_RR``) runs as soon as it is woken,
ahead of every ordinary one, so the media path asks for that where permitted, and for nice -5 where
not. Measurements: docs/decisions/cpu-and-memory.md.

Every thread a media thread creates starts as an ordinary one at nice 0 (``SCHED_RESET_ON_FORK``):
only the threads that ask run ahead. Linux only; elsewhere nothing changes.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)

INFERENCE_NICE = 5
"""The nice value of the model threads, which their runtimes' own threads inherit."""

MEDIA_NICE = -5
"""What the media path asks for where it cannot run in real time. Lowering a nice value needs
CAP_SYS_NICE or an ``RLIMIT_NICE`` of 25; without it the media path stays at 0, still ahead of
inference."""

MEDIA_RT_PRIORITY = 10
"""The event loop's ``SCHED_RR`` priority, where permitted (CAP_SYS_NICE, or an ``RLIMIT_RTPRIO`` of
10). Low on the real-time scale: below the kernel's threaded interrupts (50) and audio servers
(PipeWire asks for 88), and the kernel keeps 5 % of each second for ordinary tasks
(``sched_rt_runtime_us``), so a runaway media thread cannot take a core for good."""

HELPER_RT_PRIORITY = MEDIA_RT_PRIORITY - 1
"""The media path's helper threads: in real time, but below the loop, which they never hold up."""

PRIORITIES = ("realtime", "nice", "normal")
"""What ``--media-priority`` may ask for: ``realtime`` falls back to ``nice`` where not permitted."""

_mode = "realtime"
_loop_realtime = False  # helpers go real time only if the loop got it: never above the loop


@dataclass(frozen=True)
class Scheduling:
    """A thread's scheduling, as read, to be put back."""

    policy: int
    """Without ``SCHED_RESET_ON_FORK``, which ``reset_on_fork`` says."""
    rt_priority: int
    nice: int
    reset_on_fork: bool = False


def set_media_priority(mode: str) -> None:
    """What the media path asks for from now on: one of ``PRIORITIES``."""
    global _mode
    if mode not in PRIORITIES:
        raise ValueError(f"media priority must be one of {', '.join(PRIORITIES)}, not {mode!r}")
    _mode = mode


def _native(thread: int) -> int:
    return thread or threading.get_native_id()


def _set_nice(value: int, thread: int = 0) -> bool:
    try:
        os.setpriority(os.PRIO_PROCESS, _native(thread), value)
    except (OSError, AttributeError) as exc:  # not Linux, or not permitted
        log.debug("could not set thread nice %d: %s", value, exc)
        return False
    return True


def _set_policy(policy: int, rt_priority: int, thread: int = 0) -> bool:
    try:
        # On Linux, pid 0 is the calling thread. Reset on fork: what this thread creates is ordinary.
        os.sched_setscheduler(thread, policy | os.SCHED_RESET_ON_FORK, os.sched_param(rt_priority))
    except (OSError, AttributeError) as exc:  # not Linux, or not permitted
        log.debug("could not set thread policy %d/%d: %s", policy, rt_priority, exc)
        return False
    return True


def scheduling(thread: int = 0) -> Scheduling | None:
    """The thread's scheduling (0: the calling thread); None where it cannot be read."""
    try:
        raw = os.sched_getscheduler(thread)
        return Scheduling(
            raw & ~os.SCHED_RESET_ON_FORK,
            os.sched_getparam(thread).sched_priority,
            os.getpriority(os.PRIO_PROCESS, _native(thread)),
            bool(raw & os.SCHED_RESET_ON_FORK),
        )
    except (OSError, AttributeError):
        return None


def realtime_priority(thread: int = 0) -> int:
    """The thread's ``SCHED_RR``/``SCHED_FIFO`` priority, 0 for an ordinary thread (or unreadable)."""
    now = scheduling(thread)
    if now is None or now.policy not in (getattr(os, "SCHED_RR", -1), getattr(os, "SCHED_FIFO", -1)):
        return 0
    return now.rt_priority


def normal_priority() -> None:
    """Runs the calling thread as an ordinary one at nice 0, whatever the thread that made it ran at."""
    now = scheduling()
    if now is not None and now.policy != os.SCHED_OTHER:
        _set_policy(os.SCHED_OTHER, 0)
    _set_nice(0)


def lower_priority() -> None:
    """Runs the calling thread, and the threads it creates, at ``INFERENCE_NICE``."""
    normal_priority()
    _set_nice(INFERENCE_NICE)


def _raise(rt_priority: int, thread: int, realtime: bool) -> str | None:
    if _mode == "normal":
        return None
    realtime = realtime and _mode == "realtime" and hasattr(os, "SCHED_RR")
    if realtime and _set_policy(os.SCHED_RR, rt_priority, thread):
        return f"real time (SCHED_RR {rt_priority})"
    # An ordinary thread that resets what it creates: a library's threads are not raised with it.
    if hasattr(os, "SCHED_OTHER"):
        _set_policy(os.SCHED_OTHER, 0, thread)
    return f"nice {MEDIA_NICE}" if _set_nice(MEDIA_NICE, thread) else None


def raise_helper_priority(thread: int = 0) -> str | None:
    """Runs ``thread`` (a native thread id of this process; 0: the calling thread), a helper of the
    media path, a step below the loop: in real time only if the loop is."""
    return _raise(HELPER_RT_PRIORITY, thread, _loop_realtime)


_held: dict[int, tuple[int, Scheduling | None]] = {}


def raise_loop_priority() -> str | None:
    """Runs the calling thread, the event loop, on the media path's priority, until as many
    ``restore_loop_priority`` calls from it (one per server started on the loop). Returns what it
    got, None for nothing."""
    global _loop_realtime
    thread = threading.get_native_id()
    count, before = _held.get(thread, (0, None))
    if count == 0:
        before = scheduling()
    _held[thread] = (count + 1, before)
    got = _raise(MEDIA_RT_PRIORITY, 0, True)
    _loop_realtime = got is not None and got.startswith("real time")
    return got


def restore_loop_priority() -> None:
    """Puts the calling thread back as it was before the first ``raise_loop_priority`` of those
    still held: a program that ran a server on its loop gets its thread back."""
    global _loop_realtime
    thread = threading.get_native_id()
    count, before = _held.pop(thread, (0, None))
    if count > 1:
        _held[thread] = (count - 1, before)
        return
    if before is None:
        return
    _loop_realtime = False
    flags = os.SCHED_RESET_ON_FORK if before.reset_on_fork else 0
    try:
        os.sched_setscheduler(0, before.policy | flags, os.sched_param(before.rt_priority))
    except OSError as exc:
        log.debug("could not restore the loop thread's policy: %s", exc)
    _set_nice(before.nice)
