"""The deployment, built and run: the images, the compose stack in a real dockerd, a real Chromium
through the HTTPS front door with its media relayed by coturn, calls transcribed and voiced by the
inference services (and answered by the peers' own models while one is stopped), replicas that share
the calls, a drain on SIGTERM, and a ``down`` that leaves nothing. ``make test-deploy`` builds the
images first."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import pytest

from tests.deploy.stack import FRONT, Stack
from tests.support import browser
from tests.support.offers import local_offer
from tests.support.rtc_client import RtcClient
from tests.support.speech import read_wav
from voicepeer.call.text import words

pytestmark = [pytest.mark.deploy, pytest.mark.slow]

SERVICES = ["peer1", "peer2", "asr", "tts", "llm", "frontdoor"]
INFERENCE = {"asr": "wyoming://asr:10300", "tts": "wyoming://tts:10200", "llm": "http://llm:8000/v1"}
"""The backend each stage of a peer uses while the inference services are up (docker/compose.yaml)."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    env = {
        "VOICEPEER_AUTH_TOKEN": secrets.token_urlsafe(24),
        "VOICEPEER_MAX_SESSIONS": "1",  # one call fills a replica
        "VOICEPEER_DRAIN_S": "20",
    }
    s = Stack("vpdeploy", env, tmp_path_factory.mktemp("stack"))
    s.down()
    started = time.monotonic()
    s.compose("up", "-d", "--no-build")
    s.wait_healthy(SERVICES)
    s.up_to_healthy_s = round(time.monotonic() - started, 1)
    print(f"stack: up -> healthy in {s.up_to_healthy_s} s")
    try:
        yield s
    finally:
        if s.containers():  # not yet downed by test_down_leaves_no_container (the last test)
            (s.log_dir / "compose.log").write_text(s.logs())
            s.down()


def replica_of(url: str) -> str:
    assert url.startswith("/r/peer"), url
    return url.split("/")[2]


def requests_to(backends: dict, stage: str, name: str) -> int:
    """How many requests a replica's ``stage`` sent to the backend ``name`` (its /healthz count)."""
    (state,) = [b for b in backends[stage]["backends"] if b["name"] == name]
    return state["requests"]


def final(kind: str, turn: int):
    return lambda m: m["type"] == kind and m.get("final") and m["turn"] == turn


async def connected_call(stack: Stack) -> tuple[RtcClient, str]:
    """A call through the front door (its events channel open) and the replica that holds it."""
    await asyncio.to_thread(stack.wait_idle)
    client = RtcClient(FRONT, token=stack.token, ssl=False)
    await client.connect()
    await client.wait_for(lambda m: m["type"] == "session", 20)
    return client, replica_of(client.answer["session_url"])


async def answered(client: RtcClient, turn: int, expected: set[str]) -> dict:
    """Waits for turn ``turn``'s transcript (``expected``: some of its words, tiny.en may miss one)
    and its whole spoken reply; returns the final transcript."""
    _, transcript = await client.wait_for(final("transcript", turn), 60)
    assert len(expected & set(words(transcript["text"]))) >= 2, transcript
    await client.wait_for(lambda m: m["type"] == "metrics" and m["turn"] == turn, 90)
    replies = [m for m in client.messages("reply") if m.get("final") and m["turn"] == turn]
    assert replies and replies[0]["text"].strip(), f"turn {turn} unanswered:\n{client.summary()}"
    return transcript


def test_the_front_door_serves_the_page_and_needs_the_token(stack):
    status, _, body = stack.request("GET", "/healthz")
    assert status == 200 and body["status"] == "ready", body
    status, _, body = stack.request("GET", "/ice-servers", token=False)
    assert status == 401
    status, _, body = stack.request("GET", "/ice-servers")
    assert status == 200
    (turn,) = body["iceServers"]
    assert turn["urls"].startswith("turn:127.0.0.1:3478") and turn["username"] and turn["credential"]


def test_a_browser_call_over_https_with_media_relayed_by_coturn(stack, make_speech):
    question = make_speech(browser.QUESTION, lead_s=2.0, tail_s=15.0)
    # Its own Playwright, closed after this test: the module's other tests run event loops of their own.
    sync_api = pytest.importorskip("playwright.sync_api")
    with (
        sync_api.sync_playwright() as pw,
        browser.chromium_page(pw, Path(question.path), ignore_https_errors=True) as page,
    ):
        browser.connect(page, f"{FRONT}/?ice=relay#token={stack.token}", timeout_ms=40_000)
        assert page.evaluate(browser.SELECTED_CANDIDATE_TYPE_JS) == "relay"
        browser.expect_spoken_answer(page, browser.QUESTION, 40_000, 90_000)
        page.click("#connect")


async def test_a_spoken_call_is_transcribed_answered_and_voiced_by_the_inference_services(stack, make_speech):
    question = make_speech("Tell me about the weather in London today.", lead_s=0.5, tail_s=1.5)
    await asyncio.to_thread(stack.wait_active, INFERENCE)
    client, replica = await connected_call(stack)
    try:
        before = await asyncio.to_thread(stack.backends, replica)
        sent_at = client.say(read_wav(question.path)[0])
        await answered(client, 1, {"weather", "london", "today"})
        onset = client.received.voiced_after(sent_at + question.speech_end_s)
        assert onset is not None, "no reply audio reached the client"
        after = await asyncio.to_thread(stack.backends, replica)
    finally:
        await client.close()
    # Every stage ran on its server: their request counts grew, the peer's own models' did not, and
    # no stage moved during the call.
    for stage, name in INFERENCE.items():
        assert after[stage]["active"] == name, after
        assert requests_to(after, stage, name) > requests_to(before, stage, name), (stage, before, after)
        assert requests_to(after, stage, "embedded") == requests_to(before, stage, "embedded"), stage
    assert client.messages("backend") == [] and client.messages("error") == []


async def test_a_call_goes_on_with_the_peers_own_asr_while_the_asr_server_is_stopped(stack, make_speech):
    first = make_speech("What is the capital of France?", lead_s=0.5, tail_s=1.5)
    second = make_speech("Tell me about the weather in London today.", lead_s=0.5, tail_s=1.5)
    asr = INFERENCE["asr"]
    await asyncio.to_thread(stack.wait_active, INFERENCE)
    client, replica = await connected_call(stack)
    loop = asyncio.get_running_loop()
    try:
        client.say(read_wav(first.path)[0])
        await answered(client, 1, {"capital", "france", "what"})

        await asyncio.to_thread(stack.docker, "stop", stack.container("asr"))
        stopped_at = loop.time()
        client.say(read_wav(second.path)[0])
        # The turn's first transcription fails on the dead server, is retried on the embedded whisper,
        # and the stage stays there: one backend event, and the turn is answered all the same.
        t_switch, switch = await client.wait_for(lambda m: m["type"] == "backend", 60)
        assert (switch["stage"], switch["from"], switch["to"]) == ("asr", asr, "embedded"), switch
        assert switch["reason"]
        await answered(client, 2, {"weather", "london", "today"})
        t_answered = loop.time()
        assert client.messages("error") == []
        status = await asyncio.to_thread(stack.backends, replica)
        assert status["asr"]["active"] == "embedded" and requests_to(status, "asr", "embedded") > 0
        assert status["tts"]["active"] == INFERENCE["tts"], status  # the other stages stay where they were

        # Back: the next probe (every 5 s, --probe-interval) after the server answers moves it back.
        await asyncio.to_thread(stack.docker, "start", stack.container("asr"))
        started_at = loop.time()
        t_back, back = await client.wait_for(lambda m: m["type"] == "backend" and m["to"] == asr, 90)
        assert (back["stage"], back["from"]) == ("asr", "embedded"), back
        print(
            f"asr stopped: backend event after {t_switch - stopped_at:.1f} s ({switch['reason']}), turn "
            f"answered after {t_answered - stopped_at:.1f} s; asr started: back after "
            f"{t_back - started_at:.1f} s"
        )
        served = requests_to(await asyncio.to_thread(stack.backends, replica), "asr", asr)
        client.say(read_wav(first.path)[0])
        await answered(client, 3, {"capital", "france", "what"})
        assert requests_to(await asyncio.to_thread(stack.backends, replica), "asr", asr) > served
        assert len(client.messages("backend")) == 2
    finally:
        await client.close()
        # Whatever failed above, the next tests get the whole stack.
        stack.docker("start", stack.container("asr"), check=False)
        await asyncio.to_thread(stack.wait_healthy, ["asr"])


async def test_a_full_replica_passes_the_next_call_on_and_hang_ups_reach_their_replica(stack):
    await asyncio.to_thread(stack.wait_idle)
    offer = {"sdp": await local_offer(), "type": "offer"}
    status1, _, first = stack.request("POST", "/offer", offer)
    assert status1 == 200, first
    status2, _, second = stack.request("POST", "/offer", {"sdp": await local_offer(), "type": "offer"})
    assert status2 == 200, second
    # Each replica holds one call: the second went to the other one.
    assert {replica_of(first["session_url"]), replica_of(second["session_url"])} == {"peer1", "peer2"}
    status3, headers, third = stack.request("POST", "/offer", {"sdp": await local_offer(), "type": "offer"})
    assert (status3, third["error"]) == (503, "busy") and headers["Retry-After"]
    # A call's URLs lead to the replica that holds it (a wrong replica would not know the session).
    for call in (first, second):
        status, _, events = stack.request("POST", call["control_url"], {"type": "ping"}, token=False)
        assert status == 200, events
        status, _, _ = stack.request("DELETE", call["session_url"], token=False)
        assert status == 204
    other = {"peer1": "peer2", "peer2": "peer1"}[replica_of(first["session_url"])]
    wrong = first["session_url"].replace(replica_of(first["session_url"]), other, 1)
    assert stack.request("DELETE", wrong, token=False)[0] == 404


async def test_sigterm_drains_a_replica_without_cutting_its_call(stack):
    await asyncio.to_thread(stack.wait_idle)
    client = RtcClient(FRONT, token=stack.token, ssl=False)
    try:
        await client.connect()
        await client.wait_for(lambda m: m["type"] == "session", 20)
        replica = replica_of(client.answer["session_url"])
        await asyncio.to_thread(stack.docker, "kill", "-s", "TERM", stack.container(replica))
        await client.wait_for(lambda m: m["type"] == "draining", 10)

        # New calls go to the other replica meanwhile.
        status, _, other = stack.request("POST", "/offer", {"sdp": await local_offer(), "type": "offer"})
        assert status == 200, other
        assert replica_of(other["session_url"]) != replica
        assert stack.request("DELETE", other["session_url"], token=False)[0] == 204

        # The draining call goes on, reachable through the front door.
        await asyncio.sleep(3)
        assert client.pc.connectionState == "connected"
        status, _, _ = stack.request("POST", client.answer["control_url"], {"type": "ping"}, token=False)
        assert status == 200
        assert stack.health(replica) not in ("exited", "missing")

        # Hung up, the replica exits cleanly (before its 20 s limit) and restarts.
        assert stack.request("DELETE", client.answer["session_url"], token=False)[0] == 204
        deadline = time.monotonic() + 30
        while stack.health(replica) != "exited":
            assert time.monotonic() < deadline, stack.logs()
            await asyncio.sleep(0.5)
        code = await asyncio.to_thread(
            stack.docker, "inspect", "-f", "{{.State.ExitCode}}", stack.container(replica)
        )
        assert code.stdout.strip() == "0"
        logs = (await asyncio.to_thread(stack.docker, "logs", stack.container(replica))).stderr
        assert "drained: every call ended" in logs
    finally:
        await client.close()
    stack.compose("up", "-d", "--no-build", replica)
    stack.wait_healthy([replica])


def test_down_leaves_no_container(stack):
    assert len(stack.containers()) == len(SERVICES) + 1  # and turn
    (stack.log_dir / "compose.log").write_text(stack.logs())  # the fixture's would find nothing
    stack.down()
    assert stack.containers() == []
