"""WHIP (RFC 9725): WebRTC ingest over plain HTTP, for clients that are not ours (OBS, GStreamer,
hardware encoders, any WHIP library).

- ``POST /whip`` with an ``application/sdp`` offer: ``201 Created``, the answer (with all of the
  server's candidates: aiortc gathers before answering), ``Location`` of the session resource, its
  ``ETag``, and ``Link`` headers for the configured ICE servers and for the call's events stream and
  control endpoint. A ``sendonly`` offer is heard, transcribed and answered in text (on the events
  stream); a ``sendrecv`` one also gets the bot's voice back.
- ``PATCH /whip/{id}`` with ``application/trickle-ice-sdpfrag``: the client's trickled candidates, added
  to the running ICE agent (``204``). An ICE restart (new ufrag and password) is answered ``422``, as the
  RFC asks of a server that trickles but cannot restart; the session goes on.
- ``DELETE /whip/{id}``: hangs up (``200``).

The ETag is the server's ICE username fragment: it names the ICE session, which is what the RFC's
entity tag stands for, and it changes only with an ICE restart, which this server does not do.
"""

from __future__ import annotations

import logging
import re

from aiohttp import web
from aiortc import RTCIceCandidate
from aiortc.sdp import candidate_from_sdp
from multidict import CIMultiDict

from ..call.control import ControlError
from .ice import client_ice_servers
from .security import call_claims
from .sessions import end_session, find_session, no_session
from .state import (
    STATE,
    OfferError,
    audio_direction,
    error_response,
    open_session,
    read_body,
    refuse,
    refused,
    session_urls,
)

log = logging.getLogger(__name__)

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
MAX_SDP_BYTES = 64 * 1024
MAX_SDPFRAG_BYTES = 16 * 1024

EXPOSED = "Location, ETag, Link"
"""Headers a cross-origin WHIP client must be able to read off the answer."""

_UFRAG = re.compile(r"^a=ice-ufrag:(\S+)\s*$", re.MULTILINE)


def _ufrag(sdp: str) -> str | None:
    match = _UFRAG.search(sdp)
    return match.group(1) if match else None


def _etag(session) -> str:
    return f'"{_ufrag(session.pc.localDescription.sdp)}"'


def _link_headers(request: web.Request, session_id: str) -> list[str]:
    state = request.app[STATE]
    links = []
    for server in client_ice_servers(state.config):  # RFC 9725 section 4.6
        for url in server.urls:
            link = f'<{url}>; rel="ice-server"'
            if server.username is not None:
                link += f'; username="{server.username}"; credential="{server.credential}"'
                link += '; credential-type="password"'
            links.append(link)
    urls = session_urls(state, session_id)
    links.append(f'<{urls["events_url"]}>; rel="events"')
    links.append(f'<{urls["control_url"]}>; rel="control"')
    return links


async def publish(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        if request.content_type != SDP:
            raise OfferError(
                415, "unsupported_media_type", f"a WHIP offer is {SDP}, not {request.content_type}"
            )
        raw = await read_body(request, MAX_SDP_BYTES)
        try:
            sdp = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise OfferError(400, "invalid_sdp", "the offer is not UTF-8 text") from None
        if not sdp.strip():
            raise OfferError(400, "invalid_sdp", "the offer is empty")
        direction = audio_direction(sdp)
        if direction not in ("sendonly", "sendrecv"):
            raise OfferError(
                400,
                "bad_direction",
                f"a WHIP client sends audio: the audio m-line must be sendonly or sendrecv, not {direction}",
            )
        session, answer = await open_session(
            state, sdp, voice=direction == "sendrecv", claims=call_claims(request)
        )
    except OfferError as exc:
        return refuse(state, exc)
    prefix = state.config.server.route_prefix
    headers = CIMultiDict(
        {
            "Content-Type": SDP,
            # Unguessable, as the RFC asks: it carries the call's capability.
            "Location": f"{prefix}/whip/{session.id}?cap={state.capabilities.of(session.id)}",
            "ETag": _etag(session),
            "Access-Control-Expose-Headers": EXPOSED,
        }
    )
    for link in _link_headers(request, session.id):
        headers.add("Link", link)  # one header per link: some clients split only on ", <"
    return web.Response(status=201, body=answer.sdp.encode(), headers=headers)


def _parse_sdpfrag(text: str) -> tuple[str | None, str | None, list[str], bool]:
    """(ice-ufrag, mid, candidate attribute values, end-of-candidates) of an SDP fragment (RFC 8840)."""
    ufrag = mid = None
    candidates: list[str] = []
    end = False
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("a=ice-ufrag:"):
            ufrag = line[len("a=ice-ufrag:") :]
        elif line.startswith("a=mid:") and mid is None:
            mid = line[len("a=mid:") :]
        elif line.startswith("a=candidate:"):
            candidates.append(line[len("a=candidate:") :])
        elif line == "a=end-of-candidates":
            end = True
    return ufrag, mid, candidates, end


async def trickle(request: web.Request) -> web.Response:
    session = find_session(request)
    if session is None:
        return no_session()
    if request.content_type != SDPFRAG:
        return error_response(415, "unsupported_media_type", f"a WHIP PATCH is {SDPFRAG}")
    if_match = request.headers.get("If-Match")
    if if_match is None:
        return error_response(428, "precondition_required", "send If-Match with the session's ETag")
    try:
        text = (await read_body(request, MAX_SDPFRAG_BYTES)).decode("utf-8")
    except OfferError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except UnicodeDecodeError:
        return error_response(400, "invalid_sdpfrag", "the fragment is not UTF-8 text")
    ufrag, mid, candidates, end = _parse_sdpfrag(text)
    remote_ufrag = _ufrag(session.pc.remoteDescription.sdp) if session.pc.remoteDescription else None
    if if_match.strip() == "*" or (ufrag is not None and remote_ufrag is not None and ufrag != remote_ufrag):
        # New credentials (or If-Match: *) mean an ICE restart, which aiortc cannot do.
        return error_response(422, "ice_restart_unsupported", "this server does not support ICE restarts")
    if if_match.strip() != _etag(session):
        return error_response(412, "precondition_failed", "If-Match does not match the session's ETag")
    if session.closed:
        return no_session()
    try:
        session.call.admit()  # a PATCH spends from the call's message budget, like a control message
    except ControlError as exc:
        return refused(exc)
    added = 0
    for value in candidates:
        try:
            candidate: RTCIceCandidate = candidate_from_sdp(value)
        except Exception:  # the RFC: discard what cannot be used, and go on
            log.info("session %s: discarding an unparseable trickled candidate", session.id)
            continue
        candidate.sdpMid = mid
        candidate.sdpMLineIndex = 0
        try:
            added += await session.add_ice_candidate(candidate)
        except Exception as exc:
            log.info("session %s: discarding a trickled candidate: %s", session.id, exc)
    if end:
        await session.add_ice_candidate(None)
    log.info("session %s: %d trickled candidates%s", session.id, added, " (end)" if end else "")
    return web.Response(status=204)


async def hang_up(request: web.Request) -> web.Response:
    if not await end_session(request):
        return no_session()
    return web.Response(status=200)


async def options(_request: web.Request) -> web.Response:
    return web.Response(status=204, headers={"Accept-Post": SDP, "Allow": "OPTIONS, POST"})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/whip", publish)
    router.add_route("OPTIONS", "/whip", options)
    router.add_patch("/whip/{session_id}", trickle)
    router.add_delete("/whip/{session_id}", hang_up)
