"""One session per RTCPeerConnection: its tracks, its events channel, its conversation, its cleanup.

The session owns everything it starts. ``close()`` is idempotent and is reached from every way a call
can end (the client hangs up, ICE fails, the server shuts down, the offer was bad), so a session never
leaves a peer connection, a task or a queued buffer behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable

import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from . import events
from .audio import InboundConverter
from .config import Config
from .conversation import Conversation
from .events import EventChannel, ProtocolError, parse_client_message
from .frontend import FarEndReference, FrontEnd
from .llm import History
from .services import Services
from .tracks import OutboundAudioTrack
from .vad import TurnDetector, TurnEvent
from .workers import run_frontend

log = logging.getLogger(__name__)


class Session:
    def __init__(
        self,
        services: Services,
        config: Config,
        on_closed: Callable[[Session], None] | None = None,
        client_aec: bool = False,
    ):
        """``client_aec``: the client says its microphone has echo cancellation on, so the server starts
        out expecting no echo of the bot (and keeps measuring, see ``EchoCoupling``)."""
        self.id = secrets.token_urlsafe(9)
        self.config = config
        self._on_closed = on_closed
        ice = [RTCIceServer(url) for url in config.ice_servers]
        # iceServers=[] matters: None makes aiortc fall back to a public STUN server.
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        self.output = OutboundAudioTrack()
        self.channel = EventChannel()
        self.conversation = Conversation(
            services.asr,
            services.llm,
            services.tts,
            self.output,
            self.channel,
            History(system_prompt=config.system_prompt),
            llm_timeout_s=config.llm_timeout_s,
            record_dir=config.record_turns_dir,
            params=config.turn,
            interrupt_after_ms=config.interrupt_after_ms,
        )
        self.detector = TurnDetector(config.turn)
        self.frontend = FrontEnd(
            config.aec, config.noise_suppression, config.auto_gain_dbfs, echo_expected=not client_aec
        )
        self.reference = FarEndReference()
        self.output.add_listener(self.reference.on_frame)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()
        self._closing = False
        self._inbound: MediaStreamTrack | None = None
        self.frames_in = 0
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_connection_state)

    @property
    def closed(self) -> bool:
        return self._closing

    async def accept(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        """Applies the client's offer and returns our answer, with all our ICE candidates in it."""
        # Added before the offer is applied, so aiortc binds it to the offer's audio transceiver.
        self.pc.addTrack(self.output)
        await self.pc.setRemoteDescription(offer)
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)  # waits for ICE gathering: aiortc does not trickle
        self.conversation.start()
        self._spawn(self._connect_watchdog(), "connect-watchdog")
        return self.pc.localDescription

    async def _connect_watchdog(self) -> None:
        """A client that posts an offer and never connects must not hold a session slot: aioice waits
        for more candidates forever unless the client signals their end, which browsers rarely do."""
        await asyncio.sleep(self.config.connect_timeout_s)
        if self.pc.connectionState != "connected" and not self._closing:
            log.info(
                "session %s: not connected after %.0f s; closing", self.id, self.config.connect_timeout_s
            )
            self._spawn(self.close(), "close")

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"{name}:{self.id}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("session %s: task %s failed", self.id, task.get_name(), exc_info=task.exception())

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio" or self._inbound is not None:
            # One microphone per session: the turn detector is the state of one stream.
            log.info("session %s: ignoring an extra %s track", self.id, track.kind)
            return
        self._inbound = track
        self._spawn(self._consume_or_close(track), "inbound")

    async def _consume_or_close(self, track: MediaStreamTrack) -> None:
        try:
            await self._consume(track)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A deaf session is worse than a closed one: the client can reconnect.
            log.exception("session %s: inbound audio failed; closing", self.id)
            self.channel.send(events.error("internal", "the server stopped hearing this call; reconnect"))
            self._spawn(self.close(), "close")

    async def _consume(self, track: MediaStreamTrack) -> None:
        """Drains the inbound track for the whole call: aiortc's receive queue is unbounded, so frames
        left unread (while the bot talks, say) would pile up in memory and arrive late."""
        loop = asyncio.get_running_loop()
        converter = InboundConverter()
        while True:
            try:
                async with asyncio.timeout(self.config.media_timeout_s):
                    frame = await track.recv()
            except MediaStreamError:
                return
            except TimeoutError:
                log.info("session %s: no audio for %.0f s; closing", self.id, self.config.media_timeout_s)
                # close() cancels this task, so it runs as a task of its own; the session holds it.
                self._spawn(self.close(), "close")
                return
            arrival = loop.time()
            self.frames_in += 1
            pcm = converter.convert(frame)
            reference = self.reference.take(pcm.size)  # on the loop, where the track feeds it
            for event in await run_frontend(self._hear, pcm, reference, arrival):
                self.conversation.on_turn_event(event)

    def _hear(self, pcm: np.ndarray, reference: np.ndarray, arrival: float) -> list[TurnEvent]:
        """Front-end then turn detection, in one worker-thread hop per 20 ms frame."""
        clean, words = self.frontend.process_pair(pcm, reference)
        return self.detector.process(clean, arrival, self.frontend.echo_possible, keep=words)

    def _on_datachannel(self, channel) -> None:
        if channel.label != "events":
            log.info("session %s: ignoring data channel %r", self.id, channel.label)
            return
        self.channel.attach(channel)
        self.channel.send({"type": "session", "id": self.id})

        @channel.on("message")
        def on_message(raw: str | bytes) -> None:
            try:
                message = parse_client_message(raw)
            except ProtocolError as exc:
                self.channel.send(events.error("bad_message", str(exc)))
                return
            if message["type"] == "ping":
                self.channel.send({"type": "pong"})
            elif message["type"] == "interrupt":
                self.conversation.interrupt()

    async def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.info("session %s: connection %s", self.id, state)
        if state in ("failed", "closed"):
            await self.close()

    async def close(self) -> None:
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            # Inbound first, so no new turn can start while the conversation winds down.
            others = [t for t in self._tasks if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            for task in others:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self.conversation.close()
            self.frontend.close()
            self.output.clear()
            self.output.stop()
            await self.pc.close()
        finally:
            self._closed.set()
            log.info("session %s: closed", self.id)
            if self._on_closed is not None:
                self._on_closed(self)
