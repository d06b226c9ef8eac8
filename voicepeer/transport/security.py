"""The server's front door: every request passes here before its route.

- Errors are JSON, always: a route that does not exist or a method it does not take (aiohttp's own
  404/405) and any unexpected failure (a 500, logged with its traceback) answer
  ``{"error", "message"}`` like every deliberate refusal.
- Signaling routes check the browser's ``Origin`` (``auth.origin_allowed``), then who is asking:
  opening a call (``POST /offer``, ``POST /whip``) needs the secret or an unspent per-call token, and
  only then is it counted against its client address's rate; ``/metrics`` needs the secret unless
  ``--metrics-public``; ``/ice-servers`` the secret or a per-call token (checked, not spent). A call's
  own routes are judged by its capability, in ``sessions.find_session``.
- Allowed cross-origin pages (``--allow-origin``) get CORS: their preflights are answered here, with no
  credentials asked, and their answers say which origin may read them and which headers it may see.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from aiohttp import web

from .auth import bearer, is_loopback, normalise_origin, origin_allowed, same, token_claims
from .state import STATE, OfferError, ServerState, error_response

log = logging.getLogger(__name__)

SIGNALING = ("/offer", "/whip", "/sessions/", "/ice-servers", "/metrics")
OPENING = frozenset({"/offer", "/whip"})
SPENT = web.RequestKey("spent_call_token", str)

CORS_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, If-Match"
CORS_EXPOSED = "Location, ETag, Link, Retry-After"


def _is_signaling(path: str) -> bool:
    return any(path == p or path.startswith(p if p.endswith("/") else p + "/") for p in SIGNALING)


def _unauthorized(message: str) -> web.Response:
    return error_response(401, "unauthorized", message, **{"WWW-Authenticate": 'Bearer realm="voicepeer"'})


def _client_key(address: str | None) -> str:
    """Whom a rate applies to: the address, or for IPv6 its /64 (one host holds a whole /64)."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return address or "?"
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)


def _check_token(state: ServerState, request: web.Request, *, spend: bool) -> web.Response | None:
    """None if the request may open a call (or read ICE servers); else the 401 to send."""
    secret = state.config.security.auth_token
    if secret is None:
        return None
    token = bearer(request.headers.get("Authorization"))
    if token is None:
        return _unauthorized("send 'Authorization: Bearer <token>': the server's secret or a call token")
    if same(token, secret):
        return None
    assert state.call_tokens is not None
    why = state.call_tokens.check(token, spend=spend)
    if why is not None:
        return _unauthorized(why)
    if spend:
        request[SPENT] = token
    return None


def call_claims(request: web.Request) -> dict[str, object]:
    """The claims of the call token that opened this request's call ({} without one). Raises
    ``OfferError`` 400 for malformed ones."""
    try:
        return token_claims(request[SPENT]) if SPENT in request else {}
    except ValueError as exc:
        raise OfferError(400, "bad_claims", str(exc)) from None


def _preflight(request: web.Request) -> web.Response:
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": CORS_METHODS,
            "Access-Control-Allow-Headers": CORS_HEADERS,
            "Access-Control-Max-Age": "600",
        },
    )


def _gate(state: ServerState, request: web.Request) -> web.Response | None:
    """None to let a signaling request through, or the answer to give instead."""
    origin = request.headers.get("Origin")
    if origin is not None:
        trust_host = state.config.security.auth_token is not None or not is_loopback(state.config.server.host)
        if not origin_allowed(origin, request.host, state.allowed_origins, trust_host=trust_host):
            return error_response(
                403,
                "forbidden_origin",
                f"the origin {normalise_origin(origin)[:100]!r} may not use this server (see --allow-origin)",
            )
    path, method = request.path, request.method
    if method == "OPTIONS":
        return _preflight(request) if "Access-Control-Request-Method" in request.headers else None
    if path in OPENING and method == "POST":
        refusal = _check_token(state, request, spend=True)
        if refusal is not None:
            state.count_rejection("unauthorized")
            return refusal
        if state.offer_limits is not None:
            now = asyncio.get_running_loop().time()
            allowed, wait_s = state.offer_limits.take(_client_key(request.remote), now)
            if not allowed:
                state.count_rejection("rate_limited")
                return error_response(
                    429,
                    "rate_limited",
                    f"too many offers from this address; retry in {wait_s:.0f} s",
                    **{"Retry-After": str(max(1, round(wait_s)))},
                )
        return None
    if path == "/ice-servers":
        return _check_token(state, request, spend=False)
    if path == "/metrics" and not state.config.security.metrics_public and state.config.security.auth_token:
        token = bearer(request.headers.get("Authorization"))
        if token is None or not same(token, state.config.security.auth_token):
            return _unauthorized("/metrics needs the server's secret (or --metrics-public)")
    return None


def _json_error(exc: web.HTTPException) -> web.Response:
    code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "http_error")
    headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
    return error_response(exc.status, code, exc.reason or "refused", **headers)


def cors_headers(request: web.Request) -> dict[str, str]:
    """For a response prepared by its handler (an events stream): what the middleware adds to others."""
    origin = request.headers.get("Origin")
    if origin is None:
        return {}
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


@web.middleware
async def front_door(request: web.Request, handler) -> web.StreamResponse:
    state = request.app[STATE]
    signaling = _is_signaling(request.path)
    try:
        response = _gate(state, request) if signaling else None
        if response is None:
            response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        response = _json_error(exc)
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception as exc:
        log.exception("%s %s failed", request.method, request.path)
        response = error_response(500, "internal", f"the server failed: {type(exc).__name__}")
    if SPENT in request and response.status not in (200, 201) and state.call_tokens is not None:
        state.call_tokens.release(request[SPENT])
    origin = request.headers.get("Origin")
    if signaling and origin is not None and response.status != 403 and not response.prepared:
        # Reached here, the origin is allowed: a cross-origin page may read the answer.
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSED
        response.headers.add("Vary", "Origin")
    return response
