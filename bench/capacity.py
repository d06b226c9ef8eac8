"""How many calls can talk at once: 1, 2, 3 and 4 concurrent talking calls against one server.

At each level, that many real aiortc clients on loopback ask a question at the same moment (espeak-ng
and flite voices alternating), several rounds. Per call: the server's first reply frame after the end of
speech (``first_frame_sent_ms`` from the call's own metrics event) and the client's voice onset (the
first voiced frame the client receives after its speech ended). Per level: the event loop's lag and the
outbound frame gaps over the level's rounds (from /metrics).

The capacity is the largest level whose median first frame stays within ``--slack`` (default 1.5×) of
the one-call median: beyond it, every extra talking call makes every caller wait noticeably longer. It
is what ``TALKING_CALLS_PER_CORE`` in voicepeer.config (the ``--max-sessions`` default) comes from.

``--remote`` runs the same calls with the models in separate server processes on the same machine
(wyoming-faster-whisper, wyoming-piper and llama-cpp-python's server, started by the bench: see
``bench.media.remote_inference``), the peer doing media only: what moving inference out of the peer
costs or gains when both still share the cores. Each level also reports the CPU seconds the peer and
the inference servers used. One call before the first level warms the models up and is not counted.

    python -m bench.capacity [--rounds 3] [--levels 1,2,3,4] [--remote]

Prints one JSON document, then a one-line summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.latency import QUESTIONS, percentile, scrape_media_health
from bench.media import remote_inference, tree_cpu_s
from tests.support.rtc_client import RtcClient
from tests.support.server import ServerProcess
from tests.support.speech import SpeechFile, read_wav, speak

REMOTE_MODELS = "remote: wyoming-faster-whisper, wyoming-piper, llama-cpp-python's server"


async def one_call(url: str, question: SpeechFile, start: asyncio.Event) -> dict[str, Any]:
    client = RtcClient(url)
    try:
        await client.connect()
        await client.wait_for(lambda m: m["type"] == "session", 10)
        await start.wait()
        sent_at = client.say(read_wav(question.path)[0])
        speech_end = sent_at + question.speech_end_s
        _, metrics = await client.wait_for(lambda m: m["type"] in ("metrics", "error"), 120)
        await asyncio.sleep(0.5)
        onset = client.received.voiced_after(speech_end)
        return {
            "question": question.text,
            "first_frame_sent_ms": metrics.get("first_frame_sent_ms"),
            "client_onset_ms": round((onset - speech_end) * 1000, 1) if onset is not None else None,
            "transcript_ms": metrics.get("transcript_ms"),
            "llm_first_token_ms": metrics.get("llm_first_token_ms"),
        }
    finally:
        await client.close()


async def level(url: str, n: int, questions: list[SpeechFile], round_no: int) -> list[dict[str, Any]]:
    start = asyncio.Event()
    tasks = [
        asyncio.create_task(one_call(url, questions[(round_no * n + i) % len(questions)], start))
        for i in range(n)
    ]
    await asyncio.sleep(2.0)  # every client connected and idle
    start.set()
    return list(await asyncio.gather(*tasks))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levels", default="1,2,3,4")
    parser.add_argument("--slack", type=float, default=1.5)
    parser.add_argument("--remote", action="store_true", help="the models in server processes of their own")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted calls before the first level")
    parser.add_argument("--out", type=Path, help="default bench/results/capacity[-remote].json")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    out = args.out or Path(f"bench/results/capacity{'-remote' if args.remote else ''}.json")

    work = Path(tempfile.mkdtemp(prefix="voicepeer-bench-capacity-"))
    questions = [
        speak(text, work / f"q{i}.wav", lead_s=0.3, tail_s=6.0, engine=engine, voice=voice)
        for i, (text, (engine, voice)) in enumerate(
            zip(QUESTIONS[:6], [("espeak-ng", "en-us"), ("flite", "slt")] * 3, strict=True)
        )
    ]
    table: list[dict[str, Any]] = []
    before: dict[str, Any] = {}
    loadavg_before = Path("/proc/loadavg").read_text().split()[:3]
    with ExitStack() as stack:
        inference = stack.enter_context(remote_inference(work)) if args.remote else None
        server = stack.enter_context(
            ServerProcess(
                "--max-sessions",
                str(max(levels) + 1),
                "--offers-per-minute",
                "0",
                "--inference-budget",
                "0",  # the levels past what admission by load would take are the point
                *(inference.flags() if inference else []),
                log_path=work / "server.log",
            )
        )
        assert server.proc is not None
        watched = {"peer": server.proc.pid} | (inference.pids() if inference else {})
        for w in range(args.warmup):
            warm = asyncio.run(level(server.url, 1, questions, w))
            print(f"  warm-up: {[c['first_frame_sent_ms'] for c in warm]}", file=sys.stderr)
        for n in levels:
            calls: list[dict[str, Any]] = []
            before = scrape_media_health(server)
            cpu_before = {name: tree_cpu_s(pid) for name, pid in watched.items()}
            for r in range(args.rounds):
                calls += asyncio.run(level(server.url, n, questions, r))
                print(
                    f"  level {n} round {r}: {[c['first_frame_sent_ms'] for c in calls[-n:]]}",
                    file=sys.stderr,
                )
            after = scrape_media_health(server)
            cpu = {name: round(tree_cpu_s(pid) - cpu_before[name], 1) for name, pid in watched.items()}
            frames = after["outbound_frames_total"] - before["outbound_frames_total"]
            gaps = after["outbound_gaps_total"] - before["outbound_gaps_total"]
            first = [c["first_frame_sent_ms"] for c in calls if c["first_frame_sent_ms"] is not None]
            onset = [c["client_onset_ms"] for c in calls if c["client_onset_ms"] is not None]
            table.append(
                {
                    "talking_calls": n,
                    "calls": len(calls),
                    "first_frame_ms": {"p50": percentile(first, 0.5), "p95": percentile(first, 0.95)},
                    "client_onset_ms": {"p50": percentile(onset, 0.5), "p95": percentile(onset, 0.95)},
                    "loop_lag_p99_ms": after["loop_lag_p99_ms"],
                    "loop_lag_max_ms": after["loop_lag_max_ms"],
                    "outbound_gaps_per_minute": round(gaps / (frames * 0.02 / 60), 2) if frames else None,
                    "cpu_s": cpu,
                    "details": calls,
                }
            )
    base = table[0]["first_frame_ms"]["p50"]
    capacity = max(
        (row["talking_calls"] for row in table if row["first_frame_ms"]["p50"] <= args.slack * base),
        default=1,
    )
    cores = os.cpu_count() or 1
    report = {
        "benchmark": "capacity",
        "models": REMOTE_MODELS if args.remote else "embedded",
        "cores": cores,
        "loadavg_before": loadavg_before,
        "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
        "slack": args.slack,
        "capacity_talking_calls": capacity,
        "talking_calls_per_core": round(capacity / cores, 2),
        "levels": table,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(
        json.dumps(
            {k: v for k, v in report.items() if k != "levels"}
            | {"levels": [{k: v for k, v in row.items() if k != "details"} for row in table]},
            indent=2,
        )
    )
    rows = "; ".join(
        f"{row['talking_calls']}: first frame p50 {row['first_frame_ms']['p50']} ms p95 "
        f"{row['first_frame_ms']['p95']} ms, onset p50 {row['client_onset_ms']['p50']} ms, lag p99 "
        f"{row['loop_lag_p99_ms']} ms, gaps/min {row['outbound_gaps_per_minute']}"
        for row in table
    )
    models = "remote" if args.remote else "embedded"
    print(
        f"capacity ({models} models): {capacity} talking calls on {cores} cores "
        f"({report['talking_calls_per_core']} per core, first frame within {args.slack}x of one call's); "
        f"{rows}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
