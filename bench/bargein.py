"""Barge-in measured at the client: how soon the bot goes quiet when the user speaks over it, and what
becomes of the words spoken over it.

Real headless Chromium plays, as its fake microphone, a request for a long story, then (while the bot is
telling it) a question or a short answer ("yes", "no", "five five"), in several synthetic voices. The page
records the level of what it sends and what it receives on one AudioContext clock.

- **Stop time**: from the onset of the user's second utterance (on the sent audio's clock: the first
  utterance's onset there plus the file's own offset, so the bot's echo cannot hide it) to the end of the
  bot's voice in the received audio. Within it, ``vad_event_ms``: when the server's ``vad`` event (it
  heard the user, and paused the bot) reached the page; the rest is the bot's voice already in flight.
- **Interrupted**: the server's ``interrupted`` events; **self-interruptions**: an ``interrupted`` event or
  a final transcript of a new turn before the user spoke again (the bot cut off by its own voice), and
  **heard itself**: a ``vad`` event while the bot spoke before the user did; and transcripts of what the
  user said over the bot that are mostly the bot's own words (its echo taken for the user).
- **What was heard**: the word error rate of the final transcript of the words spoken over the bot,
  against the same utterances spoken in silence (a control call each); for the short answers, how many
  became a turn, were ``ignored`` (if the server says so) or were dropped without a word.

Rooms (``--room``, comma-separated): ``headphones``, the page's defaults (the browser's echo canceller
on, no echo reaches the microphone); ``speaker``, a loudspeaker (the browser's processing off, the bot's
voice mixed back into the microphone for the server's canceller to remove); ``headphones-aec-off`` (no
echo, the browser's canceller off; ``--echo-cancellation off``, the set-up of the first measurements).

    python -m bench.bargein [--room headphones,speaker] [--voices espeak,flite,slt] [--rounds 1]
                            [--repeat 1] [--gap 4,5.5] [--no-control] [--url http://127.0.0.1:8080]

Prints one JSON document, then a one-line summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.latency import (
    BENCH_SERVER_ARGS,
    DEFAULT_VOICES,
    VOICES,
    attempt,
    checkpoint,
    events_between,
    median_tree,
    parse_list,
    percentile,
    scrape_media_health,
    spread,
    user_spans,
    wer,
)
from tests.support import browser
from tests.support.server import STORY, ServerProcess
from tests.support.speech import SpeechFile, join, read_wav, speak
from voicepeer.call.text import spoken_words

FIRST = ["Please tell me a story about a dragon.", "Tell me a story about the sea."]
QUESTIONS = [
    ("What is the weather like today?", {"weather", "today"}),
    ("Tell me about the weather in London.", {"weather", "london"}),
    ("Stop, please stop.", {"stop"}),
]
SHORT_ANSWERS = [("Yes.", {"yes"}), ("No.", {"no"}), ("Five five.", {"five"})]
GAP_S = [4.0, 5.5]
"""Silence between the end of the first utterance and the second: the bot has been speaking ~3-4 s.
(``--gap``: with 12,13.5 it has been speaking ~10-12 s, past Chromium's echo canceller's first 6 s.)"""

HEARD_WAIT_S = 6.0
"""After the second utterance ends: how long a final transcript (or ``ignored``) may take to come."""

WAIT_JS = """
([offsetS, limitS]) => {
  // True once a final transcript or an ``ignored`` event came after the second utterance's onset (the
  // first onset in the microphone's audio + offsetS), or limitS after that onset.
  const vp = window.__vp;
  if (!vp.ctx) return false;
  if (vp.onset1 === undefined) {
    const env = vp.rec.mic.length ? vp.rec.mic : vp.rec.local;
    for (let i = vp.scanned || 0; i + 1 < env.length; i += 2) {
      if (env[i + 1] > 0.01) { vp.onset1 = env[i]; break; }
      vp.scanned = i + 2;
    }
    if (vp.onset1 === undefined) return false;
  }
  const onset2 = vp.onset1 + offsetS;
  if (vp.ctx.currentTime > onset2 + limitS) return true;
  return vp.events.some((e) => e.t !== null && e.t > onset2 &&
    ((e.msg.type === "transcript" && e.msg.final) || e.msg.type === "ignored"));
}
"""


@dataclass
class Scene:
    path: Path
    voice: str
    kind: str  # "question" or "short"
    first: str
    second: str
    expect: set[str]
    first_s: float  # the first utterance's length
    offset_s: float  # from the first utterance's onset to the second's
    second_s: float  # the second utterance's length
    gap_s: float


def file_seconds(path: Path) -> float:
    pcm, rate = read_wav(path)
    return pcm.size / rate


def make_scenes(
    work: Path, voices: list[str], gaps: list[float] = GAP_S
) -> tuple[list[Scene], list[tuple[str, str, set[str], SpeechFile]]]:
    """The two-utterance calls, and the second utterances alone (for the control calls in silence)."""
    scenes, alone = [], []
    seconds = [("question", t, e) for t, e in QUESTIONS] + [("short", t, e) for t, e in SHORT_ANSWERS]
    for v_i, voice in enumerate(voices):
        engine, name = VOICES[voice]
        firsts = [
            speak(t, work / f"{voice}_a{i}.wav", lead_s=2.0, tail_s=0.0, engine=engine, voice=name)
            for i, t in enumerate(FIRST)
        ]
        for j, (kind, text, expect) in enumerate(seconds):
            a = firsts[(v_i + j) % len(firsts)]
            b = speak(
                text, work / f"{voice}_b{j}.wav", lead_s=0.0, tail_s=HEARD_WAIT_S, engine=engine, voice=name
            )
            gap = gaps[(v_i + j) % len(gaps)]
            path = join(a.path, gap, b.path, work / f"{voice}_scene{j}.wav")
            offset = file_seconds(a.path) + gap + b.speech_start_s - a.speech_start_s
            scenes.append(
                Scene(
                    path,
                    voice,
                    kind,
                    a.text,
                    text,
                    expect,
                    first_s=a.speech_end_s - a.speech_start_s,
                    offset_s=offset,
                    second_s=b.speech_end_s - b.speech_start_s,
                    gap_s=gap,
                )
            )
            solo = speak(
                text, work / f"{voice}_c{j}.wav", lead_s=2.0, tail_s=HEARD_WAIT_S, engine=engine, voice=name
            )
            alone.append((voice, kind, expect, solo))
    return scenes, alone


def wait_heard(page: Any, offset_s: float, limit_s: float) -> None:
    page.wait_for_function(
        WAIT_JS, arg=[offset_s, limit_s], polling=100, timeout=(offset_s + limit_s + 60) * 1000
    )


def heard(msgs: list[dict[str, Any]], text: str, expect: set[str]) -> dict[str, Any]:
    """What became of an utterance, from the events after its onset."""
    finals = [m for m in msgs if m.get("type") == "transcript" and m.get("final")]
    ignored = [m for m in msgs if m.get("type") == "ignored"]
    out: dict[str, Any] = {"outcome": "turn" if finals else "ignored" if ignored else "dropped"}
    if finals:
        out["transcript"] = finals[0]["text"]
        out["turn"] = finals[0].get("turn")
        out["understood"] = expect <= set(spoken_words(finals[0]["text"]))
    if ignored:
        out["ignored"] = ignored
    return out


def one_call(pw: Any, url: str, scene: Scene, room: str) -> dict[str, Any]:
    note = None
    with browser.chromium_page(pw, scene.path) as page:
        browser.connect_room(page, url, room)
        try:
            wait_heard(page, scene.offset_s, scene.second_s + HEARD_WAIT_S)
        except Exception as exc:  # reported, not fatal: the summary counts the misses
            note = f"timed out: {exc.__class__.__name__}"
        time.sleep(1.5)
        call = browser.record(page)
        browser.hang_up(page)
    result: dict[str, Any] = {"note": note, "interrupted_events": len(call.messages("interrupted"))}
    finals = [m for m in call.messages("transcript") if m["final"]]
    result["transcripts"] = [m["text"] for m in finals]
    spans = user_spans(call)
    if not spans:
        result["note"] = note or "no user speech in the sent audio"
        return result
    onset1 = spans[0][0]
    onset2 = onset1 + scene.offset_s
    result["user_onset_s"] = round(onset2, 3)
    # Check of the clock arithmetic (and, with the browser's canceller on, how late the user's voice
    # came through it): the detected onset of the second utterance in the user's audio.
    near = [a for a, _ in spans if onset2 - 0.3 <= a <= onset2 + 1.0]
    if near:
        result["detected_onset_delay_ms"] = round((near[0] - onset2) * 1000, 1)
    first = heard(events_between(call, onset1, onset2), scene.first, set())
    result["first_transcript"] = first.get("transcript")
    # Before the user spoke again: the bot reacting to its own voice.
    before = events_between(call, onset1 + scene.first_s + 0.3, onset2)
    turn1 = first.get("turn")
    self_cut = [
        m
        for m in before
        if m.get("type") == "interrupted"
        or (m.get("type") == "transcript" and m.get("final") and m.get("turn") != turn1)
    ]
    if self_cut:
        result["self_interrupted"] = self_cut
    self_heard = [m for m in before if m.get("type") == "vad" and m.get("bot_state") == "speaking"]
    if self_heard:
        result["self_heard"] = len(self_heard)
    if any(m.get("type") == "ignored" for m in before):
        result["ignored_before_user"] = [m for m in before if m.get("type") == "ignored"]
    after = events_between(call, onset2, float("inf"))
    result["interrupted"] = [m for m in after if m.get("type") == "interrupted"]
    result.update(heard(after, scene.second, scene.expect))
    bot = call.remote.segments(threshold=0.005, min_gap_s=0.15)
    # The bot's voice around the onset (seconds from it), to see what the stop time is made of.
    result["bot_segments_near_onset"] = [
        [round(a - onset2, 2), round(b - onset2, 2)] for a, b in bot if b > onset2 - 3 and a < onset2 + 3
    ]
    earlier = [b for a, b in bot if a < onset2]
    if earlier:
        result["bot_quiet_before_onset_ms"] = round(max(0.0, onset2 - earlier[-1]) * 1000, 1)
    stop = browser.bot_stop(bot, onset2)
    if stop is not None:
        result["stop_ms"] = round((stop - onset2) * 1000, 1)
        # What the stop time is made of: the server's word that it heard the user (its `vad` event
        # reaching the page) and, after it, the bot's voice still in flight or in the page's buffer.
        vad = next((e["t"] for e in call.events if e["t"] is not None and e["t"] >= onset2 - 0.3
                    and e["msg"].get("type") == "vad"), None)  # fmt: skip
        if vad is not None:
            result["vad_event_ms"] = round((vad - onset2) * 1000, 1)
    elif earlier and onset2 - earlier[-1] < 3.0:
        result["note"] = (
            result["note"] or "the bot was in a pause (> 0.4 s) of its reply when the user cut in"
        )
    else:
        result["note"] = result["note"] or "the bot was not speaking when the user cut in"
    # Words of the bot's reply in the transcript of what the user said over it: its echo, heard as the user.
    if result.get("transcript"):
        bot_words = set()
        for m in call.messages("reply"):
            if m.get("final") and m.get("turn") == turn1:
                bot_words |= set(spoken_words(m["text"]))
        for m in result["interrupted"]:
            bot_words |= set(spoken_words(m.get("heard", "")))
        meant = set(spoken_words(scene.second))
        said = [w for w in spoken_words(result["transcript"]) if w not in meant]
        from_bot = [w for w in said if w in bot_words]
        if said and len(from_bot) > len(said) / 2:
            result["echo_in_transcript"] = from_bot
    return result


def control_call(pw: Any, url: str, sf: SpeechFile, expect: set[str], room: str) -> dict[str, Any]:
    """The utterance alone, in silence: what the server makes of it when the bot is not speaking."""
    with browser.chromium_page(pw, sf.path) as page:
        browser.connect_room(page, url, room)
        try:
            wait_heard(page, 0.0, sf.speech_end_s - sf.speech_start_s + HEARD_WAIT_S)
        except Exception:
            pass
        time.sleep(0.3)
        call = browser.record(page)
        browser.hang_up(page)
    spans = user_spans(call)
    if not spans:
        return {"outcome": "dropped", "note": "no user speech in the sent audio"}
    return heard(events_between(call, spans[0][0], float("inf")), sf.text, expect)


def summarize_group(calls: list[dict[str, Any]], controls: list[dict[str, Any]]) -> dict[str, Any]:
    def part(kind: str) -> dict[str, Any]:
        cs = [c for c in calls if c["kind"] == kind]
        ctl = [c for c in controls if c["kind"] == kind]
        out: dict[str, Any] = {
            "calls": len(cs),
            "bot_speaking_at_onset": sum(1 for c in cs if "stop_ms" in c),
            "bot_in_pause_at_onset": sum(1 for c in cs if "pause" in (c.get("note") or "")),
            "interrupted": sum(1 for c in cs if c.get("interrupted")),
            "stop_ms": spread([c["stop_ms"] for c in cs if "stop_ms" in c and c.get("interrupted")]),
            "stop_ms_all": spread([c["stop_ms"] for c in cs if "stop_ms" in c]),
            # The server's verdict reaching the page: the stop time less the bot's voice in flight.
            "vad_event_ms": spread(
                [c["vad_event_ms"] for c in cs if "vad_event_ms" in c and c.get("interrupted")]
            ),
        }
        for outcome in ("turn", "ignored", "dropped"):
            out[outcome] = sum(1 for c in cs if c.get("outcome") == outcome)
        out["understood"] = sum(1 for c in cs if c.get("understood"))
        out["wer_over_bot"] = wer([(c["second"], c["transcript"]) for c in cs if "transcript" in c])
        out["wer_over_bot_missing_as_deleted"] = wer([(c["second"], c.get("transcript", "")) for c in cs])
        out["silence"] = {
            "calls": len(ctl),
            "turn": sum(1 for c in ctl if c.get("outcome") == "turn"),
            "understood": sum(1 for c in ctl if c.get("understood")),
            "wer": wer([(c["text"], c["transcript"]) for c in ctl if "transcript" in c]),
        }
        return out

    shorts = [c for c in calls if c["kind"] == "short"]
    return {
        "calls": len(calls),
        "questions": part("question"),
        "short_answers": part("short"),
        "short_answers_by_phrase": {
            p: {
                o: sum(1 for c in shorts if c["second"] == p and c.get("outcome") == o)
                for o in ("turn", "ignored", "dropped")
            }
            for p, _ in SHORT_ANSWERS
        },
        "interrupted_events": sum(c.get("interrupted_events", 0) for c in calls),
        "self_interrupted": sum(1 for c in calls if c.get("self_interrupted")),
        "failed_calls": sum(1 for c in calls if c.get("failure")),
        "self_heard": sum(1 for c in calls if c.get("self_heard")),
        "echo_in_transcript": sum(1 for c in calls if c.get("echo_in_transcript")),
        "load1_p50": percentile([c["load1"] for c in calls if "load1" in c], 0.5),
        "first_utterance_wer": wer(
            [(c["first"], c["first_transcript"]) for c in calls if c.get("first_transcript")]
        ),
    }


def summarize_run(
    calls: list[dict[str, Any]], controls: list[dict[str, Any]], rooms: list[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for room in rooms:
        cs = [c for c in calls if c["room"] == room]
        ctl = [c for c in controls if c["room"] == room]
        group = summarize_group(cs, ctl)
        group["by_voice"] = {
            v: summarize_group([c for c in cs if c["voice"] == v], [c for c in ctl if c["voice"] == v])
            for v in sorted({c["voice"] for c in cs})
        }
        out[room] = group
    return out


def gap_list(text: str) -> list[float]:
    """``--gap``'s value: positive finite seconds, at most a minute (the story is not longer)."""
    try:
        gaps = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of seconds: {text!r}") from None
    if not gaps or not all(0 < g <= 60 for g in gaps):
        raise argparse.ArgumentTypeError(f"each gap must be over 0 and at most 60 s: {text!r}")
    return gaps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="times each scene runs per run (%(default)s)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs; the summary holds their medians (%(default)s)"
    )
    parser.add_argument(
        "--room",
        default="headphones,speaker",
        help=f"comma-separated, of {', '.join(browser.ROOMS)} (%(default)s)",
    )
    parser.add_argument(
        "--echo-cancellation",
        choices=["on", "off"],
        help="old spelling: on = --room headphones, off = --room headphones-aec-off",
    )
    parser.add_argument(
        "--voices", default=DEFAULT_VOICES["en"], help=f"of {', '.join(VOICES)} (%(default)s)"
    )
    parser.add_argument(
        "--gap",
        type=gap_list,
        default=GAP_S,
        help="seconds of silence between the request and the second utterance, comma-separated, taken in "
        "turn (default: 4,5.5, when the bot has spoken for ~3-4 s)",
    )
    parser.add_argument("--no-control", action="store_true", help="skip the control calls in silence")
    parser.add_argument("--url", help="a running server, started with the story prompt; default: start one")
    parser.add_argument("--out", type=Path, default=Path("bench/results/bargein.json"))
    parser.add_argument("server_args", nargs="*", help="extra `voicepeer serve` flags")
    args = parser.parse_args(argv)
    if args.echo_cancellation is not None:
        args.room = "headphones" if args.echo_cancellation == "on" else "headphones-aec-off"
    rooms = parse_list(args.room, browser.ROOMS, "room")
    voices = parse_list(args.voices, VOICES, "voice")

    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="voicepeer-bench-"))
    scenes, alone = make_scenes(work, voices, args.gap)

    def run(url: str, n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        calls, controls = [], []
        with sync_playwright() as pw:
            for r in range(args.rounds):
                for room in rooms:
                    for scene in scenes:
                        load1 = os.getloadavg()[0]
                        call = attempt(one_call, pw, url, scene, room)
                        call.update(
                            load1=load1,
                            run=n,
                            round=r,
                            room=room,
                            voice=scene.voice,
                            kind=scene.kind,
                            first=scene.first,
                            second=scene.second,
                            gap_s=scene.gap_s,
                        )
                        calls.append(call)
                        checkpoint(args.out, "barge_in", calls=[*all_calls, *calls])
                        took = call.get("stop_ms", "n/a")
                        cut = "interrupted" if call.get("interrupted") else "not interrupted"
                        print(
                            f"  {took:>7} ms  {room:10} {scene.voice:6} {scene.second!r}: {cut}, "
                            f"{call.get('outcome')} {call.get('transcript')!r}"
                            f"{' SELF-INTERRUPTED' if call.get('self_interrupted') else ''}",
                            file=sys.stderr,
                        )
            if not args.no_control:
                for room in rooms:
                    for voice, kind, expect, sf in alone:
                        ctl = attempt(control_call, pw, url, sf, expect, room)
                        ctl.setdefault("outcome", "failed")
                        ctl.update(run=n, room=room, voice=voice, kind=kind, text=sf.text)
                        controls.append(ctl)
                        checkpoint(
                            args.out,
                            "barge_in",
                            calls=[*all_calls, *calls],
                            controls=[*all_controls, *controls],
                        )
                        print(
                            f"  control {room:10} {voice:6} {sf.text!r}: {ctl['outcome']} "
                            f"{ctl.get('transcript')!r}",
                            file=sys.stderr,
                        )
        return calls, controls

    runs: list[dict[str, Any]] = []
    all_calls: list[dict[str, Any]] = []
    all_controls: list[dict[str, Any]] = []
    media: dict[str, Any] = {}

    def run_all(url: str, server: ServerProcess | None) -> None:
        for n in range(args.repeat):
            calls, controls = run(url, n)
            summary = summarize_run(calls, controls, rooms)
            if server is not None:
                media.update(scrape_media_health(server))
                summary["media"] = dict(media)
            runs.append({"run": n, "summary": summary})
            all_calls.extend(calls)
            all_controls.extend(controls)

    if args.url:
        run_all(args.url, None)
    else:
        server_args = [*BENCH_SERVER_ARGS, *STORY, *args.server_args]
        with ServerProcess(*server_args, log_path=work / "server.log") as srv:
            run_all(srv.url, srv)

    summary = median_tree([r["summary"] for r in runs]) if len(runs) > 1 else runs[0]["summary"]
    summary["runs"] = len(runs)
    summary["voices"] = {v: list(VOICES[v]) for v in voices}
    summary["media"] = media
    report = {
        "benchmark": "barge_in",
        "summary": summary,
        "runs": runs if len(runs) > 1 else [],
        "calls": all_calls,
        "controls": all_controls,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    parts = []
    for room in rooms:
        s = summary[room]
        q, sa = s["questions"], s["short_answers"]
        parts.append(
            f"{room}: stop p50 {q['stop_ms']['p50']} ms, p95 {q['stop_ms']['p95']} ms, questions interrupted "
            f"{q['interrupted']}/{q['calls']} (bot speaking at onset {q['bot_speaking_at_onset']}), "
            f"understood {q['understood']}/{q['calls']}, WER over the bot {q['wer_over_bot']} vs in silence "
            f"{q['silence']['wer']}; short answers turn/ignored/dropped {sa['turn']}/{sa['ignored']}/"
            f"{sa['dropped']}, understood {sa['understood']} (in silence {sa['silence']['turn']}/"
            f"{sa['silence']['calls']} turns); "
            f"interrupted events {s['interrupted_events']}, self-interrupted {s['self_interrupted']}, "
            f"heard itself {s['self_heard']}, the bot's own words in the transcript {s['echo_in_transcript']}"
        )
    print(
        f"barge-in at the client{' (median of ' + str(len(runs)) + ' runs)' if len(runs) > 1 else ''}: "
        + "; ".join(parts)
        + f"; loop lag p99 {media.get('loop_lag_p99_ms')} ms, "
        f"outbound gaps {media.get('outbound_gaps_total')} (own {media.get('outbound_gaps_own')})"
    )
    questions = [c for c in all_calls if c["kind"] == "question"]
    return 0 if all("stop_ms" in c and c.get("interrupted") for c in questions) else 1


if __name__ == "__main__":
    sys.exit(main())
