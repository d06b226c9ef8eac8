"""Drives a real headless Chromium (Debian's) through the demo page, with a WAV file as its microphone.

The page is the product's own demo page; the harness only adds observers: every message on the events
data channel (by wrapping createDataChannel before the page loads) and the level of the sent and received
audio, measured by AudioWorklets in one AudioContext so both share one sample clock. Latency is read off
that clock: from the end of the user's speech in the sent audio to the onset of the bot's voice in the
received audio, which is what the person in front of the page experiences.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("VOICEPEER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

CHROMIUM_FLAGS = [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]

OBSERVER_JS = """
(() => {
  window.__vp = { events: [], rec: { local: [], remote: [], mic: [] }, ctx: null };
  const origCreate = RTCPeerConnection.prototype.createDataChannel;
  RTCPeerConnection.prototype.createDataChannel = function (...args) {
    const channel = origCreate.apply(this, args);
    channel.addEventListener("message", (e) => {
      let msg; try { msg = JSON.parse(e.data); } catch { msg = { raw: e.data }; }
      window.__vp.events.push({ t: window.__vp.ctx ? window.__vp.ctx.currentTime : null,
                                perf: performance.now(), msg });
    });
    return channel;
  };
})();
"""

RECORDER_WORKLET = """
class LevelRecorder extends AudioWorkletProcessor {
  constructor() { super(); this.batch = []; }
  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (ch) {
      let acc = 0;
      for (let i = 0; i < ch.length; i++) acc += ch[i] * ch[i];
      this.batch.push(currentFrame / sampleRate, Math.sqrt(acc / ch.length));
      if (this.batch.length >= 64) { this.port.postMessage(this.batch); this.batch = []; }
    }
    return true;
  }
}
registerProcessor("level-recorder", LevelRecorder);
"""

START_RECORDING_JS = """
async (worklet) => {
  // worklet: the processor's code, or a same-origin URL serving it (a page whose CSP refuses blob:).
  const client = window.voicepeerClient;
  const ctx = new AudioContext();
  window.__vp.ctx = ctx;
  await ctx.resume();
  const url = /^https?:/.test(worklet) ? worklet
    : URL.createObjectURL(new Blob([worklet], { type: "application/javascript" }));
  await ctx.audioWorklet.addModule(url);
  const sink = ctx.createGain();
  sink.gain.value = 0;
  sink.connect(ctx.destination);
  const tap = (stream, name) => {
    const node = new AudioWorkletNode(ctx, "level-recorder");
    node.port.onmessage = (e) => { const a = window.__vp.rec[name]; for (const x of e.data) a.push(x); };
    ctx.createMediaStreamSource(stream).connect(node);
    node.connect(sink);
  };
  tap(window.__vp.outgoing || client.localStream, "local");
  tap(client.remoteStream, "remote");
  // When the sent track is a mix (speaker echo), the microphone alone too: the user's voice without it.
  if (window.__vp.outgoing) tap(client.localStream, "mic");
  return ctx.sampleRate;
}
"""


@dataclass
class Envelope:
    """RMS per render quantum (128 samples) against the AudioContext clock, in seconds."""

    t: list[float]
    rms: list[float]

    @classmethod
    def from_flat(cls, flat: list[float]) -> Envelope:
        return cls(flat[0::2], flat[1::2])

    def segments(
        self, threshold: float, min_gap_s: float = 0.3, min_len_s: float = 0.1
    ) -> list[tuple[float, float]]:
        """Spans where the level exceeds ``threshold``, joining gaps shorter than ``min_gap_s``."""
        spans: list[list[float]] = []
        quantum = (self.t[1] - self.t[0]) if len(self.t) > 1 else 128 / 48000
        for t, r in zip(self.t, self.rms, strict=True):
            if r < threshold:
                continue
            if spans and t - spans[-1][1] <= min_gap_s:
                spans[-1][1] = t + quantum
            else:
                spans.append([t, t + quantum])
        return [(a, b) for a, b in spans if b - a >= min_len_s]

    def peak(self, start: float = float("-inf"), end: float = float("inf")) -> float:
        return max((r for t, r in zip(self.t, self.rms, strict=True) if start <= t < end), default=0.0)


def bot_stop(bot: list[tuple[float, float]], onset: float) -> float | None:
    """When the bot's voice stopped after the user cut in at ``onset``, or None if it was not speaking
    then. Speech has gaps between words and sentences (600 ms between two sentences on a loaded
    machine, while the next one is synthesized), so "speaking" means a segment of the bot's audio
    reaching into the 600 ms before the onset; the stop is the end of the last segment that began
    before the onset + 300 ms (frames in flight, or the next sentence arriving while the detector
    is still making sure of the onset). The reply to the new turn starts a second or more later and
    is not counted."""
    before = [(a, b) for a, b in bot if a < onset + 0.3]
    reaching = [(a, b) for a, b in before if a < onset]
    if not reaching or reaching[-1][1] < onset - 0.6:
        return None
    return max(before[-1][1], onset)


@dataclass
class CallRecord:
    events: list[dict[str, Any]]
    local: Envelope
    remote: Envelope
    mic: Envelope | None = None
    """The microphone before the speaker echo was mixed in (``connect_with_speaker_echo`` only)."""

    def messages(self, kind: str) -> list[dict[str, Any]]:
        return [e["msg"] for e in self.events if e["msg"].get("type") == kind]


def launch_args(fake_audio: Path) -> list[str]:
    return [*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={fake_audio}%noloop"]


@contextmanager
def chromium_page(playwright: Any, fake_audio: Path, *, ignore_https_errors: bool = False) -> Iterator[Any]:
    """A fresh Chromium (own profile) whose microphone plays ``fake_audio`` once; with
    ``ignore_https_errors`` it accepts a self-signed certificate, as a user clicking through would."""
    profile = tempfile.mkdtemp(prefix="voicepeer-chromium-")
    context = playwright.chromium.launch_persistent_context(
        profile,
        executable_path=CHROMIUM,
        headless=True,
        args=launch_args(fake_audio),
        ignore_default_args=["--mute-audio"],
        ignore_https_errors=ignore_https_errors,
    )
    try:
        page = context.pages[0] if context.pages else context.new_page()
        page.add_init_script(OBSERVER_JS)
        yield page
    finally:
        context.close()
        shutil.rmtree(profile, ignore_errors=True)


def connect(
    page: Any,
    url: str,
    audio_processing: dict[str, bool] | None = None,
    timeout_ms: int = 20_000,
    before_recording: tuple[str, Any] | None = None,
) -> None:
    """Opens the demo page, sets its processing checkboxes, clicks Connect, starts the level recorders.

    ``before_recording``: (JS function, argument) to run on the connected page first, e.g. to replace
    the microphone track that the recorders will tap."""
    page.goto(url)
    for name, on in (audio_processing or {}).items():
        page.set_checked(f"#{name}", on)
    page.click("#connect")
    page.wait_for_function(
        "window.voicepeerClient && window.voicepeerClient.connected && window.voicepeerClient.remoteStream",
        timeout=timeout_ms,
    )
    if before_recording is not None:
        page.evaluate(*before_recording)
    page.evaluate(START_RECORDING_JS, RECORDER_WORKLET)


SPEAKER_ECHO_JS = """
async ([delayS, gain]) => {
  // A loudspeaker next to the microphone: the bot's received voice, delayed and attenuated, is mixed
  // into what the page sends, in place of the plain microphone track.
  const client = window.voicepeerClient;
  const ctx = new AudioContext();
  await ctx.resume();
  const out = ctx.createMediaStreamDestination();
  ctx.createMediaStreamSource(client.localStream).connect(out);
  const delay = ctx.createDelay(1.0);
  delay.delayTime.value = delayS;
  const level = ctx.createGain();
  level.gain.value = gain;
  ctx.createMediaStreamSource(client.remoteStream).connect(delay).connect(level).connect(out);
  const sender = client.pc.getSenders().find((s) => s.track && s.track.kind === "audio");
  await sender.replaceTrack(out.stream.getAudioTracks()[0]);
  window.__vp.outgoing = out.stream;
  window.__vp.echoCtx = ctx;
}
"""


def connect_with_speaker_echo(page: Any, url: str, delay_s: float = 0.15, gain: float = 0.7) -> None:
    """Like ``connect``, with the browser's own audio processing off and the bot's voice looped back
    into the microphone as a loudspeaker would."""
    off = {"echoCancellation": False, "noiseSuppression": False, "autoGainControl": False}
    connect(page, url, off, before_recording=(SPEAKER_ECHO_JS, [delay_s, gain]))


ROOMS = ("headphones", "speaker", "headphones-aec-off")
"""How the page's microphone hears the bot: ``headphones`` (the page's defaults, the browser's echo
canceller on, no echo reaches the microphone), ``speaker`` (a loudspeaker: the browser's audio processing
off and the bot's voice mixed back into the microphone, see ``connect_with_speaker_echo``) and
``headphones-aec-off`` (no echo, the browser's echo canceller off)."""


def connect_room(page: Any, url: str, room: str) -> None:
    """``connect`` or ``connect_with_speaker_echo``, as ``room`` (one of ``ROOMS``) says."""
    if room == "speaker":
        connect_with_speaker_echo(page, url)
    elif room == "headphones":
        connect(page, url)
    elif room == "headphones-aec-off":
        connect(page, url, {"echoCancellation": False})
    else:
        raise ValueError(f"unknown room {room!r}: one of {', '.join(ROOMS)}")


def user_envelope(call: CallRecord, threshold: float = 0.01) -> tuple[Envelope, float]:
    """The envelope that holds the user's voice alone, and the shift (s) that puts its times on the sent
    audio's: the microphone tap when the sent track mixes in the bot's echo (the mix reaches the sent
    track a little later; the shift is measured on the first utterance, before the bot has spoken), else
    the sent audio itself."""
    if call.mic is None:
        return call.local, 0.0
    mic, sent = call.mic.segments(threshold), call.local.segments(threshold)
    shift = sent[0][0] - mic[0][0] if mic and sent and abs(sent[0][0] - mic[0][0]) < 0.2 else 0.0
    return call.mic, shift


SELECTED_CANDIDATE_TYPE_JS = """
async () => {
  // The type of the page's local ICE candidate in the pair in use: "relay" when media goes via TURN.
  const stats = await window.voicepeerClient.pc.getStats();
  let local = null;
  stats.forEach((r) => {
    if (r.type === "transport" && r.selectedCandidatePairId) {
      local = stats.get(stats.get(r.selectedCandidatePairId).localCandidateId);
    }
  });
  return local && local.candidateType;
}
"""


def wait_for_event(page: Any, predicate_js: str, timeout_ms: int, *, strict_csp: bool = False) -> None:
    """Waits until some observed message ``m`` satisfies the JS expression ``predicate_js``."""
    expression = f"window.__vp.events.some(({{msg: m}}) => {predicate_js})"
    if strict_csp:
        wait_until(page, expression, timeout_ms)
    else:
        page.wait_for_function(expression, timeout=timeout_ms)


def wait_until(page: Any, expression: str, timeout_ms: int, interval_s: float = 0.05) -> None:
    """``page.wait_for_function`` for pages whose Content-Security-Policy forbids eval (Playwright's
    predicate runs through it): polls the expression from outside the page instead."""
    deadline = time.monotonic() + timeout_ms / 1000
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true after {timeout_ms} ms: {expression}")
        time.sleep(interval_s)


def record(page: Any) -> CallRecord:
    data = page.evaluate(
        "({events: window.__vp.events, local: window.__vp.rec.local, remote: window.__vp.rec.remote,"
        " mic: window.__vp.rec.mic || []})"
    )
    mic = Envelope.from_flat(data["mic"]) if data["mic"] else None
    return CallRecord(
        data["events"], Envelope.from_flat(data["local"]), Envelope.from_flat(data["remote"]), mic
    )


def hang_up(page: Any) -> None:
    """Ends the call as the page's user would (the client's ``disconnect()``, which DELETEs the session),
    so the server frees it now rather than at its media timeout, after the browser is gone."""
    try:
        page.evaluate(
            "async () => { if (window.voicepeerClient) await window.voicepeerClient.disconnect(); }"
        )
    except Exception:  # the page or the call is already gone: nothing left to hang up
        pass


def reply_onset(call: CallRecord) -> float:
    """When the bot's voice first came back after the user stopped (the page's clock); asserts the
    user's speech reached the page's microphone track and that a reply was heard after it."""
    spoken = call.local.segments(threshold=0.01)
    assert spoken, "the microphone's speech never reached the page's audio graph"
    user_end = spoken[0][1]
    onsets = [a for a, _ in call.remote.segments(threshold=0.005) if a > user_end]
    assert onsets, f"no bot audio after the user stopped at {user_end:.2f} s"
    return onsets[0]


QUESTION = "What is the weather like today?"
"""What the browser tests ask."""


def heard(text: str, said: str = QUESTION) -> bool:
    """The transcript ``text`` is ``said``, give or take two words. Chromium's capture (its own
    processing, Opus, the front-end) costs tiny.en a word now and then: "What is not when they're like
    today?" in one CI run. Noise or another phrase shares a word or two, not all but two."""
    from voicepeer.call.text import words

    spoken = set(words(said))
    return len(spoken & set(words(text))) >= max(1, len(spoken) - 2)


def expect_spoken_answer(page: Any, said: str, transcript_ms: int, reply_ms: int) -> CallRecord:
    """Waits for the final transcript and the turn's metrics, then checks the transcript is ``said``
    (``heard``) and that the bot's voice was audible after the user stopped."""
    wait_for_event(page, "m.type === 'transcript' && m.final", transcript_ms)
    wait_for_event(page, "m.type === 'metrics'", reply_ms)
    call = record(page)
    final = call.messages("transcript")[-1]
    assert heard(final["text"], said), final
    reply_onset(call)
    return call
