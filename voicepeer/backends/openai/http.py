"""The HTTP client every OpenAI-compatible backend shares: the URL taken apart, one pooled session,
bounded reads and short errors.

Each backend keeps one ``aiohttp.ClientSession`` with a keep-alive pool, made on first use in the
running loop and closed by ``aclose``: a turn reuses the connection of the last one instead of paying
a TCP (and TLS) handshake. Every request has a connect and a read timeout, and every answer is read
within a bound, so a hung, slow or babbling server costs one ``BackendError`` and never the memory of
the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import aiohttp

from ..base import MAX_TEXT_CHARS, BackendError
from ..registry import display_name

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
"""Longest wait for a TCP connection: a server that is up accepts in milliseconds, even under load."""

KEEPALIVE_S = 4.0
"""How long an idle pooled connection is kept: under uvicorn's default of 5 s (the servers these
backends speak to are mostly FastAPI apps), so the client drops an idle connection before the server
does, rather than send a request into a socket the server is closing. The rare race left is retried
once (``_send``)."""

MAX_JSON_BYTES = 8 * MAX_TEXT_CHARS
"""The largest transcription answer read: ``MAX_TEXT_CHARS`` of text even if every character came as
a ``\\uXXXX`` escape, with room for the JSON around it."""

ERROR_EXCERPT_BYTES = 2048

HEALTH_PATHS = ("/health", "/api/health")
"""Health routes tried on the server's root: faster-whisper-server, speaches and most FastAPI servers
answer ``/health``; local-tts-studio answers ``/api/health`` (its ``/health`` is its web UI's page)."""


@dataclass(frozen=True)
class Endpoint:
    """A backend URL taken apart: where to send, what to call it, and what its query says."""

    base: str
    """The API's base URL without query or credentials (``http://host:port/v1``)."""
    root: str
    """The server's root (the base without a trailing ``/v1``), where health routes live."""
    name: str
    """The URL as events and errors show it (no credentials)."""
    token: str | None
    """A bearer token from the URL's credentials."""
    query: dict[str, str]

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
        path = parts.path.rstrip("/")
        base = urlunsplit((parts.scheme, netloc, path, "", ""))
        root_path = path[: -len("/v1")] if path.endswith("/v1") else path
        root = urlunsplit((parts.scheme, netloc, root_path, "", ""))
        token = unquote(parts.password or parts.username or "") or None
        query = {k: v[-1] for k, v in parse_qs(parts.query).items() if v}
        return cls(base=base, root=root, name=display_name(url), token=token, query=query)


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def short_reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


async def error_excerpt(response: aiohttp.ClientResponse) -> str:
    """A short, one-line excerpt of an error answer: OpenAI's ``error.message`` when it is one."""
    try:
        raw = await response.content.read(ERROR_EXCERPT_BYTES)
    except Exception:
        return ""
    text = raw.decode("utf-8", "replace")
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        body = json.loads(text)
        error = body.get("error") if isinstance(body, dict) else None
        detail = body.get("detail") if isinstance(body, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            text = error["message"]
        elif isinstance(error, str):
            text = error
        elif isinstance(detail, str):
            text = detail
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."


async def read_bounded(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The whole body, refused past ``limit`` bytes (before reading, when ``Content-Length`` says so)."""
    length = response.content_length
    if length is not None and length > limit:
        raise BackendError(f"{what} answered {length} bytes, over the {limit} allowed")
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise BackendError(f"{what} answered over {limit} bytes")
    return bytes(body)


class HTTPClient:
    """One pooled session to one server, made lazily in the running loop (a backend is built before
    the server's loop runs), with every aiohttp failure turned into a short ``BackendError``."""

    def __init__(
        self,
        endpoint: Endpoint,
        what: str,
        *,
        token: str | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        """``what``: how errors name the server ("the speech server"); ``trace_configs``: aiohttp's
        request tracing (tests count connections with it)."""
        self.endpoint = endpoint
        self.what = what
        self.token = token or endpoint.token
        self.connect_timeout_s = connect_timeout_s
        self.trace_configs = list(trace_configs)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def session_or_none(self) -> aiohttp.ClientSession | None:
        return self._session

    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            # A session made in another loop (a test's, or one that ended) cannot be used or closed
            # from this one; it is dropped and a new pool made.
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_S),
                headers=headers,
                trace_configs=self.trace_configs or None,
            )
            self._loop = loop
        return self._session

    def timeout(self, *, total: float | None = None, read: float | None = None) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=total, sock_connect=self.connect_timeout_s, sock_read=read)

    async def _send(
        self, method: str, url: str, limits: aiohttp.ClientTimeout, body
    ) -> aiohttp.ClientResponse:
        """Sends once more when a pooled connection turns out closed by the server before it answered
        (aiohttp retries only idempotent methods by itself, and these are POSTs)."""
        session = self.session()
        for attempt in range(2):
            try:
                return await session.request(method, url, timeout=limits, **body())
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if attempt or isinstance(exc, aiohttp.ClientConnectorError):
                    raise
                log.debug("%s: %s on a pooled connection; sending again", self.endpoint.name, exc)
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def request(
        self, method: str, url: str, limits: aiohttp.ClientTimeout, body=dict
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response to one request, released on exit. ``body()`` gives ``request``'s keyword
        arguments (a function, so that a resend has a fresh multipart form). Timeouts and transport
        failures, while sending or while the caller reads the body, become ``BackendError``."""
        try:
            response = await self._send(method, url, limits, body)
            try:
                yield response
            finally:
                response.release()
        except TimeoutError:
            limit = limits.total or limits.sock_read
            after = f" after {limit:g} s" if limit else ""
            raise BackendError(f"{self.what} at {self.endpoint.name} timed out{after}") from None
        except aiohttp.ClientError as exc:
            raise BackendError(f"{self.what} at {self.endpoint.name} failed: {short_reason(exc)}") from None

    async def check(self, response: aiohttp.ClientResponse, *, json_body: bool = False) -> None:
        """Raises unless ``response`` is a 200 (with a JSON body, if asked)."""
        if response.status != 200:
            raise BackendError(f"{self.what} answered {response.status}: {await error_excerpt(response)}")
        if json_body and not _is_json(response.content_type):
            raise BackendError(f"{self.what} answered {response.content_type}, not JSON")

    async def health(self, timeout_s: float) -> None:
        """Raises unless the server's health route says it is up. A server with no JSON health route
        (a hosted API) passes: the tiny real request that follows in ``probe`` decides."""
        timeout = self.timeout(total=timeout_s)
        for path in HEALTH_PATHS:
            async with self.request("GET", self.endpoint.root + path, timeout) as response:
                if response.status == 200 and _is_json(response.content_type):
                    await read_bounded(response, MAX_JSON_BYTES, self.what)
                    return
                if response.status >= 500:
                    raise BackendError(f"{self.what} health {path} answered {response.status}")

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            with contextlib.suppress(Exception):
                await session.close()


def looks_like_name(model: str | None) -> bool:
    """A server's model name, not a local path (which only the embedded backend can load)."""
    return bool(model) and not model.startswith(("/", ".", "~")) and not Path(model).exists()
