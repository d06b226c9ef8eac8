"""Command line: ``voicepeer serve`` (the default) and ``voicepeer check``.

Every flag has an environment variable (shown in --help), so the same settings work from a shell, a
Makefile or docker-compose.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence

from peer import models
from peer.config import Config
from peer.vad import TurnParams

DEFAULTS = Config()


def _env(name: str, default: object) -> object:
    return os.environ.get(f"VOICEPEER_{name}", default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicepeer", description="A WebRTC voice agent peer (aiortc).")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="start the server (default)")
    check = sub.add_parser("check", help="load every model once, print where it came from, and exit")
    _add_options(parser)
    for sub_parser in (serve, check):
        # Accepted after the subcommand too; SUPPRESS keeps a subcommand's defaults from overwriting
        # what was given before it (`voicepeer --port 9000 serve`).
        _add_options(sub_parser, argument_default=argparse.SUPPRESS)
    return parser


def _add_options(p: argparse.ArgumentParser, argument_default: object = None) -> None:
    t = TurnParams()

    def add(*names: str, **kwargs: object) -> None:
        if argument_default is argparse.SUPPRESS:
            shown = str(kwargs.get("default"))
            kwargs["help"] = str(kwargs.get("help", "")).replace("%(default)s", shown)
            kwargs["default"] = argparse.SUPPRESS
        p.add_argument(*names, **kwargs)

    add("--host", default=_env("HOST", DEFAULTS.host), help="listen address [VOICEPEER_HOST] (%(default)s)")
    add(
        "--port",
        type=int,
        default=_env("PORT", DEFAULTS.port),
        help="listen port [VOICEPEER_PORT] (%(default)s)",
    )
    add(
        "--asr-model",
        default=_env("ASR_MODEL", DEFAULTS.asr_model),
        help="tiny.en, base, or a faster-whisper model directory [VOICEPEER_ASR_MODEL] (%(default)s)",
    )
    add(
        "--asr-threads",
        type=int,
        default=_env("ASR_THREADS", DEFAULTS.asr_threads),
        help="CTranslate2 threads, 0 = one per core [VOICEPEER_ASR_THREADS] (%(default)s)",
    )
    add(
        "--llm-model",
        default=_env("LLM_MODEL", DEFAULTS.llm_model),
        help="path of a GGUF model; default: bundled SmolLM2-135M-Instruct [VOICEPEER_LLM_MODEL]",
    )
    add(
        "--llm-max-tokens",
        type=int,
        default=_env("LLM_MAX_TOKENS", DEFAULTS.llm_max_tokens),
        help="longest reply in tokens [VOICEPEER_LLM_MAX_TOKENS] (%(default)s)",
    )
    add(
        "--llm-timeout",
        type=float,
        default=_env("LLM_TIMEOUT", DEFAULTS.llm_timeout_s),
        help="seconds to wait for each token before giving up [VOICEPEER_LLM_TIMEOUT] (%(default)s)",
    )
    add(
        "--system-prompt",
        default=_env("SYSTEM_PROMPT", DEFAULTS.system_prompt),
        help="the assistant's instructions [VOICEPEER_SYSTEM_PROMPT]",
    )
    add(
        "--tts-voice",
        default=_env("TTS_VOICE", DEFAULTS.tts_voice),
        help="path of a Piper .onnx voice; default: bundled en_US-joe-medium [VOICEPEER_TTS_VOICE]",
    )
    add(
        "--aec",
        choices=["aec3", "speex", "off"],
        default=_env("AEC", DEFAULTS.aec),
        help="server-side echo canceller fed with the audio the peer sent [VOICEPEER_AEC] (%(default)s)",
    )
    add(
        "--noise-suppression",
        type=int,
        choices=range(5),
        default=_env("NOISE_SUPPRESSION", DEFAULTS.noise_suppression),
        help="WebRTC noise suppression level, 0 = off [VOICEPEER_NOISE_SUPPRESSION] (%(default)s)",
    )
    add(
        "--auto-gain",
        type=int,
        default=_env("AUTO_GAIN", DEFAULTS.auto_gain_dbfs),
        help="WebRTC gain control target, dBFS below full scale, 0 = off [VOICEPEER_AUTO_GAIN] (%(default)s)",
    )
    add(
        "--end-silence-ms",
        type=int,
        default=_env("END_SILENCE_MS", t.end_silence_ms),
        help="silence that ends a user turn [VOICEPEER_END_SILENCE_MS] (%(default)s)",
    )
    add(
        "--vad-threshold",
        type=float,
        default=_env("VAD_THRESHOLD", t.threshold),
        help="Silero speech probability that counts as speech [VOICEPEER_VAD_THRESHOLD] (%(default)s)",
    )
    add(
        "--ice-server",
        action="append",
        default=None,
        help="STUN/TURN URL, repeatable; none by default [VOICEPEER_ICE_SERVERS, comma-separated]",
    )
    add(
        "--max-sessions",
        type=int,
        default=_env("MAX_SESSIONS", DEFAULTS.max_sessions),
        help="concurrent calls accepted [VOICEPEER_MAX_SESSIONS] (%(default)s)",
    )
    add(
        "--media-timeout",
        type=float,
        default=_env("MEDIA_TIMEOUT", DEFAULTS.media_timeout_s),
        help="close a call whose microphone sends nothing for this many seconds [VOICEPEER_MEDIA_TIMEOUT] "
        "(%(default)s)",
    )
    add(
        "--connect-timeout",
        type=float,
        default=_env("CONNECT_TIMEOUT", DEFAULTS.connect_timeout_s),
        help="close a session whose peer connection is not up this many seconds after the answer "
        "[VOICEPEER_CONNECT_TIMEOUT] (%(default)s)",
    )
    add(
        "--record-turns",
        default=_env("RECORD_TURNS", None),
        metavar="DIR",
        help="debugging: save each user turn as the ASR heard it (16 kHz WAV) [VOICEPEER_RECORD_TURNS]",
    )
    add("--log-level", default=_env("LOG_LEVEL", "info"), help="debug, info, warning [VOICEPEER_LOG_LEVEL]")


def config_from_args(args: argparse.Namespace) -> Config:
    ice = args.ice_server
    if ice is None:
        ice = [u for u in str(_env("ICE_SERVERS", "")).split(",") if u.strip()]
    turn = dataclasses.replace(
        TurnParams(), end_silence_ms=int(args.end_silence_ms), threshold=float(args.vad_threshold)
    )
    return Config(
        host=args.host,
        port=int(args.port),
        asr_model=args.asr_model,
        asr_threads=int(args.asr_threads),
        llm_model=args.llm_model or None,
        llm_max_tokens=int(args.llm_max_tokens),
        llm_timeout_s=float(args.llm_timeout),
        system_prompt=args.system_prompt,
        tts_voice=args.tts_voice or None,
        aec=str(args.aec),
        noise_suppression=int(args.noise_suppression),
        auto_gain_dbfs=int(args.auto_gain),
        turn=turn,
        ice_servers=tuple(ice),
        max_sessions=int(args.max_sessions),
        media_timeout_s=float(args.media_timeout),
        connect_timeout_s=float(args.connect_timeout),
        record_turns_dir=args.record_turns or None,
    )


def _check(config: Config) -> int:
    from peer.services import load_services

    try:
        services = load_services(config)
    except models.ModelNotFound as exc:
        print(f"voicepeer: {exc}", file=sys.stderr)
        return 1
    for name in ("asr", "llm", "tts"):
        print(f"{name}: {getattr(services, name).path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=str(args.log_level).upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aioice").setLevel(logging.WARNING)
    config = config_from_args(args)
    if args.command == "check":
        return _check(config)

    from aiohttp import web

    from .app import create_app

    print(f"voicepeer: loading models, then serving http://{config.host}:{config.port}/", flush=True)
    web.run_app(create_app(config), host=config.host, port=config.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
