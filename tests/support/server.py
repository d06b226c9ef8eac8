"""Runs the real server (`python -m voicepeer serve`) in a child process on a free loopback port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from voicepeer.config import LLMConfig

ROOT = Path(__file__).resolve().parents[2]

STORY_PROMPT = (
    "You are a storyteller. Whatever you are asked, answer with a long story of at least six sentences "
    "in plain text."
)
"""A system prompt that keeps the bot talking long enough to be interrupted."""

STORY = ("--system-prompt", STORY_PROMPT, "--llm-max-sentences", "0")
"""Server flags for a storyteller: the prompt, and no cap on the number of sentences of a reply."""

STORY_CONFIG = {"llm": LLMConfig(system_prompt=STORY_PROMPT, max_sentences=None)}
"""The same as ``Config`` sections, for calls made in the test process."""


def metric_values(text: str) -> dict[str, float]:
    """The samples of a Prometheus text exposition (``/metrics``), by name with its labels:
    ``{"voicepeer_sessions": 0.0, 'voicepeer_loop_lag_seconds{quantile="0.99"}': 0.004, ...}``."""
    samples = (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {name: float(value) for name, value in samples}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, *args: str, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = list(args)
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        self._log = open(self.log_path, "wb")
        cmd = [
            sys.executable,
            "-m",
            "voicepeer",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.args,
        ]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return self.get_json("/healthz")
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        raise TimeoutError(f"server not ready in {timeout} s:\n{self.log()}")

    def get_json(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=5) as r:
            return json.loads(r.read())

    def get_text(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=5) as r:
            return r.read().decode()

    def wait_sessions(self, n: int, timeout: float = 10.0) -> None:
        """Waits until the server holds ``n`` sessions (it releases them asynchronously)."""
        deadline = time.monotonic() + timeout
        while (held := self.get_json("/healthz")["sessions"]) != n:
            assert time.monotonic() < deadline, f"server still holds {held} sessions"
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
