"""Admission by whether the inference keeps up (voicepeer.runtime.load), on a virtual clock, and the
offer route's 503 when it does not."""

from __future__ import annotations

import aiohttp
import pytest

from tests.support.calls import serve
from tests.support.offers import local_offer
from voicepeer.config import ServerConfig
from voicepeer.runtime.load import InferenceLoad, turn_compute_ms
from voicepeer.transport.app import STATE

MARKS = {"pause_ms": 100.0, "transcript_ms": 300.0, "llm_first_token_ms": 420.0, "tts_first_audio_ms": 600.0}


def test_a_turns_compute_is_its_in_process_stages_from_the_pause_to_the_first_audio():
    assert turn_compute_ms(MARKS, lambda stage: True) == 500.0
    assert turn_compute_ms(MARKS, lambda stage: stage != "llm") == 200.0 + 180.0  # a remote LLM's wait
    assert turn_compute_ms(MARKS, lambda stage: False) is None
    typed = {"llm_first_token_ms": 120.0, "tts_first_audio_ms": 300.0}  # no transcript: only the TTS
    assert turn_compute_ms(typed, lambda stage: True) == 180.0
    assert turn_compute_ms({"pause_ms": 100.0, "transcript_ms": "x"}, lambda stage: True) is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_call_is_refused_when_one_more_would_take_a_turn_past_the_budget():
    clock = Clock()
    load = InferenceLoad(clock=clock)
    for ms in (500, 700, 650):
        load.observe(ms)
    assert load.typical_ms() == 650
    assert load.refusal(1, 1500) is None  # 650 ms -> ~1300 ms with a second call
    assert load.refusal(2, 1500) is None  # ~975 ms with a third
    for ms in (1200, 1300, 1100, 1150):
        load.observe(ms)
    assert load.typical_ms() == 1175  # the newest four: the load as it is now
    reason = load.refusal(3, 1500)  # ~1600 ms with a fourth
    assert reason is not None and "1175 ms" in reason and "1567 ms" in reason
    assert load.refused == 1
    assert load.refusal(0, 1500) is None  # an empty server always takes a call


def test_too_few_or_too_old_turns_say_nothing_and_a_budget_of_zero_is_off():
    clock = Clock()
    load = InferenceLoad(clock=clock)
    load.observe(5000)
    assert load.typical_ms() is None and load.refusal(1, 1500) is None  # one turn could be a fluke
    load.observe(5000)
    assert load.refusal(1, 1500) is not None
    clock.now += 21  # the load has gone: the turns that measured it are 20 s old
    assert load.typical_ms() is None and load.refusal(1, 1500) is None
    off = InferenceLoad(clock=clock)
    for _ in range(5):
        off.observe(9000)
    assert off.refusal(4, 0) is None


@pytest.mark.slow
async def test_an_offer_is_answered_503_overloaded_when_the_turns_say_so(services):
    server = await serve(services, server=ServerConfig(max_sessions=8))
    state = server.app[STATE]
    try:
        async with aiohttp.ClientSession(base_url=str(server.make_url(""))) as http:
            offer = {"sdp": await local_offer(), "type": "offer"}
            async with http.post("/offer", json=offer) as r:
                assert r.status == 200  # the first call is always taken
            for _ in range(3):
                services.load.observe(900)  # one call's turns at 900 ms: a second would take ~1800
            async with http.post("/offer", json={"sdp": await local_offer(), "type": "offer"}) as r:
                body = await r.json()
                assert r.status == 503 and r.headers["Retry-After"] == "15", body
                assert body["error"] == "overloaded" and "900 ms" in body["message"]
            async with http.get("/healthz") as r:
                load = (await r.json())["load"]
                assert load == {"turn_compute_ms": 900, "budget_ms": 1000.0, "refused": 1}
            assert len(state.sessions) == 1
    finally:
        for session in list(state.sessions.values()):
            await session.close()
        await server.close()
