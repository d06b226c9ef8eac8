// voicepeer client: signaling, the peer connection, the events channel and the audio plumbing.
//
// Shared by the demo page and the Electron app, so it touches no page element it is not given.
// Events are dispatched as CustomEvents on the client (an EventTarget):
//   "state"      {state: "listening"|"thinking"|"speaking"}
//   "transcript" {turn, final, text}        the user's words
//   "reply"      {turn, final, text}        the bot's words so far
//   "metrics"    {turn, ...ms}              server-side timings of a turn
//   "muted"      {muted}                    the server stopped (or resumed) listening
//   "config"     {system_prompt, ...}       the call's settings, after configure()
//   "language"   {language, asked, detected} the call's language changed (configure({language}) or,
//                                           with "auto", the server heard another)
//   "tool_call"  {turn, id, name, arguments} the model called one of the application's tools
//   "tool_result" {turn, id, name, ok, ms, result?, error?, dropped}
//   "hook"       {turn, action, ms}         what the application's per-turn hook did
//   "bye"        {reason}                   the application hung up; the client disconnects
//   "error"      {code, message, field?}
//   "message"    any server event, raw
//   "connection" {state}                    RTCPeerConnection.connectionState
//   "remotestream" {stream}                 the bot's audio arrived
//   "localstream"  {stream}                 the microphone stream (again after setInputDevice)
//   "capture"      {unprocessed}            the server hears the capture without the browser's canceller
//                                           (true: no echo in it) or the processed one (unprocessedCapture)
//   "reconnecting" {attempt, delayMs, error} the connection failed; a new session follows
//
// connect() rejects with a VoicePeerError whose `code` says what to tell the user: the server's own
// code ("busy", "loading", "unauthorized", "forbidden_origin", ...), or "unreachable" / "cors" when the
// browser hid the answer.

/** Commands kept while the events channel opens (``send``). */
const MAX_UNSENT = 32;

/** How often the receiver's counters are looked at (``_reportPlayout``). */
const PLAYOUT_REPORT_MS = 100;

export const DEFAULT_AUDIO_PROCESSING = Object.freeze({
  echoCancellation: true,
  noiseSuppression: true,
  autoGainControl: true,
});

/** Why connect() failed: `code` is the server's error code (or the client's diagnosis), `status` the
 * HTTP status (0 when there was no answer), `retryAfter` the seconds the server asked to wait. */
export class VoicePeerError extends Error {
  constructor(code, message, { status = 0, retryAfter = null } = {}) {
    super(message);
    this.name = "VoicePeerError";
    this.code = code;
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

/** The microphones and loudspeakers the page may use (labels appear once the microphone is allowed). */
export async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  const pick = (kind) => devices.filter((d) => d.kind === kind).map(({ deviceId, label }) => ({ deviceId, label }));
  return { inputs: pick("audioinput"), outputs: pick("audiooutput") };
}

export class VoicePeerClient extends EventTarget {
  /**
   * @param {object} options
   * @param {string} [options.serverUrl]   base URL of the voicepeer server ("" = same origin)
   * @param {HTMLAudioElement} [options.audioElement] where the bot's voice plays. Chromium cancels echo
   *        only for peer-connection audio played through a media element, so give one.
   * @param {object} [options.audioProcessing] browser-side echoCancellation/noiseSuppression/autoGainControl
   * @param {RTCIceServer[]|null} [options.iceServers] null (the default): ask the server
   *        (GET /ice-servers, TURN with a fresh credential) before each connection
   * @param {"all"|"relay"} [options.iceTransportPolicy] "relay" sends media through TURN only
   * @param {string|function(): Promise<string>} [options.token] when the server has --auth-token: a
   *        token, or a function that fetches a fresh per-call token from your backend for every
   *        connection (per-call tokens are spent by the call they open, so reconnects need new ones)
   * @param {string} [options.inputDeviceId] the microphone to open (default: the system's)
   * @param {object} [options.reconnect] {attempts, delayMs}: after a failed connection, open a new
   *        session up to `attempts` times instead of ending the call
   * @param {boolean} [options.trustEchoCancellation] report the browser's echo canceller to the server
   *        as applied when it says so; false where it is known not to work (Electron on Windows), so the
   *        server keeps its own canceller on
   * @param {number|null} [options.jitterBufferTargetMs] receive buffer asked for the bot's voice (0: as
   *        short as the browser can keep it; null: the browser's own adaptive default)
   * @param {boolean} [options.unprocessedCapture] with the browser's canceller on, also send the
   *        microphone without it, for the server to hear instead if the bot's voice does not come back
   *        in it (headphones): Chromium's canceller removes most speech over the bot's first ~6 s of a
   *        call even when there is no echo to remove. Costs one more Opus stream up (~32 kbit/s).
   */
  constructor({
    serverUrl = "",
    audioElement = null,
    audioProcessing = {},
    iceServers = null,
    iceTransportPolicy = "all",
    token = null,
    inputDeviceId = null,
    reconnect = null,
    trustEchoCancellation = true,
    jitterBufferTargetMs = 0,
    unprocessedCapture = true,
  } = {}) {
    super();
    this.serverUrl = serverUrl.replace(/\/$/, "");
    this.audioElement = audioElement;
    this.audioProcessing = { ...DEFAULT_AUDIO_PROCESSING, ...audioProcessing };
    this.iceServers = iceServers;
    this.iceTransportPolicy = iceTransportPolicy;
    this.token = token;
    this.inputDeviceId = inputDeviceId;
    this.reconnect = reconnect;
    this.trustEchoCancellation = trustEchoCancellation;
    this.jitterBufferTargetMs = jitterBufferTargetMs;
    this.unprocessedCapture = unprocessedCapture;
    this._unprocessedStream = null; // the same microphone without the canceller (unprocessedCapture)
    this._closedByUser = false; // disconnect() was called: a reconnect in progress stops
    this._recovering = false;
    this.pc = null;
    this.channel = null;
    this._unsent = []; // commands given before the events channel opened
    this.localStream = null;
    this.remoteStream = null;
    this.sessionId = null;
    this.eventsUrl = null; // the call's Server-Sent Events stream, as the server named it
    this.controlUrl = null; // its HTTP control endpoint
    this.sessionUrl = null; // the call itself, to hang up
    this.muted = false;
    this.state = "idle";
  }

  get connected() {
    return this.pc !== null && this.pc.connectionState === "connected";
  }

  async connect() {
    if (this.pc) throw new Error("already connected");
    this._closedByUser = false;
    const token = typeof this.token === "function" ? await this.token() : this.token;
    const iceServers = this.iceServers ?? (await this._askIceServers(token));
    const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: this.iceTransportPolicy });
    this.pc = pc;
    try {
      await this._connect(pc, token);
    } catch (err) {
      // Leave nothing behind: no live microphone, no half-open peer connection, no server session.
      if (this.pc === pc) {
        await this._teardown();
        if (!this._recovering) {
          this._setState("idle");
          this._emit("connection", { state: "closed" });
        }
      }
      throw err;
    }
    return this.sessionId;
  }

  _microphone(deviceId, overrides = {}) {
    const audio = { ...this.audioProcessing, ...overrides, channelCount: 1 };
    if (deviceId) audio.deviceId = { exact: deviceId };
    return navigator.mediaDevices.getUserMedia({ audio, video: false });
  }

  /** The microphone of `stream` opened again without the echo canceller, when the browser applied one
   * and gives a second capture of the same device without it; null otherwise (then only the processed
   * capture is sent, as before). */
  async _unprocessedMicrophone(stream) {
    const track = stream.getAudioTracks()[0];
    const settings = track?.getSettings() || {};
    if (!this.unprocessedCapture || !settings.echoCancellation || !this.trustEchoCancellation) return null;
    let raw;
    try {
      raw = await this._microphone(settings.deviceId || this.inputDeviceId, { echoCancellation: false });
    } catch {
      return null;
    }
    if (raw.getAudioTracks()[0]?.getSettings().echoCancellation !== false) {
      for (const t of raw.getTracks()) t.stop();
      return null; // the browser shares one capture per device: nothing to gain
    }
    return raw;
  }

  async _askIceServers(token) {
    let response;
    try {
      response = await fetch(`${this.serverUrl}/ice-servers`, {
        headers: token ? { Authorization: `Bearer ${token}` } : {},
        cache: "no-store",
      });
    } catch (err) {
      throw await this._diagnose(err);
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new VoicePeerError(body.error || `http_${response.status}`, `ICE servers refused: ${body.message || ""}`, {
        status: response.status,
      });
    }
    return Array.isArray(body.iceServers) ? body.iceServers : [];
  }

  async _connect(pc, token) {
    this.localStream = await this._microphone(this.inputDeviceId);
    this._unprocessedStream = await this._unprocessedMicrophone(this.localStream);
    if (this.pc !== pc) throw new Error("disconnected while opening the microphone");
    this._emit("localstream", { stream: this.localStream });
    pc.addEventListener("connectionstatechange", () => {
      if (this.pc !== pc) return;
      this._emit("connection", { state: pc.connectionState });
      if (pc.connectionState === "failed") {
        if (this.reconnect) this._recover(new VoicePeerError("connection_failed", "the connection failed"));
        else this.disconnect();
      }
    });
    pc.addEventListener("track", (event) => {
      // The bot's voice is played as it arrives: the server paces it in real time from one machine, so
      // a receive buffer sized for a jittery network only adds to every reply's wait (Chromium's
      // adaptive target starts around 100-200 ms). 0 asks for the least delay the browser can keep
      // without underruns; it still grows on a bad network.
      setJitterBufferTarget(event.receiver, this.jitterBufferTargetMs);
      this._reportPlayout(pc, event.receiver);
      this.remoteStream = event.streams[0] || new MediaStream([event.track]);
      if (this.audioElement) {
        this.audioElement.srcObject = this.remoteStream;
        this.audioElement.play().catch((err) => this._emit("error", { code: "autoplay", message: String(err) }));
      }
      this._emit("remotestream", { stream: this.remoteStream });
    });
    for (const track of this.localStream.getAudioTracks()) pc.addTrack(track, this.localStream);
    const unprocessed = this._unprocessedStream
      ? pc.addTransceiver(this._unprocessedStream.getAudioTracks()[0], {
          direction: "sendonly",
          streams: [this._unprocessedStream],
        })
      : null;

    const channel = pc.createDataChannel("events");
    this.channel = channel;
    this._unsent = [];
    channel.addEventListener("message", (event) => this._onMessage(event.data));
    channel.addEventListener("open", () => {
      if (this.channel !== channel) return;
      for (const text of this._unsent.splice(0)) channel.send(text);
    });

    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc); // the server takes one complete offer: aiortc does not trickle
    const headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    const applied = Boolean(this.localStream.getAudioTracks()[0]?.getSettings().echoCancellation);
    let response;
    try {
      response = await fetch(`${this.serverUrl}/offer`, {
        method: "POST",
        headers,
        body: JSON.stringify({
          sdp: pc.localDescription.sdp,
          type: pc.localDescription.type,
          // What the browser really applied, not what was asked: the server then knows whether the
          // bot's voice can come back in this microphone.
          echo_cancellation: applied && this.trustEchoCancellation,
          ...(unprocessed && unprocessed.mid ? { unprocessed_mid: unprocessed.mid } : {}),
        }),
      });
    } catch (err) {
      throw await this._diagnose(err);
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
      throw new VoicePeerError(
        body.error || `http_${response.status}`,
        `offer refused (${response.status} ${body.error || ""}): ${body.message || ""}`,
        { status: response.status, retryAfter: Number.isFinite(retry) ? retry : null },
      );
    }
    if (this.pc !== pc) {
      // disconnect() ran while the offer was in flight: hang up the session the server just made.
      this._deleteSession(this._resolve(body.session_url));
      throw new Error("disconnected while connecting");
    }
    this.sessionId = body.session_id;
    // Followed, never built: they carry the call's capability.
    this.eventsUrl = this._resolve(body.events_url);
    this.controlUrl = this._resolve(body.control_url);
    this.sessionUrl = this._resolve(body.session_url);
    await pc.setRemoteDescription({ type: body.type, sdp: body.sdp });
  }

  /** A fetch that failed without an answer is either a server that cannot be reached or one that answered
   * but did not allow this page's origin (the browser hides which): an opaque no-cors request tells them
   * apart. */
  async _diagnose(err) {
    const where = this.serverUrl || location.origin;
    try {
      await fetch(`${this.serverUrl}/healthz`, { mode: "no-cors", cache: "no-store" });
    } catch {
      return new VoicePeerError("unreachable", `cannot reach the voicepeer server at ${where} (${err.message || err})`);
    }
    return new VoicePeerError(
      "cors",
      `the server at ${where} answered but does not allow this page's origin (${location.origin}); ` +
        `start it with --allow-origin ${location.origin}`,
    );
  }

  /** Switches the microphone, mid-call too: the new track replaces the old one on the same sender, so
   * the session carries on. */
  async setInputDevice(deviceId) {
    this.inputDeviceId = deviceId || null;
    if (!this.pc || !this.localStream) return;
    const pc = this.pc;
    const stream = await this._microphone(this.inputDeviceId);
    const raw = this._unprocessedStream ? await this._unprocessedMicrophone(stream) : null;
    if (this.pc !== pc) {
      for (const track of [...stream.getTracks(), ...(raw ? raw.getTracks() : [])]) track.stop();
      return;
    }
    const senders = pc.getSenders().filter((s) => s.track && s.track.kind === "audio");
    const [sender, rawSender] = senders; // in the order they were added: processed, then unprocessed
    await sender.replaceTrack(stream.getAudioTracks()[0]);
    if (rawSender) {
      // Without a second capture of the new device the server must not hear the old one's.
      await rawSender.replaceTrack(raw ? raw.getAudioTracks()[0] : null);
      for (const track of this._unprocessedStream.getTracks()) track.stop();
      this._unprocessedStream = raw;
    }
    for (const track of this.localStream.getTracks()) track.stop();
    this.localStream = stream;
    this._emit("localstream", { stream });
  }

  /** Plays the bot on another output device (needs the audio element and HTMLMediaElement.setSinkId). */
  async setOutputDevice(sinkId) {
    if (!this.audioElement || typeof this.audioElement.setSinkId !== "function") {
      throw new VoicePeerError("unsupported", "this browser cannot choose the audio output device");
    }
    await this.audioElement.setSinkId(sinkId || "");
  }

  /** After a failed connection: drop it, then open a new session, waiting longer each time (or as long
   * as a busy server asks), up to `reconnect.attempts` times. */
  async _recover(error) {
    const { attempts = 3, delayMs = 1000 } = this.reconnect || {};
    await this._teardown();
    this._recovering = true;
    try {
      for (let attempt = 1; attempt <= attempts; attempt += 1) {
        const wait = error?.retryAfter ? error.retryAfter * 1000 : delayMs * attempt;
        this._emit("reconnecting", { attempt, delayMs: wait, error: String(error?.message || error) });
        await new Promise((resolve) => setTimeout(resolve, wait));
        if (this._closedByUser) return;
        try {
          await this.connect();
          return;
        } catch (err) {
          error = err;
          if (this._closedByUser) return;
        }
      }
    } finally {
      this._recovering = false;
    }
    this._emit("error", { code: "reconnect_failed", message: `gave up reconnecting: ${error?.message || error}` });
    this._setState("idle");
    this._emit("connection", { state: "closed" });
  }

  /**
   * Sends a JSON message on the events channel. The peer connection reports "connected" before the
   * channel has opened (its SCTP association comes after DTLS, later still on a busy machine), so a
   * command given in between (a mute clicked at once) waits for it rather than being lost. Returns
   * false when there is no channel to send on.
   */
  send(message) {
    const channel = this.channel;
    if (!channel || channel.readyState === "closing" || channel.readyState === "closed") return false;
    const text = JSON.stringify(message);
    if (channel.readyState === "open") channel.send(text);
    else if (this._unsent.length < MAX_UNSENT) this._unsent.push(text);
    else return false;
    return true;
  }

  /** Asks the bot to stop talking now, as if the user had spoken over it. */
  interrupt() {
    return this.send({ type: "interrupt" });
  }

  /** Stops the server listening (what the user was saying is answered); unmute() resumes. */
  mute() {
    return this.send({ type: "mute" });
  }

  unmute() {
    return this.send({ type: "unmute" });
  }

  /** A typed message, answered in voice as if it had been spoken. */
  say(text) {
    return this.send({ type: "say", text });
  }

  /** The bot says `text` verbatim: once the floor is open, or at once with `{interrupt: true}`. */
  speak(text, { interrupt = false } = {}) {
    return this.send({ type: "speak", text, interrupt });
  }

  /** Ends the call after the sentence playing now (and `text`, if given); a "bye" event follows. */
  hangup(text) {
    return this.send(text ? { type: "hangup", text } : { type: "hangup" });
  }

  /** Clears the conversation's history (and stops a reply in progress). */
  reset() {
    return this.send({ type: "reset" });
  }

  /** Changes this call's settings: any of {system_prompt, max_tokens, end_silence_ms, context, tools}. */
  configure(settings) {
    return this.send({ type: "config", ...settings });
  }

  /**
   * Tells the server when the receiver ran dry and played concealment, or stretched or squeezed the
   * bot's voice: its playout moved, and so did the bot's echo in a loudspeaker room, which the server's
   * echo canceller must follow at once (a Chromium on two busy cores concealed 460 ms in one go, then
   * squeezed 500 ms back out over ten seconds). Sends the receiver's own counters (W3C webrtc-stats),
   * with how long its buffer holds the voice, only when one of those grew.
   */
  async _reportPlayout(pc, receiver) {
    let lastSent = null; // the counters that move the playout, as last sent
    while (this.pc === pc && pc.connectionState !== "closed") {
      await new Promise((resolve) => setTimeout(resolve, PLAYOUT_REPORT_MS));
      let stats;
      try {
        stats = await receiver.getStats();
      } catch {
        continue; // the receiver is going away
      }
      let inbound = null;
      stats.forEach((r) => {
        if (r.type === "inbound-rtp" && r.kind === "audio") inbound = r;
      });
      if (!inbound || typeof inbound.concealedSamples !== "number") continue;
      const codec = inbound.codecId ? stats.get(inbound.codecId) : null;
      const report = {
        type: "playout",
        concealedSamples: inbound.concealedSamples,
        packetsLost: inbound.packetsLost || 0,
        packetsDiscarded: inbound.packetsDiscarded || 0,
        clockRate: (codec && codec.clockRate) || 48000,
      };
      // Optional: the time stretching, and how long the buffer holds the voice (where it happened).
      for (const name of [
        "insertedSamplesForDeceleration",
        "removedSamplesForAcceleration",
        "jitterBufferDelay",
        "jitterBufferEmittedCount",
      ]) {
        if (typeof inbound[name] === "number") report[name] = inbound[name];
      }
      const moving = [
        report.concealedSamples,
        report.insertedSamplesForDeceleration,
        report.removedSamplesForAcceleration,
      ].join();
      const open = this.channel && this.channel.readyState === "open"; // stale once queued
      if (open && moving !== lastSent && this.send(report)) lastSent = moving;
    }
  }

  /** Hangs up. Safe to call at any time, more than once, and while connect() is still running. */
  async disconnect() {
    this._closedByUser = true;
    if (!this.pc) return;
    await this._teardown();
    this._setState("idle");
    this._emit("connection", { state: "closed" });
  }

  async _teardown() {
    const { pc, sessionUrl } = this;
    if (!pc) return;
    this.pc = null;
    this.channel = null;
    this._unsent = [];
    this.sessionId = null;
    this.eventsUrl = null;
    this.controlUrl = null;
    this.sessionUrl = null;
    this.muted = false;
    for (const stream of [this.localStream, this._unprocessedStream]) {
      if (stream) for (const track of stream.getTracks()) track.stop();
    }
    this.localStream = null;
    this._unprocessedStream = null;
    this.remoteStream = null;
    if (this.audioElement) this.audioElement.srcObject = null;
    pc.close();
    if (sessionUrl) await this._deleteSession(sessionUrl);
  }

  _deleteSession(sessionUrl) {
    // Tells the server at once instead of leaving it to notice the dead connection.
    if (!sessionUrl) return Promise.resolve();
    return fetch(sessionUrl, { method: "DELETE", keepalive: true }).catch(() => {});
  }

  _resolve(url) {
    return url ? new URL(url, new URL(this.serverUrl || ".", location.href)).href : null;
  }

  _onMessage(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    this._emit("message", message);
    if (message.type === "state") this._setState(message.state);
    else if (message.type === "muted") {
      this.muted = message.muted;
      this._emit("muted", message);
    } else if (message.type === "capture") {
      if (!message.unprocessed) this._dropUnprocessed(); // the browser's canceller has an echo to remove
      this._emit("capture", message);
    } else if (message.type === "bye") {
      // The application hung up: the call is over, and no reconnect follows.
      this._emit("bye", message);
      this.disconnect();
    } else if (
      [
        "transcript", "reply", "metrics", "interrupted", "vad", "error", "session", "config", "reset",
        "tool_call", "tool_result", "hook",
      ].includes(message.type)
    ) {
      this._emit(message.type, message);
    }
  }

  /** Stops sending the capture without the canceller, once the server has chosen the processed one. */
  _dropUnprocessed() {
    const stream = this._unprocessedStream;
    if (!stream || !this.pc) return;
    const track = stream.getAudioTracks()[0];
    const sender = this.pc.getSenders().find((s) => s.track === track);
    if (sender) sender.replaceTrack(null).catch(() => {});
    for (const t of stream.getTracks()) t.stop();
    this._unprocessedStream = null;
  }

  _setState(state) {
    if (state === this.state) return;
    this.state = state;
    this._emit("state", { state });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/**
 * Asks the receiver for a jitter buffer of `ms` milliseconds: `jitterBufferTarget` (the standard,
 * Chromium 124+, Firefox) or the older `playoutDelayHint` (seconds, Chromium); null leaves the default.
 */
export function setJitterBufferTarget(receiver, ms) {
  if (ms === null || ms === undefined || !receiver) return;
  try {
    if ("jitterBufferTarget" in receiver) receiver.jitterBufferTarget = ms;
    else if ("playoutDelayHint" in receiver) receiver.playoutDelayHint = ms / 1000;
  } catch {
    // An engine that refuses the value keeps its own buffer: the call works either way.
  }
}

export function waitForIceGathering(pc, timeoutMs = 3000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      pc.removeEventListener("icegatheringstatechange", check);
      clearTimeout(timer);
      resolve();
    };
    const check = () => pc.iceGatheringState === "complete" && done();
    // Host candidates come in milliseconds; a STUN server that never answers must not hang the call.
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

/**
 * Measures the level of a MediaStream for a meter: returns {level(): 0..1 RMS, stop()}.
 */
export function createLevelMeter(stream, audioContext = new AudioContext()) {
  const source = audioContext.createMediaStreamSource(stream);
  const analyser = audioContext.createAnalyser();
  analyser.fftSize = 1024;
  source.connect(analyser);
  const buffer = new Float32Array(analyser.fftSize);
  return {
    level() {
      analyser.getFloatTimeDomainData(buffer);
      let sum = 0;
      for (const x of buffer) sum += x * x;
      return Math.sqrt(sum / buffer.length);
    },
    stop() {
      source.disconnect();
    },
  };
}
