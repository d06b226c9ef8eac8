"""Routes on one call, whichever way it came in: its events stream, its control endpoint, hanging up.

The URLs of the first two are handed out in the offer's answer (``events_url``, ``control_url``; the
WHIP ``Link`` headers), so clients follow them rather than build them.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from ..call.control import ControlError
from ..call.events import MAX_MESSAGE_BYTES, ProtocolError, encode, parse_client_message
from .security import cors_headers
from .session import Session
from .state import STATE, OfferError, error_response, read_body, refused

log = logging.getLogger(__name__)

MAX_FOLLOWERS = 8
"""Events streams one call may have at once."""

KEEPALIVE_S = 15.0
"""A comment line this often on a quiet events stream: proxies close idle connections, and a write is
how the server notices a reader that went away."""


def _capable(request: web.Request) -> bool:
    """The request carries the capability of the session it names (``?cap=`` from the answer)."""
    return request.app[STATE].capabilities.check(request.match_info["session_id"], request.query.get("cap"))


def find_session(request: web.Request) -> Session | None:
    """The session the request names, if it carries its capability: a session id alone is not enough."""
    if not _capable(request):
        return None
    return request.app[STATE].sessions.get(request.match_info["session_id"])


def no_session() -> web.Response:
    return error_response(
        404, "not_found", "no such session (use the URLs from the answer: they carry the call's capability)"
    )


async def end_session(request: web.Request) -> bool:
    """Hangs up the request's session; False if there is no such session (nor was there lately)."""
    session = find_session(request)
    if session is not None:
        await session.close()
        return True
    return _capable(request) and request.match_info["session_id"] in request.app[STATE].ended


async def delete_session(request: web.Request) -> web.Response:
    if not await end_session(request):
        return no_session()
    return web.Response(status=204)


async def events_stream(request: web.Request) -> web.StreamResponse:
    """The call's events as Server-Sent Events: one ``data:`` line of JSON per event, starting with the
    call's current state, ending when the call ends. A reader that falls behind loses the oldest events
    (and is told so), never slows the call."""
    session = find_session(request)
    if session is None:
        return no_session()
    if len(session.call.followers) >= MAX_FOLLOWERS:
        return error_response(
            429,
            "too_many_followers",
            f"a call has at most {MAX_FOLLOWERS} events streams",
            **{"Retry-After": "5"},
        )
    queue, stop = session.call.follow()
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx: pass each event on as it comes
            **cors_headers(request),
        }
    )
    try:
        await response.prepare(request)
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE_S):
                    event = await queue.get()
            except TimeoutError:
                event = None if queue.closed else ": keep-alive"
            if event is None:
                break
            text = event if isinstance(event, str) else f"data: {encode(event)}"
            # A reader that stops reading (its TCP window shut) holds this write: it is let go.
            async with asyncio.timeout(KEEPALIVE_S):
                await response.write(f"{text}\n\n".encode())
    except (ConnectionResetError, ConnectionError, TimeoutError):
        log.debug("session %s: an events reader went away or stopped reading", session.id)
    finally:
        stop()
    return response


async def control(request: web.Request) -> web.Response:
    """One control command as JSON, the same object the data channel takes."""
    session = find_session(request)
    if session is None:
        return no_session()
    try:
        raw = await read_body(request, MAX_MESSAGE_BYTES)
    except OfferError as exc:
        return error_response(exc.status, exc.code, exc.message)
    try:
        message = parse_client_message(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return error_response(400, "bad_message", "the body is not UTF-8 text")
    except ProtocolError as exc:
        return error_response(400, "bad_message", str(exc))
    if session.closed:
        return no_session()
    try:
        session.call.control(message)
    except ControlError as exc:
        return refused(exc)
    answer = {"ok": True, "command": message["type"]}
    if message["type"] == "config":
        answer["settings"] = session.call.settings.public()
    return web.json_response(answer)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_delete("/sessions/{session_id}", delete_session)
    router.add_get("/sessions/{session_id}/events", events_stream)
    router.add_post("/sessions/{session_id}/control", control)
