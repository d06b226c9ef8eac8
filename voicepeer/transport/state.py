"""What every route shares: the server's state, JSON errors, and opening a session from an offer.

Both ways in (a JSON ``/offer`` and a WHIP ``POST /whip``) end in ``open_session``, so admission (models
ready, capacity) and the classification of a refused offer are decided in one place.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from aiortc import RTCSessionDescription
from aiortc.exceptions import InvalidAccessError, InvalidStateError
from aiortc.sdp import SessionDescription

from ..call.control import MAX_SAY_CHARS, ControlError, parse_context
from ..call.logic import Logic
from ..call.services import Services
from ..config import Config
from ..runtime.health import LoopMonitor
from ..runtime.limits import KeyedBuckets
from ..runtime.stalls import CAUSES
from .auth import CallTokens, Capabilities, is_loopback, normalise_origin
from .metrics import Metrics
from .session import Session

log = logging.getLogger(__name__)


@dataclass
class ServerState:
    config: Config
    services: Services | None = None
    logic: Logic = field(default_factory=Logic)
    """The application's tools, hook and greeting, for every call."""
    load_error: str | None = None
    loading: asyncio.Task[None] | None = None
    draining: bool = False
    """SIGTERM came: no new calls, live ones may finish (``voicepeer.transport.drain``)."""
    sessions: dict[str, Session] = field(default_factory=dict)
    ended: OrderedDict[str, None] = field(default_factory=OrderedDict)
    """The last ``MAX_ENDED`` sessions that ended: a DELETE that comes after the client's own transport
    already hung up (whip-whep closes its peer connection first) is a success, not a 404."""
    started: float = field(default_factory=time.monotonic)
    counters: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            (
                "sessions_opened_total",
                "offers_rejected_total",
                "turns_total",
                "interruptions_total",
                "outbound_frames_total",
                "outbound_gaps_total",
                *(f"outbound_gaps_{cause}_total" for cause in CAUSES),
                "rate_limited_messages_total",
            ),
            0,
        )
    )
    loop_monitor: LoopMonitor = field(default_factory=LoopMonitor)
    capabilities: Capabilities = field(default_factory=Capabilities)
    call_tokens: CallTokens | None = None
    offer_limits: KeyedBuckets | None = None
    warnings: list[str] = field(default_factory=list)
    """Said loudly at start and in /healthz: a configuration that is unsafe to expose."""
    allowed_origins: frozenset[str] = frozenset()
    metrics: Metrics = field(default_factory=Metrics)
    owns_services: bool = False
    """The server loaded ``services`` itself (and closes them); given ones belong to the caller."""
    detach_services: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.metrics.attach(self)
        self.allowed_origins = frozenset(normalise_origin(o) for o in self.config.security.allow_origins)
        if not self.config.security.auth_token and not is_loopback(self.config.server.host):
            self.warnings.append(
                f"serving on {self.config.server.host} without --auth-token: anyone who can reach this port "
                "can start calls, and every call slot can be taken"
            )
        if self.config.security.auth_token:
            self.call_tokens = CallTokens(self.config.security.auth_token)
        if self.config.security.offers_per_minute > 0:
            per_minute = self.config.security.offers_per_minute
            self.offer_limits = KeyedBuckets(rate=per_minute / 60, burst=max(1, per_minute // 4))

    def count_rejection(self, code: str) -> None:
        self.counters["offers_rejected_total"] += 1
        self.metrics.rejections.labels(code=code).inc()


STATE = web.AppKey("state", ServerState)

MAX_ENDED = 1024


class OfferError(Exception):
    """An offer refused before or while a session was made for it; ``headers`` go on the answer."""

    def __init__(self, status: int, code: str, message: str, **headers: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(
    status: int, code: str, message: str, field: str | None = None, **headers: str
) -> web.Response:
    body = {"error": code, "message": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status, headers=headers or None)


def refused(exc: ControlError) -> web.Response:
    """A command the call refused, over HTTP (the control route, a WHIP PATCH): 429 with
    ``Retry-After`` when the call's message budget is spent, else 400 naming the field at fault. The data
    channel answers the same refusal with an ``error`` event of the same code."""
    if exc.code == "rate_limited":
        return error_response(429, exc.code, exc.message, **{"Retry-After": "1"})
    return error_response(400, exc.code, exc.message, exc.field)


def session_urls(state: ServerState, session_id: str) -> dict[str, str]:
    """A call's own URLs, handed to the client in the answer: its events stream, its control endpoint
    and itself (to hang up). Each carries the call's capability, so no client can build them from a
    session id, and a client that follows them needs nothing else."""
    cap = state.capabilities.of(session_id)
    base = state.config.server.route_prefix
    return {
        "events_url": f"{base}/sessions/{session_id}/events?cap={cap}",
        "control_url": f"{base}/sessions/{session_id}/control?cap={cap}",
        "session_url": f"{base}/sessions/{session_id}?cap={cap}",
    }


def audio_direction(sdp: str) -> str:
    """The direction of the offer's first audio m-line; OfferError for an SDP that does not parse, has
    no audio, or cannot make a secure connection. Checked before any WebRTC object exists, so bad input
    costs nothing to reject and never holds a call slot."""
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:
        raise OfferError(400, "invalid_sdp", f"the SDP does not parse: {str(exc)[:200]}") from None
    audio = [m for m in parsed.media if m.kind == "audio"]
    if not audio:
        raise OfferError(400, "no_audio", "the offer has no audio m-line: add a microphone track")
    for media in parsed.media:
        if media.kind not in ("audio", "video", "application"):
            raise OfferError(400, "invalid_sdp", f"an m-line of unknown kind {media.kind[:40]!r}")
        what = f"the {media.kind} m-line"
        if media.dtls is None or not media.dtls.fingerprints:
            raise OfferError(400, "insecure_offer", f"{what} has no a=fingerprint: DTLS could not be secured")
        if media.dtls.role is None:
            raise OfferError(400, "insecure_offer", f"{what} has no a=setup: no DTLS role")
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise OfferError(400, "invalid_sdp", f"{what} has no a=ice-ufrag and a=ice-pwd")
    mids = [m.rtp.muxId for m in parsed.media]
    if any(not mid for mid in mids) or len(set(mids)) != len(mids):
        raise OfferError(400, "invalid_sdp", "every m-line needs its own a=mid")
    for group in parsed.group:
        unknown = [str(mid) for mid in group.items if str(mid) not in mids]
        if unknown:
            raise OfferError(
                400, "invalid_sdp", f"a=group:{group.semantic} names no m-line {unknown[0][:40]!r}"
            )
    return audio[0].direction or "sendrecv"


def check_unprocessed_mid(sdp: str, mid: str) -> None:
    """``unprocessed_mid`` names a sending audio m-line of the offer other than the microphone's (the
    first); OfferError otherwise. The SDP has been through ``audio_direction``."""
    audio = [m for m in SessionDescription.parse(sdp).media if m.kind == "audio"]
    named = [m for m in audio[1:] if m.rtp.muxId == mid]
    if not named:
        raise OfferError(
            400, "bad_offer", f'"unprocessed_mid" names no audio m-line after the first: {mid[:40]!r}'
        )
    if (named[0].direction or "sendrecv") not in ("sendonly", "sendrecv"):
        raise OfferError(400, "bad_offer", f'the m-line "unprocessed_mid" names sends nothing: {mid[:40]!r}')


def refuse(state: ServerState, exc: OfferError) -> web.Response:
    """The answer to a refused offer, counted."""
    state.count_rejection(exc.code)
    return error_response(exc.status, exc.code, exc.message, **exc.headers)


def _claimed(claims: dict[str, object]) -> tuple[dict[str, str], str | None]:
    """A call token's claims, checked as a ``config`` command's would be: they come from the
    application's backend, and a bad one is its mistake, told as a 400."""
    try:
        context = parse_context(claims.get("context", {}), "context")
        greeting = claims.get("greeting")
        if greeting is not None and (not isinstance(greeting, str) or len(greeting) > MAX_SAY_CHARS):
            raise ControlError("bad_value", f'"greeting" is text of at most {MAX_SAY_CHARS} characters')
    except ControlError as exc:
        raise OfferError(400, "bad_claims", f"the call token's claims: {exc.message}") from None
    return {k: v for k, v in context.items() if v is not None}, greeting


async def open_session(
    state: ServerState,
    sdp: str,
    *,
    voice: bool,
    client_aec: bool = False,
    unprocessed_mid: str | None = None,
    claims: dict[str, object] | None = None,
) -> tuple[Session, RTCSessionDescription]:
    """Admits an offer and answers it; raises OfferError for anything refused (see ``refuse``).
    ``claims``: what the call token that opened it says the call starts with (its variables and
    greeting, ``voicepeer.transport.auth.mint_call_token``)."""
    context, greeting = _claimed(claims or {})
    if state.draining:
        raise OfferError(
            503,
            "draining",
            "this server is shutting down; retry and another one takes the call",
            **{"Retry-After": "1"},
        )
    if state.services is None:
        if state.load_error:
            raise OfferError(503, "models_failed", state.load_error)
        raise OfferError(503, "loading", "models are still loading; retry shortly", **{"Retry-After": "2"})
    if len(state.sessions) >= state.config.server.max_sessions:
        raise OfferError(
            503,
            "busy",
            f"the server holds its maximum of {state.config.server.max_sessions} sessions",
            **{"Retry-After": "10"},
        )
    overloaded = state.services.load.refusal(len(state.sessions), state.config.server.inference_budget_ms)
    if overloaded is not None:
        log.warning("refusing a call: %s", overloaded)
        raise OfferError(503, "overloaded", overloaded, **{"Retry-After": "15"})
    try:
        session = Session(
            state.services,
            state.config,
            on_closed=lambda s: forget(state, s),
            client_aec=client_aec,
            voice=voice,
            unprocessed_mid=unprocessed_mid,
            logic=state.logic,
            context=context,
            greeting=greeting,
        )
    except Exception as exc:
        log.exception("could not create a session")
        raise OfferError(500, "internal", f"the server could not create a session: {exc}") from None
    state.sessions[session.id] = session
    session.call.events.subscribe(state.metrics.on_event)
    try:
        answer = await session.accept(RTCSessionDescription(sdp=sdp, type="offer"))
    except asyncio.CancelledError:
        await session.close("refused")
        raise
    except (ValueError, InvalidAccessError, InvalidStateError) as exc:
        log.info("rejecting offer: %s", exc)
        await session.close("refused")
        raise OfferError(400, "invalid_sdp", f"the offer was refused: {exc}") from None
    except Exception as exc:
        log.exception("could not answer an offer")
        await session.close("refused")
        raise OfferError(500, "internal", f"the server could not answer the offer: {exc}") from None
    state.counters["sessions_opened_total"] += 1
    return session, answer


def session_counts(session: Session) -> dict[str, int]:
    """A session's share of the server's counters: added to them when it closes, and counted live
    while it runs."""
    output = session.output
    return {
        "turns_total": session.call.turns,
        "interruptions_total": session.call.interruptions,
        "outbound_frames_total": output.frames_sent if output is not None else 0,
        "outbound_gaps_total": output.gaps if output is not None else 0,
        **{
            f"outbound_gaps_{cause}_total": output.gap_causes[cause] if output is not None else 0
            for cause in CAUSES
        },
        "rate_limited_messages_total": session.call.rate_limited,
    }


def forget(state: ServerState, session: Session) -> None:
    if state.sessions.pop(session.id, None) is not None:
        for name, value in session_counts(session).items():
            state.counters[name] += value
        state.metrics.calls.labels(outcome=session.outcome or "hangup").inc()
        state.ended[session.id] = None
        while len(state.ended) > MAX_ENDED:
            state.ended.popitem(last=False)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, however many segments it arrives in (one ``content.read(n)`` returns only
    what has arrived so far); OfferError 413 past ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise OfferError(413, "too_large", f"the body is at most {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise OfferError(413, "too_large", f"the body is at most {limit} bytes")
    return b"".join(chunks)
