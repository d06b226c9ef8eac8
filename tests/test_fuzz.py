"""Hostile input, generated: Hypothesis fuzzes ``/offer`` and ``/whip`` bodies (random bytes, random
JSON, and mutations of a real offer's SDP) and the data channel of a live call (binary, invalid UTF-8,
deep nesting, huge numbers, oversized types, valid commands with bad values, floods), against a real
``voicepeer serve`` with the real models.

Every HTTP answer must be a 2xx, or a 4xx with a JSON body, never a 5xx; the server must stay healthy,
and every session the fuzzing opened must be gone at the end. The call must survive everything and
still answer a spoken question.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from aiortc.rtcsctptransport import WEBRTC_STRING
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.offers import local_offer
from tests.support.rtc_client import RtcClient
from tests.support.server import ServerProcess
from tests.support.speech import read_wav
from voicepeer.call.text import words

pytestmark = [
    pytest.mark.slow,
    # aiortc and aioice draw from the random module (SCTP and ICE identifiers) while a case runs.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]

HTTP_CASES = 600
MESSAGE_CASES = 500
CONTROL_CASES = 300


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    args = ["--connect-timeout", "2", "--max-sessions", "64", "--offers-per-minute", "0"]
    args += ["--messages-per-second", "100000"]  # the limiter has its own test; here every message parses
    with ServerProcess(*args, log_path=log) as srv:
        yield srv


OFFER_LINES = asyncio.run(local_offer()).split("\r\n")

GARBAGE_LINES = [
    "a=setup:bogus",
    "a=fingerprint:sha-256 zz",
    "a=fingerprint:nonsense",
    "m=audio 9 UDP/TLS/RTP/SAVPF 999",
    "m=audio 99999999999 RTP/AVP 0",
    "m=video 9 UDP/TLS/RTP/SAVPF 96",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "m=text 9 RTP/AVP 0",
    "a=rtpmap:111 opus/notanumber/2",
    "a=rtpmap:abc opus/48000/2",
    "a=candidate:1 1 udp 2122260223 127.0.0.1 notaport typ host",
    "a=candidate:garbage",
    "a=ssrc:1 cname:x",
    "a=ssrc-group:FID 1",
    "a=group:BUNDLE 7 8 9",
    "a=mid:" + "x" * 300,
    "a=extmap:1/sideways urn:x",
    "a=extmap:notanumber urn:x",
    "a=rtcp:abc",
    "a=ice-ufrag:",
    "a=sctp-port:abc",
    "a=max-message-size:-1",
    "c=IN IP4 999.999.999.999",
    "c=IN IP6 ::zz",
    "a=sendonly",
    "a=recvonly",
    "a=inactive",
    "v=1",
    "\x00\x01\x02",
    "a=" + "\u00e9" * 50,
]


@st.composite
def mutated_sdp(draw) -> str:
    lines = list(OFFER_LINES)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["drop", "insert", "replace", "duplicate", "truncate"]))
        i = draw(st.integers(0, max(0, len(lines) - 1)))
        if op == "drop" and lines:
            del lines[i]
        elif op == "insert":
            lines.insert(i, draw(st.sampled_from(GARBAGE_LINES) | st.text(max_size=80)))
        elif op == "replace" and lines:
            lines[i] = draw(st.sampled_from(GARBAGE_LINES) | st.text(max_size=80))
        elif op == "duplicate" and lines:
            lines.insert(i, lines[i])
        elif op == "truncate":
            lines = lines[:i]
    sep = draw(st.sampled_from(["\r\n", "\n", "\r"]))
    return sep.join(lines)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def offer_request(draw) -> tuple[str, bytes, str | None]:
    route = draw(st.sampled_from(["/offer", "/whip"]))
    kind = draw(st.sampled_from(["json-offer", "json-any", "sdp", "bytes", "deep", "huge-number"]))
    if kind == "json-offer":
        body: dict = {"type": draw(st.sampled_from(["offer", "answer", 5, None])), "sdp": draw(mutated_sdp())}
        if draw(st.booleans()):
            body["echo_cancellation"] = draw(json_values)
        if draw(st.booleans()):
            body["unprocessed_mid"] = draw(json_values | st.sampled_from(["0", "1", "2"]))
        data = json.dumps(body).encode()
    elif kind == "json-any":
        data = json.dumps(draw(json_values)).encode()
    elif kind == "sdp":
        data = draw(mutated_sdp()).encode("utf-8", "surrogatepass")
    elif kind == "deep":
        depth = draw(st.integers(100, 5000))
        data = b"[" * depth + b"]" * depth
    elif kind == "huge-number":
        data = b'{"type": "offer", "sdp": ' + b"9" * draw(st.integers(1000, 10000)) + b"}"
    else:
        data = draw(st.binary(max_size=2000))
    content_type = draw(
        st.sampled_from(
            ["application/json", "application/sdp", "text/plain", None, "application/json; charset=x"]
        )
    )
    if route == "/offer" and draw(st.booleans()):
        content_type = "application/json"
    if route == "/whip" and draw(st.booleans()):
        content_type = "application/sdp"
    return route, data, content_type


def post(url: str, data: bytes, content_type: str | None) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, data=data, method="POST")
    if content_type is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


seen: dict[str, int] = {}


@settings(max_examples=HTTP_CASES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(case=offer_request())
def test_fuzzed_offers_get_2xx_or_4xx_json_never_5xx(server, case):
    route, data, content_type = case
    status, body, headers = post(server.url + route, data, content_type)
    key = f"{route} {status}"
    seen[key] = seen.get(key, 0) + 1
    assert status < 500, (route, content_type, data[:300], body[:300])
    if status >= 400:
        payload = json.loads(body)
        assert payload["error"] and payload["message"]
    elif route == "/whip":
        assert status == 201 and headers["Content-Type"] == "application/sdp"


def test_after_fuzzing_offers_the_server_is_healthy_and_holds_no_session(server):
    assert sum(seen.values()) >= HTTP_CASES, seen
    assert any(k.endswith(" 400") for k in seen) and any(k.endswith(" 415") for k in seen), seen
    assert any(k in ("/offer 200", "/whip 201") for k in seen), seen  # some mutations were still valid
    deadline = time.monotonic() + 30
    while server.get_json("/healthz")["sessions"]:
        assert time.monotonic() < deadline, server.get_json("/healthz")
        time.sleep(0.2)
    assert server.get_json("/healthz")["status"] == "ready"
    print("fuzzed offers by answer:", dict(sorted(seen.items())))


class LiveCall:
    """An aiortc client on its own event loop thread, so that synchronous Hypothesis tests can drive it."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.client = self.run(self._connect(url))

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _connect(self, url: str) -> RtcClient:
        client = RtcClient(url)
        await client.connect()
        await client.wait_for(lambda m: m["type"] == "session", 10)
        return client

    async def send_raw_text(self, data: bytes) -> None:
        """Fault injection below aiortc's API: bytes marked as a text message, UTF-8 or not."""
        sctp = self.client.pc.sctp
        sctp._data_channel_queue.append((self.client.channel, WEBRTC_STRING, data))
        await sctp._data_channel_flush()

    async def send(self, message: str | bytes) -> None:
        self.client.channel.send(message)

    def close(self) -> None:
        self.run(self.client.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def live(server):
    call = LiveCall(server.url)
    yield call
    call.close()


command = st.fixed_dictionaries(
    # Not "hangup": it ends the call, as it should, and the fuzzing goes on in this one.
    {
        "type": st.sampled_from(
            ["ping", "interrupt", "mute", "unmute", "say", "speak", "reset", "config", "launch"]
        )
    },
    optional={
        "text": json_values,
        "interrupt": json_values,
        "system_prompt": json_values,
        "max_tokens": json_values,
        "end_silence_ms": json_values,
        "context": json_values,
        "tools": json_values,
        "extra": json_values,
    },
)

message = st.one_of(
    command.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=200),
    st.binary(min_size=1, max_size=300),
    st.integers(100, 3000).map(lambda n: "[" * n + "]" * n),
    st.integers(1000, 6000).map(lambda n: '{"type": ' + "9" * n + "}"),
    st.integers(20_000, 60_000).map(lambda n: json.dumps({"type": "x" * n})),
    st.binary(min_size=1, max_size=200).map(lambda b: ("raw", b"\xff" + b)),
)


@settings(
    max_examples=MESSAGE_CASES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
@given(msg=message)
def test_fuzzed_data_channel_messages_never_end_the_call(live, msg):
    if isinstance(msg, tuple):
        live.run(live.send_raw_text(msg[1]))
    else:
        live.run(live.send(msg))
    assert live.client.pc.connectionState == "connected"


control_seen: dict[int, int] = {}


@settings(
    max_examples=CONTROL_CASES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
@given(msg=message, content_type=st.sampled_from(["application/json", "text/plain", None]))
def test_fuzzed_control_requests_get_2xx_or_4xx_json(server, live, msg, content_type):
    data = msg[1] if isinstance(msg, tuple) else msg if isinstance(msg, bytes) else msg.encode()
    status, body, _ = post(server.url + live.client.answer["control_url"], data, content_type)
    control_seen[status] = control_seen.get(status, 0) + 1
    assert status in (200, 400, 413, 429), (status, data[:200], body[:300])
    payload = json.loads(body)
    assert payload.get("ok") is True or (payload["error"] and payload["message"])
    assert live.client.pc.connectionState == "connected"


def test_after_fuzzing_the_data_channel_the_call_answers_a_question(server, live, make_speech):
    question = make_speech("What is the weather like today?", lead_s=0.5, tail_s=2.0)
    client = live.client
    n_errors = len(client.messages("error"))
    assert n_errors > MESSAGE_CASES // 3, "the fuzzed messages were not answered with error events"
    assert {m["code"] for m in client.messages("error")} >= {"bad_message", "bad_value"}
    assert all(len(json.dumps(m)) < 1000 for m in client.messages("error"))  # descriptions stay short
    # Whatever the fuzz left the call in, the client can set it straight and talk.
    for cmd in ({"type": "unmute"}, {"type": "reset"}, {"type": "config", "end_silence_ms": 300}):
        live.run(live.send(json.dumps(cmd)))
    time.sleep(3)  # let a reply to a fuzzed "say" finish or be cut off by the question

    async def ask() -> dict:
        start = len(client.events)
        client.say(read_wav(question.path)[0])
        _, final = await client.wait_for(
            lambda m: m["type"] == "transcript" and m["final"] and m in [e for _, e in client.events[start:]],
            60,
        )
        return final

    final = live.run(ask(), timeout=90)
    assert {"weather", "today"} <= set(words(final["text"])), final
    assert live.client.pc.connectionState == "connected"
    assert server.get_json("/healthz")["sessions"] == 1
