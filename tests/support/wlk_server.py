"""WhisperLiveKit on loopback, from its own environment (``.servers/whisperlivekit``), offline: the
faster-whisper backend on our tiny.en CTranslate2 folder, raw PCM input.

Its defaults download (the SimulStreaming policy's model, the JFK warm-up clip), so the command names
the LocalAgreement policy and a warm-up WAV written here. ``GET /health`` answers only once the model
is loaded and warmed (FastAPI builds the engine in its lifespan, before uvicorn accepts connections):
some 25 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import urllib.request
import wave
from pathlib import Path

import numpy as np

from tests.support.servers import ServerProcess, server_bin
from voicepeer.runtime import models


def healthy(port: int, timeout_s: float = 2.0) -> bool:
    """True when ``/health`` answers ok (blocking, so it works inside a running event loop too)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout_s) as resp:
        return resp.status == 200 and json.loads(resp.read(4096)).get("status") == "ok"


def warmup_wav(path: Path) -> Path:
    """One second of a 220 Hz tone at 16 kHz: the warm-up only has to run the model once."""
    t = np.arange(16_000) / 16_000
    pcm = (np.sin(2 * np.pi * 220 * t) * 3000).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(pcm.tobytes())
    return path


def whisperlivekit_server(tmp_dir: Path, *extra: str) -> ServerProcess:
    """whisperlivekit 0.2.26 as the issue starts it. CTranslate2 would run 4 threads on 2 cores (the
    backend passes no ``cpu_threads``, so it takes ``OMP_NUM_THREADS``): one per core, as the embedded
    WhisperASR. ``extra``: more arguments. The server decodes with beam 5 and word timestamps (fixed in
    its LocalAgreement backend), where the embedded one is greedy."""
    program = server_bin("whisperlivekit", "whisperlivekit-server")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    warm = warmup_wav(tmp_dir / "wlk-warmup.wav")
    model = models.whisper_model_dir("tiny.en")

    def command(port: int) -> list[str | os.PathLike]:
        return [
            program, "--backend", "faster-whisper", "--backend-policy", "localagreement",
            "--model_dir", model, "--lan", "en", "--pcm-input", "--warmup-file", warm,
            "--host", "127.0.0.1", "--port", str(port), *extra,
        ]  # fmt: skip

    server = ServerProcess(
        "whisperlivekit",
        command,
        healthy,
        tmp_dir / "whisperlivekit.log",
        start_timeout_s=180.0,
        env={"OMP_NUM_THREADS": str(os.cpu_count() or 1)},
    )
    return server.start()
