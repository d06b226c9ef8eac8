"""The deployment, built and run: the images, the compose stack in a real dockerd, a real Chromium
through the HTTPS front door with its media relayed by coturn, replicas that share the calls, a
drain on SIGTERM, and a ``down`` that leaves nothing. ``make test-deploy`` builds the images first."""

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

pytestmark = [pytest.mark.deploy, pytest.mark.slow]


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
    s.wait_healthy(["peer1", "peer2", "llm", "frontdoor"])
    s.up_to_healthy_s = round(time.monotonic() - started, 1)
    print(f"stack: up -> healthy in {s.up_to_healthy_s} s")
    try:
        yield s
    finally:
        (s.log_dir / "compose.log").write_text(s.logs())
        s.down()


def replica_of(url: str) -> str:
    assert url.startswith("/r/peer"), url
    return url.split("/")[2]


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
    question = make_speech("What is the weather like today?", lead_s=2.0, tail_s=15.0)
    # Its own Playwright, closed after this test: the module's other tests run event loops of their own.
    sync_api = pytest.importorskip("playwright.sync_api")
    with (
        sync_api.sync_playwright() as pw,
        browser.chromium_page(pw, Path(question.path), ignore_https_errors=True) as page,
    ):
        browser.connect(page, f"{FRONT}/?ice=relay#token={stack.token}", timeout_ms=40_000)
        assert page.evaluate(browser.SELECTED_CANDIDATE_TYPE_JS) == "relay"
        browser.expect_spoken_answer(page, {"weather", "today"}, 40_000, 90_000)
        page.click("#connect")


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
    assert len(stack.containers()) == 5
    stack.down()
    assert stack.containers() == []
    stack.compose("up", "-d", "--no-build")  # the fixture's teardown downs it again
