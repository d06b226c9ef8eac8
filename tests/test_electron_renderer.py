"""The Electron app's window in real headless Chromium (Debian's: the same engine; the Electron binary
cannot be installed here), served from the very files the app ships, with the app's own mapping and
Content-Security-Policy (web/electron/scripts/serve-renderer.js), from an origin that is not the
server's. A spoken question is its microphone; the server is the real one, told to allow that origin.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import browser
from tests.support.browser import wait_until
from tests.support.server import ROOT, STORY_PROMPT, ServerProcess, free_port

pytestmark = [pytest.mark.slow, pytest.mark.browser]

playwright_api = pytest.importorskip("playwright.sync_api")

ELECTRON = ROOT / "web" / "electron"
SCREENSHOT = os.environ.get("VOICEPEER_RENDERER_SCREENSHOT")
"""Where to save a picture of the window after the call (the README's is made this way)."""


CLIENT = "window.voicepeerClient"


@contextmanager
def renderer_origin(server_url: str, port: int | None = None, extra: Path | None = None) -> Iterator[str]:
    """The app's files served over HTTP on ``port`` (a free one by default); yields the origin."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: `make test` installs it")
    port = port or free_port()
    script = str(ELECTRON / "scripts" / "serve-renderer.js")
    args = [node, script, "--port", str(port), "--server", server_url]
    if extra is not None:
        args += ["--extra", str(extra)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        origin = proc.stdout.readline().strip()
        assert origin == f"http://127.0.0.1:{port}", origin
        yield origin
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def app_origin_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def allowing_server(tmp_path_factory, app_origin_port):
    log = tmp_path_factory.mktemp("server") / "server.log"
    with ServerProcess("--allow-origin", f"http://127.0.0.1:{app_origin_port}", log_path=log) as srv:
        yield srv


def wait_for_event(page, predicate_js: str, timeout_ms: int) -> None:
    browser.wait_for_event(page, predicate_js, timeout_ms, strict_csp=True)


def open_window(page, origin: str, server_url: str) -> None:
    page.goto(f"{origin}/index.html?server={server_url}")
    page.wait_for_selector("body[data-ready='true']", state="attached", timeout=10_000)


def test_the_window_holds_a_spoken_conversation_with_desktop_controls(
    allowing_server, app_origin_port, pw, make_speech, tmp_path
):
    server = allowing_server
    question = make_speech(browser.QUESTION, lead_s=2.0, tail_s=25.0)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "level-recorder.js").write_text(browser.RECORDER_WORKLET)
    with renderer_origin(server.url, app_origin_port, extra) as origin:
        with browser.chromium_page(pw, Path(question.path)) as page:
            errors: list[str] = []
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            open_window(page, origin, server.url)
            assert "127.0.0.1" in page.text_content("#server-status")
            page.click("#connect")
            wait_until(
                page,
                f"{CLIENT} && {CLIENT}.connected && !!{CLIENT}.remoteStream",
                20_000,
            )
            # The window's CSP allows scripts from its origin only: the level recorder is served there.
            page.evaluate(browser.START_RECORDING_JS, f"{origin}/__extra/level-recorder.js")
            wait_for_event(page, "m.type === 'transcript' && m.final", 30_000)
            wait_for_event(page, "m.type === 'metrics'", 60_000)
            call = browser.record(page)

            # The conversation view: the user's words, the reply, the turn's waterfall.
            final = call.messages("transcript")[-1]
            assert browser.heard(final["text"]), final
            turn = final["turn"]
            assert page.text_content(f"#log li.user[data-turn='{turn}']").strip() == final["text"]
            page.wait_for_selector(f"#log li.bot[data-turn='{turn}'] .waterfall .stage", timeout=5_000)
            # ... and the reply was audible in the page.
            browser.reply_onset(call)

            # Mute and unmute.
            page.click("#mute")
            wait_for_event(page, "m.type === 'muted' && m.muted", 10_000)
            assert page.text_content("#mute") == "Unmute"
            page.click("#mute")
            # (the call's first events included muted: false; wait for the newest to say so)
            newest = "window.__vp.events.filter((e) => e.msg.type === 'muted').at(-1)"
            wait_until(page, f"{newest}.msg.muted === false", 10_000)
            assert page.text_content("#mute") == "Mute"

            # Devices: Chromium's fake devices are listed by name once the microphone is allowed, and
            # switching the microphone mid-call keeps the same session.
            inputs = page.eval_on_selector_all("#input-device option", "os => os.map(o => [o.value, o.text])")
            assert len(inputs) >= 2 and all(label for _, label in inputs), inputs
            session = page.evaluate("window.voicepeerClient.sessionId")
            old_track = page.evaluate("window.voicepeerClient.localStream.getAudioTracks()[0].id")
            page.select_option("#input-device", inputs[-1][0])
            mic = f"{CLIENT}.localStream.getAudioTracks()[0]"
            wait_until(page, f"{mic}.id !== {old_track!r}", 10_000)
            assert page.evaluate(f"{CLIENT}.pc.getSenders()[0].track === {mic}")
            assert page.evaluate("window.voicepeerClient.sessionId") == session
            assert page.evaluate("window.voicepeerClient.connected")
            assert page.eval_on_selector_all("#output-device option", "os => os.length") >= 1

            # Interrupt a long reply.
            page.evaluate(
                "([p]) => { window.voicepeerClient.configure({system_prompt: p}); "
                "window.voicepeerClient.say('Tell me a story about a dragon.'); }",
                [STORY_PROMPT],
            )
            wait_until(page, "window.voicepeerClient.state === 'speaking'", 60_000)
            page.click("#interrupt")
            wait_for_event(page, "m.type === 'interrupted'", 10_000)
            page.wait_for_selector("#log li.bot.interrupted", timeout=5_000)

            if SCREENSHOT:
                page.screenshot(path=SCREENSHOT, full_page=True)
            page.click("#connect")  # Disconnect
            server.wait_sessions(0, timeout=20)
            assert page.text_content("#state") == "idle"
            assert not [e for e in errors if "Content Security Policy" in e], errors


def test_a_server_that_does_not_allow_the_window_origin_is_named(allowing_server, pw, make_speech):
    question = make_speech("Hello there.", lead_s=1.0, tail_s=5.0)
    with (
        renderer_origin(allowing_server.url) as origin,
        browser.chromium_page(pw, Path(question.path)) as page,
    ):
        open_window(page, origin, allowing_server.url)
        page.click("#connect")
        page.wait_for_selector("#error:not([hidden])", timeout=20_000)
        message = page.text_content("#error")
        assert message.startswith("cors:"), message
        assert f"--allow-origin {origin}" in message
        assert page.text_content("#connect") == "Connect"
        assert page.evaluate("window.voicepeerClient.pc") is None
    allowing_server.wait_sessions(0)


def test_an_unreachable_server_is_named(pw, make_speech):
    question = make_speech("Hello there.", lead_s=1.0, tail_s=5.0)
    dead = f"http://127.0.0.1:{free_port()}"
    with renderer_origin(dead) as origin, browser.chromium_page(pw, Path(question.path)) as page:
        open_window(page, origin, dead)
        page.click("#connect")
        page.wait_for_selector("#error:not([hidden])", timeout=20_000)
        assert page.text_content("#error").startswith("unreachable:"), page.text_content("#error")
