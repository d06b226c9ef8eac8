"""Run-time configuration, shared by the CLI, the server and the tests."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .audio.vad import TurnParams
from .backends.llm import DEFAULT_SYSTEM_PROMPT
from .call.turntaking import TurnPolicy

TALKING_CALLS_PER_CORE = 1.0
"""Calls that can talk at once per core while the first reply frame stays within 1.5x of one call's.
``bench/capacity.py`` on 2 cores (server first frame p50 after the end of speech): 1 call 457 ms,
2 calls 537 ms, 3 calls 1220 ms, 4 calls 1454 ms (the LLM and TTS take turns on the cores), so 2."""


def default_max_sessions() -> int:
    """``--max-sessions`` unless given: the measured capacity of this machine's cores."""
    return max(1, round(TALKING_CALLS_PER_CORE * (os.cpu_count() or 1)))


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    asr_model: str = "tiny.en"
    """``tiny.en``, ``base`` or a local faster-whisper model directory."""
    asr_threads: int = 0
    """CTranslate2 threads; 0 lets it choose (one per core)."""
    llm_threads: int = 0
    """llama.cpp threads for the embedded LLM; 0: one per core."""
    tts_threads: int = 0
    """onnxruntime threads for Piper; 0: onnxruntime's default (one per physical core)."""
    llm_model: str | None = None
    """Embedded: path of a GGUF file (None for the bundled SmolLM2-135M-Instruct). With ``llm_url``: the
    model name the server expects."""
    llm_url: str | None = None
    """Base URL of an OpenAI-compatible server (``http://127.0.0.1:11434/v1`` for Ollama); None runs the
    embedded model."""
    llm_api_key: str | None = None
    llm_max_tokens: int = 96
    llm_max_sentences: int | None = 2
    """A reply stops after this many sentences (None: no cap): spoken replies are brief by default. A
    system prompt that wants long answers (a storyteller) needs it raised or off."""
    llm_timeout_s: float = 20.0
    """No first token within this time counts as a dead backend: the user gets an error and an apology."""
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    tts_voice: str | None = None
    """Path of a Piper .onnx voice; None for the bundled en_US-joe-medium."""
    aec: str = "aec3"
    """Server-side echo canceller for the turn detector: ``aec3`` (WebRTC), ``speex`` or ``off``; see
    bench/frontend.py."""
    asr_aec: str = "speex"
    """The canceller whose output the ASR hears once an echo has been seen (``same`` for ``aec``'s): the
    words spoken over the bot's voice survive Speex's linear filter, not AEC3's suppressor
    (``voicepeer.audio.frontend.FrontEnd``)."""
    noise_suppression: int = 1
    """WebRTC noise suppression level, 0 (off) to 4. Level 1: on six espeak questions in white noise,
    stronger levels helped whisper only in heavy noise and garbled some words after AEC3 at -40 dBFS."""
    auto_gain_dbfs: int = 0
    """WebRTC automatic gain target in dBFS below full scale (1-31); 0 leaves the level alone."""
    turn: TurnParams = field(default_factory=TurnParams)
    """How the microphone's speech is cut into turns (the detector)."""
    policy: TurnPolicy = field(default_factory=TurnPolicy)
    """What the conversation makes of them: end of turn, holding, barge-in."""
    end_of_turn_model: str | None = "smart-turn"
    """``smart-turn`` (Smart Turn v3.2 from the installed pipecat-ai wheel), the path of such an ONNX
    file, or None to end turns on silence and the last words alone."""
    ice_servers: tuple[str, ...] = ()
    """STUN/TURN URLs. Empty by default: aiortc would otherwise try Google's public STUN server."""
    turn_urls: tuple[str, ...] = ()
    """TURN server URLs (``turn:host:3478?transport=udp``, ``turns:...``) handed to clients with a fresh
    credential per call (``voicepeer.transport.ice``); needs ``turn_secret``."""
    turn_secret: str | None = None
    """The secret shared with coturn (``static-auth-secret``)."""
    turn_secret_file: str | None = None
    """Or a file holding it, read for every credential (a secret coturn made at its first start)."""
    turn_ttl_s: float = 86_400.0
    """How long a TURN credential stays valid. coturn checks it on every refresh of an allocation,
    so it must outlast the longest call."""
    max_sessions: int = field(default_factory=default_max_sessions)
    max_call_s: float = 3600.0
    """A call is ended after this long, whatever it is doing: one client cannot hold a slot forever."""
    route_prefix: str = ""
    """Put before the URLs of a call that the answer hands out (``/r/peer1`` -> ``/r/peer1/sessions/...``):
    behind a front door with several replicas, it routes every request about a call to the replica
    holding it, and strips the prefix. Empty when the server is reached directly."""
    drain_s: float = 30.0
    """On SIGTERM the server stops taking calls and lets live ones end for at most this long before it
    closes them and exits (a rolling restart, ``docker compose down``, a Kubernetes pod deletion)."""
    auth_token: str | None = None
    """The shared secret every signaling route needs as ``Authorization: Bearer``; None: no auth (only
    safe on loopback). Per-call tokens are minted from it (``voicepeer.transport.auth``)."""
    allow_origins: tuple[str, ...] = ()
    """Browser origins besides the server's own that may use the signaling routes (``null`` only if
    named)."""
    metrics_public: bool = False
    """``/metrics`` without the token (for a scraper on a private network)."""
    offers_per_minute: int = 30
    """Offers (``/offer`` and ``/whip``) one client address may make per minute; 0: no limit."""
    messages_per_second: int = 20
    """Control messages one call may send per second (data channel and HTTP together), with bursts of
    twice that; the excess is dropped."""
    media_timeout_s: float = 10.0
    """A call whose microphone track delivers nothing for this long is closed: browsers send audio
    continuously (silence included), so this is a client that vanished without hanging up. Without it
    the session would wait for ICE consent to expire, about 30 s."""
    connect_timeout_s: float = 20.0
    """A session whose peer connection is not up this long after the answer is closed."""
    record_audio_dir: str | None = None
    """Debugging: write each call's microphone and the bot's reference, as the front-end got them, to
    this directory as a 16 kHz stereo WAV (``voicepeer.audio.recorder``)."""
    record_turns_dir: str | None = None
    """Debugging: write every user turn, as the ASR heard it, to this directory as 16 kHz WAV."""
