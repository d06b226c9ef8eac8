"""The aiohttp application: offer/answer, session routes, WHIP, health, metrics and the static pages."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from ..audio.vad import silero_session
from ..backends.chain import Switch
from ..call.hook import TurnHook
from ..call.logic import Logic, LogicError
from ..call.services import Services, load_services
from ..call.tools import Tool
from ..config import Config
from ..runtime.priorities import raise_loop_priority, restore_loop_priority, set_media_priority
from ..runtime.workers import run_blocking
from . import sessions, whip
from .encoding import use_media_executor
from .ice import client_ice_servers
from .metrics import CONTENT_TYPE
from .security import call_claims, front_door
from .state import (
    STATE,
    OfferError,
    ServerState,
    audio_direction,
    check_unprocessed_mid,
    open_session,
    read_body,
    refuse,
    session_urls,
)

log = logging.getLogger(__name__)

WEB_ROOT = Path(__file__).resolve().parents[2] / "web"
MAX_OFFER_BYTES = 64 * 1024
MAX_MID_CHARS = 32
"""RFC 8843 puts no bound on a mid; ours do not need more (browsers number them)."""


def _parse_offer(raw: bytes) -> tuple[str, bool, str | None]:
    """The offer's SDP, its ``echo_cancellation`` flag and its ``unprocessed_mid`` (the m-line of a
    second capture without the client's canceller), or OfferError naming what is wrong."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OfferError(400, "bad_json", f"the body is not JSON: {exc}") from None
    except (RecursionError, ValueError) as exc:
        raise OfferError(400, "bad_json", f"the body is not acceptable JSON: {type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise OfferError(400, "bad_offer", 'expected {"sdp": "...", "type": "offer"}')
    if body.get("type") != "offer":
        raise OfferError(400, "bad_offer", f'"type" must be "offer", got {str(body.get("type"))[:40]!r}')
    sdp = body.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        raise OfferError(400, "bad_offer", '"sdp" must be a non-empty string')
    client_aec = body.get("echo_cancellation", False)
    if not isinstance(client_aec, bool):
        raise OfferError(400, "bad_offer", '"echo_cancellation" must be true or false')
    direction = audio_direction(sdp)
    if direction != "sendrecv":
        raise OfferError(
            400,
            "bad_direction",
            f"the audio m-line must be sendrecv (it is {direction}): "
            "the peer both hears the microphone and speaks back (WHIP at /whip takes send-only offers)",
        )
    unprocessed_mid = body.get("unprocessed_mid")
    if unprocessed_mid is not None:
        if not isinstance(unprocessed_mid, str) or not 0 < len(unprocessed_mid) <= MAX_MID_CHARS:
            raise OfferError(
                400, "bad_offer", f'"unprocessed_mid" must be a string of 1-{MAX_MID_CHARS} characters'
            )
        if not client_aec:
            raise OfferError(
                400,
                "bad_offer",
                '"unprocessed_mid" goes with "echo_cancellation": true (it is the capture without it)',
            )
        check_unprocessed_mid(sdp, unprocessed_mid)
    return sdp, client_aec, unprocessed_mid


async def offer(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        if request.content_type != "application/json":
            # A cross-site page can post text/plain without a CORS preflight; JSON it cannot.
            raise OfferError(
                415, "unsupported_media_type", f"an offer is application/json, not {request.content_type}"
            )
        sdp, client_aec, unprocessed_mid = _parse_offer(await read_body(request, MAX_OFFER_BYTES))
        session, answer = await open_session(
            state,
            sdp,
            voice=True,
            client_aec=client_aec,
            unprocessed_mid=unprocessed_mid,
            claims=call_claims(request),
        )
    except OfferError as exc:
        return refuse(state, exc)
    return web.json_response(
        {"sdp": answer.sdp, "type": answer.type, "session_id": session.id, **session_urls(state, session.id)}
    )


async def ice_servers(request: web.Request) -> web.Response:
    """The STUN/TURN servers a client should use for its next call, in RTCConfiguration's shape, TURN
    with a credential minted now."""
    servers = client_ice_servers(request.app[STATE].config)
    return web.json_response(
        {"iceServers": [s.to_json() for s in servers]}, headers={"Cache-Control": "no-store"}
    )


async def healthz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body: dict[str, Any] = {"sessions": len(state.sessions)}
    if state.warnings:
        body["warnings"] = state.warnings
    if state.draining:
        # 503, so a load balancer or a readiness probe stops sending new calls here.
        return web.json_response({"status": "draining", **body}, status=503)
    if state.services is not None:
        # Ready even on a fallback or with a stage down: calls are answered (or apologised to), and
        # pulling every replica when a shared inference server dies would make it worse.
        body["load"] = state.services.load.status() | {"budget_ms": state.config.server.inference_budget_ms}
        backends = state.services.status()
        degraded = any(stage["active"] != stage["backends"][0]["name"] for stage in backends.values())
        return web.json_response({"status": "ready", "degraded": degraded, "backends": backends, **body})
    if state.load_error:
        return web.json_response({"status": "error", "error": state.load_error, **body}, status=503)
    return web.json_response({"status": "loading", **body}, status=503)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def _load(app: web.Application) -> None:
    state = app[STATE]
    try:
        # The VAD runs on the media path at normal priority; everything else loads on an inference
        # thread, so the runtimes' own thread pools inherit its lower priority.
        await asyncio.to_thread(silero_session)
        services = await run_blocking(load_services, state.config)
    except Exception as exc:
        log.error("model loading failed: %s", exc)
        state.load_error = str(exc)
        return
    problem = state.logic.unusable_with(services)
    if problem:  # /healthz says so, and every offer is refused with it
        log.error("%s: calls are refused", problem)
        state.load_error = problem
        await services.aclose()
        return
    state.owns_services = True
    _attach(state, services)


def _attach(state: ServerState, services: Services) -> None:
    """Makes ``services`` the server's: their probes run, and each move of a stage to another backend
    is a ``backend`` event to every call and a metric."""

    def on_switch(switch: Switch) -> None:
        state.metrics.backend_switches.labels(stage=switch.stage, to=switch.to or "none").inc()
        event = switch.as_event()
        for session in list(state.sessions.values()):
            session.call.events.send(event)

    state.detach_services = [chain.subscribe(on_switch) for chain in services.chains]
    services.start()
    state.services = services


async def _on_startup(app: web.Application) -> None:
    state = app[STATE]
    for warning in state.warnings:
        log.warning("UNSAFE: %s", warning)
        print(f"voicepeer: WARNING: {warning}", file=sys.stderr, flush=True)
    set_media_priority(state.config.server.media_priority)
    got = raise_loop_priority()
    log.info("media path runs at %s", got or "the priority it was given")
    use_media_executor(asyncio.get_running_loop())
    state.loop_monitor.start()
    if state.services is not None:
        _attach(state, state.services)
    else:
        state.loading = asyncio.get_running_loop().create_task(_load(app))


async def _on_shutdown(app: web.Application) -> None:
    state = app[STATE]
    restore_loop_priority()
    await state.loop_monitor.stop()
    await asyncio.gather(
        *(s.close("shutdown") for s in list(state.sessions.values())), return_exceptions=True
    )
    if state.loading is not None and not state.loading.done():
        state.loading.cancel()
    for detach in state.detach_services:
        detach()
    if state.services is not None:
        if state.owns_services:
            await state.services.aclose()
        else:
            await state.services.stop()
    await state.logic.aclose()


def create_app(
    config: Config,
    services: Services | None = None,
    web_root: Path = WEB_ROOT,
    *,
    tools: Sequence[Tool] = (),
    hook: TurnHook | None = None,
) -> web.Application:
    """Builds the server. Without ``services`` the models load in the background after start-up, and
    /healthz answers 503 until they are ready. ``tools`` and ``hook``: the application's own, in
    process (callables), besides the configuration's webhooks. Raises ``LogicError`` for tools or a
    hook the server cannot use."""
    app = web.Application(client_max_size=MAX_OFFER_BYTES, middlewares=[front_door])
    logic = Logic.from_config(config, tools, hook)
    if services is not None and (problem := logic.unusable_with(services)):
        raise LogicError(problem)
    app[STATE] = ServerState(config=config, services=services, logic=logic)
    index = web_root / "demo" / "index.html"

    async def root(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(index)

    app.router.add_post("/offer", offer)
    sessions.add_routes(app.router)
    whip.add_routes(app.router)
    app.router.add_get("/ice-servers", ice_servers)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    if index.is_file():
        app.router.add_get("/", root)
        app.router.add_static("/client/", web_root / "client")
        app.router.add_static("/demo/", web_root / "demo")
    else:
        # Installed from a wheel, without the repository's web/ folder: signaling only, and the page is
        # served by whoever hosts the application's own front end.
        log.info("no demo page at %s: serving signaling only", web_root)
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    return app
