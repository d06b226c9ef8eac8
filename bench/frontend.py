"""Echo cancellation on simulated loudspeaker echo paths: ERLE, convergence, double-talk WER, cost.

The scene, at 16 kHz: the far end is Piper reading a long reply (what the bot sends), the microphone
hears it back through an echo path (delay, gain, a decaying room tail, optionally a clipping loudspeaker
or a slowly drifting delay) plus a quiet noise floor, and the user asks questions (espeak-ng) over the
bot's voice from 10 s on. Each canceller gets the exact far end as reference, in 10 ms frames.

- ERLE (echo return loss enhancement) = echo energy in / residual energy out, on the far-only part:
  over the first 2 s, and once converged (6-10 s).
- Convergence: the first 250 ms window whose ERLE reaches 20 dB.
- Double-talk WER: whisper on the user's questions cut from the canceller's output, against the text;
  beside it the WER of the clean questions and of the raw microphone.
- RTF: processing time over audio time, for the canceller alone and for the whole front-end as a call
  runs it (canceller, noise suppression, Silero turn detection).
- Barge-in onsets: the whole front-end and turn detector as a call joins them (``call.listen``),
  on every path plus a 600 ms one, with the questions in three voices (espeak-ng, flite, festival's
  HTS voice; one per path, in turn): how long after a question starts a turn opens, questions with no
  turn, turns opened on the bot's own voice, and the WER of the audio the ASR gets (``words``).

    python -m bench.frontend [--cancellers aec3,speex] [--asr tiny.en]

Prints one JSON document, then a one-line summary per canceller (medians over the echo paths).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.speech import read_wav, speak
from voicepeer.audio.echo import CANCELLERS, FRAME
from voicepeer.audio.formats import SPEECH_RATE, WEBRTC_RATE, Resampler
from voicepeer.audio.frontend import FrontEnd
from voicepeer.audio.vad import SpeechEnded, SpeechStarted, TurnDetector
from voicepeer.backends.asr import WhisperASR
from voicepeer.backends.tts import PiperTTS
from voicepeer.call.call import listen

FAR_TEXT = [
    "The Pacific is the largest and deepest of the world's oceans.",
    "It covers about a third of the surface of the planet, more than all the land put together.",
    "Its name means peaceful sea, which is what the explorer Magellan called it in fifteen twenty.",
    "Thousands of islands lie in it, from Hawaii in the north to New Zealand in the south.",
    "The deepest point on Earth, the Mariana Trench, is in its western part, nearly eleven kilometres down.",
    "Many of the world's largest fish and whales live in its open waters.",
]
NEAR_TEXT = [
    "What is the weather like today?",
    "Tell me about the weather in London.",
    "What time is it in Tokyo?",
    "Can you tell me a joke?",
]
NEAR_START_S = 10.0
NEAR_GAP_S = 1.0

PATHS: list[dict[str, Any]] = [
    {"name": "40ms_0dB", "delay_ms": 40, "gain_db": 0.0},
    {"name": "120ms_-6dB", "delay_ms": 120, "gain_db": -6.0},
    {"name": "250ms_-10dB", "delay_ms": 250, "gain_db": -10.0},
    {"name": "300ms_-20dB", "delay_ms": 300, "gain_db": -20.0},
    {"name": "150ms_-6dB_clipping", "delay_ms": 150, "gain_db": -6.0, "clip": True},
    # Clock skew between the client's capture and our sending is ~100 ppm (3 ms in 30 s); jitter-buffer
    # adaptation moves the delay in steps. A slow and a fast drift bracket that.
    {"name": "150-160ms_drift", "delay_ms": 150, "gain_db": -6.0, "drift_ms": 10},
    {"name": "150-180ms_fast_drift", "delay_ms": 150, "gain_db": -6.0, "drift_ms": 30},
]


ONSET_PATHS = [*PATHS, {"name": "600ms_-6dB", "delay_ms": 600, "gain_db": -6.0}]
"""The barge-in onsets also over an echo later than AEC3 finds by itself (a loaded client)."""

ONSET_ENGINES = ("espeak-ng", "flite", "festival")


def room_ir(tail_ms: float = 120.0, seed: int = 7) -> np.ndarray:
    """A direct path and an exponentially decaying diffuse tail (-60 dB at ``tail_ms``)."""
    n = int(tail_ms * SPEECH_RATE / 1000)
    t = np.arange(n)
    ir = np.random.default_rng(seed).normal(0, 1, n) * 10 ** (-3 * t / n) * 0.3
    ir[0] = 1.0
    return ir / np.sqrt(np.sum(ir**2))


def echo_path(far: np.ndarray, path: dict[str, Any]) -> np.ndarray:
    x = far.astype(np.float64)
    if path.get("clip"):  # a small loudspeaker driven into saturation
        x = np.tanh(2.5 * x / 32768) / np.tanh(2.5) * 32768
    y = np.convolve(x, room_ir())[: x.size] * 10 ** (path["gain_db"] / 20)
    d0 = path["delay_ms"] * SPEECH_RATE / 1000
    d1 = d0 + path.get("drift_ms", 0) * SPEECH_RATE / 1000
    n = np.arange(y.size)
    src = n - (d0 + (d1 - d0) * n / y.size)  # delay sliding linearly from d0 to d1
    return np.interp(src, n, y, left=0.0)


def erle_db(echo: np.ndarray, residual: np.ndarray) -> float:
    e = float(np.sum(echo.astype(np.float64) ** 2))
    r = float(np.sum(residual.astype(np.float64) ** 2))
    return round(10 * np.log10(max(e, 1e-9) / max(r, 1e-9)), 1)


def words(text: str) -> list[str]:
    return "".join(c.lower() if c.isalnum() or c == "'" else " " for c in text).split()


def wer(ref: str, hyp: str) -> float:
    r, h = words(ref), words(hyp)
    d = list(range(len(h) + 1))
    for i in range(1, len(r) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(h) + 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (r[i - 1] != h[j - 1]))
            prev, d[j] = d[j], cur
    return d[len(h)] / max(1, len(r))


def build_scene(
    work: Path, engine: str = "espeak-ng", far: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, str]]]:
    """Far end (as the outbound track sends it, brought to 16 kHz) and the near end with its spans."""
    if far is None:
        far = build_far()
    near = np.zeros_like(far)
    spans = []
    at = int(NEAR_START_S * SPEECH_RATE)
    for i, text in enumerate(NEAR_TEXT):
        wav = work / f"near{i}-{engine}.wav"
        pcm = read_wav(speak(text, wav, rate=SPEECH_RATE, lead_s=0.0, tail_s=0.0, engine=engine).path)[0]
        pcm = (pcm.astype(np.float64) * 10 ** (-6 / 20)).astype(np.int16)
        if at + pcm.size > far.size:
            break
        near[at : at + pcm.size] = pcm
        spans.append((at, at + pcm.size, text))
        at += pcm.size + int(NEAR_GAP_S * SPEECH_RATE)
    n = far.size // FRAME * FRAME
    return far[:n], near[:n], [s for s in spans if s[1] <= n]


def build_far() -> np.ndarray:
    """Piper reading ``FAR_TEXT``, as the outbound track sends it, brought to 16 kHz."""
    tts = PiperTTS()
    up, down = Resampler(tts.sample_rate, WEBRTC_RATE), Resampler(WEBRTC_RATE, SPEECH_RATE)
    pieces = []
    for text in FAR_TEXT:
        pcm48 = np.concatenate([up.push(c) for c in tts.synthesize_blocking(text)])
        pieces += [down.push(pcm48), np.zeros(SPEECH_RATE // 5, np.int16)]
    return np.concatenate(pieces)


def barge_in_onsets(
    asr: WhisperASR, mic: np.ndarray, far: np.ndarray, spans: list[tuple[int, int, str]]
) -> dict[str, Any]:
    """The front-end and the turn detector over one scene, in the 20 ms chunks a call gets; the turns'
    audio (what the ASR is given, pre-roll included) transcribed against each question."""
    frontend, detector = FrontEnd(), TurnDetector()
    opened: list[int] = []  # the sample at which each turn's onset was found
    turns: list[SpeechEnded] = []
    for i in range(0, mic.size, 320):
        for event in listen(frontend, detector, mic[i : i + 320], far[i : i + 320], i / SPEECH_RATE):
            if isinstance(event, SpeechStarted):
                opened.append(i + 320)
            elif isinstance(event, SpeechEnded):
                turns.append(event)
    frontend.close()
    latencies, missed, errors = [], 0, []
    for a, b, text in spans:
        found = [t for t in opened if a <= t <= b]
        if found:
            latencies.append(round((found[0] - a) * 1000 / SPEECH_RATE))
        else:
            missed += 1
        over = [t for t in turns if t.start_sample < b and t.end_sample > a]
        said = [asr.transcribe_blocking(t.audio).text for t in over]
        errors.append(wer(text, " ".join(said)))
    false = [t for t in opened if not any(a <= t <= b + SPEECH_RATE // 2 for a, b, _ in spans)]
    return {
        "onset_ms": latencies,
        "missed": missed,
        "false_onsets": len(false),
        "false_at_s": [round(t / SPEECH_RATE, 2) for t in false],
        "turn_wer": round(float(np.mean(errors)), 3),
    }


def run_canceller(name: str, mic: np.ndarray, far: np.ndarray) -> tuple[np.ndarray, float]:
    canceller = CANCELLERS[name]()
    out = np.empty_like(mic)
    t0 = time.perf_counter()
    for i in range(0, mic.size, FRAME):
        out[i : i + FRAME] = canceller.process(mic[i : i + FRAME], far[i : i + FRAME])
    elapsed = time.perf_counter() - t0
    canceller.close()
    return out, elapsed / (mic.size / SPEECH_RATE)


def convergence_s(echo: np.ndarray, out: np.ndarray, far: np.ndarray, limit: int, target_db: float = 20.0):
    win = SPEECH_RATE // 4
    for start in range(0, limit - win, win):
        if np.sqrt(np.mean(far[start : start + win].astype(np.float64) ** 2)) < 100:
            continue  # a pause in the bot's speech: nothing to measure
        if erle_db(echo[start : start + win], out[start : start + win]) >= target_db:
            return round(start / SPEECH_RATE, 2)
    return None


def transcribe_spans(asr: WhisperASR, audio: np.ndarray, spans) -> float:
    pad = SPEECH_RATE // 5
    errors = []
    for a, b, text in spans:
        segment = audio[max(0, a - pad) : b + pad]
        errors.append(wer(text, asr.transcribe_blocking(segment).text))
    return round(float(np.mean(errors)), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cancellers", default=",".join(CANCELLERS))
    parser.add_argument("--asr", default="tiny.en", help="whisper model for the WER (%(default)s)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/frontend.json"))
    args = parser.parse_args(argv)
    names = [n for n in args.cancellers.split(",") if n]

    work = Path(tempfile.mkdtemp(prefix="voicepeer-frontend-"))
    far_raw = build_far()
    far, near, spans = build_scene(work, far=far_raw)
    asr = WhisperASR(args.asr)
    noise = np.random.default_rng(3).normal(0, 10, far.size)  # about -70 dBFS
    far_only = int(NEAR_START_S * SPEECH_RATE)
    results: dict[str, Any] = {"clean_wer": transcribe_spans(asr, near, spans), "paths": {}}
    for path in PATHS:
        echo = echo_path(far, path)
        mic = np.clip(echo + near + noise, -32768, 32767).astype(np.int16)
        entry: dict[str, Any] = {"raw_wer": transcribe_spans(asr, mic, spans)}
        for name in names:
            out, rtf = run_canceller(name, mic, far)
            entry[name] = {
                "erle_first_2s_db": erle_db(echo[: 2 * SPEECH_RATE], out[: 2 * SPEECH_RATE]),
                "erle_converged_db": erle_db(
                    echo[6 * SPEECH_RATE : far_only], out[6 * SPEECH_RATE : far_only]
                ),
                "convergence_s": convergence_s(echo, out, far, far_only),
                "doubletalk_wer": transcribe_spans(asr, out, spans),
                "rtf": round(rtf, 4),
            }
        results["paths"][path["name"]] = entry

    # The whole front-end as a call runs it (canceller, noise suppression, Silero turn detection) on the
    # 120 ms path, in the 20 ms chunks the session feeds it.
    chain = {}
    mic = np.clip(echo_path(far, PATHS[1]) + near + noise, -32768, 32767).astype(np.int16)
    for name in [*names, "off"]:
        frontend, detector = FrontEnd(aec=name), TurnDetector()
        t0 = time.perf_counter()
        for i in range(0, mic.size, 320):
            detector.process(frontend.process(mic[i : i + 320], far[i : i + 320]), arrival=i / SPEECH_RATE)
        chain[name] = round((time.perf_counter() - t0) / (mic.size / SPEECH_RATE), 4)
        frontend.close()
    results["frontend_rtf"] = chain

    onsets = {}
    for k, path in enumerate(ONSET_PATHS):
        engine = ONSET_ENGINES[k % len(ONSET_ENGINES)]
        far_k, near_k, spans_k = build_scene(work, engine, far_raw)
        mic = np.clip(echo_path(far_k, path) + near_k + noise[: far_k.size], -32768, 32767).astype(np.int16)
        onsets[path["name"]] = {"voice": engine, **barge_in_onsets(asr, mic, far_k, spans_k)}
    every = [ms for o in onsets.values() for ms in o["onset_ms"]]
    onset_summary = {
        "questions": sum(len(o["onset_ms"]) + o["missed"] for o in onsets.values()),
        "missed": sum(o["missed"] for o in onsets.values()),
        "false_onsets": sum(o["false_onsets"] for o in onsets.values()),
        "onset_p50_ms": float(np.percentile(every, 50)) if every else None,
        "onset_p95_ms": float(np.percentile(every, 95)) if every else None,
        "turn_wer_median": statistics.median(o["turn_wer"] for o in onsets.values()),
    }
    results["barge_in_onsets"] = {"summary": onset_summary, "paths": onsets}

    summary = {}
    for name in names:
        rows = [p[name] for p in results["paths"].values()]
        med = {
            k: statistics.median([r[k] for r in rows if r[k] is not None] or [float("nan")]) for k in rows[0]
        }
        med["worst_erle_converged_db"] = min(r["erle_converged_db"] for r in rows)
        med["worst_doubletalk_wer"] = max(r["doubletalk_wer"] for r in rows)
        summary[name] = med
    report = {
        "benchmark": "frontend_echo",
        "scene_s": round(far.size / SPEECH_RATE, 1),
        "summary": summary,
        **results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    for name, s in summary.items():
        print(
            f"{name}: ERLE converged {s['erle_converged_db']} dB (worst {s['worst_erle_converged_db']}), "
            f"first 2 s {s['erle_first_2s_db']} dB, converges in {s['convergence_s']} s; double-talk WER "
            f"{s['doubletalk_wer']:.1%} (worst {s['worst_doubletalk_wer']:.1%}) vs clean "
            f"{results['clean_wer']:.1%}; canceller RTF {s['rtf']}, whole front-end RTF {chain[name]}"
        )
    o = onset_summary
    print(
        f"barge-in onsets: {o['questions']} questions over the echo in three voices, {o['missed']} missed, "
        f"{o['false_onsets']} turns opened on the bot's voice, found {o['onset_p50_ms']} ms (p50) / "
        f"{o['onset_p95_ms']} ms (p95) after the question started; turn WER (median of paths) "
        f"{o['turn_wer_median']:.1%}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
