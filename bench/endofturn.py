"""Smart Turn v3.2 on synthetic voices: complete vs unfinished phrases, and the time per decision.

Ten sentences, each spoken three ways by three voices (espeak-ng, Debian's flite, festival's HTS voice
cmu_us_slt_arctic_hts): complete ("What is the capital of France?"), cut mid-phrase ("What is the
capital of") and cut with a filler ("What is the capital of, um"). Each clip is shaped the way the turn
detector hands a turn on: 320 ms of silence, the words, then ``--tail-ms`` of silence (200 ms: the model
was trained on turns cut 200 ms into the speaker's silence). A decision is right when a complete phrase
scores above 0.5 and an unfinished one does not.

Clips are synthesised and resampled without dither (espeak-ng, flite and festival are deterministic,
and so is our resampler), so the scores are the same on every run. ``stability`` measures what dither
would do: the same clips with ±1 LSB of triangular noise, and how often that flips the decision.

The time per decision is one ``SmartTurn.probability`` call on 8 s of speech (the cost does not depend
on the length: the model always hears 8 s), on one core: p50 and p95 of ``--decisions`` calls, the
median of ``--runs`` runs.

    python -m bench.endofturn [--runs 5] [--decisions 40] [--tail-ms 200]

Prints one JSON document, then a one-line summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.latency import percentile
from tests.support.speech import read_wav
from voicepeer.audio.endofturn import SmartTurn
from voicepeer.audio.formats import SPEECH_RATE, Resampler
from voicepeer.call.turntaking import TurnPolicy

SENTENCES = [
    ("What is the capital of France?", "What is the capital of"),
    ("Please tell me a story about a dragon.", "Please tell me a story about a"),
    ("I would like to book a table for two.", "I would like to book a table for"),
    ("Can you recommend a good book?", "Can you recommend a"),
    ("How many legs does a spider have?", "How many legs does a"),
    ("I think we should go to the beach tomorrow.", "I think we should go to the"),
    ("Turn off the lights in the kitchen.", "Turn off the lights in the"),
    ("What is the weather like on Mars?", "What is the weather like on"),
    ("Who wrote Romeo and Juliet?", "Who wrote Romeo and"),
    ("How do I boil an egg?", "How do I boil an"),
]

KINDS = {
    "complete": lambda full, cut: full,
    "cut": lambda full, cut: cut,
    "cut_um": lambda full, cut: f"{cut}, um",
}

PRE_ROLL_MS = 320
"""Silence before the words, as the turn detector's pre-roll."""

THRESHOLD = TurnPolicy().end_of_turn_threshold
"""The probability at or above which a call takes a phrase as complete."""

VOICE_THRESHOLD = 300
"""Sample level (int16) taken as the start and end of the words: about -40 dBFS."""


def _espeak(text: str, wav: Path) -> None:
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text], check=True)


def _flite(text: str, wav: Path) -> None:
    subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", str(wav)], check=True)


def _festival(text: str, wav: Path) -> None:
    subprocess.run(
        ["text2wave", "-eval", "(voice_cmu_us_slt_arctic_hts)", "-o", str(wav)],
        input=text.encode(),
        check=True,
        capture_output=True,
    )


VOICES = {
    "espeak-ng": (_espeak, "espeak-ng", "apt-get install espeak-ng"),
    "flite": (_flite, "flite", "apt-get install flite"),
    "festival-hts": (_festival, "text2wave", "apt-get install festival festvox-us-slt-hts"),
}


def synthesize(voice: str, text: str, work: Path, tail_ms: int) -> np.ndarray:
    """``text`` spoken by ``voice`` as a turn: int16 at 16 kHz, pre-roll, the words, ``tail_ms`` of
    silence. No sox: its dither would make every run's clips differ in the last bit."""
    make, _, _ = VOICES[voice]
    wav = work / "tts.wav"
    make(text, wav)
    pcm, rate = read_wav(wav)
    resampler = Resampler(rate, SPEECH_RATE)
    pcm = np.concatenate([resampler.push(pcm), resampler.flush()])
    voiced = np.flatnonzero(np.abs(pcm.astype(np.int32)) > VOICE_THRESHOLD)
    words = pcm[voiced[0] : voiced[-1] + 1]
    silence = [np.zeros(ms * SPEECH_RATE // 1000, dtype=np.int16) for ms in (PRE_ROLL_MS, tail_ms)]
    return np.concatenate([silence[0], words, silence[1]])


def with_noise_floor(pcm: np.ndarray, dbfs: float, seed: int) -> np.ndarray:
    """``pcm`` over white noise at ``dbfs`` RMS (a microphone's floor), the same noise for a seed."""
    noise = np.random.default_rng(seed).standard_normal(pcm.size) * 32768 * 10 ** (dbfs / 20)
    return np.clip(np.round(pcm + noise), -32768, 32767).astype(np.int16)


def dithered(pcm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``pcm`` with ±1 LSB of triangular (TPDF) noise, what sox's default dither adds."""
    noise = rng.integers(0, 2, pcm.size) - rng.integers(0, 2, pcm.size)
    return np.clip(pcm.astype(np.int32) + noise, -32768, 32767).astype(np.int16)


def accuracy(
    model: SmartTurn, voice: str, work: Path, tail_ms: int, dithers: int, noise_dbfs: float | None
) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    clips: list[dict[str, Any]] = []
    flips = checks = 0
    for i, (full, cut) in enumerate(SENTENCES):
        for kind, make_text in KINDS.items():
            text = make_text(full, cut)
            pcm = synthesize(voice, text, work, tail_ms)
            if noise_dbfs is not None:
                pcm = with_noise_floor(pcm, noise_dbfs, seed=i)
            p = model.probability(pcm)
            right = (p >= THRESHOLD) == (kind == "complete")
            jitter = [model.probability(dithered(pcm, rng)) for _ in range(dithers)]
            flips += sum((q > THRESHOLD) != (p >= THRESHOLD) for q in jitter)
            checks += len(jitter)
            clips.append(
                {
                    "kind": kind,
                    "text": text,
                    "probability": round(p, 3),
                    "right": right,
                    "dithered_range": [round(min(jitter), 3), round(max(jitter), 3)] if jitter else None,
                }
            )
    result: dict[str, Any] = {}
    for kind in KINDS:
        ps = [c["probability"] for c in clips if c["kind"] == kind]
        result[kind] = {
            "right": sum(c["right"] for c in clips if c["kind"] == kind),
            "of": len(ps),
            "median_probability": round(statistics.median(ps), 3),
        }
    complete = [c["probability"] for c in clips if c["kind"] == "complete"]
    for kind in ("cut", "cut_um"):
        unfinished = [c["probability"] for c in clips if c["kind"] == kind]
        # complete vs unfinished, as one ranking: the chance a complete phrase scores above a cut one
        pairs = [(a > b) + 0.5 * (a == b) for a in complete for b in unfinished]
        result[kind]["auc_vs_complete"] = round(sum(pairs) / len(pairs), 3)
        right = result["complete"]["right"] + result[kind]["right"]
        result[f"accuracy_complete_vs_{kind}"] = round(right / (2 * len(SENTENCES)), 3)
    result["stability"] = {"dithered_decisions": checks, "flipped": flips}
    result["clips"] = clips
    return result


def timing(model: SmartTurn, speech: np.ndarray, runs: int, decisions: int) -> dict[str, Any]:
    turn = np.resize(speech, 8 * SPEECH_RATE)  # any turn costs the same: the model always hears 8 s
    per_run = []
    for _ in range(runs):
        ms, cpu = [], []
        for _ in range(decisions):
            t0, c0 = time.perf_counter(), time.thread_time()
            model.probability(turn)
            ms.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.thread_time() - c0) * 1000)
        per_run.append(
            {"p50": percentile(ms, 0.5), "p95": percentile(ms, 0.95), "cpu_p50": percentile(cpu, 0.5)}
        )
    return {
        "p50_ms": round(statistics.median(r["p50"] for r in per_run), 1),
        "p95_ms": round(statistics.median(r["p95"] for r in per_run), 1),
        # One intra-op thread: onnxruntime computes on the calling thread, so this is the decision's
        # whole CPU cost, which other processes on the machine do not inflate as they do wall time.
        "cpu_p50_ms": round(statistics.median(r["cpu_p50"] for r in per_run), 1),
        "runs": per_run,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timing runs; the median is kept (%(default)s)")
    parser.add_argument("--decisions", type=int, default=40, help="decisions per timing run (%(default)s)")
    parser.add_argument("--tail-ms", type=int, default=200, help="silence after the words (%(default)s)")
    parser.add_argument("--dithers", type=int, default=4, help="dithered copies per clip (%(default)s)")
    parser.add_argument(
        "--noise-dbfs", type=float, help="a white noise floor under each clip (e.g. -60); default: none"
    )
    parser.add_argument("--voices", default=",".join(VOICES), help="comma-separated (%(default)s)")
    parser.add_argument("--model", help="a local Smart Turn .onnx; default: the one pipecat-ai ships")
    parser.add_argument("--out", type=Path, default=Path("bench/results/endofturn.json"))
    args = parser.parse_args(argv)

    voices = args.voices.split(",")
    for voice in voices:
        _, tool, hint = VOICES[voice]
        if shutil.which(tool) is None:
            print(f"missing {tool}: {hint}", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="voicepeer-endofturn-"))
    t0 = time.perf_counter()
    model = SmartTurn(args.model)
    load_ms = (time.perf_counter() - t0) * 1000
    speech = synthesize(voices[0], " ".join(full for full, _ in SENTENCES[:4]), work, args.tail_ms)
    t0 = time.perf_counter()
    model.warmup()
    first_ms = (time.perf_counter() - t0) * 1000

    report: dict[str, Any] = {
        "benchmark": "end_of_turn",
        "model": str(model.path),
        "tail_ms": args.tail_ms,
        "noise_dbfs": args.noise_dbfs,
        "threshold": THRESHOLD,
        "load_ms": round(load_ms, 1),
        "first_decision_ms": round(first_ms, 1),
        "decision": timing(model, speech, args.runs, args.decisions),
        "voices": {},
    }
    for voice in voices:
        report["voices"][voice] = accuracy(model, voice, work, args.tail_ms, args.dithers, args.noise_dbfs)
        v = report["voices"][voice]
        print(
            f"  {voice}: complete {v['complete']['right']}/{v['complete']['of']}, "
            f"cut {v['cut']['right']}/{v['cut']['of']}, cut+um {v['cut_um']['right']}/{v['cut_um']['of']}",
            file=sys.stderr,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    d = report["decision"]
    per_voice = "; ".join(
        f"{voice} {v['accuracy_complete_vs_cut']:.0%} vs cut, "
        f"{v['accuracy_complete_vs_cut_um']:.0%} vs cut+um "
        f"(flips {v['stability']['flipped']}/{v['stability']['dithered_decisions']})"
        for voice, v in report["voices"].items()
    )
    floor = "digital silence" if args.noise_dbfs is None else f"a {args.noise_dbfs:g} dBFS noise floor"
    print(
        f"Smart Turn v3.2, {args.tail_ms} ms tail, {floor}: "
        f"decision p50 {d['p50_ms']} ms, p95 {d['p95_ms']} ms, "
        f"CPU {d['cpu_p50_ms']} ms (1 thread, load {d['load_average_1m']}); accuracy {per_voice}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
