"""A call carried by one aiortc RTCPeerConnection: the WebRTC adapter around ``voicepeer.call.call.Call``.

It reads decoded microphone frames into the call, paces the call's playout back as an outbound track
(when the client wants the bot's voice), binds the ``events`` data channel to the call's events and
control commands, and watches the connection. The same adapter serves a JSON ``/offer`` and a WHIP
``POST /whip``: only how the description arrives differs, which is signaling's business.

The session owns everything it starts. ``close()`` is idempotent and is reached from every way a call
can end (the client hangs up, ICE fails, the server shuts down, the offer was bad), so a session never
leaves a peer connection, a task or a queued buffer behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiortc import RTCConfiguration, RTCIceCandidate, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcsctptransport import RTCSctpTransport

from ..audio.formats import frame_pcm
from ..call import events
from ..call.call import Call
from ..call.control import ControlError
from ..call.events import EventChannel, ProtocolError, parse_client_message
from ..call.logic import Logic
from ..call.services import Services
from ..config import Config
from ..runtime.tasks import Tasks
from .candidates import add_bundled_candidates, end_of_candidates, without_end_of_candidates
from .decoder import raise_decoder_priority
from .dtls import Certificate, failure_reason, use_certificate
from .jitter import Timeline, use_audio_jitter_buffer
from .tracks import PlayoutTrack

log = logging.getLogger(__name__)

MAX_TRICKLED = 50
"""Remote candidates a client may trickle into one call (a browser gathers well under ten)."""


def _contain_undecodable_messages() -> None:
    """A data-channel message marked as text that is not UTF-8 makes aiortc raise inside its SCTP
    receive loop, which ends the whole association (the call, silently). Such a message is handed to
    the channel as the bytes it is instead, which the protocol refuses like any binary message."""
    original = RTCSctpTransport._data_channel_receive
    if getattr(original, "contained", False):
        return

    async def receive(self, stream_id: int, pp_id: int, data: bytes) -> None:
        try:
            await original(self, stream_id, pp_id, data)
        except UnicodeDecodeError:
            channel = self._data_channels.get(stream_id)
            if channel is not None:
                channel.emit("message", bytes(data))

    receive.contained = True  # type: ignore[attr-defined]
    RTCSctpTransport._data_channel_receive = receive  # type: ignore[method-assign]


_contain_undecodable_messages()


class Session:
    def __init__(
        self,
        services: Services,
        config: Config,
        on_closed: Callable[[Session], None] | None = None,
        client_aec: bool = False,
        voice: bool = True,
        unprocessed_mid: str | None = None,
        logic: Logic | None = None,
        context: dict[str, str] | None = None,
        greeting: str | None = None,
    ):
        """``voice``: the client receives audio (a ``sendrecv`` offer); a send-only client gets text.
        ``unprocessed_mid``: the m-line on which the client sends its microphone a second time, without
        its echo canceller (``voicepeer.audio.capture``)."""
        self.call = Call(
            services,
            config,
            voice=voice,
            client_aec=client_aec,
            unprocessed=unprocessed_mid is not None,
            logic=logic,
            context=context,
            greeting=greeting,
        )
        self.unprocessed_mid = unprocessed_mid
        self.id = self.call.id
        self.config = config
        self._on_closed = on_closed
        ice = [RTCIceServer(url) for url in config.ice.servers]
        # iceServers=[] matters: None makes aiortc fall back to a public STUN server.
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        self.certificate = Certificate.generate()
        """Our DTLS certificate, which also tells how the handshake went."""
        use_certificate(self.pc, self.certificate)
        self.output = PlayoutTrack(self.call.playout) if voice else None
        self._tasks = Tasks(f"session {self.id}")
        self._closed = asyncio.Event()
        self._closing = False
        self._inbound: MediaStreamTrack | None = None
        self._unprocessed: MediaStreamTrack | None = None
        self._trickled = 0
        self.outcome: str | None = None
        """How the call ended: hangup, failed, never_connected, vanished, too_long, error, shutdown,
        refused (the first reason given to ``close``)."""
        self.frames_in = 0
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_connection_state)

    @property
    def closed(self) -> bool:
        return self._closing

    async def accept(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        """Applies the client's offer and returns our answer, with all our ICE candidates in it."""
        if self.output is not None:
            # Added before the offer is applied, so aiortc binds it to the offer's audio transceiver.
            self.pc.addTrack(self.output)
        sdp, ended = without_end_of_candidates(offer.sdp)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=offer.type))
        except Exception as exc:  # whatever aiortc trips on while applying it, the offer is to blame
            raise ValueError(f"aiortc could not apply the offer: {type(exc).__name__}: {exc}"[:300]) from exc
        await add_bundled_candidates(self.pc, sdp)
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)  # waits for ICE gathering: aiortc does not trickle
        if "a=candidate:" not in self.pc.localDescription.sdp:
            raise RuntimeError("ICE gathered no candidate of ours: the answer could never connect")
        if ended:
            await self._end_of_candidates()
        self.call.start()
        self._tasks.spawn(self._connect_watchdog(), "connect-watchdog")
        self._tasks.spawn(self._hang_up_when_asked(), "hangup-watch")
        self._tasks.spawn(self._length_watchdog(), "length-watchdog")
        return self.pc.localDescription

    async def add_ice_candidate(self, candidate: RTCIceCandidate | None) -> bool:
        """A candidate the client trickled after its offer (WHIP ``PATCH``); None: it has no more.
        False if it was not taken: past ``MAX_TRICKLED`` candidates each is another address the server
        would send connectivity checks to at the client's word."""
        if candidate is None:
            await self._end_of_candidates()
            return True
        if self._trickled >= MAX_TRICKLED:
            return False
        self._trickled += 1
        await self.pc.addIceCandidate(candidate)
        return True

    async def _end_of_candidates(self) -> None:
        if not await end_of_candidates(self.pc):
            log.info(
                "session %s: the client's candidates ended with none usable (unresolved mDNS names?):"
                " waiting for its checks to reach ours",
                self.id,
            )

    async def _hang_up_when_asked(self) -> None:
        """The application hung up (``hangup``): once the last words are played, the call ends."""
        await self.call.ended.wait()
        self._tasks.spawn(self.close("hangup"), "close")

    async def _connect_watchdog(self) -> None:
        """A client that posts an offer and never connects must not hold a session slot: aioice waits
        for more candidates forever unless the client signals their end, which browsers rarely do."""
        await asyncio.sleep(self.config.server.connect_timeout_s)
        if self.pc.connectionState != "connected" and not self._closing:
            log.info(
                "session %s: not connected after %.0f s; closing",
                self.id,
                self.config.server.connect_timeout_s,
            )
            self._tasks.spawn(self.close("never_connected"), "close")

    async def _length_watchdog(self) -> None:
        """One client must not hold a call slot forever, however busy it keeps it."""
        await asyncio.sleep(self.config.server.max_call_s)
        log.info(
            "session %s: the call reached its %.0f s limit; closing", self.id, self.config.server.max_call_s
        )
        self.call.events.send(
            events.error(
                "call_too_long", f"a call lasts at most {self.config.server.max_call_s:.0f} s; reconnect"
            )
        )
        self._tasks.spawn(self.close("too_long"), "close")

    def _on_track(self, track: MediaStreamTrack) -> None:
        transceiver = next((t for t in self.pc.getTransceivers() if t.receiver.track is track), None)
        mid = transceiver.mid if transceiver is not None else None
        receiver = transceiver.receiver if transceiver is not None else None
        if track.kind == "audio" and receiver is not None:
            use_audio_jitter_buffer(receiver)
        if (
            track.kind == "audio"
            and self.unprocessed_mid is not None
            and mid == self.unprocessed_mid
            and self._unprocessed is None
        ):
            self._unprocessed = track
            consume = self._consume_or_close(track, receiver, unprocessed=True)
            self._tasks.spawn(consume, "inbound-unprocessed")
            return
        if track.kind != "audio" or self._inbound is not None:
            # One microphone per session: the turn detector is the state of one stream.
            log.info("session %s: ignoring an extra %s track", self.id, track.kind)
            return
        self._inbound = track
        self._tasks.spawn(self._consume_or_close(track, receiver), "inbound")

    async def _consume_or_close(
        self, track: MediaStreamTrack, receiver: RTCRtpReceiver | None, unprocessed: bool = False
    ) -> None:
        try:
            await self._consume(track, receiver, unprocessed)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A deaf session is worse than a closed one: the client can reconnect.
            log.exception("session %s: inbound audio failed; closing", self.id)
            self.call.events.send(events.error("internal", "the server stopped hearing this call; reconnect"))
            self._tasks.spawn(self.close("error"), "close")

    async def _consume(
        self, track: MediaStreamTrack, receiver: RTCRtpReceiver | None, unprocessed: bool = False
    ) -> None:
        """Drains the inbound track for the whole call: aiortc's receive queue is unbounded, so frames
        left unread (while the bot talks, say) would pile up in memory and arrive late. ``receiver``'s
        decoder thread is raised to the media path's priority at the first frame."""
        loop = asyncio.get_running_loop()
        # The track is announced with the offer, before ICE (trickled, for a WHIP client) is up: the
        # first frame may take as long as connecting may.
        timeout = self.config.server.connect_timeout_s + self.config.server.media_timeout_s
        timeline = Timeline()
        while True:
            try:
                async with asyncio.timeout(timeout):
                    frame = await track.recv()
            except MediaStreamError:
                return
            except TimeoutError:
                if unprocessed:
                    # The client stops sending it once the call keeps the processed capture; the call
                    # lives or ends with that one.
                    log.info("session %s: the unprocessed capture stopped", self.id)
                    return
                log.info(
                    "session %s: no audio for %.0f s; closing", self.id, self.config.server.media_timeout_s
                )
                # close() cancels this task, so it runs as a task of its own; the session holds it.
                self._tasks.spawn(self.close("vanished"), "close")
                return
            arrival = loop.time()
            if receiver is not None:
                raise_decoder_priority(receiver)
                receiver = None
            timeout = self.config.server.media_timeout_s
            missing_s = timeline.missing_s(frame)
            pcm, rate, channels = frame_pcm(frame)
            if unprocessed:
                await self.call.hear(pcm, rate, channels, arrival, unprocessed=True, missing_s=missing_s)
                continue
            self.frames_in += 1
            await self.call.hear(pcm, rate, channels, arrival, missing_s=missing_s)

    def _on_datachannel(self, channel) -> None:
        if channel.label != "events":
            log.info("session %s: ignoring data channel %r", self.id, channel.label)
            return
        sink = EventChannel(channel)
        for event in self.call.snapshot():
            sink(event)
        unsubscribe = self.call.events.subscribe(sink)
        channel.on("close", unsubscribe)

        @channel.on("message")
        def on_message(raw: str | bytes) -> None:
            # Raised here, anything would end aiortc's SCTP receive loop and with it the call.
            try:
                reply = self.call.control(parse_client_message(raw))
            except ProtocolError as exc:
                reply = events.error("bad_message", str(exc))
            except ControlError as exc:
                reply = None if exc.quiet else events.error(exc.code, exc.message, exc.field)
            except Exception:
                log.exception("session %s: a client message failed", self.id)
                reply = events.error("internal", "the server failed to carry out this message")
            if reply is not None:
                sink.answer(reply)

    async def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        cipher = f" ({self.certificate.cipher})" if state == "connected" and self.certificate.cipher else ""
        log.info("session %s: connection %s%s", self.id, state, cipher)
        if state == "failed" and not self._closing:
            reason = failure_reason(self.pc, self.certificate)
            log.warning("session %s: %s", self.id, reason)
            self.call.events.send(events.error("connection_failed", reason))
        if state in ("failed", "closed"):
            await self.close("failed" if state == "failed" else "hangup")

    async def close(self, reason: str = "hangup") -> None:
        if self.outcome is None:
            self.outcome = reason
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            # Inbound first, so no new turn can start while the conversation winds down.
            await self._tasks.cancel_all()
            await self.call.close()
            if self.output is not None:
                self.output.stop()
            await self.pc.close()
        finally:
            self._closed.set()
            ref, moves = self.call.reference, self.call.playout_moves
            log.info(
                "session %s: closed (the bot's reference: %d ms of outbound stalls, %d ms of microphone"
                " lost, %d ms unpaired; the client's playout: %d reports, %d ms concealed in bursts,"
                " %d ms squeezed, %d ms stretched; %d ms of the bot's voice let through by the canceller,"
                " kept from the turn detector)",
                self.id,
                ref.stalled // 16,
                ref.skipped // 16,
                ref.dropped // 16,
                moves.reports,
                moves.concealed_ms,
                moves.squeezed_ms,
                moves.stretched_ms,
                self.call.frontend.leaked_frames * 10,
            )
            if self._on_closed is not None:
                self._on_closed(self)
