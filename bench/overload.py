"""Overload: more callers than the server can answer in time, with admission by load on and off.

Callers arrive one every ``--arrive-every`` seconds, up to ``--callers`` (by default three per core:
about twice the talking calls the default ``--inference-budget`` admits on this machine, and three
times ``--max-sessions``' one per core, which is lifted here so that only the load decides). Each
admitted caller talks until the end of the run: a question (espeak-ng and flite voices, short and long
questions), the reply, a pause of ``--pause`` seconds, the next question. A refused caller (503) is
counted with its reason and does not retry.

Per mode, the admitted callers' voice-to-voice (the client's first voiced frame after the end of its
speech) and the server's first frame, p50/p95 over all their turns, and how many were admitted and
refused. ``on``: the default budget; ``off``: ``--inference-budget 0`` (calls counted only).

    python -m bench.overload [--callers 6] [--arrive-every 8] [--duration 120] [--modes on,off]

Prints one JSON document, then a one-line summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.latency import LONG_QUESTIONS, QUESTIONS, percentile, scrape_media_health
from tests.support.rtc_client import Refused, RtcClient
from tests.support.server import ServerProcess
from tests.support.speech import SpeechFile, read_wav, speak


async def caller(
    url: str, questions: list[SpeechFile], start_at: float, end_at: float, pause_s: float
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, start_at - loop.time()))
    client = RtcClient(url)
    turns: list[dict[str, Any]] = []
    try:
        try:
            await client.connect()
        except Refused as exc:
            return {"admitted": False, "status": exc.status, "refusal": exc.body}
        await client.wait_for(lambda m: m["type"] == "session", 20)
        i = 0
        while loop.time() < end_at:
            question = questions[i % len(questions)]
            i += 1
            seen = len(client.messages("metrics"))
            sent_at = client.say(read_wav(question.path)[0])
            speech_end = sent_at + question.speech_end_s
            try:
                await client.wait_for(
                    lambda m, seen=seen: m["type"] == "metrics" and len(client.messages("metrics")) > seen, 90
                )
            except AssertionError:  # no reply in 90 s
                turns.append({"question": question.text, "timed_out": True})
                continue
            metrics = client.messages("metrics")[-1]
            onset = client.received.voiced_after(speech_end)
            turns.append(
                {
                    "question": question.text,
                    "voice_to_voice_ms": round((onset - speech_end) * 1000, 1) if onset is not None else None,
                    "first_frame_sent_ms": metrics.get("first_frame_sent_ms"),
                }
            )
            await asyncio.sleep(pause_s)
        return {"admitted": True, "turns": turns}
    finally:
        await client.close()


async def run_callers(
    url: str, questions: list[SpeechFile], args: argparse.Namespace
) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 1.0
    end_at = t0 + args.duration
    tasks = [
        caller(url, questions[i:] + questions[:i], t0 + i * args.arrive_every, end_at, args.pause)
        for i in range(args.callers)
    ]
    return list(await asyncio.gather(*tasks))


def summarize(callers: list[dict[str, Any]]) -> dict[str, Any]:
    turns = [t for c in callers if c["admitted"] for t in c["turns"]]
    v2v = [t["voice_to_voice_ms"] for t in turns if t.get("voice_to_voice_ms") is not None]
    first = [t["first_frame_sent_ms"] for t in turns if t.get("first_frame_sent_ms") is not None]
    return {
        "admitted": sum(c["admitted"] for c in callers),
        "refused": sum(not c["admitted"] for c in callers),
        "refusals": sorted({c["refusal"].get("error", "?") for c in callers if not c["admitted"]}),
        "turns": len(turns),
        "timed_out": sum(bool(t.get("timed_out")) for t in turns),
        "voice_to_voice_ms": {"p50": percentile(v2v, 0.5), "p95": percentile(v2v, 0.95)},
        "first_frame_ms": {"p50": percentile(first, 0.5), "p95": percentile(first, 0.95)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cores = os.cpu_count() or 1
    parser.add_argument("--callers", type=int, default=3 * cores)
    parser.add_argument("--arrive-every", type=float, default=8.0)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds from the first arrival")
    parser.add_argument("--pause", type=float, default=3.0, help="seconds from a reply to the next question")
    parser.add_argument("--modes", default="on,off")
    parser.add_argument("--out", type=Path, default=Path("bench/results/overload.json"))
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="voicepeer-bench-overload-"))
    texts = QUESTIONS[:4] + LONG_QUESTIONS[:2]
    voices = [("espeak-ng", "en-us"), ("flite", "slt")] * 3
    questions = [
        speak(text, work / f"q{i}.wav", lead_s=0.3, tail_s=2.0, engine=engine, voice=voice)
        for i, (text, (engine, voice)) in enumerate(zip(texts, voices, strict=True))
    ]
    modes: dict[str, Any] = {}
    for mode in args.modes.split(","):
        budget = [] if mode == "on" else ["--inference-budget", "0"]
        with ServerProcess(
            "--max-sessions",
            str(args.callers + 1),
            "--offers-per-minute",
            "0",
            *budget,
            log_path=work / f"server-{mode}.log",
        ) as server:
            warm = argparse.Namespace(**{**vars(args), "callers": 1, "duration": 1.0})
            asyncio.run(run_callers(server.url, questions, warm))  # the models' first run, not counted
            callers = asyncio.run(run_callers(server.url, questions, args))
            health = scrape_media_health(server)
            load = server.get_json("/healthz").get("load")
        modes[mode] = summarize(callers) | {
            "loop_lag_p99_ms": health["loop_lag_p99_ms"],
            "outbound_gaps_total": health["outbound_gaps_total"],
            "load": load,
            "callers": callers,
        }
        brief = {k: v for k, v in modes[mode].items() if k != "callers"}
        print(f"  {mode}: {json.dumps(brief)}", file=sys.stderr)
    report = {
        "benchmark": "overload",
        "cores": cores,
        "callers": args.callers,
        "arrive_every_s": args.arrive_every,
        "duration_s": args.duration,
        "modes": modes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    brief = {m: {k: v for k, v in r.items() if k != "callers"} for m, r in modes.items()}
    print(json.dumps({**report, "modes": brief}, indent=2))
    print(
        f"overload ({args.callers} callers on {cores} cores): "
        + "; ".join(
            f"admission {m}: {r['admitted']} admitted, {r['refused']} refused, voice-to-voice p50 "
            f"{r['voice_to_voice_ms']['p50']} p95 {r['voice_to_voice_ms']['p95']} ms over {r['turns']} turns"
            for m, r in modes.items()
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
