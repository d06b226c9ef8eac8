"""The Wyoming wire protocol: events, one bounded connection, ``describe``, and the URL.

Over one TCP connection each side writes events, an event being one JSON line ``{"type", "version",
"data"?, "data_length"?, "payload_length"?}``, then ``data_length`` bytes of JSON merged over the
line's own ``data``, then ``payload_length`` bytes of payload (PCM for ``audio-chunk``).

Everything read here is bounded (a header line, an event's data and payload, the events skipped while
waiting) and every wait has a timeout, since a remote server may be hung or answer garbage; each of
those failures is a short ``BackendError``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..base import MAX_TEXT_CHARS, BackendError
from ..registry import BadBackendURL

PROTOCOL_VERSION = "1.10.2"
"""The ``wyoming`` release whose events this module speaks; servers read it as information only."""

CONNECT_TIMEOUT_S = 3.0
"""Connecting to a server on the same network takes milliseconds; a SYN left unanswered (a host that
is gone) would otherwise wait for the kernel's minutes."""

MAX_HEADER_BYTES = 64 * 1024
MAX_DATA_BYTES = 6 * MAX_TEXT_CHARS + 64 * 1024
"""An event's JSON data: a transcript of ``MAX_TEXT_CHARS`` characters even if all are \\u-escaped,
and room for the rest. Refused before it is read."""
MAX_INFO_BYTES = 4 * 1024 * 1024
"""``info`` lists every voice a server could use: 86 kB for wyoming-piper 2.5's whole catalog."""
MAX_PAYLOAD_BYTES = 1024 * 1024
"""One event's payload (wyoming-piper sends 2 kB audio chunks)."""
MAX_OTHER_EVENTS = 1000
"""Events that carry no audio and are not the answer, skipped while waiting for it (transcript
streaming's chunks, empty audio chunks, events of newer protocol versions)."""


@dataclass(frozen=True)
class Event:
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""

    def encode(self) -> bytes:
        header: dict[str, Any] = {"type": self.type, "version": PROTOCOL_VERSION}
        data = json.dumps(self.data, ensure_ascii=False).encode() if self.data else b""
        if data:
            header["data_length"] = len(data)
        if self.payload:
            header["payload_length"] = len(self.payload)
        return json.dumps(header).encode() + b"\n" + data + self.payload


def _length(header: dict[str, Any], key: str) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BackendError(f"garbage from the server: {key} {str(value)[:20]!r}")
    return value


def _excerpt(raw: bytes) -> str:
    return repr(raw[:60].decode(errors="replace"))


class Connection:
    """One connection to a Wyoming server, every read and write bounded in size and time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout_s: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout_s = timeout_s

    @classmethod
    async def open(cls, host: str, port: int, timeout_s: float) -> Connection:
        connect_s = min(CONNECT_TIMEOUT_S, timeout_s)
        try:
            async with asyncio.timeout(connect_s):
                reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEADER_BYTES)
        except TimeoutError:
            raise BackendError(f"timed out: no connection within {connect_s:g} s") from None
        except ConnectionRefusedError:
            raise BackendError("connection refused") from None
        except OSError as exc:
            raise BackendError(f"cannot connect: {exc.strerror or type(exc).__name__}") from None
        return cls(reader, writer, timeout_s)

    async def send(self, events: Iterable[Event]) -> None:
        try:
            for event in events:
                self.writer.write(event.encode())
                async with asyncio.timeout(self.timeout_s):
                    await self.writer.drain()
        except TimeoutError:
            raise BackendError(f"timed out: the server took nothing for {self.timeout_s:g} s") from None
        except OSError as exc:
            raise BackendError(f"the connection broke: {exc.strerror or type(exc).__name__}") from None

    async def receive(self, max_data: int = MAX_DATA_BYTES) -> Event:
        """The next event, within the timeout. Raises ``BackendError`` when the server closes the
        connection, or sends garbage, truncated or oversized events."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._read(max_data)
        except TimeoutError:
            raise BackendError(f"timed out: no answer within {self.timeout_s:g} s") from None
        except OSError as exc:
            raise BackendError(f"the connection broke: {exc.strerror or type(exc).__name__}") from None

    async def _read(self, max_data: int) -> Event:
        try:
            line = await self.reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise BackendError(f"truncated event: {_excerpt(exc.partial)}") from None
            raise BackendError("the server closed the connection") from None
        except asyncio.LimitOverrunError:
            raise BackendError(f"garbage from the server: a line over {MAX_HEADER_BYTES} bytes") from None
        try:
            header = json.loads(line)
        except ValueError:
            raise BackendError(f"garbage from the server: {_excerpt(line)}") from None
        if not isinstance(header, dict) or not isinstance(header.get("type"), str):
            raise BackendError(f"garbage from the server: {_excerpt(line)}")
        kind: str = header["type"][:64]
        data = header.get("data") or {}
        if not isinstance(data, dict):
            raise BackendError(f"garbage from the server: {kind} data {_excerpt(line)}")
        data_length = _length(header, "data_length")
        payload_length = _length(header, "payload_length")
        if data_length > max_data:
            raise BackendError(f"{kind} event with {data_length} bytes of data (at most {max_data})")
        if payload_length > MAX_PAYLOAD_BYTES:
            raise BackendError(
                f"{kind} event with a {payload_length}-byte payload (at most {MAX_PAYLOAD_BYTES})"
            )
        try:
            if data_length:
                more = json.loads(await self.reader.readexactly(data_length))
                if not isinstance(more, dict):
                    raise BackendError(f"garbage from the server: {kind} data is not an object")
                data = {**data, **more}
            payload = await self.reader.readexactly(payload_length) if payload_length else b""
        except asyncio.IncompleteReadError:
            raise BackendError(f"truncated {kind} event: the connection closed inside it") from None
        except ValueError:
            raise BackendError(f"garbage from the server: {kind} data is not JSON") from None
        return Event(kind, data, payload)

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, *_: object) -> None:
        """Closes it: at once after a failure or an abandoned request (nothing is waited for, no
        half-read answer is left behind), politely after a whole answer."""
        if kind is None:
            await self.close()
        else:
            self.abort()

    def abort(self) -> None:
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        try:
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()
        except (TimeoutError, OSError):
            self.abort()


def server_error(event: Event) -> BackendError:
    text = str(event.data.get("text") or event.data.get("code") or "no reason given")
    return BackendError(f"the server failed: {text[:200]}")


async def describe(host: str, port: int, timeout_s: float) -> dict[str, Any]:
    """The server's ``info``: its programs (``asr``, ``tts``, ...) with their models or voices."""
    async with await Connection.open(host, port, timeout_s) as conn:
        await conn.send([Event("describe")])
        for _ in range(MAX_OTHER_EVENTS):
            event = await conn.receive(MAX_INFO_BYTES)
            if event.type == "info":
                return event.data
            if event.type == "error":
                raise server_error(event)
        raise BackendError(f"no info after {MAX_OTHER_EVENTS} events")


def installed_programs(info: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    programs = info.get(kind)
    if not isinstance(programs, list):
        return []
    return [p for p in programs if isinstance(p, dict) and p.get("installed", True)]


def language_code(name: object) -> str:
    """A language as Wyoming names it, as an ISO 639-1 code (``en_US`` -> ``en``)."""
    return str(name).split("_")[0].split("-")[0].lower()


def language_codes(items: Iterable[Any]) -> tuple[str, ...]:
    """ISO 639-1 codes of the models' or voices' languages."""
    found: set[str] = set()
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("languages"), list):
            found.update(language_code(lang) for lang in item["languages"])
    return tuple(sorted(found))


def parse_address(url: str, default_port: int, options: tuple[str, ...]) -> tuple[str, int, dict[str, str]]:
    parts = urlsplit(url)
    if not parts.hostname:
        raise BadBackendURL(f"{url!r} has no host (expected e.g. wyoming://127.0.0.1:{default_port})")
    try:
        port = parts.port or default_port
    except ValueError:
        raise BadBackendURL(f"{url!r}: the port is not a number") from None
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - set(options))
    if unknown:
        takes = ", ".join(options) or "no options"
        raise BadBackendURL(f"{url!r}: unknown option {', '.join(unknown)} (a wyoming URL takes {takes})")
    return parts.hostname, port, query
