"""The application's logic in a real Chromium call: the greeting when the call connects, a spoken
question answered with a tool served by the application (``examples/tool_server.py``, a signed
webhook), and ``speak`` and ``hangup`` over the data channel (``test_examples.py`` sends them through
the control URL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import browser
from tests.support.server import ServerProcess
from tests.support.tool_app import SECRET, tool_server
from voicepeer.call.text import words

pytestmark = [pytest.mark.slow, pytest.mark.browser]

playwright_api = pytest.importorskip("playwright.sync_api")

GREETING = "Hello! Ask me about the weather."


def test_a_spoken_question_calls_the_applications_tool_and_the_app_steers_the_call(make_speech, tmp_path):
    # The question comes once the greeting (about 2 s of speech) has been played.
    question = make_speech("What is the weather in Paris?", lead_s=6.0, tail_s=20.0)
    with (
        tool_server(tmp_path) as (_url, tools),
        ServerProcess(
            "--tools", str(tools), "--webhook-secret", SECRET, "--tool-choice", "required",
            "--greeting", GREETING,
            log_path=tmp_path / "server.log",
        ) as server,
        playwright_api.sync_playwright() as pw,
        browser.chromium_page(pw, Path(question.path)) as page,
    ):  # fmt: skip
        browser.connect(page, server.url)
        browser.wait_for_event(page, "m.type === 'tool_result'", 60_000)
        browser.wait_for_event(page, "m.type === 'metrics' && m.turn === 2", 60_000)
        shown = page.inner_text("#log .tools")  # the page shows the call under the reply
        # A speak sent while the bot answers is queued and follows the answer with no pause, so the
        # test waits for the answer to end (and a second of silence) to hear the two apart.
        last_state = "window.__vp.events.filter(({msg: m}) => m.type === 'state').at(-1)?.msg.state"
        browser.wait_until(page, f"{last_state} === 'listening'", 30_000)
        page.wait_for_timeout(1000)
        # The application speaks on the data channel...
        page.evaluate("window.voicepeerClient.speak('By the way, it will rain tomorrow.')")
        browser.wait_for_event(page, "m.type === 'reply' && m.final && m.text.includes('rain')", 30_000)
        browser.wait_for_event(page, "m.type === 'metrics' && m.turn === 3", 30_000)
        # ...and hangs up on it too (the app backend test does both through the control URL).
        page.evaluate("window.voicepeerClient.hangup('Goodbye!')")
        browser.wait_for_event(page, "m.type === 'bye'", 30_000)
        call = browser.record(page)
        server.wait_sessions(0, timeout=15)
        state = page.evaluate("window.voicepeerClient.pc")

    replies = [m for m in call.messages("reply") if m["final"]]
    assert replies[0]["text"] == GREETING and replies[0]["turn"] == 1
    final = [m for m in call.messages("transcript") if m["final"]]
    assert {"weather", "paris"} <= set(words(final[0]["text"])), final
    (tool_call,) = call.messages("tool_call")
    assert tool_call["name"] == "get_weather" and tool_call["arguments"]["city"].lower() == "paris"
    assert shown.startswith('get_weather({"city":') and " ms" in shown, shown
    (result,) = call.messages("tool_result")
    assert result["ok"] and result["result"]["forecast"] == "sunny"
    answer = next(m for m in replies if m["turn"] == final[0]["turn"])
    assert {"sunny", "24"} & set(words(answer["text"])), answer
    assert [m["text"] for m in replies[-2:]] == ["By the way, it will rain tomorrow.", "Goodbye!"]
    assert state is None  # the client disconnected on bye, without trying to reconnect
    # Each reply was heard: the bot's voice after the greeting's start, the question and the speak.
    assert len(call.remote.segments(threshold=0.005)) >= 3
