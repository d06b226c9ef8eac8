"""The demo page in a real headless Firefox (Debian's ESR), talking to the real server over WebRTC.

Chromium is not the only browser people call from: Firefox has its own WebRTC stack (its offer, its ICE
candidates, its DTLS, its Opus encoder and audio processing), so a call from it is tested end to end
too. Firefox is driven over WebDriver BiDi by puppeteer-core with the Chromium tests' own helpers
(``tests/support/firefox.py``). Its microphone is a real capture device of a private PulseAudio
daemon, into which an espeak-ng question is played once the call is up; everything else is the
product: the demo page and its client module, Firefox, our aiortc peer and the models.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import browser, firefox
from voicepeer.call.text import words

pytestmark = [pytest.mark.slow, pytest.mark.browser]

QUESTION = "What is the weather like today?"
"""The question the Chromium test asks: tiny.en hears it right after Opus (see test_browser.py)."""


@pytest.fixture(scope="module", autouse=True)
def firefox_installed() -> None:
    missing = firefox.missing_tools()
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: `make test` installs them (Debian packages, npm ci)")


def test_speaking_into_the_demo_page_in_firefox_gets_a_spoken_reply(server, make_speech, tmp_path: Path):
    question = make_speech(QUESTION, lead_s=0.5, tail_s=1.5)
    server.wait_sessions(0, timeout=40)
    with (
        firefox.PulseAudio(tmp_path / "pulse") as pulse,
        firefox.logs_on_failure(
            firefox=lambda: firefox.firefox_log(tmp_path / "firefox"), pulseaudio=pulse.log, server=server.log
        ),
        firefox.firefox_page(pulse, tmp_path / "firefox") as page,
    ):
        # Generous waits: a loaded 2-core machine starts Firefox and gathers its candidates slowly.
        browser.connect(page, server.url, timeout_ms=60_000)
        # The page captures the PulseAudio microphone, a real device, not Firefox's fake tone.
        track = "window.voicepeerClient.localStream.getAudioTracks()[0]"
        assert page.evaluate(f"{track}.label") == firefox.MICROPHONE
        pc = "window.voicepeerClient.pc"
        assert page.evaluate(f"{pc}.iceConnectionState") in ("connected", "completed")
        # Firefox reveals its host addresses (no mDNS .local names) because it captures a real device.
        offer = page.evaluate(f"{pc}.localDescription.sdp")
        candidates = [line for line in offer.splitlines() if line.startswith("a=candidate:")]
        assert candidates and not any(".local " in c for c in candidates), offer
        assert page.evaluate(browser.SELECTED_CANDIDATE_TYPE_JS) == "host"

        # Firefox's audio threads real-time, as on a desktop (with root; see realtime_audio), then the
        # user speaks into the microphone.
        page.realtime_audio()
        pulse.play(question.path)
        browser.wait_for_event(page, "m.type === 'transcript' && m.final", 60_000)
        browser.wait_for_event(page, "m.type === 'metrics'", 120_000)
        call = browser.record(page)

        final = call.messages("transcript")[-1]
        # Most of the question's words, as test_browser_turns.py asks of a question heard whole: whisper
        # tiny on espeak-ng through Opus may slip on a word, which is recognition, not a lost capture.
        heard = set(words(final["text"])) & set(words(QUESTION))
        assert len(heard) >= 4, final
        reply = [m for m in call.messages("reply") if m["final"]][-1]
        assert reply["turn"] == final["turn"] and len(reply["text"]) > 2
        assert page.text_content(f"#log li.user[data-turn='{final['turn']}']").strip() == final["text"]

        # The reply was audible in the page: the bot's track carried speech after the user stopped.
        assert call.remote.peak(browser.reply_onset(call)) > 0.02

        browser.hang_up(page)
        server.wait_sessions(0, timeout=40)
