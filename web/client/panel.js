// The call panel shared by the demo page and the Electron window: the state pill, the connection
// label, the Connect / Interrupt / Mute buttons, the error line, the conversation log and the level
// meters. It binds by id to markup each page writes itself, and to the events of the VoicePeerClient
// it is handed for each call. The markup stays static HTML in each page rather than made here: each
// page puts its own controls inside the panel (the window's Settings link and push-to-talk), and the
// page is whole before any script runs.
//
// The page says how to make a client (server, token, devices, audio processing) and keeps its own
// controls; the panel runs the call around it: connect, show what happens, hang up, reset.
//
// Ids it needs: state, connection, connect, interrupt, mute, log, error, bot-audio.
// Ids it uses when the page has them: mic-level, bot-level (<meter>s of the two voices).
import { createLevelMeter } from "./voicepeer.js";
import { ConversationView } from "./view.js";

/** What to tell the user about a failed connect(): the client's errors carry a code worth showing. */
function describe(err) {
  return err && err.code ? `${err.code}: ${err.message}` : String((err && err.message) || err);
}

export class CallPanel {
  /**
   * @param {object} options
   * @param {function({audioElement}): (VoicePeerClient|Promise<VoicePeerClient>)} options.createClient
   *        makes the client for each call, playing into the page's #bot-audio; a throw is shown like a
   *        failed connection
   * @param {function(VoicePeerClient): Promise<void>} [options.onConnected] the page's own steps once the
   *        call is up (output device, push-to-talk, ...); a throw hangs up
   * @param {function(): void} [options.onReset] the call is over: reset the page's own controls
   * @param {function({state: string, muted: boolean}): void} [options.onCallState] the pill or the mute
   *        button changed (the desktop app's tray follows it)
   * @param {string[]} [options.callControls] ids of the page's own controls that only work during a call
   */
  constructor({
    createClient,
    onConnected = async () => {},
    onReset = () => {},
    onCallState = () => {},
    callControls = [],
  }) {
    const $ = (id) => document.getElementById(id);
    this.createClient = createClient;
    this.onConnected = onConnected;
    this.onReset = onReset;
    this.onCallState = onCallState;
    this.el = {
      state: $("state"),
      connection: $("connection"),
      connect: $("connect"),
      interrupt: $("interrupt"),
      mute: $("mute"),
      error: $("error"),
      audio: $("bot-audio"),
      micLevel: $("mic-level"),
      botLevel: $("bot-level"),
    };
    this.callControls = [this.el.interrupt, this.el.mute, ...callControls.map($)];
    this.view = new ConversationView($("log"));
    this.client = null; // the current call's client, null between calls
    this.state = "idle";
    this.muted = false;
    this._meters = new Map(); // <meter> -> the level meter of the stream it shows
    this._animating = false;
    this._audioContext = null;

    this.el.connect.addEventListener("click", () => (this.client ? this.disconnect() : this.connect()));
    this.el.interrupt.addEventListener("click", () => this.client && this.client.interrupt());
    this.el.mute.addEventListener("click", () => this.toggleMute());
    window.addEventListener("pagehide", () => this.client && this.client.disconnect());
  }

  async connect() {
    this.showError("");
    this.el.connect.disabled = true;
    this.showState("connecting");
    // Made on the click: browsers start audio only after a user gesture.
    this._audioContext = this._audioContext || new AudioContext();
    let client = null;
    try {
      await this._audioContext.resume();
      client = await this.createClient({ audioElement: this.el.audio });
      this.client = client;
      window.voicepeerClient = client; // for the browser tests and the curious
      this._follow(client);
      await client.connect();
      this.el.connect.textContent = "Disconnect";
      for (const el of this.callControls) el.disabled = false;
      await this.onConnected(client);
    } catch (err) {
      this.showError(describe(err));
      this.reset();
      if (client) await client.disconnect(); // a call that came up but failed a page's step: hang up
    } finally {
      this.el.connect.disabled = false;
    }
  }

  async disconnect() {
    const client = this.client;
    this.reset();
    if (client) await client.disconnect();
  }

  /** Mutes or unmutes; the button changes when the server confirms (the "muted" event). */
  toggleMute() {
    const client = this.client;
    if (client) client.muted ? client.unmute() : client.mute();
  }

  /** The call is over (hung up, failed, given up reconnecting): back to Connect, its controls off. */
  reset() {
    for (const [el, meter] of this._meters) {
      meter.stop();
      el.value = 0;
    }
    this._meters.clear();
    // The old client's own "closed" is no longer listened to (see _follow): say it here.
    if (this.client) this.el.connection.textContent = "closed";
    this.client = null;
    this.el.connect.textContent = "Connect";
    for (const el of this.callControls) el.disabled = true;
    this.showMuted(false);
    this.showState("idle");
    this.onReset();
  }

  showError(message) {
    this.el.error.textContent = message;
    this.el.error.hidden = !message;
  }

  showState(state) {
    this.state = state;
    this.el.state.textContent = state;
    this.el.state.dataset.state = state;
    this.onCallState({ state, muted: this.muted });
  }

  showMuted(muted) {
    this.muted = muted;
    this.el.mute.textContent = muted ? "Unmute" : "Mute";
    this.el.mute.setAttribute("aria-pressed", String(muted));
    this.onCallState({ state: this.state, muted });
  }

  /** Shows the level of `stream` on a <meter> (if the page has it) until the call ends. */
  showLevel(el, stream) {
    if (!el) return;
    const old = this._meters.get(el); // the microphone before a device switch
    if (old) old.stop();
    this._meters.set(el, createLevelMeter(stream, this._audioContext));
    if (!this._animating) this._animate();
  }

  _animate() {
    this._animating = this._meters.size > 0;
    if (!this._animating) return;
    // Speech is an RMS of about 0.05-0.25: scaled up so that a normal voice fills most of the meter.
    for (const [el, meter] of this._meters) el.value = Math.min(1, meter.level() * 4);
    requestAnimationFrame(() => this._animate());
  }

  /** Shows `client`'s call, for as long as it is the current one: a client hung up a moment ago still
   * reports its teardown, which must not land on the next call's controls. */
  _follow(client) {
    this.view.attach(client);
    const on = (type, show) => client.addEventListener(type, (e) => this.client === client && show(e.detail));
    on("state", ({ state }) => this.showState(state));
    on("reconnecting", () => this.showState("reconnecting"));
    on("connection", ({ state }) => {
      this.el.connection.textContent = state;
      if (state === "closed") this.reset(); // also when the client hung up by itself
    });
    on("error", ({ code, message }) => this.showError(`${code}: ${message}`));
    on("muted", ({ muted }) => this.showMuted(muted));
    on("localstream", ({ stream }) => this.showLevel(this.el.micLevel, stream));
    on("remotestream", ({ stream }) => this.showLevel(this.el.botLevel, stream));
  }
}
