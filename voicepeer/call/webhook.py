"""Signed JSON requests to the application's backend: tool webhooks and the per-turn hook.

Each request is ``POST`` with a JSON body, and two headers let the application check that it comes
from this server and is fresh, without the secret ever travelling:

- ``X-Voicepeer-Timestamp``: Unix seconds when it was sent;
- ``X-Voicepeer-Signature``: ``sha256=`` and the hex HMAC-SHA256, under the webhook secret, of
  ``"{timestamp}.{body}"`` (``verify`` checks it, for an application in Python).

Every request has a total timeout, the answer is read within ``max_bytes``, and anything but a 2xx
with a JSON body is a ``WebhookError`` whose message is short and safe to show.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import TYPE_CHECKING, Any

from ..backends.registry import display_name

if TYPE_CHECKING:
    import aiohttp

SIGNATURE_HEADER = "X-Voicepeer-Signature"
TIMESTAMP_HEADER = "X-Voicepeer-Timestamp"

MAX_ANSWER_BYTES = 64 * 1024
"""The largest answer read: a tool's result goes into the model's prompt, where 64 kB is already
thousands of tokens."""

MAX_AGE_S = 300.0
"""How old a request ``verify`` accepts: a replay after that is refused."""


class WebhookError(Exception):
    """The application's backend failed, hung or answered something that is not JSON."""


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(secret: str, body: bytes, timestamp: str, signature: str, now: float | None = None) -> bool:
    """Whether a request came from a voicepeer server holding ``secret`` within ``MAX_AGE_S``: for the
    application's side (``docs/extending.md``)."""
    try:
        sent = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - sent) > MAX_AGE_S:
        return False
    return hmac.compare_digest(sign(secret, body, sent), signature or "")


class Webhooks:
    """One pooled HTTP session for every webhook of the process, made in the running loop on first use."""

    def __init__(self, secret: str, max_bytes: int = MAX_ANSWER_BYTES) -> None:
        if not secret:
            raise ValueError("webhooks are signed: they need a secret")
        self._secret = secret
        self.max_bytes = max_bytes
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        import aiohttp  # here, not at import: a call that posts no webhook pulls in no HTTP stack

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": "voicepeer-webhook"}, raise_for_status=False
            )
        return self._session

    async def post(self, url: str, payload: dict[str, Any], timeout_s: float) -> Any:
        """The parsed JSON answer (None for a 204 or an empty body)."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        now = int(time.time())
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(now),
            SIGNATURE_HEADER: sign(self._secret, body, now),
        }
        import aiohttp

        from ..backends.base import BackendError
        from ..backends.openai.http import read_bounded

        where = display_name(url)
        try:
            async with asyncio.timeout(timeout_s):
                async with self._client().post(
                    url, data=body, headers=headers, allow_redirects=False
                ) as answer:
                    if not 200 <= answer.status < 300:
                        raise WebhookError(f"{where} answered {answer.status}")
                    data = await read_bounded(answer, self.max_bytes, where)
        except TimeoutError:
            raise WebhookError(f"{where} did not answer within {timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise WebhookError(f"{where} failed: {type(exc).__name__}") from None
        except BackendError as exc:  # the answer was over max_bytes
            raise WebhookError(str(exc)) from None
        if not data.strip():
            return None
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            raise WebhookError(f"{where} answered something that is not JSON") from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
