"""Command line: ``voicepeer serve`` (the default), ``voicepeer check`` and ``voicepeer token``.

Every flag has an environment variable (shown in --help), so the same settings work from a shell, a
Makefile or docker-compose.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Sequence

from .audio.vad import TurnParams
from .call.turntaking import TurnPolicy
from .config import Config
from .runtime import models

DEFAULTS = Config()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicepeer", description="A WebRTC voice agent peer (aiortc).")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="start the server (default)")
    check = sub.add_parser("check", help="load every model once, print where it came from, and exit")
    token = sub.add_parser("token", help="print a per-call token minted from --auth-token (for a backend)")
    token.add_argument("--ttl", type=float, default=300, help="seconds the token is valid (%(default)s)")
    _add_options(parser)
    for sub_parser in (serve, check, token):
        # Accepted after the subcommand too; SUPPRESS keeps a subcommand's defaults from overwriting
        # what was given before it (`voicepeer --port 9000 serve`).
        _add_options(sub_parser, argument_default=argparse.SUPPRESS)
    return parser


_T = TurnParams()
_P = TurnPolicy()


def _flag(text: str) -> bool:
    """A boolean from a flag or an environment variable: 1/true/yes/on or 0/false/no/off."""
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _in_range(
    kind: type, low: float, high: float | None = None, above: bool = False
) -> Callable[[str], object]:
    """A number converter that refuses a value out of range as a usage error (exit 2), before any model
    loads: a negative thread count or timeout is a typo that would otherwise fail deep in a runtime or
    quietly disable a limit, and an infinite TTL would fail only when a credential is minted."""

    def convert(text: str) -> object:
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if (
            not math.isfinite(value)
            or (value <= low if above else value < low)
            or (high is not None and value > high)
        ):
            bound = f"more than {low}" if above else f"at least {low}"
            raise argparse.ArgumentTypeError(
                f"expected {bound}{f' and at most {high}' if high is not None else ''}, got {text!r}"
            )
        return value

    return convert


_COUNT = _in_range(int, 0)
_POSITIVE_INT = _in_range(int, 1)
_SECONDS = _in_range(float, 0, above=True)

# flag, environment variable (after VOICEPEER_), type, default, help, extra argparse keywords
OPTIONS: list[tuple[str, str, Callable[[str], object], object, str, dict[str, object]]] = [
    ("--host", "HOST", str, DEFAULTS.host, "listen address", {}),
    ("--port", "PORT", _in_range(int, 0, 65535), DEFAULTS.port, "listen port", {}),
    (
        "--asr-model",
        "ASR_MODEL",
        str,
        DEFAULTS.asr_model,
        "tiny.en, base, or a faster-whisper model directory",
        {},
    ),
    (
        "--asr-threads",
        "ASR_THREADS",
        _COUNT,
        DEFAULTS.asr_threads,
        "CTranslate2 threads, 0 = one per core",
        {},
    ),
    (
        "--llm-threads",
        "LLM_THREADS",
        _COUNT,
        DEFAULTS.llm_threads,
        "embedded LLM threads, 0 = one per core",
        {},
    ),
    (
        "--tts-threads",
        "TTS_THREADS",
        _COUNT,
        DEFAULTS.tts_threads,
        "Piper threads, 0 = onnxruntime default",
        {},
    ),
    (
        "--llm-model",
        "LLM_MODEL",
        str,
        DEFAULTS.llm_model,
        "path of a GGUF model (none: bundled SmolLM2-135M); with --llm-url, the server's model name",
        {},
    ),
    (
        "--llm-url",
        "LLM_URL",
        str,
        DEFAULTS.llm_url,
        "base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:11434/v1; none: embedded model",
        {},
    ),
    (
        "--llm-api-key",
        "LLM_API_KEY",
        str,
        DEFAULTS.llm_api_key,
        "bearer token for --llm-url",
        {"secret": True},
    ),
    (
        "--llm-max-tokens",
        "LLM_MAX_TOKENS",
        _POSITIVE_INT,
        DEFAULTS.llm_max_tokens,
        "longest reply in tokens",
        {},
    ),
    (
        "--llm-max-sentences",
        "LLM_MAX_SENTENCES",
        _COUNT,
        DEFAULTS.llm_max_sentences or 0,
        "a reply stops after this many sentences, 0 = no cap",
        {},
    ),
    ("--llm-timeout", "LLM_TIMEOUT", _SECONDS, DEFAULTS.llm_timeout_s, "seconds to wait for each token", {}),
    ("--system-prompt", "SYSTEM_PROMPT", str, DEFAULTS.system_prompt, "the assistant's instructions", {}),
    (
        "--tts-voice",
        "TTS_VOICE",
        str,
        DEFAULTS.tts_voice,
        "path of a Piper .onnx voice; none: bundled joe-medium",
        {},
    ),
    ("--aec", "AEC", str, DEFAULTS.aec, "server-side echo canceller", {"choices": ["aec3", "speex", "off"]}),
    (
        "--asr-aec",
        "ASR_AEC",
        str,
        DEFAULTS.asr_aec,
        "echo canceller whose output the ASR hears when the bot's voice comes back ('same': --aec's)",
        {"choices": ["speex", "aec3", "same"]},
    ),
    (
        "--noise-suppression",
        "NOISE_SUPPRESSION",
        int,
        DEFAULTS.noise_suppression,
        "WebRTC NS level, 0 = off",
        {"choices": range(5)},
    ),
    (
        "--auto-gain",
        "AUTO_GAIN",
        _in_range(int, 0, 31),
        DEFAULTS.auto_gain_dbfs,
        "WebRTC AGC target, dBFS below full scale, 0 = off",
        {},
    ),
    (
        "--end-silence-ms",
        "END_SILENCE_MS",
        _POSITIVE_INT,
        _T.end_silence_ms,
        "silence that ends a user turn",
        {},
    ),
    (
        "--hold-silence-ms",
        "HOLD_SILENCE_MS",
        _COUNT,
        _P.hold_silence_ms,
        "silence that ends a turn whose last phrase sounds unfinished ('... and', 'um')",
        {},
    ),
    (
        "--complete-silence-ms",
        "COMPLETE_SILENCE_MS",
        _COUNT,
        _P.complete_silence_ms,
        "silence that ends a turn the end-of-turn model judges complete",
        {},
    ),
    (
        "--end-of-turn",
        "END_OF_TURN",
        str,
        DEFAULTS.end_of_turn_model or "off",
        "end-of-turn model: smart-turn (Smart Turn v3.2, from the pipecat-ai wheel), the path of such an "
        "ONNX file, or off (silence and the last words alone)",
        {},
    ),
    (
        "--partial-interval-ms",
        "PARTIAL_INTERVAL_MS",
        _COUNT,
        _T.partial_interval_ms,
        "speech between two partial transcripts, 0 = none",
        {},
    ),
    (
        "--interrupt-after-ms",
        "INTERRUPT_AFTER_MS",
        _COUNT,
        _P.interrupt_after_ms,
        "barge-in: speech during a reply that lasts this long cuts the bot off",
        {},
    ),
    (
        "--vad-threshold",
        "VAD_THRESHOLD",
        _in_range(float, 0, 1, above=True),
        _T.threshold,
        "Silero probability that counts as speech",
        {},
    ),
    (
        "--max-sessions",
        "MAX_SESSIONS",
        _POSITIVE_INT,
        DEFAULTS.max_sessions,
        "concurrent calls accepted (default: the measured capacity of this machine's cores)",
        {},
    ),
    ("--max-call", "MAX_CALL", _SECONDS, DEFAULTS.max_call_s, "seconds after which a call is ended", {}),
    (
        "--route-prefix",
        "ROUTE_PREFIX",
        str,
        DEFAULTS.route_prefix,
        "path put before a call's URLs, for a front door routing calls to replicas (e.g. /r/peer1)",
        {},
    ),
    (
        "--drain",
        "DRAIN_S",
        _in_range(float, 0),
        DEFAULTS.drain_s,
        "on SIGTERM, seconds that live calls may go on before the server exits (0: close them at once)",
        {},
    ),
    (
        "--auth-token",
        "AUTH_TOKEN",
        str,
        DEFAULTS.auth_token,
        "shared secret: every signaling route needs 'Authorization: Bearer' with it or a per-call token",
        {"secret": True},
    ),
    (
        "--turn-secret",
        "TURN_SECRET",
        str,
        DEFAULTS.turn_secret,
        "coturn's static-auth-secret: clients get TURN credentials for the --turn-url servers minted from it",
        {"secret": True},
    ),
    ("--turn-ttl", "TURN_TTL_S", _SECONDS, DEFAULTS.turn_ttl_s, "seconds a TURN credential stays valid", {}),
    (
        "--metrics-public",
        "METRICS_PUBLIC",
        _flag,
        DEFAULTS.metrics_public,
        "serve /metrics without the auth token",
        {"nargs": "?", "const": True},
    ),
    (
        "--offers-per-minute",
        "OFFERS_PER_MINUTE",
        _COUNT,
        DEFAULTS.offers_per_minute,
        "offers one client address may make per minute, 0 = no limit",
        {},
    ),
    (
        "--messages-per-second",
        "MESSAGES_PER_SECOND",
        _COUNT,
        DEFAULTS.messages_per_second,
        "control messages one call may send per second (bursts of twice that)",
        {},
    ),
    (
        "--media-timeout",
        "MEDIA_TIMEOUT",
        _SECONDS,
        DEFAULTS.media_timeout_s,
        "close a call whose microphone sends nothing for this many seconds",
        {},
    ),
    (
        "--connect-timeout",
        "CONNECT_TIMEOUT",
        _SECONDS,
        DEFAULTS.connect_timeout_s,
        "close a session not connected this many seconds after the answer",
        {},
    ),
    (
        "--record-audio",
        "RECORD_AUDIO",
        str,
        DEFAULTS.record_audio_dir,
        "debugging: save each call's microphone and the bot's reference (16 kHz stereo WAV)",
        {},
    ),
    (
        "--record-turns",
        "RECORD_TURNS",
        str,
        DEFAULTS.record_turns_dir,
        "debugging: save each user turn as the ASR heard it (16 kHz WAV)",
        {"metavar": "DIR"},
    ),
    ("--log-level", "LOG_LEVEL", str, "info", "debug, info, warning", {}),
]


def _add_options(p: argparse.ArgumentParser, argument_default: object = None) -> None:
    for flag, env, kind, default, text, extra in OPTIONS:
        value = os.environ.get(f"VOICEPEER_{env}", default)
        extra = dict(extra)
        shown = ("set" if value else "none") if extra.pop("secret", False) else value  # never print it
        help_text = f"{text} [VOICEPEER_{env}] ({shown})"
        # SUPPRESS on the subcommands keeps their defaults from overwriting what came before them.
        p.add_argument(flag, type=kind, default=argument_default or value, help=help_text, **extra)
    p.add_argument(
        "--ice-server",
        action="append",
        default=argument_default,
        help="STUN/TURN URL, repeatable; none by default [VOICEPEER_ICE_SERVERS, comma-separated]",
    )
    p.add_argument(
        "--turn-url",
        action="append",
        default=argument_default,
        help="TURN URL handed to clients with a fresh credential (needs --turn-secret), repeatable "
        "[VOICEPEER_TURN_URLS, comma-separated]",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        default=argument_default,
        help="a browser origin besides the server's own that may signal, repeatable; 'null' only if named "
        "[VOICEPEER_ALLOW_ORIGINS, comma-separated]",
    )


def _listed(value: list[str] | None, env: str) -> tuple[str, ...]:
    """A repeatable flag, or else its comma-separated environment variable."""
    if value is None:
        value = os.environ.get(env, "").split(",")
    return tuple(v.strip() for v in value if v.strip())


def config_from_args(args: argparse.Namespace) -> Config:
    turn = dataclasses.replace(
        TurnParams(),
        end_silence_ms=int(args.end_silence_ms),
        partial_interval_ms=int(args.partial_interval_ms),
        threshold=float(args.vad_threshold),
    )
    policy = dataclasses.replace(
        TurnPolicy(),
        hold_silence_ms=int(args.hold_silence_ms),
        complete_silence_ms=int(args.complete_silence_ms),
        interrupt_after_ms=int(args.interrupt_after_ms),
    )
    end_of_turn = str(args.end_of_turn).strip()
    return Config(
        host=args.host,
        port=int(args.port),
        asr_model=args.asr_model,
        asr_threads=int(args.asr_threads),
        llm_threads=int(args.llm_threads),
        tts_threads=int(args.tts_threads),
        llm_model=args.llm_model or None,
        llm_url=args.llm_url or None,
        llm_api_key=args.llm_api_key or None,
        llm_max_tokens=int(args.llm_max_tokens),
        llm_max_sentences=int(args.llm_max_sentences) or None,
        llm_timeout_s=float(args.llm_timeout),
        system_prompt=args.system_prompt,
        tts_voice=args.tts_voice or None,
        aec=str(args.aec),
        asr_aec=str(args.asr_aec),
        noise_suppression=int(args.noise_suppression),
        auto_gain_dbfs=int(args.auto_gain),
        turn=turn,
        policy=policy,
        end_of_turn_model=None if end_of_turn.lower() in ("", "off", "none") else end_of_turn,
        ice_servers=_listed(args.ice_server, "VOICEPEER_ICE_SERVERS"),
        allow_origins=_listed(args.allow_origin, "VOICEPEER_ALLOW_ORIGINS"),
        auth_token=args.auth_token or None,
        turn_urls=_listed(args.turn_url, "VOICEPEER_TURN_URLS"),
        turn_secret=args.turn_secret or None,
        turn_secret_file=os.environ.get("VOICEPEER_TURN_SECRET_FILE") or None,
        turn_ttl_s=float(args.turn_ttl),
        metrics_public=_flag(args.metrics_public),
        offers_per_minute=int(args.offers_per_minute),
        messages_per_second=int(args.messages_per_second),
        max_call_s=float(args.max_call),
        drain_s=float(args.drain),
        route_prefix=str(args.route_prefix).rstrip("/"),
        max_sessions=int(args.max_sessions),
        media_timeout_s=float(args.media_timeout),
        connect_timeout_s=float(args.connect_timeout),
        record_turns_dir=args.record_turns or None,
        record_audio_dir=args.record_audio or None,
    )


def _check(config: Config) -> int:
    from .call.services import load_services

    try:
        services = load_services(config)
    except models.ModelNotFound as exc:
        print(f"voicepeer: {exc}", file=sys.stderr)
        return 1
    for name in ("asr", "llm", "tts", "end_of_turn"):
        model = getattr(services, name)
        print(f"{name}: {model.path if model is not None else 'off'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=str(args.log_level).upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aioice").setLevel(logging.WARNING)
    config = config_from_args(args)
    prefix = config.route_prefix
    if prefix and (not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", prefix) or {".", ".."} & set(prefix.split("/"))):
        print(
            f"voicepeer: --route-prefix must be a path like /r/peer1, not {config.route_prefix!r}",
            file=sys.stderr,
        )
        return 2
    bad_turn = [u for u in config.turn_urls if not u.startswith(("turn:", "turns:"))]
    if bad_turn or (config.turn_urls and not (config.turn_secret or config.turn_secret_file)):
        why = f"not a TURN URL: {bad_turn[0]}" if bad_turn else "--turn-url needs --turn-secret"
        print(f"voicepeer: {why}", file=sys.stderr)
        return 2
    if args.command == "check":
        return _check(config)
    if args.command == "token":
        if not config.auth_token:
            print("voicepeer: set --auth-token or VOICEPEER_AUTH_TOKEN to mint call tokens", file=sys.stderr)
            return 2
        from .auth import mint_call_token

        print(mint_call_token(config.auth_token, args.ttl))
        return 0

    from .app import create_app
    from .drain import serve

    print(f"voicepeer: loading models, then serving http://{config.host}:{config.port}/", flush=True)
    return asyncio.run(serve(create_app(config), config.host, config.port, config.drain_s))


if __name__ == "__main__":
    sys.exit(main())
