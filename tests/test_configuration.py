"""The options are declared once (``voicepeer.config``): the CLI, the environment, the ``config`` control
command and docs/configuration.md must all follow the declarations, and the names that deployments
already use must keep working."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from voicepeer.call.control import SETTINGS, CallSettings, ControlError, apply_config
from voicepeer.cli import build_parser, config_from_args, main
from voicepeer.config import OPTIONS, Config, LLMConfig, TurnsConfig
from voicepeer.config.markdown import markdown

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "configuration.md"

REGENERATE = "python -m voicepeer.config --markdown > docs/configuration.md"

COMPATIBLE = {
    flag: "VOICEPEER_" + env
    for flag, env in (
        line.split()
        for line in """
--host HOST
--port PORT
--asr-model ASR_MODEL
--asr-threads ASR_THREADS
--llm-threads LLM_THREADS
--tts-threads TTS_THREADS
--llm-model LLM_MODEL
--llm-url LLM_URL
--llm-api-key LLM_API_KEY
--llm-max-tokens LLM_MAX_TOKENS
--llm-max-sentences LLM_MAX_SENTENCES
--llm-timeout LLM_TIMEOUT
--system-prompt SYSTEM_PROMPT
--tts-voice TTS_VOICE
--aec AEC
--asr-aec ASR_AEC
--noise-suppression NOISE_SUPPRESSION
--auto-gain AUTO_GAIN
--end-silence-ms END_SILENCE_MS
--hold-silence-ms HOLD_SILENCE_MS
--complete-silence-ms COMPLETE_SILENCE_MS
--end-of-turn END_OF_TURN
--partial-interval-ms PARTIAL_INTERVAL_MS
--interrupt-after-ms INTERRUPT_AFTER_MS
--vad-threshold VAD_THRESHOLD
--max-sessions MAX_SESSIONS
--max-call MAX_CALL
--route-prefix ROUTE_PREFIX
--drain DRAIN_S
--auth-token AUTH_TOKEN
--turn-secret TURN_SECRET
--turn-ttl TURN_TTL_S
--metrics-public METRICS_PUBLIC
--offers-per-minute OFFERS_PER_MINUTE
--messages-per-second MESSAGES_PER_SECOND
--media-timeout MEDIA_TIMEOUT
--connect-timeout CONNECT_TIMEOUT
--record-audio RECORD_AUDIO
--record-turns RECORD_TURNS
--log-level LOG_LEVEL
--ice-server ICE_SERVERS
--turn-url TURN_URLS
--allow-origin ALLOW_ORIGINS
""".strip().splitlines()
    )
}
"""The flags and their environment variables before the options were declared in one place: scripts,
deployments and users' habits rely on both names."""

NOT_OPTIONS = {
    "VOICEPEER_CACHE",
    "VOICEPEER_CHROMIUM",
    "VOICEPEER_PYTHON_ENV",
    "VOICEPEER_RENDERER_SCREENSHOT",
}
"""Variables of the model cache, the Electron app's launcher and the browser tests, not of the server."""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for declared in OPTIONS:
        monkeypatch.delenv(declared.env, raising=False)


def test_the_configuration_page_is_generated_from_the_declarations():
    assert DOCS.read_text() == markdown(Config), f"docs/configuration.md is stale: run `{REGENERATE}`"


def test_flags_and_variables_are_unique_and_the_old_flags_all_work():
    flags = [d.option.flag for d in OPTIONS]
    envs = [d.env for d in OPTIONS]
    assert len(set(flags)) == len(flags) and len(set(envs)) == len(envs)
    declared = {d.option.flag: d.env for d in OPTIONS}
    assert {flag: declared.get(flag) for flag in COMPATIBLE} == COMPATIBLE


def test_every_variable_the_deployment_and_the_clients_set_is_an_option():
    files = [
        ROOT / "Makefile",
        ROOT / "docs" / "deploy.md",
        ROOT / "web" / "electron" / "lib" / "localServer.js",
    ]
    files += [p for p in (ROOT / "docker").rglob("*") if p.is_file() and p.suffix in ("", ".yaml", ".sh")]
    used = {name for path in files for name in re.findall(r"VOICEPEER_[A-Z_]*[A-Z]", path.read_text())}
    assert used, "no VOICEPEER_ variable found: were the deployment files moved?"
    assert used - NOT_OPTIONS <= {d.env for d in OPTIONS}


def test_help_names_every_flag_and_variable():
    text = build_parser().format_help()
    for declared in OPTIONS:
        assert declared.option.flag in text and declared.env in text, declared.path


def test_no_flag_and_no_variable_is_the_default_configuration():
    assert config_from_args(build_parser().parse_args([])) == Config()


def test_flags_and_variables_land_in_their_sections(monkeypatch):
    monkeypatch.setenv("VOICEPEER_TURN_URLS", "turn:a:3478, turns:b:5349,")
    monkeypatch.setenv("VOICEPEER_MAX_SESSIONS", "3")
    monkeypatch.setenv("VOICEPEER_METRICS_PUBLIC", "yes")
    monkeypatch.setenv("VOICEPEER_ICE_SERVERS", "stun:ignored")
    argv = [
        "--llm-max-sentences", "0",
        "--end-of-turn", "off",
        "--route-prefix", "/r/peer1/",
        "--ice-server", "stun:a",
        "--ice-server", "stun:b",
        "serve",
        "--vad-threshold", "0.7",
        "--llm-timeout", "2.5",
    ]  # fmt: skip
    config = config_from_args(build_parser().parse_args(argv))
    assert config.llm.max_sentences is None and config.llm.timeout_s == 2.5
    assert config.turns.end_of_turn_model is None and config.turns.detector.threshold == 0.7
    assert config.server.route_prefix == "/r/peer1" and config.server.max_sessions == 3
    assert config.ice.servers == ("stun:a", "stun:b") and config.ice.turn_urls == (
        "turn:a:3478",
        "turns:b:5349",
    )
    assert config.security.metrics_public is True


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--route-prefix", "r/peer1"], "--route-prefix"),
        (["--route-prefix", "/r/../x"], "--route-prefix"),
        (["--aec", "webrtc"], "--aec"),
        (["--noise-suppression", "5"], "--noise-suppression"),
        (["--drain", "-1"], "--drain"),
        (["--max-call", "nan"], "--max-call"),
        (["--metrics-public", "maybe"], "--metrics-public"),
        (["--asr", "ftp://10.0.0.1/asr"], "--asr"),
        (["--tts", "ws://127.0.0.1:8000/asr"], "--tts"),  # WhisperLiveKit only recognises
        (["--llm", "wyoming://"], "--llm"),
        (["--asr", " , "], "--asr"),
    ],
)
def test_a_bad_value_is_a_usage_error_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and f"argument {flag}" in capsys.readouterr().err


def test_backend_chains_come_from_flags_variables_and_the_llm_url_shorthand(monkeypatch):
    monkeypatch.setenv("VOICEPEER_ASR", "wyoming://asr:10300, embedded")
    argv = ["serve", "--tts", "http://tts:8000/v1,embedded", "--llm-url", "http://llm:8000/v1"]
    config = config_from_args(build_parser().parse_args(argv))
    assert config.asr.backends == ("wyoming://asr:10300", "embedded")
    assert config.tts.backends == ("http://tts:8000/v1", "embedded")
    assert config.llm.chain == ("http://llm:8000/v1",)  # --llm-url alone: the server, no fallback
    config = config_from_args(build_parser().parse_args(["--llm", "http://gpu:8000/v1,embedded"]))
    assert config.llm.chain == ("http://gpu:8000/v1", "embedded")
    assert Config().llm.chain == ("embedded",) and Config().asr.backends == ("embedded",)


def test_a_bad_variable_is_a_usage_error_naming_its_flag(monkeypatch, capsys):
    monkeypatch.setenv("VOICEPEER_ASR_AEC", "webrtc")
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([])
    assert exited.value.code == 2 and "argument --asr-aec" in capsys.readouterr().err


def test_a_turn_url_needs_its_secret(capsys):
    assert main(["check", "--turn-url", "turn:127.0.0.1:3478"]) == 2
    assert "--turn-url needs --turn-secret" in capsys.readouterr().err
    assert main(["check", "--turn-url", "stun:127.0.0.1", "--turn-secret", "s"]) == 2
    assert "not a TURN URL" in capsys.readouterr().err


def test_secrets_are_never_shown_in_help(monkeypatch):
    monkeypatch.setenv("VOICEPEER_AUTH_TOKEN", "hunter2-auth")
    monkeypatch.setenv("VOICEPEER_LLM_API_KEY", "hunter2-key")
    text = build_parser().format_help()
    assert "hunter2" not in text and "[VOICEPEER_AUTH_TOKEN] (set)" in text


def test_the_config_command_changes_what_is_declared_live_within_its_bounds():
    assert list(SETTINGS) == [d.name for d in OPTIONS if d.option.live]
    config = Config(llm=LLMConfig(max_tokens=50), turns=TurnsConfig(end_silence_ms=400))
    settings = CallSettings.of(config)
    assert settings.public() == {
        "language": "en",
        "system_prompt": config.llm.system_prompt,
        "max_tokens": 50,
        "end_silence_ms": 400,
    }
    for name, declared in SETTINGS.items():
        live = declared.option.live
        assert live is not None
        if declared.option.convert is not None:
            continue  # a value with a shape: checked below
        for good, bad in ((live.low, live.low - 1), (live.high, live.high + 1)):
            value, refused = ("x" * good, "x" * bad) if declared.kind is str else (good, bad)
            assert getattr(apply_config(settings, {"type": "config", name: value}), name) == value
            with pytest.raises(ControlError) as error:
                apply_config(settings, {"type": "config", name: refused})
            assert error.value.code == "bad_value" and error.value.field == name
            assert f"{live.low} to {live.high} {live.unit}" in error.value.message


@pytest.mark.parametrize(
    ("value", "kept"), [("zh", "zh"), ("zh-CN", "zh"), (" ja ", "ja"), ("AUTO", "auto"), ("yue", "yue")]
)
def test_the_config_command_takes_a_language_code_or_auto(value, kept):
    settings = CallSettings.of(Config())
    assert apply_config(settings, {"type": "config", "language": value}).language == kept


@pytest.mark.parametrize("value", ["", "z", "chinese", "zh!", "12", 5, None, "zh-hans-cn"])
def test_the_config_command_refuses_what_is_no_language(value):
    with pytest.raises(ControlError) as error:
        apply_config(CallSettings.of(Config()), {"type": "config", "language": value})
    assert error.value.code == "bad_value" and error.value.field == "language"


def test_a_config_is_changed_by_option_path():
    config = Config().with_options({"llm.timeout_s": 1.0, "server.port": 9000})
    assert config.llm.timeout_s == 1.0 and config.server.port == 9000
    assert dataclasses.replace(config, llm=Config().llm) == Config().with_options({"server.port": 9000})


def test_a_program_may_set_the_turn_parameters_that_are_not_options():
    from voicepeer.audio.vad import TurnParams
    from voicepeer.call.turntaking import TurnPolicy
    from voicepeer.config import TurnsConfig

    turns = TurnsConfig(
        end_silence_ms=500,
        detector_defaults=TurnParams(pause_ms=120),
        policy_defaults=TurnPolicy(end_of_turn_threshold=0.7),
    )
    assert turns.detector.pause_ms == 120 and turns.detector.end_silence_ms == 500
    assert turns.policy.end_of_turn_threshold == 0.7
    assert "detector_defaults" not in {d.name for d in OPTIONS}  # not a flag: a program's choice
