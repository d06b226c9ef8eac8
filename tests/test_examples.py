"""The examples, run for real.

- ``examples/custom_llm.py``: the rule-based backend on its own, then its ``main()`` serving it to a real
  WebRTC call that asks a spoken question and must get the rule's answer, spoken.
- ``examples/typed_call.py``: a call driven with no transport, a typed question in, a WAV out, whose
  speech must be the rule's answer."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from examples.custom_llm import FALLBACK, RULES, RuleLLM
from examples.typed_call import converse
from tests.support.rtc_client import RtcClient
from tests.support.server import free_port
from tests.support.speech import read_wav
from voicepeer.audio.formats import InboundConverter
from voicepeer.backends.llm import History, LLMOptions
from voicepeer.call.text import words
from voicepeer.config import Config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "custom_llm.py"
OPEN, WHERE, HELLO = (answer for _, answer in RULES)


async def reply(llm: RuleLLM, messages, options: LLMOptions | None = None) -> list[str]:
    return [piece async for piece in llm.stream(messages, options)]


async def test_a_rule_answers_in_pieces():
    pieces = await reply(RuleLLM(), History().messages("When do you open tomorrow?"))
    assert "".join(pieces) == OPEN
    assert len(pieces) == len(OPEN.split())  # streamed a word at a time, not in one piece


async def test_only_the_last_user_message_is_answered():
    history = History()
    history.add("Where are you?", WHERE)
    assert "".join(await reply(RuleLLM(), history.messages("Hello there."))) == HELLO


async def test_anything_else_is_echoed_back():
    text = "".join(await reply(RuleLLM(), History().messages("Tell me a joke.")))
    assert text == FALLBACK.format(text="Tell me a joke")


async def test_max_tokens_bounds_the_reply():
    messages = History().messages("Where are you?")
    assert "".join(await reply(RuleLLM(), messages, LLMOptions(max_tokens=3))) == "We are at"
    short = RuleLLM(options=LLMOptions(max_tokens=2))  # the backend's own default, when none is asked
    assert "".join(await reply(short, messages)) == "We are"


@pytest.fixture
def example(tmp_path):
    """``examples/custom_llm.py --port N`` in a child process on a free loopback port: (its URL, the
    process, its log). It must stop cleanly (status 0) on SIGINT."""
    port = free_port()
    log = tmp_path / "example.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--port", str(port)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}", proc, log
    finally:
        proc.send_signal(signal.SIGINT)  # the example's serve() stops at once on SIGINT
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, read_log(log)


def read_log(log: Path) -> str:
    return log.read_text(errors="replace")


async def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> dict:
    async with aiohttp.ClientSession() as http, asyncio.timeout(timeout):
        while True:
            assert proc.poll() is None, f"the example exited with {proc.returncode}:\n{read_log(log)}"
            try:
                async with http.get(f"{url}/healthz") as r:
                    return await r.json()
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_main_serves_the_rules_to_a_spoken_question(example, make_speech):
    url, proc, log = example
    health = await wait_ready(url, proc, log)
    assert (health["status"], health["sessions"], health["degraded"]) == ("ready", 0, False)
    assert health["backends"]["llm"]["active"] == "embedded"  # a bare backend: a chain of one
    question = make_speech("When are you open?", lead_s=0.5, tail_s=1.5)
    client = RtcClient(url)
    try:
        await client.connect()
        await client.wait_for(lambda m: m["type"] == "session", 10)
        sent_at = client.say(read_wav(question.path)[0])
        _, final = await client.wait_for(lambda m: m["type"] == "reply" and m["final"], 60)
        assert words(final["text"]) == words(OPEN), final  # SmolLM2 would have said something else
        await client.wait_for(lambda m: m["type"] == "metrics", 30)
        assert client.received.voiced_after(sent_at + question.speech_end_s) is not None, "not spoken"
    finally:
        await client.close()


@pytest.mark.slow
async def test_a_typed_question_gets_the_rules_answer_as_speech(services, tmp_path):
    rules = dataclasses.replace(services, llm=RuleLLM())  # the real ASR and TTS, the example's LLM
    wav = tmp_path / "answer.wav"
    events = await converse(rules, Config(), "When are you open?", wav)
    assert [e["text"] for e in events if e["type"] == "reply" and e["final"]] == [OPEN], events
    assert not [e for e in events if e["type"] == "error"], events
    pcm, rate = read_wav(wav)
    # What the file holds is that answer, spoken: whisper hears it back.
    heard = await services.asr.transcribe(InboundConverter().convert(pcm, rate, 1))
    assert {"open", "monday", "friday"} <= set(words(heard.text)), heard.text


def test_extending_md_shows_the_examples_as_they_are():
    page = (ROOT / "docs" / "extending.md").read_text()
    for example in (EXAMPLE, ROOT / "examples" / "typed_call.py", ROOT / "examples" / "espeak_tts.py"):
        assert f"```python\n{example.read_text()}```" in page, (
            f"docs/extending.md shows an old {example.name}"
        )
