"""WHIP ingest timings with a real third-party client: Medooze's whip-whep in real headless Chromium.

Each call publishes a spoken question (Chromium's fake microphone) to ``POST /whip``, send-only, with
its ICE candidates trickled by PATCH, and follows the call on the events stream named by the answer's
``rel="events"`` link. All times are on the page's AudioContext clock, from the moment the POST left:

- ``answer_ms``: the 201 arrived (the server gathered its candidates and answered);
- ``connected_ms``: the peer connection is up (trickle done, DTLS done);
- ``first_transcript_ms``: the first transcript event (a partial while the user speaks, or the final);
- ``final_transcript_ms``: the final transcript; and ``speech_end_to_final_ms``, from the end of the
  speech in the sent audio to that final transcript.

Two voices (espeak-ng and flite's slt), short questions; the word error rate of the final transcripts is
reported beside the times.

    python -m bench.whip [--rounds 3] [--questions 5]

Prints one JSON document, then a one-line summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.latency import QUESTIONS, percentile, word_errors
from tests.support import browser, whip_page
from tests.support.browser import RECORDER_WORKLET, Envelope
from tests.support.server import ServerProcess
from tests.support.speech import speak

VOICES = [("espeak-ng", "en-us"), ("flite", "slt")]
STAGES = ["answer_ms", "connected_ms", "first_transcript_ms", "final_transcript_ms", "speech_end_to_final_ms"]


def one_call(pw: Any, url: str, wav: Path, text: str) -> dict[str, Any]:
    with browser.chromium_page(pw, wav) as page:
        whip_page.open_publisher(page, url)
        whip_page.publish(page, "sendonly", RECORDER_WORKLET)
        whip_page.wait_for_event(page, "m.type === 'transcript' && m.final", 40_000)
        data = page.evaluate(
            "({events: window.__whip.events, connected: window.__whip.connected,"
            " levels: window.__whip.levels,"
            " requests: window.__whip.requests.map((r) => ({method: r.method, sent: r.sent,"
            " answered: r.answered}))})"
        )
        whip_page.stop(page)
    post = next(r for r in data["requests"] if r["method"] == "POST")
    t0 = post["sent"]
    transcripts = [(e["t"], e["msg"]) for e in data["events"] if e["msg"]["type"] == "transcript"]
    final_t, final = next((t, m) for t, m in transcripts if m["final"])
    ms = lambda t: round((t - t0) * 1000, 1)  # noqa: E731
    result: dict[str, Any] = {
        "question": text,
        "transcript": final["text"],
        "answer_ms": ms(post["answered"]),
        "connected_ms": ms(data["connected"]) if data["connected"] is not None else None,
        "first_transcript_ms": ms(transcripts[0][0]),
        "final_transcript_ms": ms(final_t),
        "patches": sum(r["method"] == "PATCH" for r in data["requests"]),
    }
    spoken = Envelope.from_flat(data["levels"]["local"]).segments(threshold=0.01)
    if spoken:
        result["speech_end_to_final_ms"] = round((final_t - spoken[-1][1]) * 1000, 1)
    result["word_errors"], result["words"] = word_errors(text, final["text"])
    return result


def summarize(calls: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"calls": len(calls)}
    for stage in STAGES:
        values = [c[stage] for c in calls if c.get(stage) is not None]
        out[stage] = {"p50": percentile(values, 0.5), "p95": percentile(values, 0.95)}
    errors, total = sum(c["word_errors"] for c in calls), sum(c["words"] for c in calls)
    out["wer"] = round(errors / total, 3) if total else None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs, each over every question and voice")
    parser.add_argument("--questions", type=int, default=5, help="how many questions (%(default)s)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/whip.json"))
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="voicepeer-bench-whip-"))
    wavs = []
    for engine, voice in VOICES:
        for i, text in enumerate(QUESTIONS[: args.questions]):
            path = work / f"{engine}-{i}.wav"
            wavs.append((engine, speak(text, path, lead_s=0.5, tail_s=8.0, engine=engine, voice=voice), text))

    runs: list[dict[str, Any]] = []
    with ServerProcess(log_path=work / "server.log") as server, sync_playwright() as pw:
        for r in range(args.rounds):
            calls = []
            for engine, sf, text in wavs:
                call = one_call(pw, server.url, sf.path, text)
                call["voice"] = engine
                calls.append(call)
                print(
                    f"  run {r}: {engine:9} answer {call['answer_ms']:>6} ms, final transcript "
                    f"{call['final_transcript_ms']:>7} ms after POST: {call['transcript']!r}",
                    file=sys.stderr,
                )
                time.sleep(0.5)
            runs.append(
                {
                    "summary": summarize(calls),
                    "by_voice": {
                        engine: summarize([c for c in calls if c["voice"] == engine]) for engine, _ in VOICES
                    },
                    "calls": calls,
                }
            )

    medians = {
        stage: {q: statistics.median(run["summary"][stage][q] for run in runs) for q in ("p50", "p95")}
        for stage in STAGES
    }
    medians["wer"] = statistics.median(run["summary"]["wer"] for run in runs)
    report = {"benchmark": "whip_ingest", "runs": len(runs), "median_of_runs": medians, "run_results": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    m = medians
    print(
        f"WHIP (whip-whep in Chromium, {len(wavs)} calls x {len(runs)} runs, medians of runs): "
        f"POST->201 p50 {m['answer_ms']['p50']} ms, ->connected p50 {m['connected_ms']['p50']} ms, "
        f"->first transcript p50 {m['first_transcript_ms']['p50']} ms, "
        f"->final transcript p50 {m['final_transcript_ms']['p50']} ms "
        f"(end of speech->final p50 {m['speech_end_to_final_ms']['p50']} ms, "
        f"p95 {m['speech_end_to_final_ms']['p95']} ms); WER {m['wer']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
