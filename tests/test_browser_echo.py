"""Speaker echo in a real Chromium: the page plays the bot's voice back into its own microphone.

With the browser's echo cancellation off, the bot's received audio is mixed into the outgoing track
(150 ms later, at 0.7 gain), as a laptop on speakers would. The bot answers a first question at length;
the server-side canceller must keep its voice from opening a user turn, and a second question asked
after the reply must still be understood. The same call with ``--aec off`` is the control: it shows the
echo does reach the server and would be heard as speech.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import browser
from tests.support.server import ServerProcess
from tests.support.speech import join

pytestmark = [pytest.mark.slow, pytest.mark.browser]

playwright_api = pytest.importorskip("playwright.sync_api")

GAP_S = 26.0  # the first reply (at most 40 tokens) is over well before the second question


@pytest.fixture(scope="module")
def two_questions(make_speech, speech_dir: Path) -> Path:
    first = make_speech("Please tell me a story about a dragon.", lead_s=2.0, tail_s=0.0)
    second = make_speech(browser.QUESTION, lead_s=0.0, tail_s=8.0)
    return join(first.path, GAP_S, second.path, speech_dir / "echo_call.wav")


@pytest.mark.parametrize("aec", ["aec3", "off"])
def test_the_bot_does_not_hear_itself_and_still_hears_the_user(aec, two_questions, tmp_path):
    with (
        ServerProcess("--aec", aec, "--llm-max-tokens", "40", log_path=tmp_path / "server.log") as server,
        playwright_api.sync_playwright() as pw,
        browser.chromium_page(pw, two_questions) as page,
    ):
        browser.connect_with_speaker_echo(page, server.url)
        browser.wait_for_event(page, "m.type === 'transcript' && m.turn === 1", 30_000)
        if aec == "off":
            # Control: the bot's own voice, looped back, is heard as someone speaking.
            browser.wait_for_event(page, "m.type === 'vad' && m.bot_state === 'speaking'", 40_000)
            return
        browser.wait_for_event(page, "m.type === 'transcript' && m.turn === 2 && m.final", 60_000)
        call = browser.record(page)

    replies = [m for m in call.messages("reply") if m["final"] and m["turn"] == 1]
    assert replies and len(replies[0]["text"].split()) >= 10, "the first reply was too short to test echo"
    # The loopback did put the bot's voice into the microphone while it spoke (the user was silent then).
    states = [(e["t"], e["msg"]["state"]) for e in call.events if e["msg"].get("type") == "state" and e["t"]]
    spoke = next(t for t, state in states if state == "speaking")
    done = next(t for t, state in states if state == "listening" and t > spoke)
    assert call.local.peak(spoke + 0.5, done) > 0.05, "no echo reached the microphone"
    heard_self = [m for m in call.messages("vad") if m["bot_state"] == "speaking"]
    assert heard_self == [], f"the bot heard itself: {heard_self}"
    second = [m for m in call.messages("transcript") if m["final"]][-1]
    assert second["turn"] == 2 and browser.heard(second["text"]), second
