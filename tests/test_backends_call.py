"""Whole calls through remote backends: ``voicepeer serve --asr wyoming://...,embedded --tts
wyoming://...,embedded`` against Home Assistant's real Wyoming servers, over aiortc (in Chromium:
``tests/test_backends_browser.py``),
with the faults a deployment sees: a server killed mid-call, one that accepts and never answers, one
that comes back, and a stage with no backend left."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from tests.support.rtc_client import RtcClient
from tests.support.server import ROOT, ServerProcess, free_port
from tests.support.speech import read_wav
from tests.support.wyoming_servers import wyoming_asr_server, wyoming_tts_server
from voicepeer.call.answer import ASR_APOLOGY
from voicepeer.call.text import words

pytestmark = pytest.mark.slow

QUESTION = "What is the weather like today?"


@pytest.fixture(scope="module")
def wyoming(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wyoming")
    asr, tts = wyoming_asr_server(tmp), wyoming_tts_server(tmp)
    try:
        yield asr, tts
    finally:
        asr.stop()
        tts.stop()


@pytest.fixture(scope="module")
def peer(wyoming, tmp_path_factory):
    """A peer whose ASR and TTS are the Wyoming servers first, the embedded models after them."""
    asr, tts = wyoming
    args = (
        "--asr", f"wyoming://127.0.0.1:{asr.port},embedded",
        "--tts", f"wyoming://127.0.0.1:{tts.port},embedded",
        "--probe-interval", "1",
        "--tts-timeout", "3",
    )  # fmt: skip
    with ServerProcess(*args, log_path=tmp_path_factory.mktemp("peer") / "server.log") as server:
        yield server


def active(server: ServerProcess, stage: str) -> str:
    return server.get_json("/healthz")["backends"][stage]["active"]


def wait_active(server: ServerProcess, stage: str, name: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while active(server, stage) != name:
        assert time.monotonic() < deadline, server.get_json("/healthz")["backends"][stage]
        time.sleep(0.1)


async def ask(client: RtcClient, question, after: int = 0) -> tuple[dict, dict]:
    """Says the question; returns its final transcript and reply (the ``after``-th turn and later)."""
    client.say(read_wav(question.path)[0])
    _, transcript = await client.wait_for(
        lambda m: m["type"] == "transcript" and m["final"] and m["turn"] > after, 60
    )
    _, reply = await client.wait_for(lambda m: m["type"] == "reply" and m["final"] and m["turn"] > after, 60)
    await client.wait_for(lambda m: m["type"] == "metrics" and m["turn"] > after, 60)
    return transcript, reply


async def test_a_killed_asr_server_hands_the_turn_to_the_fallback_and_the_stage_comes_back(
    peer, wyoming, make_speech
):
    asr, _tts = wyoming
    wyoming_asr = f"wyoming://127.0.0.1:{asr.port}"
    wait_active(peer, "asr", wyoming_asr)
    question = make_speech(QUESTION, lead_s=0.5, tail_s=2.0)
    client = RtcClient(peer.url)
    try:
        await client.connect()
        await client.wait_for(lambda m: m["type"] == "session", 10)
        asr.kill()  # mid-call, between two turns
        transcript, reply = await ask(client, question)
        assert {"weather", "today"} <= set(words(transcript["text"])) and reply["text"]
        moves = client.messages("backend")
        assert [(m["stage"], m["from"], m["to"]) for m in moves] == [("asr", wyoming_asr, "embedded")]
        assert "refused" in moves[0]["reason"] and not client.messages("error")
        assert peer.get_json("/healthz")["degraded"] is True

        await asyncio.to_thread(asr.start)  # back, on the same port
        _, back = await client.wait_for(lambda m: m["type"] == "backend" and m["to"] == wyoming_asr, 15)
        assert back["reason"] == "recovered"
        transcript, _ = await ask(client, question, after=transcript["turn"])
        assert {"weather", "today"} <= set(words(transcript["text"]))
        assert active(peer, "asr") == wyoming_asr
    finally:
        await client.close()


async def test_a_voice_server_that_never_answers_is_replaced_within_its_timeout(peer, wyoming, make_speech):
    _asr, tts = wyoming
    wyoming_tts = f"wyoming://127.0.0.1:{tts.port}"
    wait_active(peer, "tts", wyoming_tts)
    question = make_speech(QUESTION, lead_s=0.5, tail_s=2.0)
    client = RtcClient(peer.url)
    try:
        await client.connect()
        await client.wait_for(lambda m: m["type"] == "session", 10)
        tts.pause()  # accepts connections, answers nothing
        try:
            _, reply = await ask(client, question)
            _, metrics = await client.wait_for(lambda m: m["type"] == "metrics", 5)
        finally:
            tts.resume()
        assert reply["text"] and metrics["first_frame_sent_ms"] is not None  # spoken, by the embedded voice
        move = client.messages("backend")[0]
        assert (move["stage"], move["from"], move["to"]) == ("tts", wyoming_tts, "embedded")
        assert "no answer within 3 s" in move["reason"]
        await client.wait_for(lambda m: m["type"] == "backend" and m["to"] == wyoming_tts, 15)
    finally:
        await client.close()


async def test_with_no_asr_left_the_user_hears_an_apology_and_the_call_stays_up(tmp_path, make_speech):
    dead = f"wyoming://127.0.0.1:{free_port()}"  # nothing listens there
    question = make_speech(QUESTION, lead_s=0.5, tail_s=2.0)
    with ServerProcess("--asr", dead, "--probe-interval", "1", log_path=tmp_path / "server.log") as server:
        assert server.get_json("/healthz")["backends"]["asr"]["backends"][0]["state"] in ("down", "unknown")
        client = RtcClient(server.url)
        try:
            await client.connect()
            await client.wait_for(lambda m: m["type"] == "session", 10)
            client.say(read_wav(question.path)[0])
            _, error = await client.wait_for(lambda m: m["type"] == "error", 60)
            assert error["code"] == "asr_failed" and dead in error["message"]
            _, reply = await client.wait_for(lambda m: m["type"] == "reply" and m["final"], 60)
            _, metrics = await client.wait_for(lambda m: m["type"] == "metrics", 60)
            assert reply["text"] == ASR_APOLOGY and metrics["first_frame_sent_ms"] is not None  # spoken
            client.channel.send('{"type": "ping"}')
            await client.wait_for(lambda m: m["type"] == "pong", 10)
            assert server.get_json("/healthz")["sessions"] == 1
        finally:
            await client.close()


def test_check_probes_every_backend_and_says_what_is_wrong_in_one_line_each():
    dead = f"wyoming://127.0.0.1:{free_port()}"
    run = [sys.executable, "-m", "voicepeer", "check", "--asr", f"{dead},embedded"]
    done = subprocess.run(run, capture_output=True, text=True, timeout=300, cwd=ROOT)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stderr
    assert f"asr: {dead}: connection refused" in lines
    assert any(line.startswith("asr: embedded (") and line.endswith(": ok") for line in lines), lines
    assert [line.split(":")[0] for line in lines] == ["asr", "asr", "tts", "llm", "end_of_turn"]
    alone = subprocess.run([*run[:-1], dead], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert alone.returncode == 1 and "no asr backend answers" in alone.stderr
