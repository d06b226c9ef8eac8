"""Real WebRTC calls on loopback: an aiortc client against the real server and the real models."""

from __future__ import annotations

import asyncio
import os
import threading

import aiohttp
import numpy as np
import pytest

from tests.support.calls import call, serve, wait_until
from tests.support.rtc_client import RtcClient
from tests.support.speech import read_wav
from voicepeer.backends.chain import Chain
from voicepeer.backends.llm import LLM, Message
from voicepeer.backends.stages import LLMChain
from voicepeer.call.services import Services
from voicepeer.call.text import words
from voicepeer.config import ServerConfig
from voicepeer.runtime import priorities
from voicepeer.transport.app import STATE

pytestmark = pytest.mark.slow


async def test_a_spoken_question_gets_a_transcript_a_streamed_reply_and_audio(services, make_speech):
    question = make_speech("Tell me about the weather in London.", lead_s=0.5, tail_s=1.5)
    async with call(services) as (_server, client):
        sent_at = client.say(read_wav(question.path)[0])
        speech_end = sent_at + question.speech_end_s
        _, final = await client.wait_for(lambda m: m["type"] == "transcript" and m["final"], 30)
        assert {"weather", "london"} <= set(words(final["text"]))
        _, metrics = await client.wait_for(lambda m: m["type"] == "metrics", 60)
        replies = client.messages("reply")
        assert replies[-1]["final"] and replies[-1]["text"] and replies[-1]["turn"] == final["turn"] == 1
        states = [m["state"] for m in client.messages("state")]
        assert states[:4] == ["listening", "thinking", "speaking", "listening"]
        assert 0 < metrics["transcript_ms"] < metrics["llm_first_token_ms"] < metrics["first_frame_sent_ms"]
        assert services.load.observed == 1  # the turn told admission what it cost
        onset = client.received.voiced_after(speech_end)
        assert onset is not None, "no reply audio reached the client"
        voiced = [p for t, p in zip(client.received.times, client.received.pcm, strict=True) if t >= onset]
        assert np.sqrt(np.mean(np.concatenate(voiced).astype(np.float64) ** 2)) > 300


async def test_closing_the_client_releases_the_session(services):
    async with call(services) as (server, client):
        session = server.app[STATE].sessions[client.session_id]
        await wait_until(lambda: session.frames_in > 10, 10)
    assert session.closed and session.pc.connectionState == "closed"
    assert not session._tasks and session.output.readyState == "ended"


async def test_the_calls_decoder_thread_runs_on_the_media_paths_priority(services):
    """aiortc decodes the microphone in a thread the loop made (an ordinary one): the session raises it
    to the media helpers' priority, or an ordinary thread holding the interpreter lock keeps the loop
    waiting."""
    async with call(services) as (server, client):
        session = server.app[STATE].sessions[client.session_id]
        await wait_until(lambda: session.frames_in > 10, 10)
        inbound = session._inbound
        receiver = next(t.receiver for t in session.pc.getTransceivers() if t.receiver.track is inbound)
        decoder = receiver._RTCRtpReceiver__decoder_thread.native_id
        loop = threading.get_native_id()
        if os.sched_getscheduler(loop) & ~os.SCHED_RESET_ON_FORK == os.SCHED_RR:
            assert os.sched_getscheduler(decoder) & ~os.SCHED_RESET_ON_FORK == os.SCHED_RR
            assert os.sched_getparam(decoder).sched_priority == priorities.HELPER_RT_PRIORITY
        elif os.getpriority(os.PRIO_PROCESS, loop) == priorities.MEDIA_NICE:
            assert os.getpriority(os.PRIO_PROCESS, decoder) == priorities.MEDIA_NICE
        else:
            pytest.skip("the media path runs at no raised priority here")


async def test_server_shutdown_closes_live_sessions(services):
    server = await serve(services)
    client = RtcClient(str(server.make_url("")))
    await client.connect()
    await client.wait_for(lambda m: m["type"] == "session", 10)
    session = server.app[STATE].sessions[client.session_id]
    await server.close()
    assert session.closed and session.pc.connectionState == "closed" and not session._tasks
    await client.close()


class DeadLLM(LLM):
    """Fault injection: a backend that accepts the request and never answers."""

    async def stream(self, messages: list[Message], options=None):
        await asyncio.Event().wait()
        yield ""


async def test_a_dead_llm_gives_an_error_and_a_spoken_apology_and_the_session_goes_on(services, make_speech):
    question = make_speech("What is the capital of France?", lead_s=0.5, tail_s=1.5)
    # The LLM stage's timeout is its chain's (``--llm-timeout`` builds it so).
    llm = LLMChain(Chain("llm", [DeadLLM()], timeout_s=1.0))
    dead = Services(asr=services.asr, llm=llm, tts=services.tts)
    async with call(dead) as (_server, client):
        pcm = read_wav(question.path)[0]
        client.say(pcm)
        t_err, err = await client.wait_for(lambda m: m["type"] == "error", 30)
        assert err["code"] == "llm_failed" and "within 1 s" in err["message"]
        await client.wait_for(lambda m: m["type"] == "metrics", 30)
        assert client.received.voiced_after(t_err - 0.5) is not None, "the apology was not spoken"
        assert [m for m in client.messages("reply") if m["final"]] == []  # nothing pretends to be a reply
        # The session survives: a second question is still heard.
        client.say(pcm)
        await client.wait_for(lambda m: m["type"] == "transcript" and m["turn"] == 2, 30)


async def test_bad_data_channel_messages_get_an_error_event(services):
    async with call(services) as (_server, client):
        client.channel.send("{oops")
        client.channel.send('{"type": "ping"}')
        _, err = await client.wait_for(lambda m: m["type"] == "error", 5)
        assert err["code"] == "bad_message"
        await client.wait_for(lambda m: m["type"] == "pong", 5)


async def test_a_client_that_vanishes_is_closed_by_the_media_watchdog(services):
    async with call(services, server=ServerConfig(media_timeout_s=1.0)) as (server, client):
        session = server.app[STATE].sessions[client.session_id]
        await wait_until(lambda: session.frames_in > 10, 10)
        # The client stops sending without hanging up, like a laptop whose lid closes.
        client.mic.stop()
        await wait_until(lambda: not server.app[STATE].sessions, 10)
        assert session.closed and session.pc.connectionState == "closed"


class StallingLLM(LLM):
    """Fault injection: a backend that writes one sentence, then stops answering."""

    async def stream(self, messages: list[Message], options=None):
        for token in ["Paris", " is", " lovely", ".", " It"]:
            yield token
        await asyncio.Event().wait()


async def test_an_llm_that_stalls_mid_reply_keeps_what_was_said_and_adds_no_apology(services, make_speech):
    question = make_speech("Tell me about the weather in London.", lead_s=0.5, tail_s=1.5)
    llm = LLMChain(Chain("llm", [StallingLLM()], timeout_s=1.0))
    stalling = Services(asr=services.asr, llm=llm, tts=services.tts)
    async with call(stalling) as (_server, client):
        client.say(read_wav(question.path)[0])
        _, err = await client.wait_for(lambda m: m["type"] == "error", 30)
        assert err["code"] == "llm_failed"
        _, final = await client.wait_for(lambda m: m["type"] == "reply" and m["final"], 30)
        assert final["text"] == "Paris is lovely."


async def test_an_offer_that_never_connects_is_closed(services):
    from aiortc import RTCConfiguration, RTCPeerConnection

    server = await serve(services, server=ServerConfig(connect_timeout_s=1.0))
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.createDataChannel("events")
        pc.addTransceiver("audio", direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
        async with aiohttp.ClientSession() as http, http.post(server.make_url("/offer"), json=offer) as r:
            assert r.status == 200
        # The client never applies the answer, so ICE never starts on its side.
        assert len(server.app[STATE].sessions) == 1
        await wait_until(lambda: not server.app[STATE].sessions, 10)
    finally:
        await pc.close()
        await server.close()


async def test_a_failing_inbound_path_closes_the_session_with_an_error(services):
    async with call(services) as (server, client):
        session = server.app[STATE].sessions[client.session_id]

        def broken(*_args):
            raise RuntimeError("injected front-end fault")

        session.call.detector.process = broken
        _, err = await client.wait_for(lambda m: m["type"] == "error", 10)
        assert err["code"] == "internal"
        await wait_until(lambda: not server.app[STATE].sessions, 10)
