"""A call driven with no transport at all: the test is the microphone and the loudspeaker.

``VirtualLine`` feeds 20 ms chunks of 48 kHz PCM into ``Call.hear`` in real time (speech when the test
queues some, silence otherwise, as a browser's microphone track does) and pulls the call's playout once
every 20 ms, as an outbound WebRTC track would, recording what came out. Events are recorded with the
loop time they were sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import numpy as np

from tests.support.eventlog import EventLog
from voicepeer.audio.formats import WEBRTC_FRAME_SAMPLES, WEBRTC_RATE, SampleBuffer
from voicepeer.call.call import Call
from voicepeer.call.services import Services
from voicepeer.config import Config

FRAME_S = WEBRTC_FRAME_SAMPLES / WEBRTC_RATE


class VirtualLine(EventLog):
    def __init__(
        self, call: Call, speaker: tuple[float, float] | None = None, browser_canceller: bool = False
    ) -> None:
        """``speaker``: (delay in seconds, gain) of an acoustic path from the loudspeaker back into the
        microphone, as a laptop on speakers with no echo canceller of its own; None: headphones.
        ``browser_canceller``: the client sends two captures, as ours does with the browser's canceller
        on: the processed one holds no echo, and what the user says while the bot's voice plays is
        taken down by 30 dB (Chromium's canceller over the first seconds of a call), the unprocessed one
        is the microphone as it is (with the echo, on a loudspeaker)."""
        super().__init__()
        self.browser_canceller = browser_canceller
        self._bot_frames_ago = 10**9
        self.call = call
        self.heard: list[tuple[float, np.ndarray]] = []
        """(loop time, 20 ms of the bot's voice at 48 kHz) for every frame pulled."""
        self._mic = SampleBuffer()
        self._echo: SampleBuffer | None = None
        self._gain = 0.0
        if speaker is not None:
            delay_s, self._gain = speaker
            self._echo = SampleBuffer()
            self._echo.push(np.zeros(round(delay_s * WEBRTC_RATE), dtype=np.int16))
        self._task: asyncio.Task[None] | None = None
        call.events.subscribe(self.record)

    def say(self, pcm48k: np.ndarray) -> float:
        """Queues speech; returns the loop time at which its first sample will be heard."""
        start = asyncio.get_running_loop().time() + len(self._mic) / WEBRTC_RATE
        self._mic.push(np.asarray(pcm48k, dtype=np.int16))
        return start

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = 0
        while True:
            n += 1
            await asyncio.sleep(max(0.0, start + n * FRAME_S - loop.time()))
            now = loop.time()
            played = self.call.playout.next_frame(now)
            self.heard.append((now, played))
            chunk = self._mic.pop(WEBRTC_FRAME_SAMPLES)
            if chunk is None:
                chunk = np.zeros(WEBRTC_FRAME_SAMPLES, dtype=np.int16)
            processed = None
            if self.browser_canceller:
                self._bot_frames_ago = 0 if np.abs(played).max() > 300 else self._bot_frames_ago + 1
                suppressed = self._bot_frames_ago < 10  # its voice played in the last 200 ms
                processed = (chunk * 0.03).astype(np.int16) if suppressed else chunk
            if self._echo is not None:
                self._echo.push(played)
                echo = self._echo.pop(WEBRTC_FRAME_SAMPLES)
                mixed = chunk.astype(np.int32) + np.round(echo.astype(np.float64) * self._gain).astype(
                    np.int32
                )
                chunk = np.clip(mixed, -32768, 32767).astype(np.int16)
            if processed is not None:
                await self.call.hear(processed, WEBRTC_RATE, 1, now)
                await self.call.hear(chunk, WEBRTC_RATE, 1, now, unprocessed=True)
            else:
                await self.call.hear(chunk, WEBRTC_RATE, 1, now)

    def voiced_after(self, t: float, threshold: int = 300) -> float | None:
        for at, pcm in self.heard:
            if at >= t and np.abs(pcm.astype(np.int32)).max() > threshold:
                return at
        return None


@contextlib.asynccontextmanager
async def virtual_call(
    services: Services,
    *,
    voice: bool = True,
    speaker: tuple[float, float] | None = None,
    browser_canceller: bool = False,
    **config,
) -> AsyncIterator[VirtualLine]:
    """A started call on a virtual line. Without ``speaker`` the line has no acoustic path from the
    loudspeaker to the microphone, so the call is told so, as a client with echo cancellation would;
    with it, the bot's voice comes back (``VirtualLine``) and the call is told nothing cancels it.
    With ``browser_canceller`` the client cancels the echo itself and also sends its unprocessed
    capture (``VirtualLine``), loudspeaker or not."""
    client_aec = speaker is None or browser_canceller
    call = Call(services, Config(**config), voice=voice, client_aec=client_aec, unprocessed=browser_canceller)
    line = VirtualLine(call, speaker, browser_canceller)
    call.start()
    line._task = asyncio.get_running_loop().create_task(line._run())
    try:
        yield line
    finally:
        line._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await line._task
        await call.close()
