// The demo page: wires the shared client to the page's controls, meters and conversation log.
import { VoicePeerClient, createLevelMeter } from "/client/voicepeer.js";
import { ConversationView } from "/client/view.js";

const $ = (id) => document.getElementById(id);
const button = $("connect");
const view = new ConversationView($("log"));
let client = null;
let meters = [];
let audioContext = null;

function showError(message) {
  const el = $("error");
  el.textContent = message;
  el.hidden = !message;
}

function animateMeters() {
  if (!meters.length) return;
  for (const [el, meter] of meters) el.value = Math.min(1, meter.level() * 4);
  requestAnimationFrame(animateMeters);
}

async function connect() {
  showError("");
  audioContext = audioContext || new AudioContext();
  await audioContext.resume();
  const audioProcessing = Object.fromEntries(
    ["echoCancellation", "noiseSuppression", "autoGainControl"].map((k) => [k, $(k).checked]),
  );
  // ?ice=relay forces the media through the TURN server: a quick check that TURN works.
  const iceTransportPolicy = new URLSearchParams(location.search).get("ice") === "relay" ? "relay" : "all";
  // #token=... : the server's secret or a per-call token (`voicepeer token`), when it has --auth-token.
  // In the fragment, it is never sent to the server in the URL or written to its logs.
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  // ?jitter=default keeps the browser's own receive buffer for the bot's voice (to compare with the
  // short one the client asks for); ?jitter=<ms> asks for that many milliseconds.
  const jitter = new URLSearchParams(location.search).get("jitter");
  const jitterBufferTargetMs = jitter === "default" ? null : Number(jitter) || 0;
  client = new VoicePeerClient({
    audioElement: $("bot-audio"),
    audioProcessing,
    iceTransportPolicy,
    token,
    jitterBufferTargetMs,
  });
  window.voicepeerClient = client; // for the browser tests and the curious
  client.addEventListener("state", (e) => {
    $("state").textContent = e.detail.state;
    $("state").dataset.state = e.detail.state;
  });
  client.addEventListener("connection", (e) => {
    $("connection").textContent = e.detail.state;
    if (e.detail.state === "closed") resetControls(); // also when the client hung up by itself
  });
  view.attach(client);
  client.addEventListener("error", (e) => showError(`${e.detail.code}: ${e.detail.message}`));
  client.addEventListener("muted", (e) => {
    $("mute").textContent = e.detail.muted ? "Unmute" : "Mute";
    $("mute").setAttribute("aria-pressed", String(e.detail.muted));
  });
  client.addEventListener("capture", (e) => {
    // Which of the two captures the server hears: a hint that the browser's canceller was not needed.
    $("connection").title = e.detail.unprocessed
      ? "no echo of the bot in the microphone: the server hears it without the browser's canceller"
      : "the bot's voice comes back in the microphone: the browser's canceller stays on";
  });
  client.addEventListener("remotestream", (e) => meters.push([$("bot-level"), createLevelMeter(e.detail.stream, audioContext)]));
  button.disabled = true;
  try {
    await client.connect();
    meters.push([$("mic-level"), createLevelMeter(client.localStream, audioContext)]);
    animateMeters();
    button.textContent = "Disconnect";
    for (const id of ["interrupt", "mute", "say", "say-text"]) $(id).disabled = false;
  } catch (err) {
    showError(String(err.message || err));
    resetControls();
  } finally {
    button.disabled = false;
  }
}

function resetControls() {
  for (const [el, meter] of meters) {
    meter.stop();
    el.value = 0;
  }
  meters = [];
  client = null;
  button.textContent = "Connect";
  for (const id of ["interrupt", "mute", "say", "say-text"]) $(id).disabled = true;
  $("mute").textContent = "Mute";
  $("mute").setAttribute("aria-pressed", "false");
}

async function disconnect() {
  const current = client;
  resetControls();
  await current.disconnect();
}

button.addEventListener("click", () => (client ? disconnect() : connect()));
$("interrupt").addEventListener("click", () => client && client.interrupt());
$("mute").addEventListener("click", () => client && (client.muted ? client.unmute() : client.mute()));
$("say-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("say-text").value.trim();
  if (client && text && client.say(text)) $("say-text").value = "";
});
window.addEventListener("pagehide", () => client && client.disconnect());
