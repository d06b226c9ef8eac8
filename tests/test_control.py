"""The control API and the events stream on real aiortc calls with the real models: the same commands on
the data channel and over HTTP, the Server-Sent Events stream that follows a call, and bad input."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.support.calls import call, serve, wait_until
from tests.support.rtc_client import RtcClient
from tests.support.speech import read_wav
from voicepeer.backends.llm import LLM, LLMOptions, Message
from voicepeer.call.services import Services
from voicepeer.call.text import words
from voicepeer.transport.app import STATE

pytestmark = pytest.mark.slow


async def read_events(response: aiohttp.ClientResponse, into: list[dict[str, Any]]) -> None:
    """Parses a Server-Sent Events body into ``into`` until the server ends it."""
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("data: "):
            into.append(json.loads(line[6:]))


async def post_control(client: RtcClient, answer: dict[str, Any], message: object) -> tuple[int, dict]:
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            client.base_url + answer["control_url"], data=body, headers={"Content-Type": "application/json"}
        ) as r,
    ):
        return r.status, await r.json()


async def test_the_events_stream_starts_with_the_state_follows_the_call_and_ends_with_it(
    services, make_speech
):
    question = make_speech("Tell me about the weather in London.", lead_s=0.5, tail_s=1.5)
    server = await serve(services)
    client = RtcClient(str(server.make_url("")))
    streamed: list[dict[str, Any]] = []
    try:
        answer = await client.connect()
        session_id = answer["session_id"]
        cap = server.app[STATE].capabilities.of(session_id)
        assert answer["events_url"] == f"/sessions/{session_id}/events?cap={cap}"
        assert answer["control_url"] == f"/sessions/{session_id}/control?cap={cap}"
        assert answer["session_url"] == f"/sessions/{session_id}?cap={cap}"
        async with aiohttp.ClientSession() as http, http.get(client.base_url + answer["events_url"]) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
            reader = asyncio.get_running_loop().create_task(read_events(r, streamed))
            await wait_until(lambda: len(streamed) >= 3, 10)
            assert streamed[:3] == [
                {"type": "session", "id": session_id},
                {"type": "state", "state": "listening"},
                {"type": "muted", "muted": False},
            ]
            client.say(read_wav(question.path)[0])
            await client.wait_for(lambda m: m["type"] == "metrics", 60)
            await wait_until(lambda: any(m["type"] == "metrics" for m in streamed), 5)
            # The stream carries what the data channel carries, in the same order.
            channel = [m for _, m in client.events if m["type"] in ("transcript", "reply", "metrics")]
            assert [m for m in streamed if m["type"] in ("transcript", "reply", "metrics")] == channel
            await client.close()  # the call ends: so does its stream
            async with asyncio.timeout(15):
                await reader
        await wait_until(lambda: not server.app[STATE].sessions, 5)
        async with aiohttp.ClientSession() as http, http.get(client.base_url + answer["events_url"]) as r:
            assert r.status == 404 and (await r.json())["error"] == "not_found"
    finally:
        await client.close()
        await server.close()


async def test_a_reader_that_does_not_read_never_blocks_the_call_or_grows_without_bound(services):
    async with call(services) as (server, client):
        session = server.app[STATE].sessions[client.session_id]
        host, port = server.host, server.port
        # A raw socket with a tiny receive buffer that reads nothing after the request.
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET {client.answer['events_url']} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        await wait_until(lambda: len(session.call._queues) == 1, 5)
        queue = next(iter(session.call._queues))
        big = "x" * 8000
        for i in range(3000):  # ~24 MB of events, far past what the socket buffers hold
            session.call.events.send({"type": "reply", "turn": 0, "final": False, "text": big, "i": i})
            if i % 100 == 0:
                await asyncio.sleep(0)
        await wait_until(lambda: queue.dropped > 2000, 5)
        assert len(queue) <= 256
        # The call is unharmed: it answers on its data channel. The flood went to that channel too, and
        # the pong waits behind its backlog, bounded at MAX_BUFFERED_BYTES (256 KiB), and is never dropped:
        # a congested channel delivers it late, not never. The deadline is generous for a loaded machine.
        client.channel.send('{"type": "ping"}')
        await client.wait_for(lambda m: m["type"] == "pong", 30)
        # Once the reader reads again, it is told what it lost.
        head = await reader.read(200_000)
        while b"events_dropped" not in head:
            head += await asyncio.wait_for(reader.read(200_000), 5)
        writer.close()


async def test_mute_stops_listening_and_a_turn_in_progress_ends_there(services, make_speech):
    question = make_speech("What is the weather like today?", lead_s=0.5, tail_s=1.5)
    long = make_speech(
        "Tell me about the weather in London tomorrow morning and then in Paris in the evening.",
        lead_s=0.3,
        tail_s=0.5,
    )
    async with call(services) as (_server, client):
        client.channel.send('{"type": "mute"}')
        await client.wait_for(lambda m: m["type"] == "muted" and m["muted"], 5)
        client.say(read_wav(question.path)[0])
        await client.voice.wait_idle()  # all of it sent, the 1.5 s of silence after the words too
        assert client.messages("vad") == [] and client.messages("transcript") == []

        client.channel.send('{"type": "unmute"}')
        await client.wait_for(lambda m: m["type"] == "muted" and not m["muted"], 5)
        client.say(read_wav(long.path)[0])
        await client.wait_for(lambda m: m["type"] == "vad", 10)
        await asyncio.sleep(1.6)  # the user speaks "Tell me about the weather in...", then lets go of the key
        client.channel.send('{"type": "mute"}')
        _, final = await client.wait_for(lambda m: m["type"] == "transcript" and m["final"], 20)
        heard = set(words(final["text"]))
        assert "weather" in heard and "paris" not in heard and "evening" not in heard, final
        await client.wait_for(lambda m: m["type"] == "reply" and m["final"], 60)


async def test_say_over_http_gets_a_spoken_reply(services):
    async with call(services) as (_server, client):
        answer = client.answer
        status, body = await post_control(
            client, answer, {"type": "say", "text": "What is the capital of France?"}
        )
        assert status == 200 and body == {"ok": True, "command": "say"}
        t, final = await client.wait_for(lambda m: m["type"] == "transcript" and m["final"], 10)
        assert final["text"] == "What is the capital of France?" and final["turn"] == 1
        await client.wait_for(lambda m: m["type"] == "metrics", 60)
        assert [m for m in client.messages("reply") if m["final"]]
        assert client.received.voiced_after(t) is not None, "the reply to a typed message was not spoken"


class SpyLLM(LLM):
    """The real model, with a record of what each request asked of it (not a fake: it answers)."""

    def __init__(self, real: LLM) -> None:
        self.real = real
        self.options = real.options
        self.requests: list[tuple[list[Message], LLMOptions | None]] = []

    def stream(self, messages: list[Message], options: LLMOptions | None = None):
        self.requests.append((messages, options))
        return self.real.stream(messages, options)


async def test_config_changes_the_next_reply_and_bad_values_change_nothing(services):
    spy = SpyLLM(services.llm)
    spied = Services(asr=services.asr, llm=spy, tts=services.tts)
    async with call(spied) as (server, client):
        call_ = server.app[STATE].sessions[client.session_id].call
        answer = client.answer
        before = call_.settings
        refused = [
            ({"type": "config", "end_silence_ms": 10}, "end_silence_ms"),
            ({"type": "config", "end_silence_ms": "300"}, "end_silence_ms"),
            ({"type": "config", "max_tokens": True}, "max_tokens"),
            ({"type": "config", "max_tokens": 64, "system_prompt": ""}, "system_prompt"),
            ({"type": "config", "system_prompt": "x" * 5000}, "system_prompt"),
            ({"type": "config", "temperature": 2}, "temperature"),
            ({"type": "say", "text": ""}, "text"),
            ({"type": "say"}, "text"),
        ]
        for message, field in refused:
            status, body = await post_control(client, answer, message)
            assert status == 400 and body["field"] == field, (message, body)
            client.channel.send(json.dumps(message))  # the data channel answers with error events
        await wait_until(lambda: len(client.messages("error")) >= len(refused), 5)
        assert [m["field"] for m in client.messages("error")] == [f for _, f in refused]
        assert all(m["code"] in ("bad_value", "bad_field") for m in client.messages("error"))
        assert call_.settings == before and not spy.requests
        status, body = await post_control(client, answer, b"{nope")
        assert status == 400 and body["error"] == "bad_message"
        status, body = await post_control(client, answer, {"type": "launch"})
        assert status == 400 and body["error"] == "bad_message"

        prompt = "You are a pirate. Answer every question like a pirate would, in one sentence."
        status, body = await post_control(
            client,
            answer,
            {"type": "config", "system_prompt": prompt, "max_tokens": 40, "end_silence_ms": 600},
        )
        assert status == 200 and body["settings"] == {
            "language": "en",
            "system_prompt": prompt,
            "max_tokens": 40,
            "end_silence_ms": 600,
        }
        _, event = await client.wait_for(lambda m: m["type"] == "config", 5)
        assert event["system_prompt"] == prompt
        assert call_.detector.params.end_silence_ms == 600
        client.channel.send(json.dumps({"type": "say", "text": "Where is the treasure?"}))
        await client.wait_for(lambda m: m["type"] == "reply" and m["final"], 60)
        messages, options = spy.requests[-1]
        assert messages[0] == {"role": "system", "content": prompt}
        assert options is not None and options.max_tokens == 40

        # reset forgets the conversation.
        assert call_.conversation.history.turns
        client.channel.send('{"type": "reset"}')
        await client.wait_for(lambda m: m["type"] == "reset", 5)
        assert call_.conversation.history.turns == []


async def test_control_of_an_unknown_session_is_404(services):
    server = await serve(services)
    try:
        async with aiohttp.ClientSession(base_url=str(server.make_url(""))) as http:
            async with http.post("/sessions/nope/control", json={"type": "mute"}) as r:
                assert r.status == 404 and (await r.json())["error"] == "not_found"
            async with http.get("/sessions/nope/events") as r:
                assert r.status == 404
    finally:
        await server.close()


async def test_a_call_has_a_bounded_number_of_events_streams(services):
    from voicepeer.transport.sessions import MAX_FOLLOWERS

    async with call(services) as (_server, client):
        url = client.base_url + client.answer["events_url"]
        async with aiohttp.ClientSession() as http:
            streams = [await http.get(url) for _ in range(MAX_FOLLOWERS)]
            assert all(r.status == 200 for r in streams)
            async with http.get(url) as r:
                assert r.status == 429 and (await r.json())["error"] == "too_many_followers"
            for r in streams:
                r.close()
