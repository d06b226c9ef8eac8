"""The compose stack (docker/compose.yaml) brought up for a test, in its own compose project."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.server import ROOT, metric_values

COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
FRONT = "https://127.0.0.1:8443"
INSECURE = ssl.create_default_context()
INSECURE.check_hostname = False
INSECURE.verify_mode = ssl.CERT_NONE  # the stack's self-signed certificate


class Stack:
    def __init__(self, project: str, env: dict[str, str], log_dir: Path) -> None:
        self.project = project
        self.env = {**os.environ, "COMPOSE_PROJECT_NAME": project, **env}
        self.token = env.get("VOICEPEER_AUTH_TOKEN", "")
        self.log_dir = log_dir

    def compose(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = ["docker-compose", "-f", str(COMPOSE_FILE), *args]
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=check)

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120, check=check)

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def health(self, service: str) -> str:
        fmt = "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}"
        status = self.docker("inspect", "-f", fmt, self.container(service), check=False).stdout.strip()
        if (
            status
            and self.docker("inspect", "-f", "{{.State.Running}}", self.container(service)).stdout.strip()
            != "true"
        ):
            return "exited"
        return status or "missing"

    def wait_healthy(self, services: list[str], timeout: float = 300) -> float:
        start = time.monotonic()
        while True:
            states = {s: self.health(s) for s in services}
            if all(v == "healthy" for v in states.values()):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"not healthy after {timeout} s: {states}\n{self.logs()}")
            time.sleep(1)

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "80", check=False).stdout

    def request(
        self, method: str, path: str, body: Any = None, *, token: bool = True
    ) -> tuple[int, dict, Any]:
        """(status, headers, JSON body) of a request through the front door."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data else {}
        if token and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(FRONT + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, context=INSECURE, timeout=30) as r:
                raw = r.read()
                return r.status, dict(r.headers), json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, dict(exc.headers), json.loads(raw) if raw else None

    def sessions(self, replica: str) -> int | None:
        """Calls a replica holds now (its ``voicepeer_sessions`` gauge); None if it does not answer."""
        req = urllib.request.Request(
            f"{FRONT}/r/{replica}/metrics", headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(req, context=INSECURE, timeout=10) as r:
                text = r.read().decode()
        except (urllib.error.URLError, OSError):
            return None
        held = metric_values(text).get("voicepeer_sessions")
        return None if held is None else int(held)

    def backends(self, replica: str) -> dict[str, Any]:
        """A replica's stages as its ``/healthz`` lists them: ``{"asr": {"active": name, "backends":
        [{"name", "state", "requests", ...}]}, "tts": ..., "llm": ...}``."""
        status, _, body = self.request("GET", f"/r/{replica}/healthz")
        assert status == 200 and "backends" in body, (status, body)
        return body["backends"]

    def wait_active(
        self, expected: dict[str, str], replicas: tuple[str, ...] = ("peer1", "peer2"), timeout: float = 90
    ) -> None:
        """Waits until every replica's stages use the backends ``expected`` names (stage -> name)."""
        deadline = time.monotonic() + timeout
        while True:
            actives = {r: {s: self.backends(r)[s]["active"] for s in expected} for r in replicas}
            if all(a == expected for a in actives.values()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"backends not {expected} after {timeout} s: {actives}\n{self.logs()}")
            time.sleep(1)

    def wait_idle(self, replicas: tuple[str, ...] = ("peer1", "peer2"), timeout: float = 90) -> None:
        """Waits until no replica holds a call: a call a failed test left behind (a browser closed
        without hanging up ends when ICE gives up on it) must not fail the next test as "busy"."""
        deadline = time.monotonic() + timeout
        while (held := {r: self.sessions(r) for r in replicas}) and any(n != 0 for n in held.values()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"replicas still hold calls after {timeout} s: {held}\n{self.logs()}")
            time.sleep(1)

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "60", check=False)

    def containers(self) -> list[str]:
        label = f"label=com.docker.compose.project={self.project}"
        return self.docker("ps", "-a", "-q", "--filter", label).stdout.split()
