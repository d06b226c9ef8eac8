"""The call on its own: speech in, transcript, reply audio and events out, with no WebRTC object at all,
and the failure paths driven by injected faults (an ASR, a TTS that fail; a barge-in whose ASR fails)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest

from tests.support.calls import wait_until
from tests.support.server import STORY_CONFIG
from tests.support.speech import read_wav
from tests.support.virtual import virtual_call
from voicepeer.backends.asr import ASR, Transcript
from voicepeer.backends.tts import TTS
from voicepeer.call.services import Services
from voicepeer.call.text import words

pytestmark = pytest.mark.slow


def test_the_call_knows_nothing_of_webrtc_or_http():
    code = (
        "import sys, voicepeer.call.call\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('aiortc', 'aiohttp', 'aioice'))\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_a_whole_turn_runs_through_the_call(services, make_speech):
    question = make_speech("Tell me about the weather in London.", lead_s=0.5, tail_s=1.5)
    async with virtual_call(services) as line:
        sent_at = line.say(read_wav(question.path)[0])
        speech_end = sent_at + question.speech_end_s
        _, final = await line.wait_for(lambda m: m["type"] == "transcript" and m["final"], 30)
        assert {"weather", "london"} <= set(words(final["text"]))
        _, metrics = await line.wait_for(lambda m: m["type"] == "metrics", 60)
        assert line.messages("session")[0]["id"] == line.call.id
        replies = line.messages("reply")
        assert replies[-1]["final"] and replies[-1]["text"] and replies[-1]["turn"] == final["turn"] == 1
        states = [m["state"] for m in line.messages("state")]
        assert states[:4] == ["listening", "thinking", "speaking", "listening"]
        assert 0 < metrics["transcript_ms"] < metrics["llm_first_token_ms"] < metrics["first_frame_sent_ms"]
        onset = line.voiced_after(speech_end)
        assert onset is not None, "no reply audio came out of the call"
        voiced = np.concatenate([p for t, p in line.heard if t >= onset]).astype(np.float64)
        assert np.sqrt(np.mean(voiced**2)) > 300
        assert line.call.conversation.history.turns[0].reply == replies[-1]["text"]


async def test_without_voice_the_reply_is_written_not_spoken(services, make_speech):
    question = make_speech("What is the capital of France?", lead_s=0.5, tail_s=1.5)
    async with virtual_call(services, voice=False) as line:
        line.say(read_wav(question.path)[0])
        _, reply = await line.wait_for(lambda m: m["type"] == "reply" and m["final"], 60)
        await line.wait_for(lambda m: m["type"] == "metrics", 10)
        assert reply["text"] and line.call.playout.queued_total == 0
        assert line.voiced_after(0.0) is None
        assert "speaking" not in [m["state"] for m in line.messages("state")]


class FailingASR(ASR):
    """Fault injection: the recogniser raises (a corrupt model, an out-of-memory)."""

    async def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        raise RuntimeError("injected ASR fault")


class FailingTTS(TTS):
    """Fault injection: the synthesiser raises on every sentence."""

    sample_rate = 22050

    async def synthesize(self, text: str):
        raise RuntimeError("injected TTS fault")
        yield np.zeros(0, np.int16)


async def test_a_failing_asr_gives_an_error_event_and_the_call_goes_on(services, make_speech):
    question = make_speech("What is the capital of France?", lead_s=0.5, tail_s=1.5)
    broken = Services(asr=FailingASR(), llm=services.llm, tts=services.tts)
    async with virtual_call(broken) as line:
        pcm = read_wav(question.path)[0]
        line.say(pcm)
        _, err = await line.wait_for(lambda m: m["type"] == "error", 30)
        assert err["code"] == "asr_failed" and "injected ASR fault" in err["message"]
        assert line.messages("transcript") == [] and line.call.turns == 0
        # Still listening: the next utterance is tried again (and fails again, audibly to the client).
        line.say(pcm)
        await line.wait_for(lambda m: m["type"] == "vad", 30)
        await line.wait_for(lambda m: len([e for e in line.messages("error")]) >= 2, 30)
        assert not line.call.closed


async def test_a_failing_tts_leaves_the_reply_written_and_the_next_turn_is_answered(services, make_speech):
    question = make_speech("What is the capital of France?", lead_s=0.5, tail_s=1.5)
    broken = Services(asr=services.asr, llm=services.llm, tts=FailingTTS())
    async with virtual_call(broken) as line:
        pcm = read_wav(question.path)[0]
        line.say(pcm)
        _, err = await line.wait_for(lambda m: m["type"] == "error", 60)
        assert err["code"] == "tts_failed" and "injected TTS fault" in err["message"]
        _, reply = await line.wait_for(lambda m: m["type"] == "reply" and m["final"], 30)
        assert reply["text"]  # no voice, but the words
        await line.wait_for(lambda m: m["type"] == "metrics" and m["turn"] == 1, 30)
        assert line.call.conversation.state == "listening"
        line.say(pcm)
        await line.wait_for(lambda m: m["type"] == "transcript" and m["final"] and m["turn"] == 2, 30)


class FlakyASR(ASR):
    """Fault injection around the real recogniser: fails while ``failing`` is set."""

    def __init__(self, real: ASR) -> None:
        self.real = real
        self.failing = False

    async def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        if self.failing:
            raise RuntimeError("injected ASR fault")
        return await self.real.transcribe(audio)


async def test_a_barge_in_whose_asr_fails_lets_the_bot_go_on(services, make_speech):
    request = make_speech("Please tell me a story about a dragon.", lead_s=0.5, tail_s=0.5)
    short = make_speech("Okay.", lead_s=0.0, tail_s=1.0)
    asr = FlakyASR(services.asr)
    flaky = Services(asr=asr, llm=services.llm, tts=services.tts)
    async with virtual_call(flaky, **STORY_CONFIG) as line:
        line.say(read_wav(request.path)[0])
        await line.wait_for(lambda m: m["type"] == "state" and m["state"] == "speaking", 60)
        asr.failing = True
        line.say(read_wav(short.path)[0])
        await line.wait_for(lambda m: m["type"] == "vad" and m["bot_state"] == "speaking", 10)
        _, reply = await line.wait_for(lambda m: m["type"] == "reply" and m["final"], 90)
        assert reply["turn"] == 1 and line.messages("interrupted") == []
        assert line.call.interruptions == 0 and not line.call.playout.paused


async def test_a_closed_call_takes_no_more_commands(services):
    from voicepeer.call.control import ControlError

    async with virtual_call(services) as line:
        call = line.call
    assert call.closed
    with pytest.raises(ControlError) as refused:
        call.control({"type": "say", "text": "Are you still there?"})
    assert refused.value.code == "closed" and not call.conversation.busy


class SlowTTS(TTS):
    """Fault injection: the real voice on a machine busier than this one. Every piece takes longer in
    proportion to its length, as Piper did beside Chromium and the LLM on two cores (a 22-word
    sentence: 0.5 s idle, over 2 s there)."""

    def __init__(self, real: TTS, seconds_per_char: float) -> None:
        self.real = real
        self.sample_rate = real.sample_rate
        self.seconds_per_char = seconds_per_char

    async def synthesize(self, text: str):
        await asyncio.sleep(len(text) * self.seconds_per_char)
        async for chunk in self.real.synthesize(text):
            yield chunk


async def test_a_slow_voice_leaves_no_silence_inside_a_reply(services, make_speech):
    """Each piece of a reply is synthesized while the one before plays; a long sentence after a short
    one took longer than that, and the listener heard the bot stop for a second or two mid-story.
    The call cuts such a sentence to what it can synthesize in time, learning how slow the voice is."""
    request = make_speech("Please tell me a story about a dragon.", lead_s=0.5, tail_s=0.5)
    slow = Services(asr=services.asr, llm=services.llm, tts=SlowTTS(services.tts, 0.025))
    async with virtual_call(slow, **STORY_CONFIG) as line:
        frames: list[bool] = []
        line.call.playout.add_listener(lambda _pcm, _pts, _at, voiced: frames.append(voiced))
        line.say(read_wav(request.path)[0])
        await line.wait_for(lambda m: m["type"] == "state" and m["state"] == "speaking", 60)
        start = len(frames)
        await line.wait_for(lambda m: m["type"] == "reply" and m["final"], 120)
        played = frames[start:]
        last = max(i for i, v in enumerate(played) if v)
        runs, run = [], 0
        for voiced in played[: last + 1]:
            run = 0 if voiced else run + 1
            if run == 1:
                runs.append(1)
            elif run:
                runs[-1] = run
        pieces = [m["text"] for m in line.messages("reply") if not m["final"]]
    print(f"underruns (20 ms frames): {runs}; {len(played[: last + 1]) * 0.02:.1f} s of reply; {pieces}")
    assert max(runs, default=0) * 0.02 < 0.3, runs


async def test_with_no_echo_in_the_unprocessed_capture_the_call_hears_it(services, make_speech):
    """The browser's canceller takes down what the user says over the bot (as Chromium's does over the
    first seconds of a call); the unprocessed capture holds it intact and no echo, so the call switches
    to it, and the question spoken over the story is heard and answered."""
    request = make_speech("Please tell me a story about a dragon.", lead_s=0.5, tail_s=0.5)
    question = make_speech("What is the weather like today?", lead_s=0.0, tail_s=1.0)
    async with virtual_call(services, browser_canceller=True, **STORY_CONFIG) as line:
        line.say(read_wav(request.path)[0])
        await line.wait_for(lambda m: m["type"] == "state" and m["state"] == "speaking", 60)
        _, capture = await line.wait_for(lambda m: m["type"] == "capture", 15)
        assert capture["unprocessed"] is True
        line.say(read_wav(question.path)[0])
        _, cut = await line.wait_for(lambda m: m["type"] == "interrupted", 15)
        _, final = await line.wait_for(
            lambda m: m["type"] == "transcript" and m["final"] and m["turn"] == 2, 30
        )
    assert cut["turn"] == 1 and cut["reason"] == "speech"
    assert {"weather", "today"} <= set(words(final["text"])), final


async def test_with_the_bots_echo_in_the_unprocessed_capture_the_call_keeps_the_processed_one(
    services, make_speech
):
    """On a loudspeaker the bot's voice comes back in the unprocessed capture: the browser's canceller
    has work to do, so the call goes on hearing its output and never takes the echo for the user."""
    request = make_speech("Please tell me a story about a dragon.", lead_s=0.5, tail_s=0.5)
    async with virtual_call(services, speaker=(0.15, 0.5), browser_canceller=True, **STORY_CONFIG) as line:
        line.say(read_wav(request.path)[0])
        await line.wait_for(lambda m: m["type"] == "state" and m["state"] == "speaking", 60)
        t, capture = await line.wait_for(lambda m: m["type"] == "capture", 15)
        # The story goes on for 3 s more, and nothing in the processed capture cuts it.
        await wait_until(lambda: line.voiced_after(t + 3.0) is not None or line.messages("interrupted"), 30)
        assert line.call.unprocessed is not None and line.call.unprocessed.choice == "refused"
        assert capture["unprocessed"] is False
        assert line.messages("interrupted") == []
        assert [m for m in line.messages("vad") if m["bot_state"] != "listening"] == []
