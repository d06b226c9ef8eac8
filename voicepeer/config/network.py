"""The network side of the configuration: listening, calls' limits, who may signal, ICE and TURN.

Each field is an option declared once (``option(...)``): its default is the server's, and the CLI, the
environment, the ``config`` control command and docs/configuration.md are all derived from it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ..runtime.priorities import PRIORITIES
from .option import option

TALKING_CALLS_PER_CORE = 1.0
"""Calls that can talk at once per core while the first reply frame stays within 1.5x of one call's.
``bench/capacity.py`` on 2 cores (server first frame p50 after the end of speech): 1 call 457 ms,
2 calls 537 ms, 3 calls 1220 ms, 4 calls 1454 ms (the LLM and TTS take turns on the cores), so 2."""


def default_max_sessions() -> int:
    """``--max-sessions`` unless given: the measured capacity of this machine's cores."""
    return max(1, round(TALKING_CALLS_PER_CORE * (os.cpu_count() or 1)))


def route_prefix(text: str) -> str:
    """A plain absolute path (``/r/peer1``), without a trailing slash: it is put before URLs the server
    hands out, so anything else (``..``, ``//host``, a blank) would send clients elsewhere."""
    prefix = text.strip().rstrip("/")
    if prefix and (not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", prefix) or {".", ".."} & set(prefix.split("/"))):
        raise ValueError(f"must be a path like /r/peer1, not {text!r}")
    return prefix


@dataclass(frozen=True)
class ServerConfig:
    """Where the server listens, how many calls it holds and for how long."""

    host: str = field(default="127.0.0.1", metadata=option("--host", "listen address"))
    port: int = field(default=8080, metadata=option("--port", "listen port", low=0, high=65535))
    max_sessions: int = field(
        default_factory=default_max_sessions,
        metadata=option(
            "--max-sessions",
            "concurrent calls accepted; more get 503 with Retry-After",
            low=1,
            shown="1 per core (measured: `TALKING_CALLS_PER_CORE`)",
        ),
    )
    inference_budget_ms: float = field(
        default=1000.0,
        metadata=option(
            "--inference-budget",
            "refuse a new call (503 overloaded) when recent turns say one more would take the in-process "
            "inference to a turn's first audio past this many ms (0: admit by --max-sessions alone)",
            low=0,
        ),
    )
    """Measured per turn (``voicepeer.runtime.load``): ~500 ms on two idle cores, so the default keeps a
    turn within about twice that and admits two or three talking calls there, fewer when something
    else takes the cores (``bench.overload``: with it, three of six callers admitted at 2.7 s
    voice-to-voice p50; without, all six at 16 s)."""
    media_priority: str = field(
        default="realtime",
        metadata=option(
            "--media-priority",
            "how the event loop and its helpers (the front-end, aiortc's encoder and decoders) ask the "
            "kernel to run: realtime (SCHED_RR, else nice -5 where not permitted), nice (-5) or normal",
            choices=PRIORITIES,
        ),
    )
    """Both need root or CAP_SYS_NICE (``realtime`` also an ``RLIMIT_RTPRIO``); without it the media
    path runs like every other thread. ``voicepeer.runtime.priorities`` says why."""
    max_call_s: float = field(
        default=3600.0,
        metadata=option(
            "--max-call", "seconds after which a call is ended (call_too_long)", low=0, above=True
        ),
    )
    """Whatever the call is doing: one client cannot hold a slot forever."""
    route_prefix: str = field(
        default="",
        metadata=option(
            "--route-prefix",
            "path put before a call's URLs, for a front door routing calls to replicas (e.g. /r/peer1)",
            convert=route_prefix,
        ),
    )
    """Behind a front door with several replicas it routes every request about a call to the replica
    holding it, and strips the prefix. Empty when the server is reached directly."""
    drain_s: float = field(
        default=30.0,
        metadata=option(
            "--drain",
            "on SIGTERM, seconds that live calls may go on before the server exits (0: close them at once)",
            env="DRAIN_S",
            low=0,
        ),
    )
    """A rolling restart, ``docker compose down`` or a pod deletion lets live calls end on their own."""
    probe_interval_s: float = field(
        default=5.0,
        metadata=option(
            "--probe-interval",
            "seconds between health probes of the ASR, TTS and LLM backends (a failed one comes back "
            "within this)",
            low=0,
            above=True,
        ),
    )
    media_timeout_s: float = field(
        default=10.0,
        metadata=option(
            "--media-timeout",
            "close a call whose microphone sends nothing for this many seconds",
            low=0,
            above=True,
        ),
    )
    """Browsers send audio continuously (silence included), so this is a client that vanished without
    hanging up. Without it the session would wait for ICE consent to expire, about 30 s."""
    connect_timeout_s: float = field(
        default=20.0,
        metadata=option(
            "--connect-timeout",
            "close a session not connected this many seconds after the answer",
            low=0,
            above=True,
        ),
    )
    record_audio_dir: str | None = field(
        default=None,
        metadata=option(
            "--record-audio",
            "debugging: save each call's microphone and the bot's reference as the front-end got them "
            "(16 kHz stereo WAV) and the client's playout reports, to replay a room offline "
            "(python -m bench.replay DIR)",
            metavar="DIR",
        ),
    )
    record_turns_dir: str | None = field(
        default=None,
        metadata=option(
            "--record-turns", "debugging: save each user turn as the ASR heard it (16 kHz WAV)", metavar="DIR"
        ),
    )
    log_level: str = field(
        default="info",
        metadata=option(
            "--log-level", "how much the server logs", choices=("debug", "info", "warning", "error")
        ),
    )


@dataclass(frozen=True)
class SecurityConfig:
    """Who may signal, and how fast: see docs/security.md."""

    auth_token: str | None = field(
        default=None,
        metadata=option(
            "--auth-token",
            "shared secret: every signaling route needs 'Authorization: Bearer' with it or a per-call token",
            secret=True,
        ),
    )
    """None means no auth, only safe on loopback. Per-call tokens are minted from it
    (``voicepeer.transport.auth``)."""
    allow_origins: tuple[str, ...] = field(
        default=(),
        metadata=option(
            "--allow-origin",
            "a browser origin besides the server's own that may signal; 'null' only if named",
            env="ALLOW_ORIGINS",
        ),
    )
    metrics_public: bool = field(
        default=False,
        metadata=option("--metrics-public", "serve /metrics without the auth token (a private scraper)"),
    )
    offers_per_minute: int = field(
        default=30,
        metadata=option(
            "--offers-per-minute",
            "offers one client address may make per minute (429 past it), 0 = no limit",
            low=0,
        ),
    )
    messages_per_second: int = field(
        default=20,
        metadata=option(
            "--messages-per-second",
            "control messages one call may send per second (bursts of twice that; the excess is dropped)",
            low=0,
        ),
    )


@dataclass(frozen=True)
class IceConfig:
    """The STUN and TURN servers handed to clients."""

    servers: tuple[str, ...] = field(
        default=(),
        metadata=option("--ice-server", "STUN/TURN URL; none means host candidates only", env="ICE_SERVERS"),
    )
    """Empty by default: aiortc would otherwise try Google's public STUN server."""
    turn_urls: tuple[str, ...] = field(
        default=(),
        metadata=option(
            "--turn-url",
            "TURN URL (turn:host:3478?transport=udp) handed to clients with a credential minted per call; "
            "needs --turn-secret",
            env="TURN_URLS",
        ),
    )
    turn_secret: str | None = field(
        default=None,
        metadata=option("--turn-secret", "coturn's static-auth-secret (shared-secret mode)", secret=True),
    )
    turn_secret_file: str | None = field(
        default=None,
        metadata=option(
            "--turn-secret-file", "or a file holding it, read for every credential", metavar="FILE"
        ),
    )
    """For a secret coturn made at its first start, which may appear after the server's."""
    turn_ttl_s: float = field(
        default=86_400.0,
        metadata=option(
            "--turn-ttl", "seconds a TURN credential stays valid", env="TURN_TTL_S", low=0, above=True
        ),
    )
    """coturn checks it on every refresh of an allocation, so it must outlast the longest call."""
