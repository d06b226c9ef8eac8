"""The threads' priorities (the media path in real time, inference below everything, an application's
tools as ordinary threads), and the inference pool's idle trim: freed native memory goes back to the
system between turns, never while a model call runs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.support.clock import virtual_time
from tests.support.server import ROOT
from voicepeer.runtime import priorities, workers

CHURN = """
import json, threading
import numpy as np
from voicepeer.runtime.memory import release_free_memory

def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])

def churn():
    # Many mid-sized blocks from a worker thread land in its glibc arena (below the mmap threshold);
    # freed, they stay in the process until trimmed.
    blocks = [np.ones(16_000, dtype=np.float64) for _ in range(4000)]  # 128 KB each, ~500 MB
    del blocks

before = rss_kb()
thread = threading.Thread(target=churn)
thread.start()
thread.join()
kept = rss_kb() - before
release_free_memory()
print(json.dumps({"kept": kept, "after": rss_kb() - before}))
"""


def test_release_free_memory_returns_freed_heap_pages():
    # In a fresh interpreter: the suite's own process has other arenas, and idle trims of its own.
    cmd = [sys.executable, "-c", CHURN]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    kept, after = result["kept"], result["after"]
    assert kept > 100_000, f"glibc returned the blocks by itself ({kept} KB kept): nothing to trim"
    assert after < 50_000, f"{after} KB of {kept} KB still held after the trim"


PRIORITIES = """
import asyncio, json, os, sys, threading, time
from aiortc.codecs.base import Encoder
from voicepeer.runtime import priorities, workers
from voicepeer.runtime.stalls import StallClock
from voicepeer.transport.encoding import use_media_executor

def seen():
    policy = os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK
    return {"policy": {os.SCHED_OTHER: "other", os.SCHED_RR: "rr"}.get(policy, str(policy)),
            "rt": os.sched_getparam(0).sched_priority,
            "nice": os.getpriority(os.PRIO_PROCESS, threading.get_native_id())}

class Probe(Encoder):  # what aiortc's sender hands the loop's default executor: an encoder's method
    def encode(self, frame, force_keyframe=False):
        return seen()

    def pack(self, packet):
        raise NotImplementedError

async def main():
    loop = asyncio.get_running_loop()
    priorities.set_media_priority(sys.argv[1])
    out = {"got": priorities.raise_loop_priority(), "loop": seen()}
    use_media_executor(loop)
    out["encoder"] = await loop.run_in_executor(None, Probe().encode, None)
    out["default"] = await asyncio.to_thread(seen)
    out["frontend"] = await workers.run_frontend(seen)
    out["tool"] = await workers.run_tool(seen)
    out["inference"] = await workers.run_blocking(seen)
    plain = []
    thread = threading.Thread(target=lambda: plain.append(seen()))
    thread.start()
    thread.join()
    out["plain"] = plain[0]
    clock = StallClock()
    clock.attach()
    try:
        deadline = time.monotonic() + 10
        while clock.witness.pid is not None and time.monotonic() < deadline:
            pid = clock.witness.pid  # it sets its own priority once it runs
            out["witness"] = {
                "rt": os.sched_getparam(pid).sched_priority, "nice": os.getpriority(os.PRIO_PROCESS, pid)
            }
            if out["witness"] == {"rt": out["loop"]["rt"], "nice": out["loop"]["nice"]}:
                break
            time.sleep(0.05)
    finally:
        clock.detach()
    priorities.restore_loop_priority()
    out["restored"] = seen()
    print(json.dumps(out))

asyncio.run(main())
"""


def _priorities(mode: str) -> dict:
    # In a fresh interpreter: a thread of the suite's own process must not be left raised.
    done = subprocess.run(
        [sys.executable, "-c", PRIORITIES, mode], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


ORDINARY = {"policy": "other", "rt": 0, "nice": 0}
INFERENCE = {"policy": "other", "rt": 0, "nice": priorities.INFERENCE_NICE}


def test_the_media_path_runs_in_real_time_and_nothing_else_does():
    seen = _priorities("realtime")
    if seen["got"] is None or not seen["got"].startswith("real time"):
        pytest.skip(f"not permitted to run in real time here ({seen['got']})")
    helper = {"policy": "rr", "rt": priorities.HELPER_RT_PRIORITY, "nice": 0}
    assert seen["loop"] == {"policy": "rr", "rt": priorities.MEDIA_RT_PRIORITY, "nice": 0}
    # aiortc encodes every outbound frame in the loop's default executor; the front-end follows it.
    assert seen["encoder"] == helper and seen["frontend"] == helper
    # Everything else: the default executor's other work, a thread the loop makes (a library's),
    # an application's tool.
    assert seen["default"] == seen["plain"] == seen["tool"] == ORDINARY
    assert seen["inference"] == INFERENCE
    # The witness runs as the loop does, so only what holds up the loop too holds it up.
    if "witness" in seen:
        assert seen["witness"] == {"rt": priorities.MEDIA_RT_PRIORITY, "nice": 0}
    # The server gone, its thread is the program's again.
    assert seen["restored"] == ORDINARY


def test_without_real_time_the_media_path_asks_for_a_nice_value():
    seen = _priorities("nice")
    if seen["got"] is None:
        pytest.skip("not permitted to lower a nice value here")
    media = {"policy": "other", "rt": 0, "nice": priorities.MEDIA_NICE}
    assert seen["got"] == f"nice {priorities.MEDIA_NICE}"
    assert seen["loop"] == seen["encoder"] == seen["frontend"] == media
    assert seen["default"] == seen["plain"] == seen["tool"] == ORDINARY
    assert seen["inference"] == INFERENCE
    if "witness" in seen:
        assert seen["witness"] == {"rt": 0, "nice": priorities.MEDIA_NICE}
    assert seen["restored"] == ORDINARY


def test_a_normal_media_priority_raises_nothing():
    seen = _priorities("normal")
    assert seen["got"] is None
    assert seen["loop"] == seen["encoder"] == seen["frontend"] == seen["default"] == seen["tool"] == ORDINARY
    assert seen["inference"] == INFERENCE


def test_a_media_priority_that_does_not_exist_is_refused():
    with pytest.raises(ValueError, match="realtime, nice, normal"):
        priorities.set_media_priority("turbo")


@virtual_time
async def test_trim_waits_until_the_pool_is_idle() -> None:
    loop = asyncio.get_running_loop()
    trim = workers.IdleTrim(delay_s=0.2)
    trim.begin()
    trim.end()
    trim.begin()  # another call starts within the delay: no trim under it
    await asyncio.sleep(1.0)  # on the virtual clock: a second of a busy pool, exactly
    assert trim.trims == 0
    idle = loop.time()
    trim.end()
    await until(lambda: trim.trims == 1)
    assert loop.time() - idle == pytest.approx(trim.delay_s, abs=0.002)


class Sound:
    sounding = True


@virtual_time
async def test_trim_waits_for_every_voice_to_go_quiet_but_not_for_ever() -> None:
    loop = asyncio.get_running_loop()
    trim = workers.IdleTrim(delay_s=0.2, max_wait_s=5.0)
    voice = Sound()
    trim.watch(voice)
    trim.begin()
    trim.end()
    idle = loop.time()
    await asyncio.sleep(2.0)  # the reply is synthesized, but still being sent
    assert trim.trims == 0 and trim.deferred > 0
    voice.sounding = False
    await until(lambda: trim.trims == 1)
    assert 2.0 <= loop.time() - idle <= 2.0 + trim.delay_s + 0.002
    # A server whose calls never all go quiet still trims, after max_wait_s.
    voice.sounding = True
    trim.begin()
    trim.end()
    idle = loop.time()
    await until(lambda: trim.trims == 2)
    assert trim.max_wait_s <= loop.time() - idle <= trim.max_wait_s + 2 * trim.delay_s + 0.002
    # A voice that is gone holds nothing up.
    del voice
    trim.begin()
    trim.end()
    idle = loop.time()
    await until(lambda: trim.trims == 3)
    assert loop.time() - idle == pytest.approx(trim.delay_s, abs=0.002)


@virtual_time
async def test_run_blocking_trims_once_after_a_burst() -> None:
    loop = asyncio.get_running_loop()
    start = workers.idle_trim.trims
    for _ in range(5):
        await workers.run_blocking(sum, range(1000))
    idle = loop.time()
    await until(lambda: workers.idle_trim.trims > start)
    assert loop.time() - idle == pytest.approx(workers.idle_trim.delay_s, abs=0.002)
    await asyncio.sleep(10.0)
    assert workers.idle_trim.trims == start + 1


async def until(condition: Callable[[], bool], step_s: float = 0.001) -> None:
    """Returns once ``condition`` holds, checking every ``step_s`` of the (virtual) clock."""
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(step_s)
