"""Would LocalAgreement make the transcript at the pause cheaper without more errors? (issue 21, item 2)

The embedded whisper decodes the whole turn again at the pause, although its partial transcripts
(every 640 ms of speech) decoded nearly all of it moments before. whisper-streaming's LocalAgreement
commits the words two consecutive partials agree on, with where they end, and decodes only the
audio after them with those words as the previous text. This bench replays that offline on the
embedded model, per utterance: partial decodes of the turn so far at the server's cadence (the first
at 0.8 s, then every 0.64 s while the user speaks), word end times by whisper's cross-attention
alignment, the agreement, and at the pause (100 ms after the end of speech) the final transcript two
ways: the whole turn (what the server does) and the tail after the committed prefix, prompted with
it (``<|startofprev|>``). A prefix is cut only after a committed word that ends a clause (people pause
there), at the quietest 10 ms within 0.4 s before its aligned end.

Three voices (espeak-ng, flite slt, festival's HTS slt), the long and short questions of
``bench.latency``. Reports the word error rate and the final decode's time both ways.

    python -m bench.asr_prefix [--voices espeak,flite,slt] [--runs 3]

Prints one JSON document, then a one-line summary. The result that decided it (docs/benchmarks.md,
2026-12-02): on the long questions the tail-only decode saved 42 ms at the median (205 -> 163 ms)
and raised the WER from 4.5 % to 6.5 % (cuts between words run together, before settling on clause
ends, cost 7-15 points), because a tail decoded without the audio before it mishears its first word;
short questions had no clause-ending prefix to cut at; forcing the committed words as the
start of the decoded text instead keeps the whole audio but saves nothing (CTranslate2 steps through
forced tokens one by one). So the server decodes the whole turn.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.latency import LONG_QUESTIONS, QUESTIONS, VOICES, parse_list, word_errors
from tests.support.speech import read_wav, speak
from voicepeer.audio.formats import SPEECH_RATE, to_float32
from voicepeer.backends.asr import MIN_CONTEXT_S, WhisperASR, _drop_repetition

PARTIAL_FIRST_S = 0.8
PARTIAL_EVERY_S = 0.64
PAUSE_S = 0.1
STABLE_MARGIN_S = 0.5
"""A word is committed only if it ends this long before the end of the audio its partial heard."""
CLAUSE_ENDS = (",", ".", "?", "!", ";", ":")
CUT_SEARCH_S = (0.4, 0.1)


@dataclass(frozen=True)
class Word:
    text: str
    end_s: float


def decode(asr: WhisperASR, audio: np.ndarray, previous: str = "") -> tuple[str, list[Word]]:
    """The embedded model's short-turn decode (``WhisperASR._decode_short``), with an optional
    previous text, and the decoded words' end times."""
    import ctranslate2

    model, tok = asr._model, asr._tokenizer
    x = to_float32(audio)
    n = max(x.size + SPEECH_RATE, int(MIN_CONTEXT_S * SPEECH_RATE))
    padded = np.zeros(n, dtype=np.float32)
    padded[: x.size] = x
    hop = model.feature_extractor.hop_length
    frames = (n // hop) & ~1
    features = model.feature_extractor(padded)[:, :frames]
    encoded = model.model.encode(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None])), to_cpu=False
    )
    context = [tok.sot_prev, *tok.encode(" " + previous)] if previous else []
    result = model.model.generate(
        encoded,
        [context + asr._prompt],
        beam_size=1,
        max_length=min(model.max_length, 16 + int(x.size / SPEECH_RATE * 12)),
        suppress_blank=True,
        suppress_tokens=asr._suppress,
    )[0]
    tokens = _drop_repetition(result.sequences_ids[0])
    words: list[Word] = []
    if tokens:
        aligned = model.find_alignment(tok, [tokens], encoded, x.size // hop)[0]
        words = [Word(w["word"].strip(), float(w["end"])) for w in aligned if w["word"].strip()]
    return tok.decode(tokens).strip(), words


class Agreement:
    """LocalAgreement-2 over whole-turn partials: the words two consecutive ones agree on, from the
    start, each ending ``STABLE_MARGIN_S`` before its partial's audio ends, and followed by another
    word in both."""

    def __init__(self) -> None:
        self.committed: list[Word] = []
        self._last: list[Word] = []

    def update(self, words: list[Word], audio_s: float) -> None:
        n = len(self.committed)
        if [w.text for w in words[:n]] != [w.text for w in self.committed]:
            self._last = []
            return
        new = words[n:]
        agreed = 0
        for a, b in zip(self._last, new, strict=False):
            if a.text != b.text or b.end_s > audio_s - STABLE_MARGIN_S:
                break
            agreed += 1
        if agreed and (agreed == len(self._last) or agreed == len(new)):
            agreed -= 1
        self.committed.extend(new[:agreed])
        self._last = new[agreed:]

    def prefix(self) -> tuple[str, float] | None:
        for i in range(len(self.committed) - 1, -1, -1):
            if self.committed[i].text.endswith(CLAUSE_ENDS):
                kept = self.committed[: i + 1]
                return re.sub(r" ([,.?!;:])", r"\1", " ".join(w.text for w in kept)), kept[-1].end_s
        return None


def quietest(audio: np.ndarray, at_s: float) -> int:
    n = SPEECH_RATE // 100
    lo = max(0, int((at_s - CUT_SEARCH_S[0]) * SPEECH_RATE) // n)
    hi = min(audio.size // n, int((at_s + CUT_SEARCH_S[1]) * SPEECH_RATE) // n)
    if hi <= lo:
        return min(audio.size, round(at_s * SPEECH_RATE))
    x = audio[lo * n : hi * n].astype(np.float64).reshape(hi - lo, n)
    return (lo + int(np.argmin(np.mean(x * x, axis=1)))) * n


def one(asr: WhisperASR, audio: np.ndarray, speech_end_s: float) -> dict[str, Any]:
    turn = audio[: int((speech_end_s + PAUSE_S) * SPEECH_RATE)]
    agreement = Agreement()
    at = PARTIAL_FIRST_S
    while at < speech_end_s:
        part = turn[: int(at * SPEECH_RATE)]
        agreement.update(decode(asr, part)[1], part.size / SPEECH_RATE)
        at += PARTIAL_EVERY_S
    t0 = time.perf_counter()
    whole = asr.transcribe_blocking(turn).text
    t1 = time.perf_counter()
    prefix = agreement.prefix()
    if prefix is not None and prefix[1] < turn.size / SPEECH_RATE - 0.3:
        cut = quietest(turn, prefix[1])
        tail = decode(asr, turn[cut:], prefix[0])[0]
        tailed = f"{prefix[0]} {tail}".strip()
    else:
        tailed = asr.transcribe_blocking(turn).text
    t2 = time.perf_counter()
    return {
        "whole": whole,
        "whole_ms": round((t1 - t0) * 1000, 1),
        "prefix": prefix[0] if prefix else None,
        "tailed": tailed,
        "tailed_ms": round((t2 - t1) * 1000, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voices", default="espeak,flite,slt")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/asr_prefix.json"))
    args = parser.parse_args(argv)
    voices = parse_list(args.voices, VOICES, "voice")
    asr = WhisperASR()
    asr.warmup()
    work = Path(tempfile.mkdtemp(prefix="voicepeer-bench-prefix-"))
    rows: list[dict[str, Any]] = []
    for run in range(args.runs):
        for v in voices:
            engine, name = VOICES[v]
            for i, (kind, q) in enumerate(
                [("long", q) for q in LONG_QUESTIONS] + [("short", q) for q in QUESTIONS]
            ):
                sf = speak(
                    q,
                    work / f"{v}{i}.wav",
                    rate=SPEECH_RATE,
                    lead_s=0.3,
                    tail_s=0.3,
                    engine=engine,
                    voice=name,
                )
                row = one(asr, read_wav(sf.path)[0], sf.speech_end_s)
                row.update(run=run, voice=v, length=kind, question=q)
                rows.append(row)
    summary: dict[str, Any] = {}
    for kind in ("long", "short", "all"):
        sel = [r for r in rows if kind == "all" or r["length"] == kind]
        for way in ("whole", "tailed"):
            errors = [word_errors(r["question"], r[way]) for r in sel]
            summary[f"{kind}_{way}"] = {
                "wer": round(sum(e for e, _ in errors) / sum(n for _, n in errors), 3),
                "ms_p50": round(statistics.median(r[f"{way}_ms"] for r in sel), 1),
                "ms_p90": round(float(np.percentile([r[f"{way}_ms"] for r in sel], 90)), 1),
            }
        summary[f"{kind}_with_prefix"] = sum(1 for r in sel if r["prefix"]) / max(1, len(sel))
    report = {"benchmark": "asr_prefix", "summary": summary, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(summary, indent=2))
    s = summary
    print(
        "asr prefix (LocalAgreement, tail decode) vs whole turn at the pause: "
        + "; ".join(
            f"{k}: WER {s[k + '_whole']['wer']} -> {s[k + '_tailed']['wer']}, decode p50 "
            f"{s[k + '_whole']['ms_p50']} -> {s[k + '_tailed']['ms_p50']} ms "
            f"(prefix in {s[k + '_with_prefix']:.0%})"
            for k in ("long", "short", "all")
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
