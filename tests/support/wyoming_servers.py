"""Home Assistant's Wyoming servers on loopback, from their own environments (``.servers/wyoming-*``),
offline, with the model files our packages install: wyoming-faster-whisper on the tiny.en CTranslate2
folder and wyoming-piper on the bundled en_US-joe-medium voice.

Each function returns a started ``ServerProcess``, ready once it answers a Wyoming ``describe`` with
``info`` (wyoming-faster-whisper loads its model before it listens; wyoming-piper loads its voice on
the first request). Stop it with ``stop()``, or use it as a context manager.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from tests.support.servers import ServerProcess, server_bin
from voicepeer.runtime import models

PIPER_VOICE = "en_US-joe-medium"


def describes(port: int, timeout_s: float = 2.0) -> bool:
    """True when the server on ``port`` answers ``describe`` with ``info`` (a blocking socket, so it
    works inside a running event loop too, as ``ServerProcess.start`` after a kill does)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(b'{"type": "describe"}\n')
        line = sock.makefile("rb").readline(64 * 1024)
    return json.loads(line).get("type") == "info"


def wyoming_asr_server(tmp_dir: Path, *extra: str) -> ServerProcess:
    """wyoming-faster-whisper 3.8 on tiny.en. Decoding as the embedded WhisperASR does it (int8, greedy,
    one thread per core), so the two compare: the server's defaults are float32 (the model's own type,
    float16, converted), beam 5 on x86 and 4 threads. ``extra``: more arguments (they win)."""
    python = server_bin("wyoming-faster-whisper")
    data = tmp_dir / "whisper-data"
    data.mkdir(parents=True, exist_ok=True)
    model = models.whisper_model_dir("tiny.en")

    def command(port: int) -> list[str | os.PathLike]:
        return [
            python, "-m", "wyoming_faster_whisper", "--uri", f"tcp://127.0.0.1:{port}",
            "--model", model, "--stt-library", "faster-whisper", "--data-dir", data,
            "--local-files-only", "--language", "en",
            "--compute-type", "int8", "--beam-size", "1", "--cpu-threads", str(os.cpu_count() or 1),
            *extra,
        ]  # fmt: skip

    server = ServerProcess(
        "wyoming-faster-whisper", command, describes, tmp_dir / "wyoming-faster-whisper.log"
    )
    return server.start()


def wyoming_tts_server(tmp_dir: Path, *extra: str) -> ServerProcess:
    """wyoming-piper 2.5 on the bundled voice, linked into its data folder under the voice's name (a
    voice not on disk it would try to download)."""
    python = server_bin("wyoming-piper")
    data = tmp_dir / "piper-data"
    data.mkdir(parents=True, exist_ok=True)
    onnx, config = models.piper_voice_paths(None)
    for source, name in ((onnx, f"{PIPER_VOICE}.onnx"), (config, f"{PIPER_VOICE}.onnx.json")):
        link = data / name
        if not link.exists():
            link.symlink_to(source)

    def command(port: int) -> list[str | os.PathLike]:
        return [
            python, "-m", "wyoming_piper", "--uri", f"tcp://127.0.0.1:{port}",
            "--voice", PIPER_VOICE, "--data-dir", data, "--local-files-only", *extra,
        ]  # fmt: skip

    server = ServerProcess("wyoming-piper", command, describes, tmp_dir / "wyoming-piper.log")
    return server.start()
