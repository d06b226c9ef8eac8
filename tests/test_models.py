import os

import pytest

from voicepeer.runtime import models


def test_hub_offline_switches_are_on():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_bundled_models_are_found_on_disk():
    assert (models.whisper_model_dir("tiny.en") / "model.bin").stat().st_size > 10_000_000
    assert models.default_gguf().suffix == ".gguf"
    onnx, config = models.piper_voice_paths(None)
    assert onnx.exists() and config.exists()


def test_unknown_asr_name_is_refused_not_downloaded():
    with pytest.raises(models.ModelNotFound, match="never downloaded"):
        models.whisper_model_dir("large-v3")


def test_missing_package_names_what_to_install():
    with pytest.raises(models.ModelNotFound, match="pip install some-voice"):
        models.package_dir("no_such_voice_package", "pip install some-voice")


def test_missing_local_paths_fail_with_the_path(tmp_path):
    with pytest.raises(models.ModelNotFound, match=str(tmp_path / "x.gguf")):
        models.gguf_path(str(tmp_path / "x.gguf"))
    with pytest.raises(models.ModelNotFound, match=r"beside the \.onnx"):
        (tmp_path / "v.onnx").write_bytes(b"")
        models.piper_voice_paths(str(tmp_path / "v.onnx"))
