"""A real aiortc client on loopback: a microphone track fed from PCM, the events channel, a recorder."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from tests.support.eventlog import EventLog
from voicepeer.audio.formats import InboundConverter, frame_pcm
from voicepeer.call.playout import Playout
from voicepeer.transport.jitter import use_audio_jitter_buffer
from voicepeer.transport.tracks import PlayoutTrack


@dataclass
class Received:
    times: list[float] = field(default_factory=list)
    pcm: list[np.ndarray] = field(default_factory=list)

    def voiced_after(self, t: float, threshold: int = 300) -> float | None:
        """Loop time of the first received 20 ms frame after ``t`` with a peak above ``threshold``."""
        for at, pcm in zip(self.times, self.pcm, strict=True):
            if at >= t and np.abs(pcm.astype(np.int32)).max() > threshold:
                return at
        return None


class Refused(AssertionError):
    """The server answered the offer with an error (``status``, its JSON ``body``)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.status, self.body = status, body


class RtcClient(EventLog):
    """Plays like a browser would: sends a mic track (paced PCM, then silence) and records replies."""

    def __init__(
        self,
        base_url: str,
        echo_cancellation: bool = True,
        token: str | None = None,
        ssl: object = None,
        low_latency: bool = False,
    ) -> None:
        """``low_latency``: the server's audio jitter buffer on the received track rather than aiortc's
        4-packet prefetch (80 ms)."""
        super().__init__()
        self.low_latency = low_latency
        self.base_url = base_url
        self.token = token
        self.ssl = ssl  # False: accept a self-signed certificate (the compose stack's front door)
        self.echo_cancellation = echo_cancellation  # nothing the client receives reaches its "mic"
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.voice = Playout()  # what the "user" says, paced as the server's voice is: PCM then silence
        self.mic = PlayoutTrack(self.voice)
        self.received = Received()
        self.session_id: str | None = None
        self.answer: dict[str, Any] = {}
        """The server's answer to the offer: the session's id and URLs."""
        self._tasks: list[asyncio.Task[None]] = []
        self.channel = self.pc.createDataChannel("events")
        self.channel.on("message", self._on_message)
        self.pc.addTrack(self.mic)
        self.pc.on("track", self._on_track)

    def _on_message(self, raw: str) -> None:
        self.record(json.loads(raw))

    def _on_track(self, track: MediaStreamTrack) -> None:
        if self.low_latency:
            receiver = next(t.receiver for t in self.pc.getTransceivers() if t.receiver.track is track)
            use_audio_jitter_buffer(receiver)
        self._tasks.append(asyncio.get_running_loop().create_task(self._record(track)))

    async def _record(self, track: MediaStreamTrack) -> None:
        convert = InboundConverter(out_rate=48_000)
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.received.times.append(loop.time())
            self.received.pcm.append(convert.convert(*frame_pcm(frame)))

    async def connect(self) -> dict[str, Any]:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = {
            "sdp": self.pc.localDescription.sdp,
            "type": "offer",
            "echo_cancellation": self.echo_cancellation,
        }
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        post = {"json": offer, "headers": headers, **({"ssl": self.ssl} if self.ssl is not None else {})}
        async with aiohttp.ClientSession() as http, http.post(f"{self.base_url}/offer", **post) as r:
            body = await r.json()
            if r.status != 200:
                raise Refused(r.status, body)
        self.session_id = body["session_id"]
        self.answer = body
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
        return body

    def say(self, pcm48k: np.ndarray) -> float:
        """Queues audio on the mic; returns the loop time at which its first sample will be sent."""
        start = asyncio.get_running_loop().time() + self.voice.buffered_samples / 48_000
        self.voice.enqueue(pcm48k)
        return start

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
