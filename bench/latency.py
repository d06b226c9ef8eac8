"""Voice-to-voice latency measured at the client, in a real headless Chromium against the real server.

For each spoken question (played by Chromium's fake microphone, in several synthetic voices, short
questions of 1-2 s and long spoken-style ones of 4-6 s) the page records the level of the audio it sends
and of the audio it receives, on one AudioContext clock. Voice-to-voice latency is the time from the end
of the user's speech in the sent audio to the onset of the bot's voice in the received audio: what a
person in front of the page waits. Beside it: the server's own breakdown (each turn's ``metrics`` event),
how long the spoken reply was, replies that repeat an earlier one, turns that went wrong (split, the bot
speaking before the user finished, the bot hearing itself) and the server's media health.

Languages (``--language``): ``en``, the questions below in English voices; ``zh``, Mandarin questions
in espeak-ng's Mandarin voice (two of its variants: Debian has no other), the server started with
``--language zh``, and the transcripts scored by character error rate instead of word error rate.

Rooms (``--room``, comma-separated for several): ``headphones``, the page's defaults (the browser's echo
canceller on, no echo); ``speaker``, a loudspeaker next to the microphone (the browser's processing off,
the bot's voice mixed back into what the page sends, for the server's canceller to remove).

    python -m bench.latency [--language en] [--voices espeak,flite,slt] [--room headphones] [--rounds 1]
                            [--repeat 1] [--questions 10] [--long 10] [--url http://127.0.0.1:8080] [--remote]

``--remote``: the started server's models in server processes of their own (Wyoming ASR and TTS,
llama-cpp-python's server; ``bench.media.remote_inference``), the peer doing media only.

Prints one JSON document, then a one-line summary. With ``--repeat N`` the summary holds the medians of
the N runs' numbers (each run's own summary is kept under ``runs``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tests.support import browser
from tests.support.server import ServerProcess, metric_values
from tests.support.speech import SpeechFile, speak
from voicepeer.call.language import ENGLISH, language
from voicepeer.call.text import is_wide, spoken_words
from voicepeer.runtime.stalls import CAUSES, OWN_CAUSES

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
"""Short questions: 1.1-2.2 s of speech in each voice."""

LONG_QUESTIONS = [
    "I have been trying to get more sleep lately, so how many hours should an adult sleep each night?",
    "I am planning a trip to Italy next summer, which city do you think we should visit first?",
    "My little brother asked me why the sky is blue, and I did not know. Why is it blue?",
    "I just bought a new plant for my kitchen, how often should I water it so it does not die?",
    "We are having friends over for dinner on Saturday, what is an easy dessert I could make?",
    "I keep hearing about black holes on the news, can you explain what a black hole actually is?",
    "My car makes a strange squeaking noise when I press the brakes, what could be causing that?",
    "I want to start running in the mornings, but I get tired fast. How should a beginner start?",
    "Could you tell me a little bit about the history of the Great Wall of China and why it was built?",
    "I am trying to learn Spanish before my holiday, what is the best way to remember new words?",
]
"""Long questions as people ask them, with a clause or sentence before the question: 4.3-5.9 s of speech
in each voice, with the pauses of commas and full stops inside."""

ZH_QUESTIONS = [
    "今天北京的天气怎么样？",
    "请帮我订一张明天去上海的火车票。",
    "你好，我想问一下，附近有没有好吃的餐厅？",
    "现在几点了？",
    "我们下午三点在公司门口见面吧。",
    "给我讲一个关于猫的故事。",
    "一年有多少天？",
    "中国的首都是哪里？",
    "你会说英语吗？",
    "推荐一本好看的书吧。",
]
"""Short Mandarin questions: 1.2-3.5 s in espeak-ng's voice."""

ZH_LONG_QUESTIONS = [
    "我最近睡得不太好，每天晚上都很晚才睡着，你有什么好的建议吗？",
    "我下个月要去日本旅游，想问一下应该带些什么东西比较好？",
    "我的孩子问我为什么天空是蓝色的，我不知道怎么回答，你能解释一下吗？",
    "周末我们要请朋友来家里吃饭，有没有简单又好吃的菜可以推荐？",
    "我想开始学习弹钢琴，但是没有基础，应该从哪里开始呢？",
    "我家的猫最近不太爱吃东西，我应该什么时候带它去看兽医？",
]
"""Long Mandarin questions, a clause before the question: 4-6 s."""

QUESTION_SETS = {"en": (QUESTIONS, LONG_QUESTIONS), "zh": (ZH_QUESTIONS, ZH_LONG_QUESTIONS)}

VOICES = {
    "espeak": ("espeak-ng", "en-us"),
    "flite": ("flite", "slt"),
    "slt": ("festival", "cmu_us_slt_arctic_hts"),
    "rms": ("flite", "rms"),
    "awb": ("flite", "awb"),
    "cmn-f3": ("espeak-ng", "cmn-latn-pinyin+f3"),
    "cmn-f4": ("espeak-ng", "cmn-latn-pinyin+f4"),
}
"""Voice name -> (speak() engine, voice). espeak-ng's formant voice; flite's slt (a US woman, clustergen);
festival's HTS voice of the same speaker (festvox-us-slt-hts, the most natural); flite's rms (a US man)
and awb (a Scottish man); espeak-ng's Mandarin in two variants (``voicepeer.backends.espeak``)."""

WPM = {"cmn-f3": 175, "cmn-f4": 175}
"""espeak-ng's speed where it is not the 150 words a minute of ``speak``: its Mandarin was heard
better at its own default (175)."""

DEFAULT_VOICES = {"en": "espeak,flite,slt", "zh": "cmn-f3,cmn-f4"}

CLIENTS = ("aiortc", "chromium")

SERVER_STAGES = [
    "pause_ms",
    "end_of_turn_ms",
    "endpoint_ms",
    "transcript_ms",
    "llm_first_token_ms",
    "tts_first_audio_ms",
    "first_frame_sent_ms",
]

USER_THRESHOLD = 0.01
BOT_THRESHOLD = 0.005


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return round(ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo), 1)


def spread(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": percentile(values, 0.5),
        "p95": percentile(values, 0.95),
        "max": max(values, default=None),
    }


def scrape_media_health(server: ServerProcess) -> dict[str, Any]:
    """Event-loop lag and outbound frame gaps from the server's /metrics, for the whole run so far."""
    values = metric_values(server.get_text("/metrics"))
    frames = values.get("voicepeer_outbound_frames_total", 0.0)
    gaps = values.get("voicepeer_outbound_gaps_total", 0.0)
    minutes = frames * 0.02 / 60
    causes = {
        cause: int(values.get(f'voicepeer_outbound_gaps_by_cause_total{{cause="{cause}"}}', 0))
        for cause in CAUSES
    }
    return {
        "loop_lag_p50_ms": round(values.get('voicepeer_loop_lag_seconds{quantile="0.5"}', 0) * 1000, 2),
        "loop_lag_p99_ms": round(values.get('voicepeer_loop_lag_seconds{quantile="0.99"}', 0) * 1000, 2),
        "loop_lag_max_ms": round(values.get("voicepeer_loop_lag_max_seconds", 0) * 1000, 1),
        "loop_lag_samples": int(values.get("voicepeer_loop_lag_seconds_count", 0)),
        "outbound_frames_total": int(frames),
        "outbound_gaps_total": int(gaps),
        "outbound_gaps_per_minute": round(gaps / minutes, 2) if minutes else None,
        "outbound_gaps_own": sum(causes[c] for c in OWN_CAUSES),
        "outbound_gaps_by_cause": causes,
    }


# --- words: word error rate and repetition -------------------------------------------------------------


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word-level edit distance, reference length): the numerator and denominator of a WER. In a
    script without spaces each character is a word (``spoken_words``): a character error rate."""
    lang = language("zh") if is_wide(reference) else ENGLISH
    ref, hyp = spoken_words(reference, lang), spoken_words(hypothesis, lang)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)


def wer(pairs: list[tuple[str, str]]) -> float | None:
    """Corpus WER over (reference, hypothesis) pairs: all edits over all reference words."""
    errors = [word_errors(ref, hyp) for ref, hyp in pairs]
    total = sum(n for _, n in errors)
    return round(sum(e for e, _ in errors) / total, 3) if total else None


def trigrams(text: str) -> set[tuple[str, ...]]:
    w = spoken_words(text)
    return {tuple(w[i : i + 3]) for i in range(len(w) - 2)}


def repetitions(replies: list[tuple[str, str]]) -> dict[str, Any]:
    """Replies (in order, with the question each answered) sharing more than half their word trigrams
    with an earlier reply to a different question: the model saying the same thing whatever it is
    asked."""
    seen: list[tuple[str, set[tuple[str, ...]], int]] = []
    repeated = []
    for i, (question, reply) in enumerate(replies):
        grams = trigrams(reply)
        if grams:
            best = max(
                ((len(grams & g) / len(grams), j) for q, g, j in seen if q != question), default=(0.0, -1)
            )
            if best[0] > 0.5:
                repeated.append({"reply": i, "earlier": best[1], "share": round(best[0], 2), "text": reply})
            seen.append((question, grams, i))
    return {
        "replies": len(replies),
        "repeated": len(repeated),
        "share": round(len(repeated) / len(replies), 3) if replies else None,
        "examples": repeated[:5],
    }


# --- one call ------------------------------------------------------------------------------------------


def user_spans(call: browser.CallRecord) -> list[tuple[float, float]]:
    """The user's speech (sent-audio clock), without the bot's echo that the speaker room mixes in."""
    env, shift = browser.user_envelope(call, USER_THRESHOLD)
    return [(a + shift, b + shift) for a, b in env.segments(threshold=USER_THRESHOLD)]


def events_between(call: browser.CallRecord, start: float, end: float) -> list[dict[str, Any]]:
    return [e["msg"] for e in call.events if e["t"] is not None and start <= e["t"] < end]


COMPLETED_TURN_JS = "m.type === 'error' || (m.type === 'metrics' && m.interrupted_ms === undefined)"
"""A turn whose reply played to the end (an interrupted turn's metrics carry ``interrupted_ms``)."""


def one_call(
    pw: Any, url: str, sf: SpeechFile, *, room: str = "headphones", timeout_s: float = 60.0
) -> dict[str, Any]:
    text = sf.text
    note = None
    with browser.chromium_page(pw, sf.path) as page:
        browser.connect_room(page, url, room)
        try:
            browser.wait_for_event(page, COMPLETED_TURN_JS, int(timeout_s * 1000))
        except Exception as exc:  # reported: the summary counts the unanswered
            note = f"no completed turn: {exc.__class__.__name__}"
        time.sleep(0.5)  # the end of the reply still in the browser's jitter buffer
        call = browser.record(page)
        browser.hang_up(page)
    result: dict[str, Any] = {"question": text, "note": note}
    finals = [e for e in call.events if e["msg"].get("type") == "transcript" and e["msg"]["final"]]
    result["transcripts"] = [e["msg"]["text"] for e in finals]
    result["errors"] = call.messages("error")
    result["interrupted"] = call.messages("interrupted")
    if call.messages("ignored"):
        result["ignored"] = call.messages("ignored")
    spoken = user_spans(call)
    bot = call.remote.segments(threshold=BOT_THRESHOLD)
    after: list[tuple[float, float]] = []
    user_end = None
    if spoken:
        start = spoken[0][0]
        # The speech is the file's (pauses inside a long question may split it into several spans).
        user = [(a, b) for a, b in spoken if a < start + (sf.speech_end_s - sf.speech_start_s) + 0.05]
        user_end = user[-1][1]
        result["user_speech_s"] = [round(start, 3), round(user_end, 3)]
        early = [a for a, _ in bot if start < a < user_end]
        if early:  # the bot answered a pause inside the question
            result["bot_spoke_during_user_s"] = round(early[0] - start, 2)
        after = [(a, b) for a, b in bot if a > user_end]
        if after:
            result["voice_to_voice_ms"] = round((after[0][0] - user_end) * 1000, 1)
        # The bot hearing itself: the VAD opening a user turn while it speaks, after the user stopped.
        heard = [
            m
            for m in events_between(call, user_end + 0.3, float("inf"))
            if (m.get("type") == "vad" and m.get("bot_state") == "speaking") or m.get("type") == "interrupted"
        ]
        if heard:
            result["self_heard"] = heard
    # The user's words: the final transcripts that came before the bot's voice answered them (a long
    # question may be cut into two turns); later ones are the bot's echo taken for the user.
    answer_at = after[0][0] if after else float("inf")
    mine = [e["msg"] for e in finals if e["t"] is None or e["t"] < answer_at + 0.05] or [
        e["msg"] for e in finals
    ]
    result["transcript"] = " ".join(m["text"] for m in mine) if mine else None
    if result["transcript"] is not None:
        result["word_errors"] = word_errors(text, result["transcript"])[0]
    turn = mine[-1]["turn"] if mine else None
    replies = [m for m in call.messages("reply") if m["final"] and m.get("turn") == turn]
    result["reply"] = replies[-1]["text"] if replies else None
    cut = [m for m in call.messages("interrupted") if m.get("turn") == turn]
    if result["reply"] is None and cut:  # cut off: what was played of it
        result["reply"] = cut[-1].get("heard") or None
        result["reply_cut"] = True
    metric_events = [e for e in call.events if e["msg"].get("type") == "metrics"]
    ours = [e for e in metric_events if e["msg"].get("turn") == turn] or [
        e for e in metric_events if "interrupted_ms" not in e["msg"]
    ]
    if ours:
        server = {k: v for k, v in ours[-1]["msg"].items() if k not in ("type", "turn", "speech_end_at")}
        result["server"] = server
        if "voice_to_voice_ms" in result and "first_frame_sent_ms" in server:
            result["client_share_ms"] = round(result["voice_to_voice_ms"] - server["first_frame_sent_ms"], 1)
        if "playout_done_ms" in server and "first_frame_sent_ms" in server:
            result["reply_audio_server_s"] = round(
                (server["playout_done_ms"] - server["first_frame_sent_ms"]) / 1000, 2
            )
        if after:
            # The reply's audio: from its onset to the end of the last segment that began before the
            # turn's metrics event (sent when it finished playing or was cut off), jitter buffer allowed.
            done_at = ours[-1]["t"] if ours[-1]["t"] is not None else float("inf")
            reply = [(a, b) for a, b in after if a < done_at + 0.3]
            if reply:
                result["reply_audio_client_s"] = round(reply[-1][1] - reply[0][0], 2)
    result["turns"] = len({e["msg"]["turn"] for e in finals})
    return result


async def _light_call(url: str, sf: SpeechFile, timeout_s: float, low_latency: bool) -> dict[str, Any]:
    """One question from a real aiortc client (``tests.support.rtc_client``): no browser, no audio
    processing, a few ms of CPU per second, so the server has the cores as in production."""
    from tests.support.rtc_client import RtcClient
    from tests.support.speech import read_wav

    client = RtcClient(url, low_latency=low_latency)
    loop = asyncio.get_running_loop()
    try:
        await client.connect()
        await client.wait_for(lambda m: m["type"] == "session", 10)
        await asyncio.sleep(0.5)  # ICE and DTLS done, the first frames through both ways
        sent = client.say(read_wav(sf.path)[0])
        speech_end = sent + sf.speech_end_s
        note = None
        try:
            await client.wait_for(
                lambda m: m["type"] == "error" or (m["type"] == "metrics" and "interrupted_ms" not in m),
                timeout_s,
            )
        except AssertionError:
            note = "no completed turn"
        await asyncio.sleep(0.5)  # the end of the reply still in the client's jitter buffer
        wall = time.time() - loop.time()  # this process's loop clock -> Unix time
        events = [(t, m) for t, m in client.events]
        onset = client.received.voiced_after(speech_end + 0.05)
    finally:
        await client.close()
    result: dict[str, Any] = {"question": sf.text, "note": note}
    finals = [(t, m) for t, m in events if m.get("type") == "transcript" and m["final"]]
    result["transcripts"] = [m["text"] for _, m in finals]
    result["errors"] = [m for _, m in events if m.get("type") == "error"]
    result["interrupted"] = [m for _, m in events if m.get("type") == "interrupted"]
    if onset is not None:
        result["voice_to_voice_ms"] = round((onset - speech_end) * 1000, 1)
    answer_at = onset if onset is not None else float("inf")
    mine = [m for t, m in finals if t < answer_at + 0.05] or [m for _, m in finals]
    result["transcript"] = " ".join(m["text"] for m in mine) if mine else None
    if result["transcript"] is not None:
        result["word_errors"] = word_errors(sf.text, result["transcript"])[0]
    turn = mine[-1]["turn"] if mine else None
    replies = [m for _, m in events if m.get("type") == "reply" and m["final"] and m.get("turn") == turn]
    result["reply"] = replies[-1]["text"] if replies else None
    ours = [m for _, m in events if m.get("type") == "metrics" and m.get("turn") == turn]
    if ours:
        server = {k: v for k, v in ours[-1].items() if k not in ("type", "turn")}
        at = server.pop("speech_end_at", None)
        result["server"] = server
        first = server.get("first_frame_sent_ms")
        if at is not None and onset is not None and first is not None:
            # One clock for both (the same host): where the time between the mouth and the ear went.
            result["uplink_ms"] = round((at - (speech_end + wall)) * 1000, 1)
            result["downlink_ms"] = round((onset + wall - at) * 1000 - first, 1)
        if first is not None and onset is not None:
            result["client_share_ms"] = round(result["voice_to_voice_ms"] - first, 1)
    result["turns"] = len({m["turn"] for _, m in finals})
    return result


def light_call(
    _pw: Any,
    url: str,
    sf: SpeechFile,
    *,
    room: str = "headphones",
    timeout_s: float = 60.0,
    low_latency: bool = False,
) -> dict[str, Any]:
    """``one_call``'s light twin: the same question from an aiortc client (headphones only: it has no
    loudspeaker to put the bot's voice back into its microphone). ``low_latency``: the client receives
    through voicepeer's audio jitter buffer instead of aiortc's (``--client-jitter``)."""
    # In a thread of its own: the Playwright context around the run holds this thread's event loop.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _light_call(url, sf, timeout_s, low_latency)).result()


def attempt(fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``fn(*args, **kwargs)``, tried a second time (in a fresh browser) if the call could not be made;
    a second failure is recorded in the result rather than ending the run."""
    for tries in (1, 2):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if tries == 2:
                return {"note": "call failed", "failure": f"{exc.__class__.__name__}: {str(exc)[:300]}"}
            print(f"  call failed ({exc.__class__.__name__}), once more", file=sys.stderr)
            time.sleep(5.0)
    raise AssertionError("unreachable")


def checkpoint(out: Path, benchmark: str, **parts: Any) -> None:
    """The calls so far, written to ``out`` after each one: a run that is stopped still leaves them."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    tmp.write_text(json.dumps({"benchmark": benchmark, "partial": True, **parts}, indent=1))
    tmp.replace(out)


BENCH_SERVER_ARGS = ["--max-sessions", "4", "--offers-per-minute", "0", "--inference-budget", "0"]
"""For the server a benchmark starts: one call at a time, back to back, from one address (a call the
browser left without hanging up would hold a slot until the media timeout)."""


# --- summaries -----------------------------------------------------------------------------------------


OUTLIER_KEYS = (
    "voice",
    "length",
    "question",
    "voice_to_voice_ms",
    "server",
    "uplink_ms",
    "downlink_ms",
    "turns",
    "transcript",
    "load1",
)


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
        "server_ms_p95": {},
    }
    # Every number in the metrics events (the server adds stages as it grows), known stages first.
    keys = [*SERVER_STAGES]
    for c in calls:
        keys += [k for k, v in c.get("server", {}).items() if k not in keys and isinstance(v, int | float)]
    for stage in keys:
        values = [
            c["server"][stage] for c in calls if isinstance(c.get("server", {}).get(stage), int | float)
        ]
        summary["server_ms_p50"][stage] = percentile(values, 0.5)
        summary["server_ms_p95"][stage] = percentile(values, 0.95)
    summary["reply_audio_s"] = {
        "client": spread([c["reply_audio_client_s"] for c in calls if "reply_audio_client_s" in c]),
        "server": spread([c["reply_audio_server_s"] for c in calls if "reply_audio_server_s" in c]),
    }
    for share in ("uplink_ms", "downlink_ms", "client_share_ms"):
        values = [c[share] for c in calls if share in c]
        if values:
            summary[share] = {"p50": percentile(values, 0.5), "p95": percentile(values, 0.95)}
    # Item 5 of issue 21: every turn slower than twice the median, with what the server did in it.
    median = summary["voice_to_voice_ms"]["p50"]
    summary["outliers"] = [
        {k: c.get(k) for k in OUTLIER_KEYS}
        for c in calls
        if median is not None and c.get("voice_to_voice_ms", 0) > 2 * median
    ]
    summary["load1_p50"] = percentile([c["load1"] for c in calls if "load1" in c], 0.5)
    summary["wer"] = wer([(c["question"], c["transcript"]) for c in calls if c.get("transcript") is not None])
    summary["turn_trouble"] = {
        "split": sum(1 for c in calls if c.get("turns", 0) > 1),
        "bot_spoke_during_user": sum(1 for c in calls if "bot_spoke_during_user_s" in c),
        "interrupted": sum(1 for c in calls if c.get("interrupted")),
        "reply_cut": sum(1 for c in calls if c.get("reply_cut")),
        "self_heard": sum(1 for c in calls if c.get("self_heard")),
        "ignored": sum(1 for c in calls if c.get("ignored")),
        "errors": sum(1 for c in calls if c.get("errors")),
        "failed_calls": sum(1 for c in calls if c.get("failure")),
    }
    return summary


def brief(calls: list[dict[str, Any]]) -> dict[str, Any]:
    v2v = [c["voice_to_voice_ms"] for c in calls if "voice_to_voice_ms" in c]
    return {
        "calls": len(calls),
        "answered": len(v2v),
        "p50": percentile(v2v, 0.5),
        "p95": percentile(v2v, 0.95),
        "reply_audio_s_p50": percentile(
            [c["reply_audio_client_s"] for c in calls if "reply_audio_client_s" in c], 0.5
        ),
        "wer": wer([(c["question"], c["transcript"]) for c in calls if c.get("transcript") is not None]),
    }


def summarize_run(calls: list[dict[str, Any]]) -> dict[str, Any]:
    summary = summarize(calls)
    for key in ("voice", "length", "room"):
        groups = sorted({c[key] for c in calls})
        summary[f"by_{key}"] = {g: brief([c for c in calls if c[key] == g]) for g in groups}
    summary["by_voice_length"] = {
        f"{v}/{n}": brief([c for c in calls if c["voice"] == v and c["length"] == n])
        for v in sorted({c["voice"] for c in calls})
        for n in sorted({c["length"] for c in calls})
    }
    summary["repetition"] = repetitions([(c["question"], c["reply"]) for c in calls if c.get("reply")])
    return summary


def one_line(client: str, s: dict[str, Any], runs: int, media: dict[str, Any], errors: str = "WER") -> str:
    """The summary of one client's row, on one line (``errors``: WER, or CER for Mandarin)."""
    v = s["voice_to_voice_ms"]
    per_voice = ", ".join(f"{k} {b['p50']}/{b['p95']}" for k, b in s["by_voice"].items())
    per_length = ", ".join(f"{k} {b['p50']}/{b['p95']}" for k, b in s["by_length"].items())
    per_room = ", ".join(f"{k} {b['p50']}/{b['p95']}" for k, b in s["by_room"].items())
    stages = " ".join(
        f"{k.removesuffix('_ms')}={s['server_ms_p50'][k]}/{s['server_ms_p95'][k]}"
        for k in SERVER_STAGES
        if s["server_ms_p50"].get(k) is not None
    )
    shares = " ".join(
        f"{k.removesuffix('_ms')} {s[k]['p50']}/{s[k]['p95']}"
        for k in ("uplink_ms", "downlink_ms", "client_share_ms")
        if k in s
    )
    t = s["turn_trouble"]
    return (
        f"{client}: voice-to-voice at the client{' (median of ' + str(runs) + ' runs)' if runs > 1 else ''}: "
        f"p50 {v['p50']} ms, p95 {v['p95']} ms over {s['answered']}/{s['calls']} calls; p50/p95 by voice: "
        f"{per_voice}; by length: {per_length}; by room: {per_room}; "
        f"server p50/p95 from end of speech: {stages}; client's share p50/p95: {shares}; "
        f"reply audio p50 {s['reply_audio_s']['client']['p50']} s; repeated replies "
        f"{s['repetition']['repeated']}/{s['repetition']['replies']}; {errors} {s['wer']}; "
        f"split turns {t['split']}, "
        f"bot spoke mid-question {t['bot_spoke_during_user']}, heard itself {t['self_heard']}; "
        f"loop lag p99 {media.get('loop_lag_p99_ms')} ms, "
        f"outbound gaps {media.get('outbound_gaps_total')} (own {media.get('outbound_gaps_own')})"
    )


def median_tree(trees: list[Any]) -> Any:
    """The median of each number across ``trees`` (same-shaped dicts); other leaves from the first."""
    first = trees[0]
    if isinstance(first, dict):
        return {k: median_tree([t[k] for t in trees if isinstance(t, dict) and k in t]) for k in first}
    numbers = [t for t in trees if isinstance(t, int | float) and not isinstance(t, bool)]
    if numbers and len(numbers) == len(trees):
        median = statistics.median(numbers)
        return int(median) if float(median).is_integer() else round(median, 3)
    return first


def parse_list(value: str, allowed: Any, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise SystemExit(f"unknown {what} {', '.join(bad) or value!r}: choose from {', '.join(allowed)}")
    return items


def make_speech(
    work: Path, voices: list[str], texts: list[tuple[str, str]], lead_s: float, tail_s: float
) -> list[tuple[str, str, SpeechFile]]:
    """(voice, kind, speech file) for every text in every voice."""
    out = []
    for v in voices:
        engine, name = VOICES[v]
        for i, (kind, text) in enumerate(texts):
            sf = speak(
                text,
                work / f"{v}_{kind}{i}.wav",
                lead_s=lead_s,
                tail_s=tail_s,
                engine=engine,
                voice=name,
                wpm=WPM.get(v, 150),
            )
            out.append((v, kind, sf))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=int, default=1, help="times each question is asked per run (%(default)s)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs; the summary holds their medians (%(default)s)"
    )
    parser.add_argument(
        "--language", choices=sorted(QUESTION_SETS), default="en", help="of the questions (%(default)s)"
    )
    parser.add_argument("--questions", type=int, default=10, help="short questions, at most (%(default)s)")
    parser.add_argument("--long", type=int, default=10, help="long questions, at most (%(default)s)")
    parser.add_argument(
        "--voices", help=f"of {', '.join(VOICES)} (en: {DEFAULT_VOICES['en']}; zh: {DEFAULT_VOICES['zh']})"
    )
    parser.add_argument(
        "--room", default="headphones", help=f"comma-separated, of {', '.join(browser.ROOMS)} (%(default)s)"
    )
    parser.add_argument(
        "--clients",
        default="aiortc,chromium",
        help="rows, in order: aiortc (a light client, the server has the cores) and chromium (%(default)s)",
    )
    parser.add_argument(
        "--client-jitter",
        choices=("aiortc", "voicepeer"),
        default="aiortc",
        help="the aiortc client's jitter buffer: aiortc's (80 ms prefetch) or the server's (%(default)s)",
    )
    parser.add_argument("--url", help="an already running server; default: start one")
    parser.add_argument(
        "--remote",
        action="store_true",
        help="the started server's ASR, TTS and LLM in server processes of their own (bench.media)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/latency.json"))
    parser.add_argument("server_args", nargs="*", help="extra `voicepeer serve` flags for the started server")
    args = parser.parse_args(argv)
    voices = parse_list(args.voices or DEFAULT_VOICES[args.language], VOICES, "voice")
    short_set, long_set = QUESTION_SETS[args.language]
    rooms = parse_list(args.room, browser.ROOMS, "room")
    clients = parse_list(args.clients, CLIENTS, "client")

    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="voicepeer-bench-"))
    texts = [("short", q) for q in short_set[: args.questions]] + [("long", q) for q in long_set[: args.long]]
    speech = make_speech(work, voices, texts, lead_s=2.0, tail_s=12.0)
    # Voices and lengths interleaved, so that a slow spell of the machine does not land on one of them;
    # and never the same question twice in a row, which would find its whole prompt in the LLM's cache
    # (a first token in ~20 ms rather than the ~100 ms of a question it has not seen).
    by = {(v, kind, sf.text): (v, kind, sf) for v, kind, sf in speech}
    short, long = [t for t in texts if t[0] == "short"], [t for t in texts if t[0] == "long"]
    mixed = [t for pair in itertools.zip_longest(short, long) for t in pair if t is not None]
    order = [
        by[(voices[(i + r) % len(voices)], kind, text)]
        for r in range(len(voices))
        for i, (kind, text) in enumerate(mixed)
    ]

    def run(url: str, r_run: int) -> list[dict[str, Any]]:
        calls = []
        with sync_playwright() as pw:
            for client in clients:
                call_fn = light_call if client == "aiortc" else one_call
                for r in range(args.rounds):
                    for room in rooms if client == "chromium" else ["headphones"]:
                        for voice, kind, sf in order:
                            load1 = os.getloadavg()[0]
                            fast = args.client_jitter == "voicepeer"
                            extra = {"low_latency": fast} if client == "aiortc" else {}
                            call = attempt(call_fn, pw, url, sf, room=room, **extra)
                            call.setdefault("question", sf.text)
                            where = {"client": client, "room": room, "voice": voice, "length": kind}
                            call.update(run=r_run, round=r, load1=load1, **where)
                            calls.append(call)
                            checkpoint(args.out, "voice_to_voice_latency", calls=[*all_calls, *calls])
                            print(
                                f"  {call.get('voice_to_voice_ms', 'n/a'):>7} ms  {client:8} {room:10} "
                                f"{voice:6} {kind:5} {sf.text!r} -> {call.get('reply')!r}",
                                file=sys.stderr,
                            )
        return calls

    runs: list[dict[str, Any]] = []
    all_calls: list[dict[str, Any]] = []
    media: dict[str, Any] = {}

    def run_all(url: str, server: ServerProcess | None) -> None:
        for n in range(args.repeat):
            calls = run(url, n)
            summary = {c: summarize_run([x for x in calls if x["client"] == c]) for c in clients}
            if server is not None:
                summary["media"] = media_now = scrape_media_health(server)
                media.update(media_now)
            runs.append({"run": n, "summary": summary})
            all_calls.extend(calls)

    if args.url:
        run_all(args.url, None)
    else:
        from bench.media import remote_inference  # bench.media uses this module's helpers

        with ExitStack() as stack:
            remote = stack.enter_context(remote_inference(work)).flags() if args.remote else []
            language = ("--language", args.language) if args.language != "en" else ()
            flags = (*BENCH_SERVER_ARGS, *language, *remote, *args.server_args)
            server = stack.enter_context(ServerProcess(*flags, log_path=work / "server.log"))
            run_all(server.url, server)

    summary = median_tree([r["summary"] for r in runs]) if len(runs) > 1 else runs[0]["summary"]
    summary["runs"] = len(runs)
    summary["language"] = args.language
    summary["rooms"] = rooms
    summary["voices"] = {v: list(VOICES[v]) for v in voices}
    summary["media"] = media  # the server's counters over all runs
    report = {
        "benchmark": "voice_to_voice_latency",
        "summary": summary,
        "runs": runs if len(runs) > 1 else [],
        "calls": all_calls,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    ok = True
    for client in clients:
        s = summary[client]
        ok = ok and s["answered"] == s["calls"]
        print(one_line(client, s, len(runs), media, "CER" if args.language == "zh" else "WER"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
