"""Real SDP offers made by aiortc, for the tests that post them without connecting."""

from __future__ import annotations

from aiortc import RTCConfiguration, RTCPeerConnection


async def local_offer(
    direction: str | None = "sendrecv", channel: bool = True, *, second: str | None = None
) -> str:
    """An offer with an audio m-line of ``direction`` (None: no audio), with ``second`` a second audio
    m-line of that direction (the unprocessed capture's), and, with ``channel``, the ``events`` data
    channel; the peer connection that made it is closed."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        if channel:
            pc.createDataChannel("events")
        if direction is not None:
            pc.addTransceiver("audio", direction=direction)
        if second is not None:
            pc.addTransceiver("audio", direction=second)
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()
