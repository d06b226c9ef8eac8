"""TURN: the server hands out coturn credentials, a real coturn accepts them (and refuses expired or
forged ones), and a real Chromium call with ``iceTransportPolicy: "relay"`` goes through it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from tests.support import browser
from tests.support.offers import local_offer
from tests.support.server import ROOT, ServerProcess
from tests.support.turn import TurnServer
from voicepeer.transport.ice import turn_credential

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def turn(tmp_path_factory):
    with TurnServer(tmp_path_factory.mktemp("turn") / "turn.log") as server:
        yield server


@pytest.fixture(scope="module")
def turn_peer(tmp_path_factory, turn):
    log = tmp_path_factory.mktemp("server") / "server.log"
    with ServerProcess("--turn-url", turn.url, "--turn-secret", turn.secret, log_path=log) as server:
        yield server


async def relay_candidates(server: dict) -> list[str]:
    """The relay candidates an aiortc peer gathers with this RTCIceServer: coturn's verdict on it."""
    urls = server["urls"] if isinstance(server["urls"], list) else [server["urls"]]
    ice = RTCIceServer(urls, server.get("username"), server.get("credential"))
    pc = RTCPeerConnection(RTCConfiguration([ice]))
    try:
        pc.addTransceiver("audio")
        await pc.setLocalDescription(await pc.createOffer())
        return [line for line in pc.localDescription.sdp.splitlines() if "typ relay" in line]
    finally:
        await pc.close()


async def test_ice_servers_carry_fresh_credentials_that_coturn_accepts(turn, turn_peer):
    async with aiohttp.ClientSession() as http, http.get(turn_peer.url + "/ice-servers") as r:
        assert r.headers["Cache-Control"] == "no-store"
        body = await r.json()
    (server,) = body["iceServers"]
    assert server["urls"] == turn.url
    expiry, name = server["username"].split(":")
    assert name == "voicepeer" and int(expiry) > 0
    assert await relay_candidates(server), turn.log()

    # coturn itself refuses an expired credential and one minted from another secret.
    for username, credential in (turn_credential(turn.secret, -60), turn_credential("not-the-secret", 600)):
        forged = {"urls": turn.url, "username": username, "credential": credential}
        assert await relay_candidates(forged) == []


async def test_whip_links_carry_the_turn_credential(turn, turn_peer):
    async with aiohttp.ClientSession() as http:
        headers = {"Content-Type": "application/sdp"}
        async with http.post(turn_peer.url + "/whip", data=await local_offer(), headers=headers) as r:
            assert r.status == 201
            links = [v for k, v in r.headers.items() if k.lower() == "link" and "ice-server" in v]
            location = r.headers["Location"]
        async with http.delete(turn_peer.url + location) as r:
            assert r.status == 200
    (link,) = links
    assert link.startswith(f"<{turn.url}>")
    assert 'username="' in link and 'credential="' in link and 'credential-type="password"' in link


def test_a_turn_url_without_its_secret_is_refused_at_start():
    cmd = [sys.executable, "-m", "voicepeer", "serve", "--turn-url", "turn:127.0.0.1:3478"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--turn-url needs --turn-secret" in done.stderr


@pytest.mark.browser
def test_a_browser_call_relayed_through_coturn(turn, turn_peer, pw, make_speech):
    pytest.importorskip("playwright.sync_api")
    question = make_speech(browser.QUESTION, lead_s=2.0, tail_s=15.0)
    with browser.chromium_page(pw, Path(question.path)) as page:
        browser.connect(page, turn_peer.url + "/?ice=relay")
        assert page.evaluate("window.voicepeerClient.pc.getConfiguration().iceTransportPolicy") == "relay"
        assert page.evaluate(browser.SELECTED_CANDIDATE_TYPE_JS) == "relay"
        browser.expect_spoken_answer(page, browser.QUESTION, 30_000, 60_000)
        page.click("#connect")
    turn_peer.wait_sessions(0, timeout=20)
