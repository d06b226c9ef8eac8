"""OpenAI-compatible speech servers on loopback, from their own environments (``.servers/<name>``),
offline, with the model files our packages install: faster-whisper-server on the tiny.en CTranslate2
folder and local-tts-studio on the bundled en_US-joe-medium Piper voice.

Each function returns a started ``ServerProcess`` whose base URL is ``openai_url(server)``. Both load
their model on the first request, not at startup, so a server is ready here only once a tiny real
request has been answered: the tests start against a loaded model, as the backends' probes demand.
The LLM server (llama-cpp-python's) is ``tests/support/llm_server.py``.
"""

from __future__ import annotations

import io
import json
import os
import urllib.request
import uuid
import wave
from pathlib import Path

from tests.support.servers import ServerProcess, server_bin
from voicepeer.runtime import models

WHISPER_MODEL = "tiny.en"
PIPER_VOICE = "en_US-joe-medium"


def openai_url(server: ServerProcess) -> str:
    return f"http://127.0.0.1:{server.port}/v1"


def _silence_wav(seconds: float = 0.5, rate: int = 16_000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * int(seconds * rate))
    return buffer.getvalue()


def _multipart(fields: dict[str, str], file: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n".encode()
        + file
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def transcribes(port: int, timeout_s: float = 30.0) -> bool:
    """True once faster-whisper-server answers ``/health`` and transcribes half a second of silence
    (which loads its model). Blocking, so it also works inside a running event loop."""
    base = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
        if response.status != 200:
            return False
    body, content_type = _multipart({"model_name": WHISPER_MODEL, "response_format": "json"}, _silence_wav())
    request = urllib.request.Request(
        f"{base}/v1/audio/transcriptions", data=body, headers={"Content-Type": content_type}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return response.status == 200 and "text" in json.loads(response.read())


def speaks(port: int, timeout_s: float = 30.0) -> bool:
    """True once local-tts-studio answers ``/api/health`` and synthesizes "Hi." (which loads its voice)."""
    base = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{base}/api/health", timeout=2) as response:
        if response.status != 200:
            return False
    request = urllib.request.Request(
        f"{base}/v1/audio/speech",
        data=json.dumps({"input": "Hi.", "response_format": "wav"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return response.status == 200 and response.read(4) == b"RIFF"


def faster_whisper_server(tmp_dir: Path) -> ServerProcess:
    """faster-whisper-server 0.0.3 on tiny.en, from a YAML config that serves it under the name
    ``tiny.en`` (which requests name in the form field ``model_name``) and decodes as the embedded
    WhisperASR does: int8, greedy, one thread per core, no timestamps and no conditioning on earlier
    text. Its defaults are float32, beam 5 and 4 threads."""
    program = server_bin("faster-whisper-server", "faster-whisper-server")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    config = tmp_dir / "faster-whisper-server.yaml"
    spec = {
        "models": [
            {
                "name": WHISPER_MODEL,
                "path": str(models.whisper_model_dir(WHISPER_MODEL)),
                "model_options": {
                    "device": "cpu",
                    "compute_type": "int8",
                    "cpu_threads": os.cpu_count() or 1,
                },
                "transcribe_options": {
                    "beam_size": 1,
                    "without_timestamps": True,
                    "condition_on_previous_text": False,
                },
            }
        ]
    }
    config.write_text(json.dumps(spec))  # JSON is YAML

    def command(port: int) -> list[str | os.PathLike]:
        return [program, "--config", config, "--host", "127.0.0.1", "--port", str(port)]

    server = ServerProcess(
        "faster-whisper-server", command, transcribes, tmp_dir / "faster-whisper-server.log"
    )
    return server.start()


def local_tts_studio(tmp_dir: Path) -> ServerProcess:
    """local-tts-studio 1.0 on the bundled voice. Its data folder (``LOCAL_TTS_DATA_DIR``) holds a
    ``settings.json`` naming a folder where the voice's ``.onnx`` and ``.onnx.json`` are linked, and
    making it the API's voice: the server ignores the ``voice`` of a request and speaks with
    ``api_default_voice``."""
    program = server_bin("local-tts-studio", "local-tts")
    data = tmp_dir / "local-tts-data"
    voices = data / "voices"
    voices.mkdir(parents=True, exist_ok=True)
    onnx, voice_config = models.piper_voice_paths(None)
    for source, name in ((onnx, f"{PIPER_VOICE}.onnx"), (voice_config, f"{PIPER_VOICE}.onnx.json")):
        link = voices / name
        if not link.exists():
            link.symlink_to(source)
    settings = {"voices_dir": str(voices), "device": "cpu", "api_default_voice": PIPER_VOICE}
    (data / "settings.json").write_text(json.dumps(settings))

    def command(port: int) -> list[str | os.PathLike]:
        return [program, "--host", "127.0.0.1", "--port", str(port)]

    server = ServerProcess(
        "local-tts-studio",
        command,
        speaks,
        tmp_dir / "local-tts-studio.log",
        env={"LOCAL_TTS_DATA_DIR": str(data)},
    )
    return server.start()
