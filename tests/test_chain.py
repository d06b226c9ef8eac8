"""A stage's chain of backends on virtual time: fallback, the retry of the request in flight, timeouts,
the probe that brings a backend back, and every backend down. The backends here inject the faults
(the real servers' own tests are tests/test_backend_*.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from tests.support.clock import virtual_time
from voicepeer.audio.formats import SPEECH_RATE
from voicepeer.backends.asr import ASR, Transcript
from voicepeer.backends.base import BackendError, Capabilities
from voicepeer.backends.chain import Chain, Switch
from voicepeer.backends.llm import LLM
from voicepeer.backends.stages import ASRChain, LLMChain, TTSChain
from voicepeer.backends.tts import TTS

AUDIO = np.zeros(SPEECH_RATE, dtype=np.int16)


class Faulty(ASR):
    """Answers ``text`` after ``delay_s``; ``down`` makes requests and probes fail, ``hang`` makes them
    never answer (a server that accepts and says nothing)."""

    def __init__(self, name: str, text: str, remote: bool = True, delay_s: float = 0.1) -> None:
        self.name = name
        self.text = text
        self.delay_s = delay_s
        self.down = False
        self.hang = False
        self.requests = 0
        self.capabilities = Capabilities(remote=remote, cheap=not remote)

    async def _serve(self) -> None:
        self.requests += 1
        if self.hang:
            await asyncio.Event().wait()
        await asyncio.sleep(self.delay_s)
        if self.down:
            raise BackendError(f"{self.name} refused the connection")

    async def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        await self._serve()
        return Transcript(self.text, audio.size / SPEECH_RATE)

    async def probe(self) -> None:
        if self.down or self.hang:
            raise BackendError("no answer")


def chain_of(*backends: ASR, timeout_s: float = 2.0, probe_s: float = 5.0) -> tuple[ASRChain, list[Switch]]:
    chain = Chain("asr", list(backends), timeout_s=timeout_s, probe_interval_s=probe_s)
    switches: list[Switch] = []
    chain.subscribe(switches.append)
    return ASRChain(chain), switches


@virtual_time
async def test_a_failing_backend_hands_the_request_in_flight_to_the_next_and_the_stage_stays_there():
    first, second = Faulty("wyoming://a:1", "from a"), Faulty("embedded", "from b", remote=False)
    asr, switches = chain_of(first, second)
    assert (await asr.transcribe(AUDIO)).text == "from a"
    first.down = True
    assert (await asr.transcribe(AUDIO)).text == "from b"  # the same request, retried once
    assert [(s.from_, s.to) for s in switches] == [("wyoming://a:1", "embedded")]
    assert "refused" in switches[0].reason
    assert (await asr.transcribe(AUDIO)).text == "from b"
    assert first.requests == 2  # the next requests do not try the failed one again
    assert asr.chain.status()["active"] == "embedded"
    assert [b["state"] for b in asr.chain.status()["backends"]] == ["down", "up"]


@virtual_time
async def test_a_backend_that_never_answers_is_given_up_after_the_timeout():
    loop = asyncio.get_running_loop()
    first, second = Faulty("wyoming://a:1", "from a"), Faulty("embedded", "from b", remote=False)
    first.hang = True
    asr, switches = chain_of(first, second, timeout_s=2.0)
    t0 = loop.time()
    assert (await asr.transcribe(AUDIO)).text == "from b"
    assert loop.time() - t0 == pytest.approx(2.0 + second.delay_s)
    assert switches[0].reason.endswith("no answer within 2 s")


@virtual_time
async def test_the_probe_moves_the_stage_back_once_the_first_backend_answers_again():
    loop = asyncio.get_running_loop()
    first, second = Faulty("wyoming://a:1", "from a"), Faulty("embedded", "from b", remote=False)
    asr, switches = chain_of(first, second, probe_s=5.0)
    asr.chain.start()
    try:
        first.down = True
        await asr.transcribe(AUDIO)
        await asyncio.sleep(12)  # two probes while it is down: no move
        assert len(switches) == 1
        first.down = False
        back = loop.time()
        while len(switches) < 2:
            await asyncio.sleep(0.1)
        assert loop.time() - back <= 5.0 + 0.2
        assert (switches[1].from_, switches[1].to, switches[1].reason) == (
            "embedded",
            "wyoming://a:1",
            "recovered",
        )
        assert (await asr.transcribe(AUDIO)).text == "from a"
    finally:
        await asr.chain.stop()


@virtual_time
async def test_with_every_remote_backend_down_a_request_fails_at_once_and_names_them():
    loop = asyncio.get_running_loop()
    first, second = Faulty("wyoming://a:1", "a"), Faulty("http://b:2/v1", "b")
    first.down = second.down = True
    asr, switches = chain_of(first, second)
    with pytest.raises(BackendError):
        await asr.transcribe(AUDIO)
    assert switches[-1].to is None
    t0 = loop.time()
    with pytest.raises(BackendError, match=r"every asr backend is down.*wyoming://a:1.*http://b:2/v1"):
        await asr.transcribe(AUDIO)
    assert loop.time() == t0  # no waiting on dead servers until the probe finds one back


@virtual_time
async def test_an_in_process_backend_that_failed_once_is_still_asked():
    only = Faulty("embedded", "words", remote=False)
    asr, switches = chain_of(only)
    only.down = True
    with pytest.raises(BackendError):
        await asr.transcribe(AUDIO)
    only.down = False
    assert (await asr.transcribe(AUDIO)).text == "words"
    assert [(s.from_, s.to) for s in switches] == [("embedded", None), (None, "embedded")]


class Voice(TTS):
    def __init__(self, name: str, rate: int, fail_after: int | None = None, hang: bool = False) -> None:
        self.name = name
        self.sample_rate = rate
        self.fail_after = fail_after
        self.hang = hang
        self.capabilities = Capabilities(remote=True, sample_rate=rate, streaming_output=True)

    async def synthesize(self, text: str) -> AsyncIterator[np.ndarray]:
        for i in range(3):
            if self.hang:
                await asyncio.Event().wait()
            if self.fail_after is not None and i >= self.fail_after:
                raise BackendError(f"{self.name} broke")
            await asyncio.sleep(0.05)
            yield np.full(self.sample_rate // 10, 1000 * (i + 1), dtype=np.int16)  # 100 ms


@virtual_time
async def test_a_voice_that_fails_before_its_first_audio_is_replaced_and_resampled_to_the_chain_rate():
    tts = TTSChain(Chain("tts", [Voice("a", 22_050, fail_after=0), Voice("b", 16_000)], timeout_s=2.0))
    assert tts.sample_rate == 22_050
    chunks = [c async for c in tts.synthesize("Hello there.")]
    total = sum(c.size for c in chunks)
    assert total == pytest.approx(3 * 2_205, abs=64)  # 300 ms at the first voice's rate, not 16 kHz's


@virtual_time
async def test_a_voice_that_fails_mid_piece_ends_the_piece_with_an_error_not_a_second_voice():
    second = Voice("b", 22_050)
    tts = TTSChain(Chain("tts", [Voice("a", 22_050, fail_after=1), second], timeout_s=2.0))
    got = []
    with pytest.raises(BackendError, match="a broke"):
        async for chunk in tts.synthesize("Hello there."):
            got.append(chunk)
    assert len(got) == 1  # the listener heard a's start: b does not say it again differently
    assert tts.chain.active is second  # the next piece goes to b


class Tokens(LLM):
    def __init__(self, name: str, gap_s: float) -> None:
        self.name = name
        self.gap_s = gap_s
        self.closed = 0
        self.capabilities = Capabilities(remote=True, streaming_output=True)

    async def stream(self, messages, options=None) -> AsyncIterator[str]:
        try:
            for word in ("Paris", " is", " the", " capital."):
                await asyncio.sleep(self.gap_s)
                yield word
        finally:
            self.closed += 1


@virtual_time
async def test_the_llm_deadline_is_per_token_and_a_stalled_stream_is_closed():
    slow = Tokens("http://slow/v1", gap_s=3.0)
    llm = LLMChain(Chain("llm", [slow, Tokens("embedded", gap_s=0.01)], timeout_s=2.0))
    text = "".join([t async for t in llm.stream([{"role": "user", "content": "Capital of France?"}])])
    assert text == "Paris is the capital." and slow.closed == 1
    steady = Tokens("http://steady/v1", gap_s=1.5)  # slower than the deadline in all, not per token
    llm = LLMChain(Chain("llm", [steady], timeout_s=2.0))
    assert "".join([t async for t in llm.stream([])]) == "Paris is the capital."
