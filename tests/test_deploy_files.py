"""The deployment's files, checked offline in every `make test`: the Dockerfiles by hadolint, the
compose file by docker-compose's own schema, the Kubernetes manifests by the Kubernetes schemas, and
the wiring the schemas cannot see: every backend a peer names is a service that exists, on the port
it listens on, with a health check, and every chain ends in the peer's embedded model.
`make test-deploy` builds and runs them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.support.server import ROOT

DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent
CHAINS = ("VOICEPEER_ASR", "VOICEPEER_TTS", "VOICEPEER_LLM")
INFERENCE = {"asr": 10300, "tts": 10200, "llm": 8000}
"""The inference services of both stacks (compose service or Kubernetes Deployment ``voicepeer-<name>``)
and the port each listens on."""


INTERRUPTS = (
    "llama-cpp-python's server must not interrupt a reply for the next request (a health check's, "
    "another peer's): the reply would end empty"
)


def remote_backends(chain: str) -> list[tuple[str, int]]:
    """(host, port) of each remote backend of a chain; asserts it ends in the embedded model."""
    urls = [u.strip() for u in chain.split(",")]
    assert urls[-1] == "embedded", f"{chain}: no embedded fallback at the end"
    found = []
    for url in urls[:-1]:
        parts = urlsplit(url)
        assert parts.hostname and parts.port, url
        found.append((parts.hostname, parts.port))
    return found


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def compose_config() -> dict[str, Any]:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.fail("docker-compose is missing: `make test` installs it from Debian")
    done = run(compose, "-f", "docker/compose.yaml", "config")
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def k8s_objects() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted((DOCKER / "k8s").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


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


def test_the_compose_peers_use_the_inference_services_first_and_their_own_models_last():
    services = compose_config()["services"]
    for peer in ("peer1", "peer2"):
        env = services[peer]["environment"]
        assert "VOICEPEER_LLM_URL" not in env, "--llm-url beside --llm: one of them would be ignored"
        for var in CHAINS:
            for host, port in remote_backends(env[var]):
                assert host in INFERENCE and host in services, f"{peer} {var}: no service {host!r}"
                assert port == INFERENCE[host], f"{peer} {var}: {host} listens on {INFERENCE[host]}"
                assert host in services[peer]["depends_on"]
    for name, port in INFERENCE.items():
        service = services[name]
        # The port the peers use is the one the server binds, and its health check asks that port.
        command = " ".join(service["command"])
        assert re.search(rf"(tcp://0\.0\.0\.0:|--port ){port}\b", command), command
        assert str(port) in " ".join(service["healthcheck"]["test"])
        assert service["cpus"] and service["mem_limit"], f"{name}: no cpus/mem limit"
        assert service["restart"] == "unless-stopped"
    assert "--interrupt_requests false" in " ".join(services["llm"]["command"]), INTERRUPTS
    for name in ("asr", "tts"):
        command = " ".join(services[name]["command"])
        assert "--local-files-only" in command, f"{name} could try to download a model"
        # Health is a Wyoming describe answered by info, not a bare TCP connect.
        assert "describe" in " ".join(services[name]["healthcheck"]["test"])


def test_the_kubernetes_peers_name_services_that_exist_on_their_ports_with_probes_and_autoscaling():
    objects = k8s_objects()
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    services, deployments = by_kind["Service"], by_kind["Deployment"]
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in by_kind["HorizontalPodAutoscaler"].values()}
    (peer,) = by_kind["StatefulSet"]["voicepeer-peer"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in peer["env"]}
    assert "VOICEPEER_LLM_URL" not in env, "--llm-url beside --llm: one of them would be ignored"
    named = set()
    for var in CHAINS:
        for host, port in remote_backends(env[var]):
            named.add(host)
            service = services.get(host)
            assert service is not None, f"{var} names {host!r}, which no Service declares"
            (service_port,) = [p for p in service["spec"]["ports"] if p["port"] == port] or [None]
            assert service_port is not None, f"{var}: Service {host} has no port {port}"
            # The Service's target is a container port of the Deployment its selector picks.
            selector = service["spec"]["selector"]
            (deployment,) = [
                d
                for d in deployments.values()
                if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
            ]
            (container,) = deployment["spec"]["template"]["spec"]["containers"]
            ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
            target = service_port["targetPort"]
            assert target in ports or target in ports.values(), f"{host}: targetPort {target} not served"
            assert (ports.get(target) if isinstance(target, str) else target) == port
            assert "readinessProbe" in container, f"{deployment['metadata']['name']}: no readiness probe"
            assert container["resources"]["requests"]["cpu"], "an HPA on CPU needs a CPU request"
            hpa = hpas.get(deployment["metadata"]["name"])
            assert hpa is not None, f"{deployment['metadata']['name']}: no HorizontalPodAutoscaler"
            (metric,) = hpa["spec"]["metrics"]
            assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert named == {f"voicepeer-{name}" for name in INFERENCE}
    (llm,) = deployments["voicepeer-llm"]["spec"]["template"]["spec"]["containers"]
    assert "--interrupt_requests false" in " ".join(llm["args"]), INTERRUPTS
