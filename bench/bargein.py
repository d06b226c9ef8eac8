"""Barge-in measured at the client: how soon the bot goes quiet when the user speaks over it.

Real headless Chromium plays, as its fake microphone, a request for a long story, then (while the bot
is telling it) a question. The page records the level of what it sends and what it receives on one
AudioContext clock. Barge-in time is from the onset of the user's second utterance in the sent audio
to the end of the bot's voice in the received audio; the server's ``interrupted`` event and the
transcript of the question that cut in are reported beside it.

    python -m bench.bargein [--rounds 3] [--echo-cancellation on|off]

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

from bench.latency import percentile, scrape_media_health
from peer.text import words
from tests.support import browser
from tests.support.server import STORY_PROMPT, ServerProcess
from tests.support.speech import join, speak

FIRST = ["Please tell me a story about a dragon.", "Tell me a story about the sea."]
SECOND = [
    ("What is the weather like today?", {"weather", "today"}),
    ("Tell me about the weather in London.", {"weather", "london"}),
    ("Stop, please stop.", {"stop"}),
]
GAP_S = [4.0, 5.5]


def one_call(pw: Any, url: str, wav: Path, expect: set[str], echo_cancellation: bool) -> dict[str, Any]:
    with browser.chromium_page(pw, wav) as page:
        browser.connect(page, url, audio_processing={"echoCancellation": echo_cancellation})
        try:
            browser.wait_for_event(page, "m.type === 'transcript' && m.final && m.turn === 2", 60_000)
        except Exception as exc:  # reported, not fatal: the summary counts the misses
            note = f"no second turn: {exc.__class__.__name__}"
        else:
            note = None
        time.sleep(1.0)
        call = browser.record(page)
    result: dict[str, Any] = {"note": note, "interrupted": call.messages("interrupted")}
    finals = [m for m in call.messages("transcript") if m["final"]]
    result["transcripts"] = [m["text"] for m in finals]
    if len(finals) >= 2:
        result["second_understood"] = expect <= set(words(finals[1]["text"]))
    user = call.local.segments(threshold=0.01)
    bot = call.remote.segments(threshold=0.005, min_gap_s=0.15)
    if len(user) >= 2:
        onset = user[1][0]
        result["user_onset_s"] = round(onset, 3)
        stop = browser.bot_stop(bot, onset)
        if stop is not None:
            result["barge_in_ms"] = round((stop - onset) * 1000, 1)
        else:
            result["note"] = result["note"] or "the bot was not speaking when the user cut in"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="times each combination runs (%(default)s)")
    parser.add_argument("--echo-cancellation", choices=["on", "off"], default="on")
    parser.add_argument("--url", help="a running server, started with the story prompt; default: start one")
    parser.add_argument("--out", type=Path, default=Path("bench/results/bargein.json"))
    parser.add_argument("server_args", nargs="*", help="extra `voicepeer serve` flags")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="voicepeer-bench-"))
    scenes = []
    for i, first in enumerate(FIRST):
        a = speak(first, work / f"a{i}.wav", lead_s=2.0, tail_s=0.0)
        for j, (second, expect) in enumerate(SECOND):
            b = speak(second, work / f"b{j}.wav", lead_s=0.0, tail_s=8.0)
            gap = GAP_S[(i + j) % len(GAP_S)]
            path = join(a.path, gap, b.path, work / f"scene{i}_{j}.wav")
            scenes.append((path, first, second, expect))

    def run(url: str) -> list[dict[str, Any]]:
        calls = []
        with sync_playwright() as pw:
            for r in range(args.rounds):
                for path, first, second, expect in scenes:
                    call = one_call(pw, url, path, expect, args.echo_cancellation == "on")
                    call.update(round=r, first=first, second=second)
                    calls.append(call)
                    took = call.get("barge_in_ms", "n/a")
                    print(f"  {took:>7} ms  {second!r} -> {call['transcripts']}", file=sys.stderr)
        return calls

    media: dict[str, Any] = {}
    if args.url:
        calls = run(args.url)
    else:
        server_args = ["--system-prompt", STORY_PROMPT, *args.server_args]
        with ServerProcess(*server_args, log_path=work / "server.log") as srv:
            calls = run(srv.url)
            media = scrape_media_health(srv)

    times = [c["barge_in_ms"] for c in calls if "barge_in_ms" in c]
    summary = {
        "calls": len(calls),
        "measured": len(times),
        "interrupted": sum(1 for c in calls if c["interrupted"]),
        "second_understood": sum(1 for c in calls if c.get("second_understood")),
        "barge_in_ms": {
            "p50": percentile(times, 0.5),
            "p95": percentile(times, 0.95),
            "max": max(times, default=None),
        },
        "echo_cancellation": args.echo_cancellation,
        "media": media,
    }
    report = {"benchmark": "barge_in", "summary": summary, "calls": calls}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    b = summary["barge_in_ms"]
    print(
        f"barge-in at the client: p50 {b['p50']} ms, p95 {b['p95']} ms over {len(times)}/{len(calls)} calls; "
        f"interrupted {summary['interrupted']}, second question understood {summary['second_understood']}; "
        f"loop lag p99 {media.get('loop_lag_p99_ms')} ms, outbound gaps {media.get('outbound_gaps_total')}"
    )
    return 0 if len(times) == len(calls) else 1


if __name__ == "__main__":
    sys.exit(main())
