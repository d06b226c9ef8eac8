"""WHIP with a real third-party client: Medooze's ``whip-whep`` WHIPClient in real headless Chromium.

The client POSTs ``application/sdp`` before its ICE gathering starts, so every one of its candidates
reaches the server by ``PATCH`` (``application/trickle-ice-sdpfrag`` with ``If-Match``); it follows
``Location``, and DELETEs on stop. The microphone is a spoken question (Chromium's fake capture device).
The test follows the call through the events stream named by the answer's ``rel="events"`` link.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import browser, whip_page
from tests.support.browser import RECORDER_WORKLET, Envelope

pytestmark = [pytest.mark.slow, pytest.mark.browser]

playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module", autouse=True)
def whip_client_installed():
    if not whip_page.WHIP_JS.exists():
        pytest.fail("whip-whep is not installed: `make test` runs npm ci in tests/js")


def test_a_send_only_whip_client_is_heard_transcribed_and_answered_in_text(server, pw, make_speech):
    question = make_speech(browser.QUESTION, lead_s=2.0, tail_s=15.0)
    server.wait_sessions(0, timeout=30)
    with browser.chromium_page(pw, Path(question.path)) as page:
        whip_page.open_publisher(page, server.url)
        answer = whip_page.publish(page, "sendonly", RECORDER_WORKLET)
        assert answer["status"] == 201 and answer["resource"].startswith(f"{server.url}/whip/")
        assert answer["etag"] and "a=recvonly" in answer["answer"] and "a=candidate:" in answer["answer"]
        assert set(answer["links"]) >= {"events", "control"}
        assert server.get_json("/healthz")["sessions"] == 1

        whip_page.wait_for_event(page, "m.type === 'transcript' && m.final", 40_000)
        whip_page.wait_for_event(page, "m.type === 'reply' && m.final", 60_000)
        msgs = whip_page.events(page)
        assert msgs[0]["type"] == "session" and msgs[0]["id"] in answer["resource"]
        final = next(m for m in msgs if m["type"] == "transcript" and m["final"])
        assert browser.heard(final["text"]), final
        reply = next(m for m in msgs if m["type"] == "reply" and m["final"])
        assert reply["turn"] == final["turn"] and reply["text"]
        # A send-only client is answered in text: the bot never speaks on this call.
        assert "speaking" not in [m["state"] for m in msgs if m["type"] == "state"]

        # Its candidates came by PATCH, and the server took them.
        patches = [r for r in whip_page.requests(page) if r["method"] == "PATCH"]
        assert patches and all(r["status"] == 204 for r in patches), patches
        assert any("a=candidate:" in (r["body"] or "") for r in patches)
        assert all(r["contentType"] == "application/trickle-ice-sdpfrag" for r in patches)

        whip_page.stop(page)
        page.wait_for_function("window.__whip.requests.some((r) => r.method === 'DELETE')", timeout=10_000)
        deletes = [r for r in whip_page.requests(page) if r["method"] == "DELETE"]
        assert deletes[0]["status"] == 200
        server.wait_sessions(0)
        page.wait_for_function("window.__whip.streamClosed === true", timeout=10_000)


def test_a_send_receive_whip_client_hears_the_spoken_reply(server, pw, make_speech):
    question = make_speech(browser.QUESTION, lead_s=2.0, tail_s=15.0)
    server.wait_sessions(0, timeout=30)
    with browser.chromium_page(pw, Path(question.path)) as page:
        whip_page.open_publisher(page, server.url)
        answer = whip_page.publish(page, "sendrecv", RECORDER_WORKLET)
        assert answer["status"] == 201 and "a=sendrecv" in answer["answer"]
        whip_page.wait_for_event(page, "m.type === 'transcript' && m.final", 40_000)
        whip_page.wait_for_event(page, "m.type === 'metrics'", 60_000)
        msgs = whip_page.events(page)
        assert "speaking" in [m["state"] for m in msgs if m["type"] == "state"]
        levels = page.evaluate("window.__whip.levels")
        local, remote = Envelope.from_flat(levels["local"]), Envelope.from_flat(levels["remote"])
        spoken = local.segments(threshold=0.01)
        assert spoken, "the fake microphone's speech never reached the page's audio graph"
        onsets = [a for a, _ in remote.segments(threshold=0.005) if a > spoken[0][1]]
        assert onsets, "no bot audio reached the WHIP client after the question"
        assert remote.peak(onsets[0]) > 0.02
        whip_page.stop(page)
        server.wait_sessions(0)
