"""A streaming ASR in the conversation (``voicepeer.call.live``), on virtual time with a scripted
recogniser that streams: it is fed the turn while the user speaks, its running words are the partial
transcripts, and the turn's transcript comes from finishing the stream, not from a second
transcription. A stream that fails only means the turn is transcribed whole."""

from __future__ import annotations

import asyncio

import numpy as np

from tests.support.clock import virtual_time
from tests.support.dialogue import Dialogue
from tests.support.scripted import ScriptedASR
from voicepeer.audio.formats import SPEECH_RATE
from voicepeer.backends.asr import ASRStream, Transcript
from voicepeer.backends.base import BackendError, Capabilities


class StreamingASR(ScriptedASR):
    """Hears what ``ScriptedASR`` hears, as a stream: the words of what it has been fed so far."""

    def __init__(self) -> None:
        super().__init__()
        self.capabilities = Capabilities(streaming_input=True, partials=True, remote=True, cheap=False)
        self.whole = 0
        """Turns transcribed whole (``transcribe``), not through a stream."""
        self.streams: list[Stream] = []
        self.break_after_feeds: int | None = None

    async def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        self.whole += 1
        return await super().transcribe(audio)

    async def open_stream(self, language: str | None = None) -> ASRStream:
        stream = Stream(self)
        self.streams.append(stream)
        return stream


class Stream(ASRStream):
    def __init__(self, asr: StreamingASR) -> None:
        self.asr = asr
        self.audio = np.zeros(0, dtype=np.int16)
        self.feeds = 0
        self.closed = False

    async def feed(self, audio: np.ndarray) -> None:
        self.feeds += 1
        if self.asr.break_after_feeds is not None and self.feeds > self.asr.break_after_feeds:
            raise BackendError("the stream broke")
        self.audio = np.concatenate([self.audio, audio])

    @property
    def partial(self) -> str:
        return self.asr.words_in(self.audio)

    async def finish(self) -> Transcript:
        await asyncio.sleep(0.02)  # the recogniser had the audio all along: only the tail is left
        return Transcript(self.asr.words_in(self.audio), self.audio.size / SPEECH_RATE)

    async def aclose(self) -> None:
        self.closed = True


QUESTION = "What is the weather like in London today?"


@virtual_time
async def test_the_stream_gives_the_partials_and_the_transcript_and_nothing_is_transcribed_twice():
    asr = StreamingASR()
    async with Dialogue(asr=asr) as d:
        d.speak(QUESTION, at=0.5, seconds=2.5)
        await d.first(lambda m: m["type"] == "metrics")
        partials = [m["text"] for m in d.messages("transcript") if not m["final"]]
        assert partials and partials[0] == QUESTION
        assert d.final("transcript")[0]["text"] == QUESTION
        assert asr.whole == 0 and len(asr.streams) == 1
        stream = asr.streams[0]
        assert stream.feeds >= 3 and stream.closed  # fed while the user spoke, then finished


@virtual_time
async def test_a_stream_that_breaks_mid_turn_leaves_the_turn_to_a_whole_transcription():
    asr = StreamingASR()
    # In process: the chain asks it again after a failure (a remote one would be marked down and the
    # turn go to the next backend of the chain: tests/test_chain.py).
    asr.capabilities = Capabilities(streaming_input=True, partials=True)
    asr.break_after_feeds = 1
    async with Dialogue(asr=asr) as d:
        d.speak(QUESTION, at=0.5, seconds=2.5)
        await d.first(lambda m: m["type"] == "metrics")
        assert d.final("transcript")[0]["text"] == QUESTION and asr.whole >= 1
        assert not d.messages("error")


@virtual_time
async def test_each_utterance_has_its_own_stream():
    asr = StreamingASR()
    async with Dialogue(asr=asr) as d:
        d.speak(QUESTION, at=0.5, seconds=2.5)
        await d.first(lambda m: m["type"] == "metrics" and m["turn"] == 1)
        d.speak("And in Paris?", at=d.now + 0.5, seconds=1.5)
        await d.first(lambda m: m["type"] == "metrics" and m["turn"] == 2)
        assert [m["text"] for m in d.final("transcript")] == [QUESTION, "And in Paris?"]
        assert len(asr.streams) == 2 and all(s.closed for s in asr.streams)
