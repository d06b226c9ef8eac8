"""The client's end-of-candidates, passed to aioice only when it cannot leave the call dead.

aioice acts on end-of-candidates by dropping every ICE component the client gave no usable candidate
for. An offer whose candidates are all mDNS names (``*.local``: what Chromium and Firefox send when
the page has captured no device), that none resolve from here, plus ``a=end-of-candidates``, so loses
every component before our side has gathered: the answer goes out with no candidate and
``c=IN IP4 0.0.0.0``, and the call can never connect. Yet such a client can reach us: its checks to
our candidates arrive from its real address, and ICE learns that address then (a peer-reflexive
candidate). So the offer is applied without its end-of-candidates; once our candidates are gathered
the end is passed on if the client gave at least one usable candidate, and otherwise never: the
client's checks, or the connect timeout, decide. The same holds for an end trickled later (WHIP
``PATCH``).

aiortc also keeps, of a BUNDLE group, the candidates of one m-section only, and not always the first:
Firefox puts its candidates on the audio and data sections and none on a ``bundle-only`` one (the
client's second capture), and the call was left with no remote candidate at all (it connected only
through the client's checks). Every candidate of the group is given to the bundle's transport.
"""

from __future__ import annotations

import asyncio
import logging
import re

from aiortc import RTCPeerConnection
from aiortc.rtcicetransport import RTCIceTransport
from aiortc.sdp import SessionDescription

log = logging.getLogger(__name__)

_END = re.compile(r"^a=end-of-candidates\r?\n", re.MULTILINE)


def without_end_of_candidates(sdp: str) -> tuple[str, bool]:
    """``sdp`` without its ``a=end-of-candidates`` lines, and whether it had any."""
    stripped, count = _END.subn("", sdp)
    return stripped, count > 0


async def add_bundled_candidates(pc: RTCPeerConnection, offer: str) -> None:
    """Gives the transport of the offer's BUNDLE group the candidates of all its m-sections (aioice
    ignores one it already has). Call after the offer is applied."""
    parsed = SessionDescription.parse(offer)
    group = next((g for g in parsed.group if g.semantic == "BUNDLE" and g.items), None)
    if group is None:
        return
    mids = {str(mid) for mid in group.items}
    primary = str(group.items[0])
    candidates = [c for media in parsed.media if media.rtp.muxId in mids for c in media.ice_candidates]
    for candidate in candidates:
        candidate.sdpMid, candidate.sdpMLineIndex = primary, None
    # At once: an mDNS name takes aioice up to a second to resolve, or not. A candidate aioice will
    # not take is one address less to try, not a reason to refuse the offer.
    results = await asyncio.gather(*(pc.addIceCandidate(c) for c in candidates), return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            log.info("a bundled candidate was not taken: %s", result)


def _ice_transports(pc: RTCPeerConnection) -> set[RTCIceTransport]:
    transports = {t.receiver.transport.transport for t in pc.getTransceivers()}
    if pc.sctp is not None:
        transports.add(pc.sctp.transport.transport)
    return transports


def usable_remote_candidates(pc: RTCPeerConnection) -> int:
    """The client's candidates ICE can check (mDNS names that resolved included)."""
    return sum(len(t.getRemoteCandidates()) for t in _ice_transports(pc))


async def end_of_candidates(pc: RTCPeerConnection) -> bool:
    """Tells ICE the client has no more candidates, unless that would drop every component; False
    then (ICE goes on waiting for the client's checks)."""
    if usable_remote_candidates(pc) == 0:
        return False
    await pc.addIceCandidate(None)
    return True
