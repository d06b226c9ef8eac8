"""Voice-to-voice latency measured at the client, in a real headless Chromium against the real server.

For each spoken question (espeak-ng, played by Chromium's fake microphone) the page records the level of
the audio it sends and of the audio it receives, on one AudioContext clock. Voice-to-voice latency is the
time from the end of the user's speech in the sent audio to the onset of the bot's voice in the received
audio: what a person in front of the page waits. The server's own breakdown (from the ``metrics`` event)
is printed beside it.

    python -m bench.latency [--rounds 2] [--questions 10] [--url http://127.0.0.1:8080]

Prints one JSON document, then a one-line summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support import browser
from tests.support.server import ServerProcess
from tests.support.speech import speak

QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What color is the sky?",
    "Tell me a fun fact about the moon.",
    "What is two plus two?",
    "Who wrote Romeo and Juliet?",
    "What is the weather like on Mars?",
    "Can you recommend a good book?",
    "How do I boil an egg?",
    "What is the largest ocean on Earth?",
]

SERVER_STAGES = [
    "endpoint_ms",
    "transcript_ms",
    "llm_first_token_ms",
    "tts_first_audio_ms",
    "first_frame_sent_ms",
]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return round(ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo), 1)


def scrape_media_health(server: ServerProcess) -> dict[str, Any]:
    """Event-loop lag and outbound frame gaps from the server's /metrics, for the whole run so far."""
    values = {}
    for line in server.get_text("/metrics").splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    frames = values.get("voicepeer_outbound_frames_total", 0.0)
    gaps = values.get("voicepeer_outbound_gaps_total", 0.0)
    minutes = frames * 0.02 / 60
    return {
        "loop_lag_p50_ms": round(values.get('voicepeer_loop_lag_seconds{quantile="0.5"}', 0) * 1000, 2),
        "loop_lag_p99_ms": round(values.get('voicepeer_loop_lag_seconds{quantile="0.99"}', 0) * 1000, 2),
        "loop_lag_max_ms": round(values.get("voicepeer_loop_lag_max_seconds", 0) * 1000, 1),
        "loop_lag_samples": int(values.get("voicepeer_loop_lag_seconds_count", 0)),
        "outbound_frames_total": int(frames),
        "outbound_gaps_total": int(gaps),
        "outbound_gaps_per_minute": round(gaps / minutes, 2) if minutes else None,
    }


def one_call(pw: Any, url: str, wav: Path, text: str, timeout_s: float = 60.0) -> dict[str, Any]:
    with browser.chromium_page(pw, wav) as page:
        browser.connect(page, url)
        browser.wait_for_event(page, "m.type === 'metrics' || m.type === 'error'", int(timeout_s * 1000))
        time.sleep(0.3)
        call = browser.record(page)
    result: dict[str, Any] = {"question": text}
    transcripts = [m for m in call.messages("transcript") if m["final"]]
    replies = [m for m in call.messages("reply") if m["final"]]
    metrics = call.messages("metrics")
    result["transcript"] = transcripts[-1]["text"] if transcripts else None
    result["reply"] = replies[-1]["text"] if replies else None
    result["errors"] = call.messages("error")
    if metrics:
        result["server"] = {k: v for k, v in metrics[-1].items() if k not in ("type", "turn")}
    spoken = call.local.segments(threshold=0.01)
    if spoken:
        user_end = spoken[0][1]
        onsets = [a for a, _ in call.remote.segments(threshold=0.005) if a > user_end]
        result["user_speech_end_s"] = round(user_end, 3)
        if onsets:
            result["voice_to_voice_ms"] = round((onsets[0] - user_end) * 1000, 1)
    return result


def summarize(calls: list[dict[str, Any]]) -> dict[str, Any]:
    v2v = [c["voice_to_voice_ms"] for c in calls if "voice_to_voice_ms" in c]
    summary: dict[str, Any] = {
        "calls": len(calls),
        "answered": len(v2v),
        "voice_to_voice_ms": {
            "p50": percentile(v2v, 0.5),
            "p95": percentile(v2v, 0.95),
            "min": min(v2v, default=None),
            "max": max(v2v, default=None),
        },
        "server_ms_p50": {},
    }
    for stage in SERVER_STAGES:
        values = [c["server"][stage] for c in calls if stage in c.get("server", {})]
        summary["server_ms_p50"][stage] = percentile(values, 0.5)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="times each question is asked (%(default)s)")
    parser.add_argument(
        "--questions", type=int, default=len(QUESTIONS), help="how many questions (%(default)s)"
    )
    parser.add_argument("--url", help="an already running server; default: start one")
    parser.add_argument("--out", type=Path, default=Path("bench/results/latency.json"))
    parser.add_argument("server_args", nargs="*", help="extra `voicepeer serve` flags for the started server")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="voicepeer-bench-"))
    wavs = []
    for i, text in enumerate(QUESTIONS[: args.questions]):
        wavs.append((speak(text, work / f"q{i}.wav", lead_s=2.0, tail_s=12.0), text))

    def run(url: str) -> list[dict[str, Any]]:
        calls = []
        with sync_playwright() as pw:
            for r in range(args.rounds):
                for sf, text in wavs:
                    call = one_call(pw, url, sf.path, text)
                    call["round"] = r
                    calls.append(call)
                    print(
                        f"  {call.get('voice_to_voice_ms', 'n/a'):>7} ms  {text!r} -> {call.get('reply')!r}",
                        file=sys.stderr,
                    )
        return calls

    media: dict[str, Any] = {}
    if args.url:
        calls = run(args.url)
    else:
        with ServerProcess(*args.server_args, log_path=work / "server.log") as server:
            calls = run(server.url)
            media = scrape_media_health(server)

    report = {"benchmark": "voice_to_voice_latency", "summary": summarize(calls), "calls": calls}
    report["summary"]["media"] = media
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    s = report["summary"]
    v = s["voice_to_voice_ms"]
    stages = " ".join(f"{k.removesuffix('_ms')}={val}" for k, val in s["server_ms_p50"].items())
    print(
        f"voice-to-voice at the client: p50 {v['p50']} ms, p95 {v['p95']} ms "
        f"over {s['answered']}/{s['calls']} calls; server p50 from end of speech: {stages}; "
        f"loop lag p99 {media.get('loop_lag_p99_ms')} ms, outbound gaps {media.get('outbound_gaps_total')}"
    )
    return 0 if s["answered"] == s["calls"] else 1


if __name__ == "__main__":
    sys.exit(main())
