import json

import pytest

from peer import events
from peer.events import EventChannel, ProtocolError, parse_client_message


class FakeChannel:
    """Stands in for aiortc's RTCDataChannel, whose open/close we drive here."""

    def __init__(self) -> None:
        self.readyState = "connecting"
        self.sent: list[str] = []
        self.handlers = {}

    def on(self, name, handler):
        self.handlers[name] = handler

    def send(self, text: str) -> None:
        assert self.readyState == "open"
        self.sent.append(text)

    def open(self) -> None:
        self.readyState = "open"
        self.handlers["open"]()


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


def test_events_sent_before_the_channel_opens_are_delivered_in_order():
    ch = EventChannel()
    seen = []
    ch.add_listener(seen.append)
    ch.send(events.state("listening"))
    fake = FakeChannel()
    ch.attach(fake)
    ch.send(events.state("thinking"))
    assert fake.sent == []
    fake.open()
    ch.send(events.state("speaking"))
    assert [json.loads(s)["state"] for s in fake.sent] == ["listening", "thinking", "speaking"]
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
