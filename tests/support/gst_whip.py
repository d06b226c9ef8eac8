"""A WHIP client (RFC 9725) built on GStreamer's ``webrtcbin``: a third-party WebRTC stack, not ours.

Run with the system Python, which has Debian's GStreamer bindings (the virtualenv has no ``gi``)::

    /usr/bin/python3 tests/support/gst_whip.py --url http://127.0.0.1:8080/whip --wav question.wav [--trickle]

It sends the WAV as Opus on a send-only transceiver, as an encoder or a GStreamer ``whipsink`` would:

- without ``--trickle`` it waits until ``webrtcbin`` has gathered all of its candidates and POSTs the
  complete offer (what ``webrtcbin`` holds as its local description then);
- with ``--trickle`` it POSTs the offer as ``create-offer`` made it (no candidates) at once, then PATCHes
  each candidate as it is gathered (``application/trickle-ice-sdpfrag``, ``If-Match`` the answer's ETag),
  and an ``a=end-of-candidates`` once gathering is complete.

The offer is never edited, and ``webrtcbin`` keeps its default certificate (RSA-2048): the point is to
meet the server as such a client does. The call is followed on the events stream named by the answer's
``rel="events"`` link. Silence is sent from the start (a live source, so the stream is paced in real time
and never ends); the WAV is mixed in once the connection is up, so no word is lost to ICE and DTLS, and
silence goes on after it so that the server's VAD hears the turn end. The client hangs up (DELETE) once
it has seen what ``--until`` asks for, or at ``--timeout``.

Everything it sees is printed to stdout as one JSON object a line, ``{"t": seconds, "kind": ..., ...}``:
the offer, candidates, every HTTP exchange, ICE gathering, ICE, DTLS and connection states, GStreamer
bus errors and warnings, the DTLS elements' own log lines (OpenSSL's reason for a failed handshake), the
server's events, and last ``{"kind": "done", "ok": ..., "reason": ...}``. Exit status 0 when ``ok``.
Standard library and ``gi`` only.
"""

from __future__ import annotations

import argparse
import json
import queue
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

RATE = 48_000
RAW = f"audio/x-raw,format=S16LE,layout=interleaved,rate={RATE},channels=1"

SOURCE = (
    f"audiotestsrc is-live=true wave=silence samplesperbuffer={RATE // 50} ! {RAW} "
    f"! audiomixer name=mix ! {RAW} ! audioconvert ! opusenc ! rtpopuspay pt=111 "
    "! application/x-rtp,media=audio,encoding-name=OPUS,clock-rate=48000,payload=111 "
    "! webrtcbin name=webrtc bundle-policy=max-bundle"
)
"""A live silence source keeps the mixer's output going in real time; the WAV is mixed in later."""

SPEECH = f'filesrc name=speechfile ! wavparse ! audioconvert ! audioresample ! capsfilter caps="{RAW}"'

LOG_LEVELS = "*:ERROR,dtls*:WARNING,webrtcbin:WARNING,nice*:WARNING"
"""GStreamer log categories forwarded to stdout: a failed DTLS handshake is only explained there."""

T0 = time.monotonic()
_print_lock = threading.Lock()


def emit(kind: str, **fields: Any) -> None:
    """One progress line for the test to parse (and for a person to read in its failure message)."""
    line = json.dumps({"t": round(time.monotonic() - T0, 3), "kind": kind, **fields}, default=str)
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def enum_name(value: Any) -> str:
    """``GST_WEBRTC_ICE_CONNECTION_STATE_CONNECTED`` -> ``connected`` (short names, as browsers use)."""
    nick = getattr(value, "value_nick", None)
    return nick if nick else str(value)


def parse_links(values: list[str]) -> dict[str, str]:
    """``Link: <url>; rel="events"`` headers (one per header, or comma-joined) by their rel."""
    links: dict[str, str] = {}
    for value in values:
        for match in re.finditer(r"<([^>]*)>\s*((?:;\s*[^;,<]+)*)", value):
            rel = re.search(r'rel="?([^";,]+)"?', match.group(2))
            if rel:
                links.setdefault(rel.group(1), match.group(1))
    return links


class Http:
    """WHIP's requests, one at a time and in order on their own thread: ``webrtcbin`` calls back on its
    streaming threads, which must not wait on the network, and every PATCH must follow the POST that
    gives it its URL and ETag."""

    def __init__(self, on_error: Callable[[str], object]) -> None:
        self._on_error = on_error
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="whip-http", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def close(self, timeout: float) -> None:
        """Runs what is queued (the DELETE last), then stops."""
        self._jobs.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception as exc:
                emit("error", where="http", message=f"{type(exc).__name__}: {exc}")
                self._on_error(f"HTTP: {type(exc).__name__}: {exc}")


def request(
    method: str, url: str, body: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, str]:
    """(status, headers, body text) of one HTTP request; an HTTP error status is an answer, not a raise."""
    data = body.encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode(errors="replace")


class WhipClient:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loop = GLib.MainLoop()
        self.http = Http(lambda reason: GLib.idle_add(self.fail, reason))
        self.pipe = Gst.parse_launch(SOURCE)
        self.webrtc = self.pipe.get_by_name("webrtc")
        self.mixer = self.pipe.get_by_name("mix")
        self.offer_sdp: str | None = None
        self.resource: str | None = None
        self.etag: str | None = None
        self.speech_added = False
        self.finished = False
        self.ok = False
        self.reason = ""
        self.seen: set[str] = set()

        transceiver = self.webrtc.emit("get-transceiver", 0)
        transceiver.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
        self.transceiver = transceiver
        self.webrtc.connect("on-negotiation-needed", self.on_negotiation_needed)
        self.webrtc.connect("on-ice-candidate", self.on_ice_candidate)
        for prop in ("ice-gathering-state", "ice-connection-state", "connection-state"):
            self.webrtc.connect(f"notify::{prop}", self.on_state)
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message", self.on_message)

    # -- offer and gathering -----------------------------------------------------------------------

    def on_negotiation_needed(self, webrtc: Gst.Element) -> None:
        emit("negotiation_needed")
        webrtc.emit("create-offer", None, Gst.Promise.new_with_change_func(self.on_offer_created))

    def on_offer_created(self, promise: Gst.Promise) -> None:
        promise.wait()
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None else None
        if offer is None:
            self.fail(f"create-offer gave no offer: {reply.to_string() if reply else None}")
            return
        self.offer_sdp = offer.sdp.as_text()
        self.webrtc.emit("set-local-description", offer, Gst.Promise.new())
        emit("offer_created", sdp=self.offer_sdp)
        if self.args.trickle:  # at once, as created: every candidate will follow by PATCH
            self.http.submit(lambda sdp=self.offer_sdp: self.post(sdp))

    def on_ice_candidate(self, _webrtc: Gst.Element, mline: int, candidate: str) -> None:
        emit("candidate", mline=mline, candidate=candidate)
        if self.args.trickle and candidate:
            self.http.submit(lambda: self.patch([candidate], end=False))

    def on_state(self, webrtc: Gst.Element, pspec: Any) -> None:
        value = enum_name(webrtc.get_property(pspec.name))
        emit(pspec.name.replace("-", "_"), state=value)
        if pspec.name == "ice-gathering-state" and value == "complete":
            if self.args.trickle:
                self.http.submit(lambda: self.patch([], end=True))
            else:  # the local description now holds every candidate that was gathered
                sdp = webrtc.get_property("local-description").sdp.as_text()
                self.http.submit(lambda: self.post(sdp))
        elif pspec.name == "connection-state" and value == "connected":
            GLib.idle_add(self.add_speech)
        elif value == "failed":
            GLib.idle_add(self.fail, f"webrtcbin {pspec.name} failed")

    def watch_dtls(self) -> bool:
        """The DTLS transport's own state: says whether DTLS or ICE failed when the connection does.
        Watched once both descriptions are set (a handler connected while the offer was still being set
        crashed the process). The ICE transport's ``notify::state`` is not watched: under PyGObject a
        handler on it crashes this GStreamer (1.22.0) within a second; webrtcbin's
        ``ice-connection-state`` says the same."""
        dtls = self.transceiver.get_property("sender").get_property("transport")
        dtls.connect("notify::state", self.on_dtls_state)
        self.on_dtls_state(dtls, None)  # in case it changed before the handler was there
        return False

    def on_dtls_state(self, dtls: GstWebRTC.WebRTCDTLSTransport, _pspec: Any) -> None:
        """Media can flow once DTLS is up: the speech starts then, or when webrtcbin's own
        ``connection-state`` says ``connected``, whichever comes first."""
        state = enum_name(dtls.props.state)
        emit("dtls_state", state=state)
        if state == "connected":
            GLib.idle_add(self.add_speech)
        elif state == "failed":
            GLib.idle_add(self.fail, "the DTLS transport failed")

    # -- WHIP --------------------------------------------------------------------------------------

    def post(self, sdp: str) -> None:
        emit("post", url=self.args.url, candidates=sdp.count("a=candidate:"), sdp=sdp)
        status, headers, body = request("POST", self.args.url, sdp, {"Content-Type": "application/sdp"})
        links = parse_links(headers.get_all("Link") or []) if headers else {}
        emit(
            "posted",
            status=status,
            location=headers.get("Location") if headers else None,
            etag=headers.get("ETag") if headers else None,
            links=links,
            body=body,
        )
        if status != 201:
            GLib.idle_add(self.fail, f"POST answered {status}: {body[:300]}")
            return
        self.resource = urllib.parse.urljoin(self.args.url, headers["Location"])
        self.etag = headers.get("ETag")
        if "events" in links:
            events = urllib.parse.urljoin(self.args.url, links["events"])
            threading.Thread(target=self.follow, args=(events,), name="events", daemon=True).start()
        else:
            emit("error", where="post", message="no rel=events link in the answer")
        ok, message = GstSdp.SDPMessage.new_from_text(body)
        if ok != GstSdp.SDPResult.OK:
            GLib.idle_add(self.fail, f"the answer does not parse as SDP ({ok})")
            return
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, message)
        promise = Gst.Promise.new()
        self.webrtc.emit("set-remote-description", answer, promise)
        promise.wait()
        reply = promise.get_reply()
        error = reply.get_value("error") if reply is not None and reply.has_field("error") else None
        emit("remote_description_set", error=str(error) if error else None)
        if error:
            GLib.idle_add(self.fail, f"set-remote-description: {error}")
        else:
            GLib.idle_add(self.watch_dtls)

    def fragment(self, lines: list[str]) -> str:
        """An SDP fragment (RFC 8840) for the offer's one m-line: its ufrag, pwd, m= and mid."""
        sdp = self.offer_sdp or ""
        ufrag = re.search(r"^a=ice-ufrag:(\S+)", sdp, re.MULTILINE)
        pwd = re.search(r"^a=ice-pwd:(\S+)", sdp, re.MULTILINE)
        media = re.search(r"^(m=\S+ \d+ \S+(?: \S+)*)\s*$", sdp, re.MULTILINE)
        mid = re.search(r"^a=mid:(\S+)", sdp, re.MULTILINE)
        head = [
            f"a=ice-ufrag:{ufrag.group(1) if ufrag else ''}",
            f"a=ice-pwd:{pwd.group(1) if pwd else ''}",
            media.group(1) if media else "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            f"a=mid:{mid.group(1) if mid else '0'}",
        ]
        return "".join(f"{line}\r\n" for line in head + lines)

    def patch(self, candidates: list[str], *, end: bool) -> None:
        if self.resource is None or self.etag is None:
            emit("patch_skipped", reason="no session (the POST failed)", candidates=candidates, end=end)
            return
        lines = [c if c.startswith("a=") else f"a={c}" for c in candidates]
        if end:
            lines.append("a=end-of-candidates")
        body = self.fragment(lines)
        headers = {"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": self.etag}
        status, _, text = request("PATCH", self.resource, body, headers)
        emit("patched", status=status, candidates=candidates, end=end, body=text or None)

    def delete(self) -> None:
        if self.resource is None:
            return
        status, _, _ = request("DELETE", self.resource)
        emit("deleted", status=status)

    def follow(self, url: str) -> None:
        """The call's events (Server-Sent Events), one ``event`` line each, until the stream ends."""
        emit("events_open", url=url)
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                for raw in r:
                    line = raw.decode(errors="replace").rstrip("\r\n")
                    if not line.startswith("data:"):
                        continue
                    event = json.loads(line[5:].strip())
                    emit("event", event=event)
                    GLib.idle_add(self.on_event, event)
        except Exception as exc:
            if not self.finished:
                emit("error", where="events", message=f"{type(exc).__name__}: {exc}")
        emit("events_closed")
        # The stream ends with the call: before the client hangs up, the server ended it.
        GLib.idle_add(self.fail, "the server ended the call (its events stream closed)")

    def on_event(self, event: dict[str, Any]) -> bool:
        until = self.args.until
        if event.get("type") in ("transcript", "reply") and event.get("final"):
            self.seen.add(event["type"])
        if until != "none" and until in self.seen:
            self.finish(True, f"final {until} received")
        return False

    # -- media -------------------------------------------------------------------------------------

    def add_speech(self) -> bool:
        """Mixes the WAV in from now on: its timestamps start at zero, so its pad is offset by the
        pipeline's running time (and a margin), or the mixer would drop it all as late."""
        if self.speech_added or self.finished:
            return False
        self.speech_added = True
        try:
            self.mix_in_speech()
        except GLib.Error as exc:
            self.fail(f"the WAV could not be mixed in: {exc.message}")
        return False

    def mix_in_speech(self) -> None:
        branch = Gst.parse_bin_from_description(SPEECH, True)
        branch.get_by_name("speechfile").set_property("location", self.args.wav)
        self.pipe.add(branch)
        src = branch.get_static_pad("src")
        clock = self.pipe.get_clock()
        running = clock.get_time() - self.pipe.get_base_time() if clock else 0
        src.set_offset(running + 200 * Gst.MSECOND)
        src.add_probe(Gst.PadProbeType.EVENT_DOWNSTREAM, self.on_speech_event)
        sink = self.mixer.request_pad_simple("sink_%u")
        result = src.link(sink)
        if result != Gst.PadLinkReturn.OK:
            raise GLib.Error(f"linking the WAV to the mixer: {enum_name(result)}")
        branch.sync_state_with_parent()
        emit("speech_started", offset_s=round(running / Gst.SECOND, 3))

    def on_speech_event(self, _pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        if info.get_event().type == Gst.EventType.EOS:
            GLib.idle_add(self.on_speech_end)
        return Gst.PadProbeReturn.OK

    def on_speech_end(self) -> bool:
        """The WAV has been mixed in whole (read ahead of real time by the mixer's queue: it ends on
        the wire a little later). With ``--until none`` the client lingers, sending silence, then ends."""
        emit("speech_read")
        if self.args.until == "none":
            GLib.timeout_add(int(self.args.linger * 1000), self.finish, True, "lingered after speech")
        return False

    def on_message(self, _bus: Gst.Bus, message: Gst.Message) -> None:
        if message.type == Gst.MessageType.ERROR:
            error, debug = message.parse_error()
            emit("bus_error", source=message.src.get_path_string(), message=error.message, debug=debug)
            GLib.idle_add(self.fail, f"GStreamer error from {message.src.get_name()}: {error.message}")
        elif message.type == Gst.MessageType.WARNING:
            warning, debug = message.parse_warning()
            emit("bus_warning", source=message.src.get_path_string(), message=warning.message, debug=debug)

    # -- the end -----------------------------------------------------------------------------------

    def fail(self, reason: str) -> bool:
        self.finish(False, reason)
        return False

    def finish(self, ok: bool, reason: str) -> bool:
        if not self.finished:
            self.finished, self.ok, self.reason = True, ok, reason
            emit("finishing", ok=ok, reason=reason)
            self.loop.quit()
        return False

    def run(self) -> bool:
        GLib.timeout_add(int(self.args.timeout * 1000), self.fail, f"timed out after {self.args.timeout} s")
        for signum in (signal.SIGINT, signal.SIGTERM):
            GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, self.fail, f"signal {signum}")
        result = self.pipe.set_state(Gst.State.PLAYING)
        emit("playing", result=enum_name(result))
        if result == Gst.StateChangeReturn.FAILURE:
            self.finish(False, "the pipeline did not start")
        else:
            self.loop.run()
        self.http.submit(self.delete)  # after any request still in flight
        self.http.close(timeout=30)
        self.pipe.set_state(Gst.State.NULL)
        emit("done", ok=self.ok, reason=self.reason, seen=sorted(self.seen))
        return self.ok


def forward_log(
    category: Gst.DebugCategory,
    level: Gst.DebugLevel,
    _file: str,
    function: str,
    _line: int,
    source: Any,
    message: Gst.DebugMessage,
    *_data: Any,
) -> None:
    """GStreamer's log lines at the chosen levels, as progress lines (OpenSSL's errors land here)."""
    name = source.get_name() if isinstance(source, Gst.Object) else None
    emit(
        "gst_log",
        category=category.get_name(),
        level=enum_name(level),
        function=function,
        source=name,
        message=message.get(),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the WHIP endpoint, e.g. http://127.0.0.1:8080/whip")
    parser.add_argument("--wav", required=True, help="what to say: a WAV file (any rate, mono or stereo)")
    parser.add_argument("--trickle", action="store_true", help="POST at once and PATCH the candidates")
    parser.add_argument(
        "--until",
        choices=("transcript", "reply", "none"),
        default="transcript",
        help="hang up once the server's final transcript (or reply) arrives; none: --linger after the WAV",
    )
    parser.add_argument("--linger", type=float, default=3.0, help="with --until none: seconds of silence")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up (exit 1) after this long")
    args = parser.parse_args()

    Gst.init(None)
    Gst.debug_remove_log_function(None)  # GStreamer's own stderr printer: ours prints JSON instead
    Gst.debug_add_log_function(forward_log, None)
    Gst.debug_set_threshold_from_string(LOG_LEVELS, True)
    Gst.debug_set_active(True)
    emit("start", gstreamer=Gst.version_string(), trickle=args.trickle, url=args.url)
    return 0 if WhipClient(args).run() else 1


if __name__ == "__main__":
    sys.exit(main())
