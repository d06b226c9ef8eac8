"""The ICE servers a client is handed: STUN URLs as configured, and TURN with fresh credentials.

TURN uses coturn's shared-secret ("TURN REST API") scheme: the server and coturn share a secret; a
credential is ``username = "<unix expiry>:<name>"`` and ``password = base64(HMAC-SHA1(secret,
username))``. coturn recomputes it, so nothing is stored, and a leaked credential dies at its expiry.
Clients ask ``GET /ice-servers`` before each call (WHIP clients read ``Link: rel="ice-server"``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IceServer:
    """One RTCIceServer: its URLs and, for TURN, the credential."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"urls": list(self.urls) if len(self.urls) > 1 else self.urls[0]}
        if self.username is not None:
            body["username"] = self.username
            body["credential"] = self.credential
        return body


def turn_credential(
    secret: str, ttl_s: float, name: str = "voicepeer", now: float | None = None
) -> tuple[str, str]:
    """(username, password) valid for ``ttl_s`` seconds in coturn's ``use-auth-secret`` mode."""
    expiry = int((time.time() if now is None else now) + ttl_s)
    username = f"{expiry}:{name}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def client_ice_servers(config: Config, now: float | None = None) -> list[IceServer]:
    """What a client should use for one call: the STUN/TURN URLs of ``--ice-server`` as they are, and
    the ``--turn-url`` servers with a credential minted now."""
    servers = [IceServer((url,)) for url in config.ice.servers]
    secret = turn_secret(config)
    if config.ice.turn_urls and secret:
        username, password = turn_credential(secret, config.ice.turn_ttl_s, now=now)
        servers.append(IceServer(tuple(config.ice.turn_urls), username, password))
    return servers


def turn_secret(config: Config) -> str | None:
    """The TURN secret, from the configuration or its file (read each time: it may appear after the
    server started, when coturn makes it)."""
    if config.ice.turn_secret or not config.ice.turn_secret_file:
        return config.ice.turn_secret
    try:
        return Path(config.ice.turn_secret_file).read_text().strip() or None
    except OSError as exc:
        log.warning("no TURN credentials: cannot read %s: %s", config.ice.turn_secret_file, exc)
        return None
