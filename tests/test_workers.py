"""The inference pool's idle trim: freed native memory goes back to the system between turns, never
while a model call runs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.support.clock import virtual_time
from tests.support.server import ROOT
from voicepeer.runtime import workers

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
