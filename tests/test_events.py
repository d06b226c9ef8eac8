import asyncio
import json

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from voicepeer.call import events
from voicepeer.call.events import EventChannel, EventHub, EventQueue, ProtocolError, parse_client_message


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

    hub = EventHub()
    seen: list[dict] = []
    hub.subscribe(seen.append)
    sink = EventChannel(a.createDataChannel("events"))
    hub.subscribe(sink)
    hub.send(events.state("listening"))
    hub.send(events.state("thinking"))
    try:
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        async with asyncio.timeout(10):
            while sink.sent == 0 and not sink._is_open():
                await asyncio.sleep(0.01)
        hub.send(events.state("speaking"))
        async with asyncio.timeout(10):
            await done.wait()
    finally:
        await a.close()
        await b.close()
    assert [m["state"] for m in received] == ["listening", "thinking", "speaking"]
    assert len(seen) == 3
    sink(events.state("listening"))  # on a closed channel: dropped, never raised


def test_a_hub_keeps_delivering_when_one_sink_fails():
    hub = EventHub()
    got: list[dict] = []

    def broken(_event):
        raise RuntimeError("sink bug")

    hub.subscribe(broken)
    unsubscribe = hub.subscribe(got.append)
    hub.send({"type": "a"})
    unsubscribe()
    hub.send({"type": "b"})
    assert got == [{"type": "a"}]  # delivered past the broken sink, and not after unsubscribing


async def test_a_slow_reader_queue_is_bounded_and_told_what_it_lost():
    queue = EventQueue(maxsize=4)
    for i in range(10):
        queue({"type": "n", "i": i})
    assert len(queue) == 4 and queue.dropped == 6
    first = await queue.get()
    assert first["code"] == "events_dropped" and "6 events" in first["message"]
    assert [(await queue.get())["i"] for _ in range(4)] == [6, 7, 8, 9]
    queue({"type": "n", "i": 10})
    queue.close()
    queue({"type": "n", "i": 11})  # after close: ignored
    assert (await queue.get())["i"] == 10
    assert await queue.get() is None


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"type": 5}', "JSON object"),
        ('{"type": "launch_rockets"}', "unknown message type"),
        (b"\x00\x01", "binary"),
        ("[" * 2000 + "]" * 2000, "not acceptable JSON"),
        ('{"type": ' + "9" * 5000 + "}", "not acceptable JSON"),
        ('{"type": "' + "x" * 200_000 + '"}', "at most"),
        ('{"type": "' + "x" * 5000 + '"}', "unknown message type 'xxx"),
    ],
)
def test_bad_client_messages_are_rejected_with_a_reason(raw, match):
    with pytest.raises(ProtocolError, match=match):
        parse_client_message(raw)


def test_ping_is_accepted():
    assert parse_client_message('{"type": "ping"}') == {"type": "ping"}


def test_a_data_channel_the_client_does_not_read_holds_a_bounded_backlog():
    from voicepeer.call.events import MAX_BUFFERED_BYTES, EventChannel

    class Unread:
        """A stand-in for an open RTCDataChannel whose peer reads nothing: what is sent stays buffered."""

        readyState = "open"

        def __init__(self) -> None:
            self.bufferedAmount = 0
            self.sent: list[str] = []

        def on(self, *_args) -> None:
            pass

        def send(self, text: str) -> None:
            self.sent.append(text)
            self.bufferedAmount += len(text)

    channel = Unread()
    sink = EventChannel(channel)
    for i in range(3000):
        sink({"type": "reply", "turn": 0, "final": False, "text": "x" * 8000, "i": i})
    assert channel.bufferedAmount <= MAX_BUFFERED_BYTES + 9000 and sink.dropped > 2800
    sink.answer({"type": "pong"})  # an answer to the client's own message goes past the bound
    assert channel.sent[-1] == '{"type":"pong"}'
    channel.bufferedAmount = 0  # the client reads again: first it learns what it lost
    sink({"type": "state", "state": "listening"})
    assert '"events_dropped"' in channel.sent[-2] and '"listening"' in channel.sent[-1]
