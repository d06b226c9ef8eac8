"""The demo page in real Chromium with the LLM behind HTTP: a real OpenAI-compatible server
(llama-cpp-python's, on loopback), and a dead one. A dead backend gets the user an error event and a
spoken apology, and the call goes on: the next question is heard and answered the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import browser
from tests.support.llm_server import llama_cpp_server
from tests.support.server import ServerProcess, free_port
from tests.support.speech import join
from voicepeer.call.text import words

pytestmark = [pytest.mark.slow, pytest.mark.browser]

playwright_api = pytest.importorskip("playwright.sync_api")


def test_the_page_is_answered_by_a_real_http_llm_server(make_speech, tmp_path):
    pytest.importorskip("llama_cpp.server")
    question = make_speech("What is the weather like today?", lead_s=2.0, tail_s=12.0)
    with (
        llama_cpp_server(tmp_path / "llm.log") as url,
        ServerProcess("--llm-url", url, "--llm-model", "smollm2", log_path=tmp_path / "server.log") as server,
        playwright_api.sync_playwright() as pw,
        browser.chromium_page(pw, Path(question.path)) as page,
    ):
        browser.connect(page, server.url)
        browser.wait_for_event(page, "m.type === 'metrics'", 60_000)
        call = browser.record(page)
    final = [m for m in call.messages("transcript") if m["final"]][-1]
    assert {"weather", "today"} <= set(words(final["text"]))
    reply = [m for m in call.messages("reply") if m["final"]][-1]
    assert reply["turn"] == final["turn"] and reply["text"].strip()
    assert call.messages("error") == []
    user_end = call.local.segments(threshold=0.01)[0][1]
    assert [a for a, _ in call.remote.segments(threshold=0.005) if a > user_end], "no reply audio"


@pytest.fixture(scope="module")
def two_questions(make_speech, speech_dir: Path) -> Path:
    first = make_speech("What is the weather like today?", lead_s=2.0, tail_s=0.0)
    second = make_speech("Tell me about the weather in London.", lead_s=0.0, tail_s=8.0)
    return join(first.path, 8.0, second.path, speech_dir / "dead_llm_call.wav")


def test_a_dead_llm_server_gets_an_error_and_an_apology_and_the_call_goes_on(two_questions, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with (
        ServerProcess("--llm-url", dead, log_path=tmp_path / "server.log") as server,
        playwright_api.sync_playwright() as pw,
        browser.chromium_page(pw, two_questions) as page,
    ):
        browser.connect(page, server.url)
        browser.wait_for_event(page, "m.type === 'metrics' && m.turn === 2", 60_000)
        call = browser.record(page)
        still_connected = page.evaluate("window.voicepeerClient.pc.connectionState")

    errors = call.messages("error")
    assert [e["code"] for e in errors] == ["llm_failed", "llm_failed"], errors
    assert dead in errors[0]["message"]
    finals = [m for m in call.messages("transcript") if m["final"]]
    assert [m["turn"] for m in finals] == [1, 2] and {"london"} <= set(words(finals[1]["text"]))
    # The apology was spoken after each question (no reply text: there is none to show).
    user = call.local.segments(threshold=0.01)
    bot = call.remote.segments(threshold=0.005)
    for start, end in user[:2]:
        assert [a for a, _ in bot if a > end], f"no apology after the question at {start:.1f} s"
    assert still_connected == "connected"
