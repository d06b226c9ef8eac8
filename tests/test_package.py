"""The package as a user installs it: one top-level name, and imports that run one way.

A wheel that installs generic top-level modules (``peer``, ``signaling``) clashes with other projects
in a user's environment; the architecture (transport -> call -> audio/backends -> runtime) is only as
real as the imports that keep it."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "voicepeer"

LAYERS = {"transport": 3, "call": 2, "audio": 1, "backends": 1, "runtime": 0}
"""A subpackage may import its own modules and those of lower layers only. audio and backends are one
layer: a backend speaks the sample formats of ``audio.formats``."""

TOP = {"cli": 4, "config": 4, "__main__": 4, "__init__": 4}
"""The package's own top: the command line and the one declaration of every option may read any layer."""

DECLARATION = "voicepeer.config"
"""Every option is declared once, in ``voicepeer.config``, with its defaults taken from the parameter
classes of the layers below (``TurnPolicy``, ``TurnParams``, ``LLMOptions``). The call and the
transports are handed a ``Config`` and may read it; audio, backends and runtime never do: they are
given their parameters, so they stay usable without the server's configuration."""


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != "voicepeer":
        raise ValueError(module)
    return LAYERS.get(parts[1], TOP.get(parts[1], 4))


def _imports(path: Path) -> list[tuple[int, str]]:
    """The voicepeer modules a file imports (relative imports resolved), with their line numbers."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [f"{target}.{a.name}" for a in node.names] if not node.module else [target]
            else:
                names = [node.module or ""]
            found += [(node.lineno, n) for n in names if n.startswith("voicepeer.")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("voicepeer.")]
    return found


def test_imports_run_one_way():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if module.count(".") < 2:
            continue  # the package's top: cli, config, __main__, __init__
        own = module.split(".")[1]
        for line, target in _imports(path):
            if target.split(".")[1] == own:
                continue
            if target.startswith(DECLARATION) and _layer(module) >= LAYERS["call"]:
                continue
            if _layer(target) > _layer(module) or (_layer(target) == _layer(module) != LAYERS["audio"]):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_the_layer_check_sees_a_wrong_import(tmp_path, monkeypatch):
    """The rule above can fail: an import from runtime up into call is found."""
    fake = tmp_path / "voicepeer" / "runtime" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from ..call.call import Call\nfrom . import tasks\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert _imports(fake) == [(1, "voicepeer.call.call"), (2, "voicepeer.runtime.tasks")]
    assert _layer("voicepeer.call.call") > _layer("voicepeer.runtime.bad")


def test_every_folder_of_the_package_is_a_package():
    for folder in [PACKAGE, *(p for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
        assert (folder / "__init__.py").exists(), folder


@pytest.mark.slow
def test_the_wheel_installs_voicepeer_and_nothing_else(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            tmp_path,
            ROOT,
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("voicepeer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"voicepeer"}, top
    for sub in LAYERS:
        assert f"voicepeer/{sub}/__init__.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "voicepeer = voicepeer.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


async def test_without_the_repositorys_web_folder_the_server_still_signals(tmp_path):
    """Installed from the wheel, the demo page is not there (it lives in the repository's web/): the
    server answers signaling and health, and the page's URL is a JSON 404, not a crash at start."""
    from aiohttp.test_utils import TestClient, TestServer

    from voicepeer.config import ASRConfig, Config
    from voicepeer.transport.app import WEB_ROOT, create_app

    assert (WEB_ROOT / "demo" / "index.html").is_file()  # in the repository, the page is served
    app = create_app(Config(asr=ASRConfig(model="/nonexistent/whisper")), web_root=tmp_path)
    async with TestClient(TestServer(app)) as client:
        page = await client.get("/")
        assert page.status == 404 and (await page.json())["error"]
        offer = await client.post("/offer", data="{}", headers={"Content-Type": "application/json"})
        assert offer.status in (400, 503) and "error" in await offer.json()


OLD_NAMES = re.compile(r"\b(?:from|import)\s+(?:" + "peer|signal" + r"ing)\b|-m\s+" + "signal" + r"ing\b")
"""The top-level modules before the package (written in pieces so this file does not match itself)."""


def test_no_file_names_the_modules_the_package_replaced():
    """Shell snippets in the deployment files import the package too: a moved module they name fails
    only when the compose stack starts, in the slowest test there is."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    stale = []
    for name in tracked.stdout.split():
        path = ROOT / name
        if path.suffix in (".png", ".onnx", ".wav") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        stale += [f"{name}: {m.group(0)}" for m in OLD_NAMES.finditer(text)]
    assert not stale, stale


def test_the_python_snippets_of_the_deployment_files_run():
    """``python3 -c '...'`` in the compose file and the manifests (the LLM server finds the bundled
    GGUF that way), run with this environment's Python."""
    snippets = []
    for path in [ROOT / "docker" / "compose.yaml", *sorted((ROOT / "docker" / "k8s").glob("*.yaml"))]:
        snippets += re.findall(r"python3 -c '([^']+)'", path.read_text())
    assert snippets, "no python3 -c snippet found: were the deployment files moved?"
    for code in snippets:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.strip(), (code, done.stderr)
