"""A real OpenAI-compatible server on loopback: llama-cpp-python's own, serving the bundled GGUF."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.server import free_port
from voicepeer.runtime import models


@contextmanager
def llama_cpp_server(
    log_path: Path, timeout_s: float = 60.0, chat_format: str | None = None
) -> Iterator[str]:
    """Starts ``python -m llama_cpp.server`` and yields its base URL (``http://127.0.0.1:N/v1``).
    ``chat_format``: its ``--chat_format`` (``chatml-function-calling`` for tools)."""
    port = free_port()
    log = open(log_path, "wb")
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(models.default_gguf())]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--interrupt_requests", "false"]
    if chat_format:
        cmd += ["--chat_format", chat_format]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}: {log_path.read_text()}")
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("llama_cpp.server did not come up") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
