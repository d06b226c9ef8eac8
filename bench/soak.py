"""Soak: many connect / talk / drop cycles against one real server, watching what it keeps.

Each cycle a real aiortc client connects, says a short question (the server transcribes it and starts
answering), and drops the call in one of three ways, in turn:

- ``hangup``: DELETE of the session URL, then the peer connection closes (what our client does);
- ``close``: the peer connection closes without a word to the server;
- ``kill``: the client is a separate process, killed with SIGKILL mid-call (a crashed tab, a lost
  laptop): the server only notices the silence.

A few cycles run at once. The server's resident memory, open files, threads and asyncio tasks are read
at the start and after every 100 cycles, once those calls have ended (so the reading is what the server
kept, not the calls in flight); the slope of memory over the rounds after warm-up is the leak rate
(target: under 5 MB per 100 cycles, files and threads back to where they were).

    python -m bench.soak [--cycles 1000] [--parallel 3]

Prints one JSON document, then a one-line summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.rtc_client import RtcClient
from tests.support.server import ServerProcess, metric_values
from tests.support.speech import read_wav, speak

WARMUP_CYCLES = 100


def proc_stats(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_kb": int(fields["VmRSS"].split()[0]),
        "threads": int(fields["Threads"]),
        "open_files": len(os.listdir(f"/proc/{pid}/fd")),
    }


def server_sample(server: ServerProcess, cycle: int) -> dict[str, Any]:
    values = metric_values(server.get_text("/metrics"))
    tasks, sessions = (values.get(name) for name in ("voicepeer_asyncio_tasks", "voicepeer_sessions"))
    assert server.proc is not None
    return {
        "cycle": cycle,
        **proc_stats(server.proc.pid),
        "tasks": None if tasks is None else int(tasks),
        "sessions": None if sessions is None else int(sessions),
    }


async def talk(url: str, wav: Path, speech_end_s: float) -> RtcClient:
    """Connects, says the question, waits until the server has heard it (or 10 s)."""
    client = RtcClient(url)
    await client.connect()
    await client.wait_for(lambda m: m["type"] == "session", 10)
    client.say(read_wav(wav)[0])
    try:
        await client.wait_for(lambda m: m["type"] == "transcript" and m["final"], speech_end_s + 10)
    except TimeoutError:
        pass
    return client


async def cycle(url: str, wav: Path, speech_end_s: float, how: str) -> None:
    if how == "kill":
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.soak",
            "--child",
            url,
            str(wav),
            str(speech_end_s),
            stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdout is not None
        await child.stdout.readline()  # "talking", once the server heard the question
        child.send_signal(signal.SIGKILL)
        await child.wait()
        return
    client = await talk(url, wav, speech_end_s)
    if how == "hangup":
        import aiohttp

        async with aiohttp.ClientSession() as http, http.delete(url + client.answer["session_url"]):
            pass
    await client.close()


def child(url: str, wav: str, speech_end_s: str) -> int:
    async def run() -> None:
        await talk(url, Path(wav), float(speech_end_s))
        print("talking", flush=True)
        await asyncio.sleep(3600)  # until killed

    asyncio.run(run())
    return 0


def slope_mb_per_100(samples: list[dict[str, Any]], after: int = WARMUP_CYCLES) -> float | None:
    """Least-squares MB per 100 cycles over the samples taken with no call live, from ``after``."""
    points = [(s["cycle"], s["rss_kb"] / 1024) for s in samples if s["cycle"] >= after and s["cycle"] > 0]
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return round(100 * sum((x - mx) * (y - my) for x, y in points) / den, 2) if den else None


async def wait_idle(server: ServerProcess) -> None:
    """Until every call has ended (a killed client's after the media watchdog, 10 s), and 2 s more."""
    deadline = time.monotonic() + 60
    while server_sample(server, 0)["sessions"] and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(1)  # another process's state: polled
    await asyncio.sleep(2)


async def soak(server: ServerProcess, cycles: int, parallel: int, wav: Path, speech_end_s: float) -> dict:
    ways = ["hangup", "close", "kill"]
    samples = [server_sample(server, 0)]
    # The worker pools start their threads lazily: one call first, so that "idle" means warm.
    await cycle(server.url, wav, speech_end_s, "close")
    await wait_idle(server)
    idle = server_sample(server, 0)
    idle["idle_after_one_call"] = True
    samples.append(idle)
    done = 0
    failures = 0
    started = time.monotonic()
    # Rounds of 100 cycles. After each, the calls are let end and the server is read with none live:
    # what it keeps, not the working set of the calls in flight (4-5 at once, ~20 MB each).
    while done < cycles:
        round_end = min(cycles, done + 100)
        next_index = done

        async def worker(end: int) -> None:
            nonlocal failures, next_index
            while next_index < end:  # no await between the check and the claim: one loop, no lock
                i, next_index = next_index, next_index + 1
                try:
                    await asyncio.wait_for(cycle(server.url, wav, speech_end_s, ways[i % 3]), 60)
                except Exception as exc:  # a failed cycle is counted, and the soak goes on
                    failures += 1
                    print(f"  cycle {i} ({ways[i % 3]}) failed: {exc!r}", file=sys.stderr)

        await asyncio.gather(*(worker(round_end) for _ in range(parallel)))
        busy_rss_kb = server_sample(server, round_end)["rss_kb"]
        done = round_end
        await wait_idle(server)
        sample = server_sample(server, done)
        sample["busy_rss_kb"] = busy_rss_kb
        samples.append(sample)
        print(f"  {sample}", file=sys.stderr)
    samples[-1]["after_all_calls_ended"] = True
    return {"samples": samples, "failures": failures, "seconds": round(time.monotonic() - started)}


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(*sys.argv[2:5])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/soak.json"))
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="NAME=VALUE", help="environment of the server"
    )
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="voicepeer-bench-soak-"))
    question = speak("What is the capital of France?", work / "q.wav", lead_s=0.3, tail_s=1.0)
    # What the server keeps is measured, not whether it would admit a third talking call.
    args_ = [
        "--max-sessions",
        str(args.parallel * 2 + 4),
        "--offers-per-minute",
        "0",
        "--inference-budget",
        "0",
    ]
    env = dict(item.split("=", 1) for item in args.server_env)
    with ServerProcess(*args_, log_path=work / "server.log", env=env) as server:
        result = asyncio.run(soak(server, args.cycles, args.parallel, question.path, question.speech_end_s))
    samples = result["samples"]
    idle = next(s for s in samples if s.get("idle_after_one_call"))
    start = next((s for s in samples if s["cycle"] >= WARMUP_CYCLES), samples[0])
    end = samples[-1]
    summary = {
        "cycles": args.cycles,
        "failures": result["failures"],
        "seconds": result["seconds"],
        "rss_mb_per_100_cycles_after_warmup": slope_mb_per_100(samples),
        # A high-water mark (allocator arenas growing to the worst concurrency seen) flattens out; a
        # leak does not: the second half's slope tells them apart.
        "rss_mb_per_100_cycles_second_half": slope_mb_per_100(samples, after=args.cycles // 2),
        "rss_mb": {
            "start": round(samples[0]["rss_kb"] / 1024, 1),
            "after_warmup": round(start["rss_kb"] / 1024, 1),
            "end": round(end["rss_kb"] / 1024, 1),
        },
        "server_env": env,
        "open_files": {
            "start": samples[0]["open_files"],
            "idle_warm": idle["open_files"],
            "end": end["open_files"],
        },
        "threads": {"start": samples[0]["threads"], "idle_warm": idle["threads"], "end": end["threads"]},
        "tasks": {"start": samples[0]["tasks"], "idle_warm": idle["tasks"], "end": end["tasks"]},
    }
    report = {"benchmark": "soak", "summary": summary, "samples": samples}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    rss = summary["rss_mb"]
    print(
        f"soak: {args.cycles} connect/talk/drop cycles ({result['failures']} failed) "
        f"in {result['seconds']} s; "
        f"RSS {rss['start']} -> {rss['after_warmup']} (warm) -> {rss['end']} MB, "
        f"slope {summary['rss_mb_per_100_cycles_after_warmup']} MB/100 cycles "
        f"({summary['rss_mb_per_100_cycles_second_half']} in the second half); "
        f"idle after one call -> after all: files {summary['open_files']['idle_warm']} -> "
        f"{summary['open_files']['end']}, threads {summary['threads']['idle_warm']} -> "
        f"{summary['threads']['end']}, "
        f"tasks {summary['tasks']['idle_warm']} -> {summary['tasks']['end']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
