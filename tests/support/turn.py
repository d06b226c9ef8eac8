"""A real coturn (Debian's ``turnserver``) on loopback, in the shared-secret mode voicepeer mints
credentials for."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.support.server import free_port


class TurnServer:
    def __init__(self, log_path: Path, secret: str = "turn-test-secret") -> None:
        self.secret = secret
        self.port = free_port()
        self.url = f"turn:127.0.0.1:{self.port}?transport=udp"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> TurnServer:
        binary = shutil.which("turnserver")
        if binary is None:
            raise RuntimeError("coturn is missing: `make test` installs it (apt-get install coturn)")
        relay_min = 40_000 + (self.port % 20_000)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                binary,
                "-n",  # no configuration file: everything is here
                "--listening-ip=127.0.0.1",
                f"--listening-port={self.port}",
                "--relay-ip=127.0.0.1",
                f"--min-port={relay_min}",
                f"--max-port={relay_min + 200}",
                "--use-auth-secret",
                f"--static-auth-secret={self.secret}",
                "--realm=voicepeer.test",
                "--allow-loopback-peers",  # the peer it relays to is on loopback too
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "--fingerprint",
                "--log-file=stdout",
                "--simple-log",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"turnserver did not start:\n{self.log()}")
            time.sleep(0.1)
        return self

    def _listening(self) -> bool:
        # coturn listens on TCP too: a connect means it is up.
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
