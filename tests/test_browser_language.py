"""A call in Mandarin from the demo page in a real headless Chromium: its language picked on the page
(``?language=zh`` preselects it), heard by whisper base through Chromium's capture and Opus, answered
by the embedded LLM in Chinese characters and spoken by espeak-ng's Mandarin voice."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import browser
from tests.test_language import QUESTION, VOICES, cer, han_share

pytestmark = [pytest.mark.slow, pytest.mark.browser]

playwright_api = pytest.importorskip("playwright.sync_api")


def test_a_mandarin_call_from_the_demo_page_is_heard_and_answered_in_mandarin(server, pw, make_speech):
    # 4 s before the question: the page connects and says its language first.
    question = make_speech(QUESTION, voice=VOICES[0], wpm=175, lead_s=4.0, tail_s=15.0)
    server.wait_sessions(0)
    with browser.chromium_page(pw, Path(question.path)) as page:
        browser.connect(page, server.url + "/?language=zh")
        assert page.input_value("#language") == "zh"
        browser.wait_for_event(page, "m.type === 'language' && m.language === 'zh'", 10_000)
        browser.wait_for_event(page, "m.type === 'transcript' && m.final", 40_000)
        browser.wait_for_event(page, "m.type === 'metrics'", 90_000)
        call = browser.record(page)
        final = call.messages("transcript")[-1]
        assert cer(QUESTION, final["text"]) <= 0.5, final
        reply = [m for m in call.messages("reply") if m["final"]][-1]
        assert reply["turn"] == final["turn"] and han_share(reply["text"]) > 0.8, reply
        # Shown on the page as said, and voiced: the bot's track carried speech after the question.
        assert page.text_content(f"#log li.user[data-turn='{final['turn']}']").strip() == final["text"]
        assert call.remote.peak(browser.reply_onset(call)) > 0.02
        browser.hang_up(page)
        server.wait_sessions(0)
