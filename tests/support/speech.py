"""Spoken test audio made at test time with espeak-ng, flite or festival and sox (Debian packages), never
downloaded."""

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


FLITE_VOICES = {"kal", "kal16", "awb", "awb_time", "rms", "slt"}
"""The voices built into Debian's flite."""

FESTIVAL_VOICE = "cmu_us_slt_arctic_hts"
"""Festival's voice from festvox-us-slt-hts: an HMM (HTS) voice of CMU ARCTIC's slt speaker."""


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
    """Writes ``text`` spoken by ``engine`` as 16-bit mono WAV at ``rate``, with silence around it.

    Engines (Debian packages): ``espeak-ng``; ``flite`` (``voice``: one of flite's built-in voices, slt
    when empty or an espeak-style name); ``festival``, the HTS voice of festvox-us-slt-hts (the most
    natural of the three; ``voice``: a festival voice name, cmu_us_slt_arctic_hts when empty or an
    espeak-style name). ``wpm`` applies to espeak-ng only."""
    require_tools()
    raw = path.with_suffix(".raw.wav")
    if engine == "flite":
        if shutil.which("flite") is None:
            raise RuntimeError("missing flite: apt-get install flite (`make bench` does)")
        flite_voice = voice if voice in FLITE_VOICES or voice.endswith(".flitevox") else "slt"
        subprocess.run(["flite", "-voice", flite_voice, "-t", text, "-o", str(raw)], check=True)
    elif engine == "festival":
        if shutil.which("text2wave") is None:
            raise RuntimeError(
                "missing festival: apt-get install festival festvox-us-slt-hts (`make bench` does)"
            )
        name = voice if voice.startswith(("cmu_", "kal_", "rab_", "ked_")) else FESTIVAL_VOICE
        done = subprocess.run(
            ["text2wave", "-eval", f"(voice_{name})", "-o", str(raw)],
            input=text.encode(),
            check=True,
            capture_output=True,
        )
        if not raw.exists():  # text2wave exits 0 even when the voice is not installed
            raise RuntimeError(
                f"festival voice {name} failed (apt-get install festvox-us-slt-hts?): "
                f"{done.stderr.decode(errors='replace').strip()}"
            )
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


def to_speech_rate(pcm: np.ndarray, rate: int) -> np.ndarray:
    """A whole clip at ``rate`` resampled to the speech path's 16 kHz (for the ASR to hear it back)."""
    from voicepeer.audio.formats import SPEECH_RATE, Resampler

    resampler = Resampler(rate, SPEECH_RATE)
    return np.concatenate([resampler.push(pcm), resampler.flush()])
