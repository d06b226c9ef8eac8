"""Makes the event loop miss a frame's slot in one known way and prints how ``StallClock`` explains it.

Run as ``python -m tests.support.stall_scenarios SCENARIO``, one process per scenario: the scenarios
pin threads to one core, renice the loop's thread and collect the heap, none of which may leak into
the test process. Prints one JSON object: the ``Stall``'s fields.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import hashlib
import json
import os
import sys
import threading
import time

from voicepeer.runtime.stalls import StallClock
from voicepeer.runtime.witness import PERIOD_S

HOLD_S = 0.12
"""How long each scenario keeps the loop from its frame: far past the 10 ms that makes a frame late."""


def _hash_forever(stop: threading.Event) -> None:
    data = b"x" * (8 << 20)
    while not stop.is_set():
        hashlib.sha256(data).digest()  # releases the interpreter lock: pure core time


def _hold_the_lock() -> None:
    sum(range(15_000_000))  # one C loop that never lets go of the interpreter lock


async def _scenario(name: str, clock: StallClock) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    stop = threading.Event()
    children: list[asyncio.subprocess.Process] = []

    async def sample() -> None:
        while True:
            clock.sample()
            await asyncio.sleep(0.01)

    sampler = loop.create_task(sample())
    await asyncio.sleep(0.1)
    due = time.monotonic() + 0.02
    if name == "loop":
        loop.call_soon(lambda: _spin(HOLD_S + 0.02))
    elif name == "blocked":
        loop.call_soon(lambda: time.sleep(HOLD_S + 0.02))
    elif name == "blocked-by-thread":
        threading.Thread(target=_hold_the_lock, daemon=True).start()
    elif name == "gc":
        garbage: list[list[object]] = [[i] for i in range(400_000)]
        for pair in garbage:
            pair.append(pair)  # a cycle each: only the collector frees them
        del garbage
        due = time.monotonic() + 0.02
        loop.call_soon(lambda: gc.collect())
    elif name == "trim":

        def trim() -> None:
            with clock.pause("trim"):
                time.sleep(HOLD_S + 0.02)

        threading.Thread(target=trim, daemon=True).start()
        loop.call_soon(lambda: time.sleep(HOLD_S + 0.02))  # the loop waiting on what trim holds
    elif name == "machine-asleep":
        # The machine runs nothing of ours, nor the witness, for a while: as when the hypervisor takes
        # the virtual cores. Both are stopped at once by a process outside, then let go.
        assert clock.witness.pid is not None, "the witness did not start"
        pids = f"{os.getpid()}, {clock.witness.pid}"
        freezer = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import os, signal, sys, time\n"
            "sys.stdin.readline()\n"
            "print(time.monotonic(), flush=True)\n"
            f"for pid in ({pids}): os.kill(pid, signal.SIGSTOP)\n"
            f"time.sleep({HOLD_S})\n"
            f"for pid in reversed(({pids})): os.kill(pid, signal.SIGCONT)\n"
            "print('resumed', flush=True)\n",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        await asyncio.sleep(0.5)  # it has started, and so has the witness
        assert freezer.stdin is not None and freezer.stdout is not None
        freezer.stdin.write(b"go\n")
        await freezer.stdin.drain()
        stopped_at = float(await freezer.stdout.readline())
        # It lets the witness go, then this process. Explained as soon as the loop runs again: how
        # soon this process then learns that the freezer has exited is not part of the stall.
        await freezer.stdout.readline()
        # A frame due once the machine has stopped running us: a witness period on, by when the
        # witness (on a 5 ms phase of its own) has missed a wake-up too.
        due = stopped_at + PERIOD_S
    elif name in ("cpu", "machine"):
        # One core for everything; the loop's thread runs only when nothing else on that core wants
        # to (SCHED_IDLE): our own threads ("cpu") or other processes ("machine") go first.
        for _ in range(4):
            if name == "cpu":
                threading.Thread(target=_hash_forever, args=(stop,), daemon=True).start()
            else:
                children.append(
                    await asyncio.create_subprocess_exec(sys.executable, "-c", "while True: pass")
                )
        await asyncio.sleep(0.2)  # the competitors are running
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        # Each wake-up waits for a core for as long as the competitors keep it; the latest tells.
        stalls = []
        for _ in range(30):
            due = time.monotonic() + 0.005
            await asyncio.sleep(0.005)
            stalls.append(clock.explain(due))
            if stalls[-1].late_s > 0.05:
                break
        stall = max(stalls, key=lambda s: s.late_s)
    else:
        raise SystemExit(f"unknown scenario {name}")
    if name not in ("cpu", "machine"):
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        stall = clock.explain(due)
    if name == "machine-asleep":
        await freezer.wait()
    stop.set()
    for child in children:
        child.kill()
        await child.wait()
    sampler.cancel()
    return dataclasses.asdict(stall)


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def main() -> None:
    name = sys.argv[1]
    if name in ("cpu", "machine"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # this thread, and all it starts
    gc.freeze()  # only the scenario's garbage is the collector's work
    clock = StallClock()
    clock.attach()
    print(json.dumps(asyncio.run(_scenario(name, clock))))


if __name__ == "__main__":
    main()
