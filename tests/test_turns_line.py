"""Turn-taking on a whole call with the real models (no transport: the test is the microphone): the
rules that issue 12 asked for, as the models really hear them. The table and the interrupt rule, and
every row of the table on scripted models, are in ``test_floor.py``.

- a short answer spoken over the bot ("five five") is a turn, never dropped;
- a hum or an acknowledgement over the bot lets it go on, and an ``ignored`` event says so;
- the words spoken over the bot reach the ASR from their first syllable;
- a phrase the end-of-turn model judges complete ends the turn without waiting out the detector's
  end-of-turn silence.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.server import STORY_CONFIG
from tests.support.speech import read_wav
from tests.support.virtual import VirtualLine, virtual_call
from voicepeer.call.text import words
from voicepeer.call.turntaking import Floor, TurnPolicy
from voicepeer.config import TurnsConfig


async def story_under_way(line: VirtualLine, request) -> None:
    line.say(read_wav(request.path)[0])
    await line.wait_for(lambda m: m["type"] == "state" and m["state"] == "speaking", 60)
    await line.wait_for(lambda m: m["type"] == "reply" and not m["final"] and len(m["text"]) > 40, 60)


@pytest.mark.slow
async def test_a_short_answer_over_the_bot_is_a_turn(services, make_speech):
    request = make_speech("Please tell me a story about a dragon.", lead_s=0.5, tail_s=0.5)
    answer = make_speech("Five five.", lead_s=0.0, tail_s=1.5)
    async with virtual_call(services, **STORY_CONFIG) as line:
        await story_under_way(line, request)
        line.say(read_wav(answer.path)[0])
        _, cut = await line.wait_for(lambda m: m["type"] == "interrupted", 30)
        _, final = await line.wait_for(
            lambda m: m["type"] == "transcript" and m["final"] and m["turn"] == 2, 30
        )
        assert cut["turn"] == 1 and cut["reason"] == "speech"
        assert {"five", "5"} & set(words(final["text"])), final
        assert line.messages("ignored") == []
        assert line.call.conversation.floor in (Floor.PENDING, Floor.BOT)


@pytest.mark.slow
async def test_an_acknowledgement_over_the_bot_is_ignored_and_said_to_be(services, make_speech):
    request = make_speech("Please tell me a story about a dragon.", lead_s=0.5, tail_s=0.5)
    ack = make_speech("Okay.", lead_s=0.0, tail_s=1.5)
    async with virtual_call(services, **STORY_CONFIG) as line:
        await story_under_way(line, request)
        line.say(read_wav(ack.path)[0])
        _, ignored = await line.wait_for(lambda m: m["type"] == "ignored", 30)
        assert ignored["turn"] == 1 and ignored["reason"] == "backchannel", ignored
        assert "okay" in words(ignored["text"])
        _, reply = await line.wait_for(lambda m: m["type"] == "reply" and m["final"], 90)
        assert reply["turn"] == 1 and line.messages("interrupted") == []
        conversation = line.call.conversation
        assert conversation.ignored == 1 and conversation.interruptions == 0


@pytest.mark.slow
async def test_words_spoken_over_the_bot_are_transcribed_from_the_first(services, make_speech):
    request = make_speech("Please tell me a story about a dragon.", lead_s=0.5, tail_s=0.5)
    over = make_speech("He was not an ill-disposed young man.", lead_s=0.0, tail_s=1.5)
    async with virtual_call(services, **STORY_CONFIG) as line:
        await story_under_way(line, request)
        line.say(read_wav(over.path)[0])
        _, final = await line.wait_for(
            lambda m: m["type"] == "transcript" and m["final"] and m["turn"] == 2, 30
        )
        heard = words(final["text"])
        # The first words are the ones a late onset loses; whisper may spell the rest its own way.
        assert heard[:3] == ["he", "was", "not"], final
        assert {"young", "man"} <= set(heard), final


@pytest.mark.slow
async def test_a_complete_phrase_ends_the_turn_before_the_detectors_silence(services, make_speech):
    # A phrase the end-of-turn model calls complete by a wide margin (0.96 offline, where "What is the
    # capital of France?" scores 0.8 offline, 0.45 once through a call's front-end, and differs by CPU).
    question = make_speech("Please tell me a story about a dragon.", lead_s=0.5, tail_s=3.0)
    # The detector would end this turn only after 2 s of silence; the model's verdict ends it sooner.
    async with virtual_call(services, turns=TurnsConfig(end_silence_ms=2000)) as line:
        line.say(read_wav(question.path)[0])
        _, metrics = await line.wait_for(lambda m: m["type"] == "metrics", 60)
        assert metrics["end_of_turn"] >= TurnPolicy().end_of_turn_threshold, metrics
        assert metrics["endpoint_ms"] < 2000, metrics


SPEAKER = (0.15, 0.5)
"""A loudspeaker next to the microphone: the bot's voice comes back 150 ms later at half its level."""


@pytest.mark.slow
async def test_on_a_loudspeaker_the_bot_neither_hears_itself_nor_talks_over_the_user(services, make_speech):
    request = make_speech("Please tell me a story about a dragon.", lead_s=0.5, tail_s=0.5)
    over = make_speech("What is the weather like today?", lead_s=0.0, tail_s=1.5)
    async with virtual_call(services, speaker=SPEAKER, **STORY_CONFIG) as line:
        await story_under_way(line, request)
        # The front-end measures the coupling over a second of the bot's voice.
        for _ in range(100):
            if line.call.frontend.coupling.seen:
                break
            await asyncio.sleep(0.1)
        assert line.call.frontend.coupling.seen, "the echo never reached the microphone: nothing was tested"
        await asyncio.sleep(1.0)  # and the canceller converges on it
        # Seconds of the bot's own voice in the microphone: it must not open a turn, or even pause it.
        assert line.messages("vad") == [m for m in line.messages("vad") if m["bot_state"] == "listening"]
        assert line.messages("interrupted") == [] and line.messages("ignored") == []
        assert line.call.conversation.floor is Floor.BOT, line.summary()
        line.say(read_wav(over.path)[0])
        _, cut = await line.wait_for(lambda m: m["type"] == "interrupted", 30)
        assert cut["reason"] == "speech"
        _, final = await line.wait_for(
            lambda m: m["type"] == "transcript" and m["final"] and m["turn"] == 2, 30
        )
        # Found at its onset (not a second late, past the pre-roll), the question is heard whole: its
        # four words before "like" are there. Their spelling may come out mixed with the bot's voice
        # under them ("But it's no weather like today", "But is that whenever like today"): the
        # linear canceller the ASR's copy goes through is not converged a second into the reply, and
        # whisper tiny hears the residue in ~1 run of 4 (16 runs before and after issue 21, the same
        # rate). A late onset loses those words: "weather like today", or less.
        heard = words(final["text"])
        assert {"like", "today"} <= set(heard), line.summary()
        assert heard.index("like") >= 3, line.summary()
