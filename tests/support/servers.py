"""Third-party inference servers on loopback, each from its own virtual environment (``.servers/<name>``,
made by ``tests/servers/install.sh`` from ``tests/servers/<name>.txt``), started on a free port and
stopped by pid.

``ServerProcess`` waits until a readiness check passes (an HTTP route, or a Wyoming ``describe``), so
a test starts against a server that has its model loaded, and can kill, hang (SIGSTOP) and restart it
to inject the faults a real deployment sees.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.support.server import ROOT, free_port

SERVERS = Path(os.environ.get("VOICEPEER_SERVERS", ROOT / ".servers"))


def server_bin(name: str, program: str = "python") -> Path:
    """A program of the ``name`` server's environment; skips the test with the install command when
    the environment is missing (``make test`` installs them all)."""
    path = SERVERS / name / "bin" / program
    if not path.exists():
        pytest.fail(f"{path} is missing: run tests/servers/install.sh {SERVERS} (make install-test does)")
    return path


class ServerProcess:
    def __init__(
        self,
        name: str,
        command: Callable[[int], Sequence[str | os.PathLike]],
        ready: Callable[[int], bool],
        log_path: Path,
        *,
        start_timeout_s: float = 120.0,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        """``command(port)``: the argv; ``ready(port)``: True once it serves (a quick check that raises
        or returns False before)."""
        self.name = name
        self.command = command
        self.ready = ready
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self.env = {**os.environ, **(env or {}), "HF_HUB_OFFLINE": "1"}
        self.cwd = cwd
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        """Starts it (on the same port as before, after a ``kill``) and waits until it is ready."""
        log = open(self.log_path, "ab")
        argv = [str(a) for a in self.command(self.port)]
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if self.ready(self.port):
                    return self
            except Exception:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(
                    f"{self.name} was not ready in {self.start_timeout_s:g} s:\n{self.log()[-3000:]}"
                )
            time.sleep(0.25)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """Kills it (and what it started) at once, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        """Stops it without closing its sockets: connections are accepted and never answered."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with_stopped = self.proc
            os.killpg(with_stopped.pid, signal.SIGCONT)
            os.killpg(with_stopped.pid, signal.SIGTERM)
            try:
                with_stopped.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
