// The demo page: wires the shared client to the page's controls, meters and conversation log.
import { VoicePeerClient, createLevelMeter } from "/client/voicepeer.js";

const $ = (id) => document.getElementById(id);
const button = $("connect");
const log = $("log");
let client = null;
let meters = [];
let audioContext = null;
let call = 0; // turn numbers restart with every call
const entries = new Map(); // "2:user:3" -> <li>

function entry(kind, turn) {
  const key = `${call}:${kind}:${turn}`;
  let li = entries.get(key);
  if (!li) {
    li = document.createElement("li");
    li.className = `${kind} partial`;
    li.dataset.turn = turn;
    li.append(document.createElement("span"));
    log.append(li);
    entries.set(key, li);
  }
  return li;
}

function showText(kind, { turn, text, final }) {
  const li = entry(kind, turn);
  li.firstChild.textContent = text;
  li.classList.toggle("partial", !final);
}

// Each turn's timeline from the end of the user's speech, as bars on one scale: which stage the wait
// went to. The reply starts speculatively at a short pause, so a stage can end before the endpoint.
const STAGES = [
  ["transcript_ms", "transcript"],
  ["endpoint_ms", "end of turn"],
  ["llm_first_token_ms", "first token"],
  ["tts_first_audio_ms", "first speech"],
  ["first_frame_sent_ms", "first frame sent"],
];
const SCALE_MS = 2000;

function showWaterfall(m) {
  const li = entry("bot", m.turn);
  const box = li.querySelector(".waterfall") || li.appendChild(document.createElement("div"));
  box.className = "waterfall";
  box.replaceChildren();
  for (const [key, label] of STAGES) {
    if (m[key] === undefined) continue;
    const row = document.createElement("div");
    row.className = "stage";
    row.dataset.stage = key;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.min(100, (Math.max(0, m[key]) / SCALE_MS) * 100)}%`;
    const text = document.createElement("span");
    text.className = "label";
    text.textContent = `${label} ${Math.round(m[key])} ms`;
    row.append(bar, text);
    box.append(row);
  }
}

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
  call += 1;
  client = new VoicePeerClient({ audioElement: $("bot-audio"), audioProcessing });
  window.voicepeerClient = client; // for the browser tests and the curious
  client.addEventListener("state", (e) => {
    $("state").textContent = e.detail.state;
    $("state").dataset.state = e.detail.state;
  });
  client.addEventListener("connection", (e) => {
    $("connection").textContent = e.detail.state;
    if (e.detail.state === "closed") resetControls(); // also when the client hung up by itself
  });
  client.addEventListener("transcript", (e) => showText("user", e.detail));
  client.addEventListener("reply", (e) => showText("bot", e.detail));
  client.addEventListener("metrics", (e) => showWaterfall(e.detail));
  client.addEventListener("interrupted", (e) => {
    const li = entry("bot", e.detail.turn);
    li.firstChild.textContent = e.detail.heard ? `${e.detail.heard} …` : "…";
    li.classList.remove("partial");
    li.classList.add("interrupted");
  });
  client.addEventListener("error", (e) => showError(`${e.detail.code}: ${e.detail.message}`));
  client.addEventListener("muted", (e) => {
    $("mute").textContent = e.detail.muted ? "Unmute" : "Mute";
    $("mute").setAttribute("aria-pressed", String(e.detail.muted));
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
