"""The aiohttp application: offer/answer, session teardown, health, metrics and the static pages."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiortc import RTCSessionDescription
from aiortc.exceptions import InvalidAccessError, InvalidStateError
from aiortc.sdp import SessionDescription

from peer.config import Config
from peer.health import LoopMonitor
from peer.services import Services, load_services
from peer.session import Session
from peer.vad import silero_session
from peer.workers import MEDIA_NICE, raise_priority, run_blocking

log = logging.getLogger(__name__)

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"
MAX_OFFER_BYTES = 64 * 1024


@dataclass
class ServerState:
    config: Config
    services: Services | None = None
    load_error: str | None = None
    loading: asyncio.Task[None] | None = None
    sessions: dict[str, Session] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    counters: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            (
                "sessions_total",
                "offers_rejected_total",
                "turns_total",
                "interruptions_total",
                "outbound_frames_total",
                "outbound_gaps_total",
            ),
            0,
        )
    )
    loop_monitor: LoopMonitor = field(default_factory=LoopMonitor)


STATE = web.AppKey("state", ServerState)


class OfferError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status, headers=headers or None)


async def _read_offer(request: web.Request) -> tuple[RTCSessionDescription, bool]:
    """Validates the offer before any WebRTC object exists, so bad input costs nothing to reject."""
    if request.content_length is not None and request.content_length > MAX_OFFER_BYTES:
        raise OfferError(413, "too_large", f"an offer is at most {MAX_OFFER_BYTES} bytes")
    raw = await request.content.read(MAX_OFFER_BYTES + 1)
    if len(raw) > MAX_OFFER_BYTES:
        raise OfferError(413, "too_large", f"an offer is at most {MAX_OFFER_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OfferError(400, "bad_json", f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise OfferError(400, "bad_offer", 'expected {"sdp": "...", "type": "offer"}')
    if body.get("type") != "offer":
        raise OfferError(400, "bad_offer", f'"type" must be "offer", got {body.get("type")!r}')
    sdp = body.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        raise OfferError(400, "bad_offer", '"sdp" must be a non-empty string')
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:
        raise OfferError(400, "invalid_sdp", f"the SDP does not parse: {exc}") from None
    audio = [m for m in parsed.media if m.kind == "audio"]
    if not audio:
        raise OfferError(400, "no_audio", "the offer has no audio m-line: add a microphone track")
    if (audio[0].direction or "sendrecv") != "sendrecv":
        raise OfferError(
            400,
            "bad_direction",
            f"the audio m-line must be sendrecv (it is {audio[0].direction}): "
            "the peer both hears the microphone and speaks back",
        )
    client_aec = body.get("echo_cancellation", False)
    if not isinstance(client_aec, bool):
        raise OfferError(400, "bad_offer", '"echo_cancellation" must be true or false')
    return RTCSessionDescription(sdp=sdp, type="offer"), client_aec


async def offer(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        description, client_aec = await _read_offer(request)
    except OfferError as exc:
        state.counters["offers_rejected_total"] += 1
        return _error(exc.status, exc.code, exc.message)
    if state.services is None:
        state.counters["offers_rejected_total"] += 1
        if state.load_error:
            return _error(503, "models_failed", state.load_error)
        return _error(503, "loading", "models are still loading; retry shortly", **{"Retry-After": "2"})
    if len(state.sessions) >= state.config.max_sessions:
        state.counters["offers_rejected_total"] += 1
        return _error(503, "busy", f"the server holds its maximum of {state.config.max_sessions} sessions")

    try:
        session = Session(
            state.services, state.config, on_closed=lambda s: _forget(state, s), client_aec=client_aec
        )
    except Exception as exc:
        log.exception("could not create a session")
        state.counters["offers_rejected_total"] += 1
        return _error(500, "internal", f"the server could not create a session: {exc}")
    state.sessions[session.id] = session
    try:
        answer = await session.accept(description)
    except (ValueError, InvalidAccessError, InvalidStateError) as exc:
        log.info("rejecting offer: %s", exc)
        await session.close()
        state.counters["offers_rejected_total"] += 1
        return _error(400, "invalid_sdp", f"the offer was refused: {exc}")
    except Exception as exc:
        log.exception("could not answer an offer")
        await session.close()
        state.counters["offers_rejected_total"] += 1
        return _error(500, "internal", f"the server could not answer the offer: {exc}")
    state.counters["sessions_total"] += 1
    return web.json_response({"sdp": answer.sdp, "type": answer.type, "session_id": session.id})


def _session_counts(session: Session) -> dict[str, int]:
    """A session's share of the server's counters: added to them when it closes, and counted live
    while it runs."""
    return {
        "turns_total": session.conversation.turn,
        "interruptions_total": session.conversation.interruptions,
        "outbound_frames_total": session.output.frames_sent,
        "outbound_gaps_total": session.output.gaps,
    }


def _forget(state: ServerState, session: Session) -> None:
    if state.sessions.pop(session.id, None) is not None:
        for name, value in _session_counts(session).items():
            state.counters[name] += value


async def delete_session(request: web.Request) -> web.Response:
    session = request.app[STATE].sessions.get(request.match_info["session_id"])
    if session is None:
        return _error(404, "not_found", "no such session")
    await session.close()
    return web.Response(status=204)


async def healthz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body: dict[str, Any] = {"sessions": len(state.sessions)}
    if state.services is not None:
        return web.json_response({"status": "ready", **body})
    if state.load_error:
        return web.json_response({"status": "error", "error": state.load_error, **body}, status=503)
    return web.json_response({"status": "loading", **body}, status=503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of the server's counters."""
    state = request.app[STATE]
    live: dict[str, int] = {}
    for session in state.sessions.values():
        for name, value in _session_counts(session).items():
            live[name] = live.get(name, 0) + value
    lag = state.loop_monitor
    lines = [
        "# TYPE voicepeer_sessions gauge",
        f"voicepeer_sessions {len(state.sessions)}",
        "# TYPE voicepeer_models_ready gauge",
        f"voicepeer_models_ready {int(state.services is not None)}",
        "# TYPE voicepeer_uptime_seconds gauge",
        f"voicepeer_uptime_seconds {time.monotonic() - state.started:.1f}",
    ]
    for name, value in state.counters.items():
        value += live.get(name, 0)
        lines += [f"# TYPE voicepeer_{name} counter", f"voicepeer_{name} {value}"]
    # How late the event loop wakes (it releases every audio frame), over the last five minutes.
    lines += [
        "# TYPE voicepeer_loop_lag_seconds summary",
        *(
            f'voicepeer_loop_lag_seconds{{quantile="{q / 100:g}"}} {lag.percentile(q):.6f}'
            for q in (50, 99, 100)
        ),
        f"voicepeer_loop_lag_seconds_count {lag.samples}",
        "# TYPE voicepeer_loop_lag_max_seconds gauge",
        f"voicepeer_loop_lag_max_seconds {lag.max_s:.6f}",
        "# TYPE voicepeer_loop_lags_over_30ms_total counter",
        f"voicepeer_loop_lags_over_30ms_total {lag.over_30ms}",
    ]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


async def _load(app: web.Application) -> None:
    state = app[STATE]
    try:
        # The VAD runs on the media path at normal priority; everything else loads on an inference
        # thread, so the runtimes' own thread pools inherit its lower priority.
        await asyncio.to_thread(silero_session)
        state.services = await run_blocking(load_services, state.config)
    except Exception as exc:
        log.error("model loading failed: %s", exc)
        state.load_error = str(exc)


async def _on_startup(app: web.Application) -> None:
    state = app[STATE]
    if raise_priority():
        log.info("media path runs at nice %d", MEDIA_NICE)
    state.loop_monitor.start()
    if state.services is None:
        state.loading = asyncio.get_running_loop().create_task(_load(app))


async def _on_shutdown(app: web.Application) -> None:
    state = app[STATE]
    await state.loop_monitor.stop()
    await asyncio.gather(*(s.close() for s in list(state.sessions.values())), return_exceptions=True)
    if state.loading is not None and not state.loading.done():
        state.loading.cancel()


def create_app(
    config: Config, services: Services | None = None, web_root: Path = WEB_ROOT
) -> web.Application:
    """Builds the server. Without ``services`` the models load in the background after start-up, and
    /healthz answers 503 until they are ready."""
    app = web.Application(client_max_size=MAX_OFFER_BYTES)
    app[STATE] = ServerState(config=config, services=services)
    index = web_root / "demo" / "index.html"

    async def root(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(index)

    app.router.add_post("/offer", offer)
    app.router.add_delete("/sessions/{session_id}", delete_session)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", root)
    app.router.add_static("/client/", web_root / "client")
    app.router.add_static("/demo/", web_root / "demo")
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    return app
