"""The server's front door: every request passes here before its route.

- Errors are JSON, always: a route that does not exist or a method it does not take (aiohttp's own
  404/405) and any unexpected failure (a 500, logged with its traceback) answer
  ``{"error", "message"}`` like every deliberate refusal.
- Signaling routes check the browser's ``Origin`` (``auth.origin_allowed``), then who is asking:
  opening a call (``POST /offer``, ``POST /whip``) needs the secret or an unspent per-call token and is
  rate limited per client address; ``/metrics`` needs the secret unless ``--metrics-public``;
  ``/ice-servers`` the secret or a per-call token (checked, not spent). A call's own routes are judged
  by its capability, in ``sessions.find_session``.

CORS preflights (``OPTIONS``) carry no credentials and are never asked for them.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from .auth import bearer, normalise_origin, origin_allowed
from .state import STATE, ServerState, error_response

log = logging.getLogger(__name__)

SIGNALING = ("/offer", "/whip", "/sessions/", "/ice-servers", "/metrics")
OPENING = frozenset({"/offer", "/whip"})


def _is_signaling(path: str) -> bool:
    return any(path == p or path.startswith(p if p.endswith("/") else p + "/") for p in SIGNALING)


def _unauthorized(message: str) -> web.Response:
    return error_response(401, "unauthorized", message, **{"WWW-Authenticate": 'Bearer realm="voicepeer"'})


def _check_token(state: ServerState, request: web.Request, *, spend: bool) -> web.Response | None:
    """None if the request may open a call (or read ICE servers); else the 401 to send."""
    secret = state.config.auth_token
    if secret is None:
        return None
    token = bearer(request.headers.get("Authorization"))
    if token is None:
        return _unauthorized("send 'Authorization: Bearer <token>': the server's secret or a call token")
    if token == secret:
        return None
    assert state.call_tokens is not None
    why = state.call_tokens.check(token, spend=spend)
    return None if why is None else _unauthorized(why)


def _gate(state: ServerState, request: web.Request) -> web.Response | None:
    """None to let a signaling request through, or the refusal."""
    origin = request.headers.get("Origin")
    if origin is not None and not origin_allowed(origin, request.host, state.allowed_origins):
        return error_response(
            403,
            "forbidden_origin",
            f"the origin {normalise_origin(origin)[:100]!r} may not use this server (see --allow-origin)",
        )
    path, method = request.path, request.method
    if method == "OPTIONS":
        return None
    if path in OPENING and method == "POST":
        if state.offer_limits is not None:
            now = asyncio.get_running_loop().time()
            allowed, wait_s = state.offer_limits.take(request.remote or "?", now)
            if not allowed:
                state.count_rejection("rate_limited")
                return error_response(
                    429,
                    "rate_limited",
                    f"too many offers from this address; retry in {wait_s:.0f} s",
                    **{"Retry-After": str(max(1, round(wait_s)))},
                )
        refusal = _check_token(state, request, spend=True)
        if refusal is not None:
            state.count_rejection("unauthorized")
        return refusal
    if path == "/ice-servers":
        return _check_token(state, request, spend=False)
    if path == "/metrics" and not state.config.metrics_public and state.config.auth_token:
        if bearer(request.headers.get("Authorization")) != state.config.auth_token:
            return _unauthorized("/metrics needs the server's secret (or --metrics-public)")
    return None


@web.middleware
async def front_door(request: web.Request, handler) -> web.StreamResponse:
    state = request.app[STATE]
    if _is_signaling(request.path):
        refusal = _gate(state, request)
        if refusal is not None:
            return refusal
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "http_error")
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(exc.status, code, exc.reason or "refused", **headers)
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception as exc:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal", f"the server failed: {type(exc).__name__}")
