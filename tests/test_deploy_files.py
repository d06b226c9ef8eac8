"""The deployment's files, checked offline in every `make test`: the Dockerfiles by hadolint, the
compose file by docker-compose's own schema, the Kubernetes manifests by the Kubernetes schemas.
`make test-deploy` builds and runs them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server import ROOT

DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_dockerfiles_pass_hadolint():
    done = run(
        str(BIN / "hadolint"),
        "--config",
        str(DOCKER / "hadolint.yaml"),
        "docker/Dockerfile",
        "docker/edge.Dockerfile",
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_file_is_valid_and_keeps_its_promises():
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.fail("docker-compose is missing: `make test` installs it from Debian")
    done = run(compose, "-f", "docker/compose.yaml", "config")
    assert done.returncode == 0, done.stderr
    config = done.stdout
    # Published on loopback unless told otherwise; peers behind the front door only.
    assert "127.0.0.1:8443" in config or "host_ip: 127.0.0.1" in config, config
    for promise in (
        "VOICEPEER_ROUTE_PREFIX: /r/peer1",
        "VOICEPEER_ROUTE_PREFIX: /r/peer2",
        "healthcheck",
        "restart: unless-stopped",
    ):
        assert promise in config, promise


def test_the_kubernetes_manifests_match_the_schemas():
    manifests = sorted(str(p) for p in (DOCKER / "k8s").glob("*.yaml"))
    assert len(manifests) >= 5
    done = run(str(BIN / "kubernetes-validate"), "--strict", "--quiet", *manifests)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_front_door_routes_every_replica_of_the_compose_file():
    nginx = (DOCKER / "frontdoor" / "nginx.conf").read_text()
    compose = (DOCKER / "compose.yaml").read_text()
    for replica in ("peer1", "peer2"):
        assert f"server {replica}:8080" in nginx
        assert f"{replica}:" in compose
