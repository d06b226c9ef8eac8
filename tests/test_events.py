import asyncio
import json

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from peer import events
from peer.events import EventChannel, ProtocolError, parse_client_message


def test_event_shapes_follow_the_protocol():
    assert events.state("thinking") == {"type": "state", "state": "thinking"}
    assert events.transcript(2, "hi", final=False) == {
        "type": "transcript",
        "turn": 2,
        "final": False,
        "text": "hi",
    }
    assert events.reply(2, "yo", final=True) == {"type": "reply", "turn": 2, "final": True, "text": "yo"}
    assert events.error("x", "y") == {"type": "error", "code": "x", "message": "y"}
    assert events.metrics(3, {"a_ms": 1.5}) == {"type": "metrics", "turn": 3, "a_ms": 1.5}


async def test_events_sent_before_the_channel_opens_are_delivered_in_order():
    """A real aiortc data channel pair on loopback: the server has things to say before SCTP is up."""
    a = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    b = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    received: list[dict] = []
    done = asyncio.Event()

    @b.on("datachannel")
    def on_datachannel(channel):
        @channel.on("message")
        def on_message(text):
            received.append(json.loads(text))
            if len(received) == 3:
                done.set()

    ch = EventChannel()
    seen: list[dict] = []
    ch.add_listener(seen.append)
    ch.attach(a.createDataChannel("events"))
    ch.send(events.state("listening"))
    ch.send(events.state("thinking"))
    try:
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        async with asyncio.timeout(10):
            while ch.sent == 0 and not ch._is_open():
                await asyncio.sleep(0.01)
        ch.send(events.state("speaking"))
        async with asyncio.timeout(10):
            await done.wait()
    finally:
        await a.close()
        await b.close()
    assert [m["state"] for m in received] == ["listening", "thinking", "speaking"]
    assert len(seen) == 3


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"type": 5}', "JSON object"),
        ('{"type": "launch_rockets"}', "unknown message type"),
        (b"\x00\x01", "binary"),
    ],
)
def test_bad_client_messages_are_rejected_with_a_reason(raw, match):
    with pytest.raises(ProtocolError, match=match):
        parse_client_message(raw)


def test_ping_is_accepted():
    assert parse_client_message('{"type": "ping"}') == {"type": "ping"}
