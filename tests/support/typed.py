"""A typed question in a new call in this process, its voice pulled in real time as a WebRTC track
would pull it, until the turn's metrics come: for tests and benchmarks of what a reply does."""

from __future__ import annotations

import asyncio
from typing import Any

from voicepeer.audio.formats import WEBRTC_FRAME_SAMPLES, WEBRTC_RATE
from voicepeer.call.call import Call
from voicepeer.call.logic import Logic
from voicepeer.call.services import Services
from voicepeer.config import Config

FRAME_S = WEBRTC_FRAME_SAMPLES / WEBRTC_RATE


async def ask(
    services: Services,
    question: str,
    logic: Logic | None = None,
    config: Config | None = None,
    timeout_s: float = 120,
) -> list[dict[str, Any]]:
    """The call's events, from its start to the metrics of the question's turn."""
    call = Call(services, config or Config(), client_aec=True, logic=logic)
    seen: list[dict[str, Any]] = []
    over = asyncio.Event()

    def on_event(event: dict[str, Any]) -> None:
        seen.append(event)
        if event["type"] == "metrics":
            over.set()

    call.events.subscribe(on_event)
    call.start()
    call.control({"type": "say", "text": question})
    loop = asyncio.get_running_loop()
    start, n = loop.time(), 0
    try:
        async with asyncio.timeout(timeout_s):
            while not over.is_set():
                n += 1
                await asyncio.sleep(max(0.0, start + n * FRAME_S - loop.time()))
                call.playout.next_frame(loop.time())
    finally:
        await call.close()
    return seen


def final_reply(seen: list[dict[str, Any]]) -> str:
    return next((e["text"] for e in seen if e["type"] == "reply" and e["final"]), "")
