"""Replays calls recorded by ``voicepeer serve --record-audio DIR`` through the front-end and the turn
detector, as a call joins them (``voicepeer.call.call.listen``), with the client's playout reports where
they came (``call-<id>.edits.jsonl``).

What a live call heard depends on the machine's timing; a replay hears the same samples the same way
every time, so a change to the echo path or the detector can be judged on the very calls that went
wrong: where turns opened, how much the front-end took for the user over the bot's echo (``over_echo``,
``near_voice``), and how much of the bot's voice it kept from the VAD as let through by the canceller.
Two builds compare by running this from each, on one directory.

    python -m bench.replay DIR [--aec aec3] [--no-edits] [--out FILE]

Prints one JSON document (per call: its turns' onsets, in seconds of the recording), then a one-line
summary. Calls are taken in the order they ended (the files' modification times), which is the order a
benchmark made them in.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

from voicepeer.audio.echo import CANCELLERS, FRAME
from voicepeer.audio.formats import SPEECH_RATE
from voicepeer.audio.frontend import Cleaned, FrontEnd
from voicepeer.audio.receiver import PlayoutEdit
from voicepeer.audio.vad import SpeechStarted, TurnDetector
from voicepeer.call.call import listen

CHUNK = 320
"""Samples a replay hands the front-end at a time: 20 ms, what a call gets from a WebRTC frame."""


def read_call(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The microphone and the reference of a recorded call (16 kHz, int16); ValueError if the file is
    not one (a server killed mid-write leaves a WAV cut short: what was written is read)."""
    try:
        with wave.open(str(path)) as w:
            if w.getnchannels() != 2 or w.getframerate() != SPEECH_RATE or w.getsampwidth() != 2:
                raise ValueError(f"{path}: not a call recording (16 kHz, 16-bit, stereo)")
            data = w.readframes(w.getnframes())
    except (EOFError, wave.Error) as exc:
        raise ValueError(f"{path}: {str(exc) or 'empty'}") from None
    pcm = np.frombuffer(data[: len(data) // 4 * 4], dtype=np.int16).reshape(-1, 2)
    return pcm[:, 0].copy(), pcm[:, 1].copy()


def read_edits(path: Path) -> list[tuple[int, PlayoutEdit]]:
    """The playout edits recorded beside a call, as (sample, edit); none if there is no file. A line
    that is not an edit (a write cut short) is left out, with a warning."""
    edits_path = path.with_suffix(".edits.jsonl")
    if not edits_path.exists():
        return []
    edits = []
    for number, line in enumerate(edits_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            edits.append((int(row["sample"]), PlayoutEdit(float(row["ms"]), float(row["back_ms"]))))
        except (ValueError, KeyError, TypeError) as exc:
            print(f"{edits_path}:{number}: not an edit, left out ({exc!r})", file=sys.stderr)
    return sorted(edits, key=lambda e: e[0])


def replay(
    mic: np.ndarray,
    ref: np.ndarray,
    edits: list[tuple[int, PlayoutEdit]],
    aec: str = "aec3",
    leak_check: bool = True,
) -> dict[str, Any]:
    """One call through a fresh front-end and detector: its turns and what the front-end marked.
    ``leak_check=False`` turns the front-end's check for the bot's voice let through at a moved delay
    (``EchoLeak``) off, to show what the client's reports do by themselves."""
    frontend, detector = FrontEnd(aec, echo_expected=True), TurnDetector()
    if not leak_check:
        frontend._leaked = lambda: False  # type: ignore[method-assign]
    marked = {"over": 0, "near": 0}
    process_pair = frontend.process_pair

    def counted(near: np.ndarray, far: np.ndarray) -> Cleaned:  # ``listen`` as is, its marks tallied
        cleaned = process_pair(near, far)
        marked["over"] += int(cleaned.over_echo[::FRAME].sum())
        marked["near"] += int(cleaned.near_voice[::FRAME].sum())
        return cleaned

    frontend.process_pair = counted  # type: ignore[method-assign]
    pending = list(edits)
    onsets: list[float] = []
    started = time.process_time()
    try:
        for i in range(0, mic.size - CHUNK + 1, CHUNK):
            # An edit recorded at sample n came while the front-end had heard n samples: it applies
            # to the chunk from n on.
            while pending and pending[0][0] <= i:
                frontend.playout_moved(pending.pop(0)[1])
            events = listen(frontend, detector, mic[i : i + CHUNK], ref[i : i + CHUNK], i / SPEECH_RATE)
            onsets += [round(e.sample / SPEECH_RATE, 2) for e in events if isinstance(e, SpeechStarted)]
        leaked = frontend.leaked_frames
        held_back_ms = frontend.delay_ms
    finally:
        frontend.close()
    return {
        "seconds": round(mic.size / SPEECH_RATE, 2),
        "edits": sum(1 for _, edit in edits if edit.ms),  # the first report's edit of nothing left out
        "held_back_ms": held_back_ms,
        "onsets_s": onsets,
        "over_echo_ms": marked["over"] * 10,
        "near_voice_ms": marked["near"] * 10,
        "leaked_ms": leaked * 10,
        "cpu_s": round(time.process_time() - started, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="a --record-audio directory")
    parser.add_argument("--aec", default="aec3", choices=sorted(CANCELLERS), help="the VAD path's canceller")
    parser.add_argument("--no-edits", action="store_true", help="leave the client's playout reports out")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    files = sorted(args.directory.glob("call-*.wav"), key=os.path.getmtime)
    if not files:
        parser.error(f"no call-*.wav in {args.directory}")
    calls = []
    for path in files:
        try:
            mic, ref = read_call(path)
        except ValueError as exc:
            print(f"{exc}: skipped", file=sys.stderr)
            continue
        edits = [] if args.no_edits else read_edits(path)
        calls.append({"file": path.name, **replay(mic, ref, edits, args.aec)})
    doc = {
        "benchmark": "replay",
        "directory": str(args.directory),
        "aec": args.aec,
        "edits": not args.no_edits,
        "calls": calls,
    }
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    keys = ("over_echo_ms", "near_voice_ms", "leaked_ms", "edits")
    total = {key: sum(c[key] for c in calls) for key in keys}
    print(
        f"replay: {len(calls)} calls, {sum(len(c['onsets_s']) for c in calls)} turns, over the echo "
        f"{total['over_echo_ms']} ms, near voice {total['near_voice_ms']} ms, leaks kept from the VAD "
        f"{total['leaked_ms']} ms, playout edits {total['edits']}"
    )


if __name__ == "__main__":
    main()
