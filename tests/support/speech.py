"""Spoken test audio made at test time with espeak-ng and sox (Debian packages), never downloaded."""

from __future__ import annotations

import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class SpeechFile:
    path: Path
    rate: int
    speech_start_s: float
    speech_end_s: float
    text: str


def require_tools() -> None:
    missing = [t for t in ("espeak-ng", "sox") if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"missing {', '.join(missing)}: run `make test`, which installs them from Debian")


def speak(
    text: str,
    path: Path,
    *,
    rate: int = 48_000,
    lead_s: float = 1.0,
    tail_s: float = 2.0,
    voice: str = "en-us",
    wpm: int = 150,
    gain_db: float = -3.0,
    engine: str = "espeak-ng",
) -> SpeechFile:
    """Writes ``text`` spoken by ``engine`` (espeak-ng, or Debian's flite for a second, less robotic
    voice) as 16-bit mono WAV at ``rate``, with silence around it."""
    require_tools()
    raw = path.with_suffix(".raw.wav")
    if engine == "flite":
        if shutil.which("flite") is None:
            raise RuntimeError("missing flite: apt-get install flite (`make bench` does)")
        subprocess.run(["flite", "-voice", voice or "slt", "-t", text, "-o", str(raw)], check=True)
    else:
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(raw), text], check=True)
    subprocess.run(
        [
            "sox",
            str(raw),
            "-r",
            str(rate),
            "-c",
            "1",
            "-b",
            "16",
            str(path),
            "gain",
            "-n",
            str(gain_db),
            "pad",
            str(lead_s),
            str(tail_s),
        ],
        check=True,
    )
    raw.unlink()
    pcm = read_wav(path)[0]
    voiced = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 300)
    return SpeechFile(path, rate, voiced[0] / rate, (voiced[-1] + 1) / rate, text)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16), w.getframerate()


def join(first: Path, pause_s: float, second: Path, path: Path) -> Path:
    """One WAV: ``first``, ``pause_s`` of silence, then ``second`` (a call with two utterances)."""
    padded = path.with_suffix(".first.wav")
    subprocess.run(["sox", str(first), str(padded), "pad", "0", str(pause_s)], check=True)
    subprocess.run(["sox", str(padded), str(second), str(path)], check=True)
    padded.unlink()
    return path
