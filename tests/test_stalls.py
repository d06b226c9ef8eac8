"""Why an outbound frame left late (``voicepeer.runtime.stalls``): each cause made to happen for real
in a process of its own (a callback holding the loop, a blocking call, another thread holding the
interpreter lock, a garbage-collector pass, a malloc trim, our own threads or other processes on the
loop's one core, the machine running nothing of ours nor the witness process for a while), and a late
frame of a real outbound track counted by its cause."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from voicepeer.call.playout import Playout
from voicepeer.runtime.health import LoopMonitor
from voicepeer.runtime.stalls import OWN_CAUSES, StallClock, _idle, stall_clock
from voicepeer.runtime.witness import PERIOD_S, Record, cpu_quota
from voicepeer.transport.tracks import PlayoutTrack

ROOT = Path(__file__).resolve().parents[1]


def run_scenario(name: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "tests.support.stall_scenarios", name],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.mark.parametrize(
    ("scenario", "cause"),
    [
        ("loop", "loop"),
        ("blocked", "blocked"),
        ("blocked-by-thread", "blocked"),
        ("gc", "gc"),
        ("trim", "trim"),
        ("cpu", "cpu"),
        ("machine", "machine"),
        ("machine-asleep", "machine"),
    ],
)
def test_a_late_frame_is_explained_by_what_held_the_loop(scenario: str, cause: str):
    stall = run_scenario(scenario)
    assert stall["late_s"] > 0.001, stall
    assert stall["cause"] == cause, stall
    assert (cause in OWN_CAUSES) == (cause != "machine")
    # Where the witness saw the loop's thread asleep tells a blocked loop's kind of wait (the kernel
    # function's name differs by version; its subject does not).
    if not _wait_channels_shown():
        return
    seen = " ".join(stall["loop_seen"])
    if scenario == "blocked":
        assert "sleep" in seen and "futex" not in seen, stall  # a blocking call made on the loop
    elif scenario == "blocked-by-thread":
        assert "futex" in seen, stall  # waiting for the interpreter lock
    elif scenario == "loop":
        assert not seen, stall  # it ran


def _wait_channels_shown() -> bool:
    """Whether this kernel names where a sleeping thread waits (some hide it, showing ``0``)."""
    done = threading.Event()
    sleeper = threading.Thread(target=done.wait, daemon=True)
    sleeper.start()
    try:
        time.sleep(0.05)
        where = Path(f"/proc/self/task/{sleeper.native_id}/wchan").read_text().strip()
    except OSError:
        return False
    finally:
        done.set()
    return where not in ("", "0")


async def test_a_late_frame_of_a_real_track_is_counted_by_its_cause():
    monitor = LoopMonitor()  # samples the process's one clock, as the server's does
    monitor.start()
    try:
        track = PlayoutTrack(Playout())
        await asyncio.sleep(0.05)  # the monitor has samples
        await track.recv()
        await track.recv()
        time.sleep(0.08)  # noqa: ASYNC251 - the point: a blocking call made on the loop
        await track.recv()
        assert track.gaps == 1
        clock = vars(stall_clock())
        assert track.gap_causes["blocked"] == 1 and track.own_gaps == 1, (track.gap_causes, clock)
    finally:
        await monitor.stop()


async def test_a_frame_the_sender_asks_for_late_is_the_senders_not_the_loops():
    """aiortc's sender asks for each frame after encoding the one before in the loop's executor; when
    that thread comes back late, the loop sleeps in its selector with nothing to do. That is neither
    the loop blocked nor the machine: the gap is the sender's. A loop blocked in a ``poll`` of its own
    (a socket read with a timeout, made on the loop) also asks late, and stays ``blocked``."""
    if not _wait_channels_shown():
        pytest.skip("this kernel does not name wait channels: the loop's sleep cannot be told")
    monitor = LoopMonitor()
    monitor.start()
    try:
        witness = stall_clock().witness
        deadline = time.monotonic() + 5
        while (record := witness.record()) is None or record.last_woke == 0.0:
            if not witness.running or time.monotonic() > deadline:
                pytest.skip("no stall witness here (a CPU quota?)")
            await asyncio.sleep(0.01)
        track = PlayoutTrack(Playout())
        await asyncio.sleep(0.05)
        await track.recv()
        await track.recv()
        await asyncio.sleep(0.08)  # a sender that comes back late; the loop free all along
        await track.recv()
        assert track.gaps == 1
        assert track.gap_causes["sender"] == 1 and track.own_gaps == 1, track.gap_causes
        await track.recv()
        select.select([], [], [], 0.08)  # a blocking wait on the loop, in poll(), not the selector
        await track.recv()
        assert track.gaps == 2
        assert track.gap_causes["blocked"] == 1 and track.gap_causes["sender"] == 1, track.gap_causes
    finally:
        await monitor.stop()


def test_the_witness_record_is_read_within_the_window_and_a_loop_mostly_in_its_selector_is_idle():
    record = Record(
        last_woke=10.0,
        late=[(5.0, 0.02), (9.0, 0.006), (10.5, 0.5)],  # the last written after the header was read
        seen=[(4.0, b"futex_do_wait"), (6.0, b"do_epoll_wait".ljust(64, b"\0")), (6.005, b"do_epoll_wait"),
              (10.2, b"futex_do_wait")],
    )  # fmt: skip
    assert record.loop_seen(5.0, 11.0) == {"do_epoll_wait": 2}
    assert record.late_within(4.0, 6.0) == pytest.approx(0.02)
    assert record.late_within(8.9, 9.0) == pytest.approx(0.006)
    assert record.late_within(10.0, 10.008) == 0.0  # still on time: the next wake-up is not yet due
    assert record.late_within(10.0, 10.5) == pytest.approx(0.5 - PERIOD_S)  # not woken since
    assert _idle({"do_epoll_wait": 3, "futex_do_wait": 1})
    assert not _idle({"do_epoll_wait": 1, "futex_do_wait": 1})
    assert not _idle({"poll_schedule_timeout.constprop.0": 4}) and not _idle({})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for every purpose here but still answers signal 0.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False  # reaped meanwhile


def test_the_witness_process_starts_and_stops_with_the_clock_and_dies_with_the_server():
    clock = StallClock()
    clock.attach()
    try:
        pid = clock.witness.pid
        assert pid is not None and _alive(pid)
        # One that died is started again when the next server attaches.
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while clock.witness.running and time.monotonic() < deadline:
            time.sleep(0.05)
        clock.attach()
        again = clock.witness.pid
        assert again is not None and again != pid and _alive(again)
    finally:
        clock.detach()
        clock.detach()
    assert not _alive(again) and clock.witness.pid is None
    # A server killed outright leaves no witness behind.
    server = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom voicepeer.runtime.stalls import StallClock\n"
         "c = StallClock(); c.attach(); print(c.witness.pid, flush=True); time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        witness = int(server.stdout.readline())
        assert _alive(witness)
    finally:
        server.kill()
        server.wait()
    deadline = time.monotonic() + 10
    while _alive(witness) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(witness)


def test_no_witness_is_trusted_under_a_cpu_quota(tmp_path):
    """A quota throttles the witness with the server once our threads have used it up, so a stall both
    slept through could be ours: under one, the witness does not start. (No quota can be set on this
    machine's cgroup from a test; the cgroup files are written here instead.)"""
    with open("/proc/self/cgroup") as f:
        path = next((line[3:].strip() for line in f if line.startswith("0::")), None)
    if path is None:
        pytest.skip("no cgroup v2 here")
    cgroup = tmp_path.joinpath(*[p for p in path.split("/") if p])
    cgroup.mkdir(parents=True, exist_ok=True)
    (cgroup / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(str(tmp_path)) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # an ancestor's quota throttles too
    assert cpu_quota(str(tmp_path)) == "150000 100000"
