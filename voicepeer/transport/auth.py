"""Who may use the server: the shared secret, per-call tokens minted from it, per-call capabilities and
the origin check.

- **The secret** (``--auth-token``): a bearer token for every signaling route. It belongs to the
  application's backend, never to a browser.
- **Per-call tokens**: the backend mints one per call from the secret (``mint_call_token``, or
  ``voicepeer token``) and hands it to the browser. It opens one call (``POST /offer`` or ``/whip``),
  once, before it expires; nothing else. Its form is ``v1.<expiry>.<nonce>.<signature>``, the signature
  an HMAC-SHA256 of ``v1.<expiry>.<nonce>`` under the secret, so any backend language can mint it. It
  may carry claims the call starts with (``v1.<expiry>.<nonce>.<claims>.<signature>``: its variables
  and greeting, as base64url JSON, signed with the rest).
- **Capabilities**: each call's own routes (its events stream, control endpoint and hang-up, and its
  WHIP resource) need the capability that the answer put in their URLs; knowing a session id is not
  enough. A capability is an HMAC of the session id under a key made afresh by each server process, so
  nothing is stored and nothing can be guessed.
- **Origins**: a browser request that says where it comes from (``Origin``) must come from the server's
  own origin or one allowed by ``--allow-origin``, so a page on another site cannot start or steer a
  call with the user's browser. A request without ``Origin`` (not a browser) is judged by its token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from urllib.parse import urlsplit

TOKEN_VERSION = "v1"
MAX_TOKEN_TTL_S = 3600
"""A per-call token living longer than this is refused: it is meant to be minted just before use."""

MAX_CLAIMS_CHARS = 4096
"""A token's claims, encoded: a few variables and a greeting, not a document (it travels in a header)."""

MAX_USED_TOKENS = 100_000
"""Spent per-call tokens remembered (until they expire) so none opens a second call."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _sign(secret: str, payload: str) -> str:
    return _b64(hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest())


def same(a: str, b: str) -> bool:
    """Constant-time equality of two strings, whatever characters a client put in them
    (``hmac.compare_digest`` refuses non-ASCII ``str``)."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


def mint_call_token(
    secret: str,
    ttl_s: float = 300,
    now: float | None = None,
    *,
    context: dict[str, str] | None = None,
    greeting: str | None = None,
) -> str:
    """A token that opens one call within ``ttl_s`` seconds: what a backend gives a browser.

    ``context`` (the call's variables: the system prompt's ``{name}``s, given to tools and the hook)
    and ``greeting`` (said when the call connects, instead of the server's) are claims the call starts
    with, signed with the rest: ``v1.<expiry>.<nonce>.<claims>.<signature>``, the claims base64url
    JSON. The browser carries them but cannot change them."""
    if not 0 < ttl_s <= MAX_TOKEN_TTL_S:
        raise ValueError(f"a call token lives 1 to {MAX_TOKEN_TTL_S} s")
    expiry = int((time.time() if now is None else now) + ttl_s)
    payload = f"{TOKEN_VERSION}.{expiry}.{secrets.token_urlsafe(12)}"
    claims: dict[str, object] = {}
    if context:
        claims["context"] = context
    if greeting is not None:
        claims["greeting"] = greeting
    if claims:
        encoded = _b64(json.dumps(claims, separators=(",", ":")).encode())
        if len(encoded) > MAX_CLAIMS_CHARS:
            raise ValueError(f"a call token's claims are at most {MAX_CLAIMS_CHARS} characters encoded")
        payload = f"{payload}.{encoded}"
    return f"{payload}.{_sign(secret, payload)}"


def token_claims(token: str) -> dict[str, object]:
    """The claims of a token ``CallTokens.check`` has accepted ({} if it has none). Raises ValueError
    for claims that are not a base64url JSON object: signed, so minted that way by the backend."""
    parts = token.split(".")
    if len(parts) != 5:
        return {}
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[3] + "=" * (-len(parts[3]) % 4)))
    except (ValueError, RecursionError):  # binascii.Error and JSONDecodeError are ValueErrors
        raise ValueError("the call token's claims are not base64url JSON") from None
    if not isinstance(claims, dict):
        raise ValueError("the call token's claims are not a JSON object")
    return claims


class CallTokens:
    """Checks per-call tokens and spends them."""

    def __init__(self, secret: str) -> None:
        self._secret = secret
        self._used: dict[str, int] = {}  # nonce -> expiry

    def check(self, token: str, *, spend: bool, now: float | None = None) -> str | None:
        """None if ``token`` is valid (and, with ``spend``, now spent), else why not, fit to tell the
        client."""
        now = time.time() if now is None else now
        parts = token.split(".")
        if len(parts) not in (4, 5) or parts[0] != TOKEN_VERSION or not parts[1].isdigit():
            return "not a valid token"
        if len(parts) == 5 and len(parts[3]) > MAX_CLAIMS_CHARS:
            return "not a valid token"
        payload = ".".join(parts[:-1])
        if not same(parts[-1], _sign(self._secret, payload)):
            return "not a valid token"
        expiry = int(parts[1])
        if expiry < now:
            return "the call token has expired"
        if expiry > now + MAX_TOKEN_TTL_S + 60:
            return "the call token lives too long"
        if parts[2] in self._used:
            return "the call token was already used"
        if not spend:
            return None
        if len(self._used) >= MAX_USED_TOKENS:
            self._used = {n: e for n, e in self._used.items() if e >= now}
            if len(self._used) >= MAX_USED_TOKENS:
                return "too many call tokens in flight; retry shortly"
        self._used[parts[2]] = expiry
        return None

    def release(self, token: str) -> None:
        """Unspends a token whose offer was refused (busy, loading, a bad SDP): the retry that the
        refusal invites must not meet "already used"."""
        parts = token.split(".")
        if len(parts) in (4, 5):
            self._used.pop(parts[2], None)


class Capabilities:
    """Per-call capabilities: derived from the session id, checked in constant time."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def of(self, session_id: str) -> str:
        return _b64(hmac.new(self._key, session_id.encode(), hashlib.sha256).digest())[:32]

    def check(self, session_id: str, capability: str | None) -> bool:
        return capability is not None and same(capability, self.of(session_id))


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def normalise_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case (``null`` stays ``null``), for comparison; ``""`` for
    something that is not an origin at all."""
    origin = origin.strip()
    if origin == "null":
        return origin
    try:
        parts = urlsplit(origin)
    except ValueError:  # "http://[::1" and other broken hosts
        return ""
    if not parts.scheme or not parts.netloc:
        return ""
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def hostname(host_header: str) -> str:
    """The name in a ``Host`` header, without its port (and without an IPv6 literal's brackets)."""
    try:
        return (urlsplit(f"//{host_header}").hostname or "").lower()
    except ValueError:
        return ""


def origin_allowed(origin: str, host: str | None, allowed: frozenset[str], *, trust_host: bool) -> bool:
    """One named in ``allowed`` (already normalised), or the server's own: the origin whose ``Host``
    the request was sent to, whatever the scheme (a TLS proxy in front changes it). ``null`` (a
    ``file://`` page, a sandboxed frame) only if named.

    The own origin is taken on the ``Host`` header's word only if ``trust_host``: a page whose DNS name
    was rebound to 127.0.0.1 sends its own name as both ``Origin`` and ``Host``, so a server with no
    secret on loopback trusts only loopback names."""
    norm = normalise_origin(origin)
    if not norm:
        return False
    if norm in allowed:
        return True
    if norm == "null" or host is None or urlsplit(norm).netloc != host.lower():
        return False
    return trust_host or is_loopback(hostname(host))


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
