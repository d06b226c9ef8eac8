"""A Chromium call through a peer whose ASR and TTS are Home Assistant's Wyoming servers, the embedded
models behind them (the fixtures and the fault tests: ``tests/test_backends_call.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import test_backends_call as calls
from tests.support import browser

pytestmark = [pytest.mark.slow, pytest.mark.browser]

wyoming, peer = calls.wyoming, calls.peer  # the same fixtures, this module's own instances


def test_chromium_converses_through_the_wyoming_servers(peer, wyoming, pw, make_speech):
    asr, _tts = wyoming
    wyoming_asr = f"wyoming://127.0.0.1:{asr.port}"
    calls.wait_active(peer, "asr", wyoming_asr)
    before = {s: peer.get_json("/healthz")["backends"][s]["backends"][0]["requests"] for s in ("asr", "tts")}
    question = make_speech(calls.QUESTION, lead_s=2.0, tail_s=15.0)
    with browser.chromium_page(pw, Path(question.path)) as page:
        browser.connect(page, peer.url)
        browser.wait_for_event(page, "m.type === 'transcript' && m.final", 30_000)
        browser.wait_for_event(page, "m.type === 'metrics'", 60_000)
        call = browser.record(page)
        final = call.messages("transcript")[-1]
        assert browser.heard(final["text"], calls.QUESTION), final
        assert [m for m in call.messages("reply") if m["final"]]
        spoken = call.local.segments(threshold=0.01)
        onsets = [a for a, _ in call.remote.segments(threshold=0.005) if a > spoken[0][1]]
        assert onsets and call.remote.peak(onsets[0]) > 0.02  # the Wyoming voice, heard in the page
        assert not call.messages("backend") and not call.messages("error")
        page.click("#connect")
    health = peer.get_json("/healthz")
    for stage in ("asr", "tts"):  # the turn went to the servers, not to the fallback
        first = health["backends"][stage]["backends"][0]
        assert first["name"].startswith("wyoming://") and first["requests"] > before[stage], first
    assert health["degraded"] is False
