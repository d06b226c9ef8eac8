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
  client.addEventListener("metrics", (e) => {
    const m = e.detail;
    const li = entry("bot", m.turn);
    const timing = li.querySelector(".timing") || li.appendChild(document.createElement("span"));
    timing.className = "timing";
    timing.textContent = `end of speech → transcript ${m.transcript_ms} ms · first token ${m.llm_first_token_ms} ms · first audio ${m.first_frame_sent_ms} ms`;
  });
  client.addEventListener("error", (e) => showError(`${e.detail.code}: ${e.detail.message}`));
  client.addEventListener("remotestream", (e) => meters.push([$("bot-level"), createLevelMeter(e.detail.stream, audioContext)]));
  button.disabled = true;
  try {
    await client.connect();
    meters.push([$("mic-level"), createLevelMeter(client.localStream, audioContext)]);
    animateMeters();
    button.textContent = "Disconnect";
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
}

async function disconnect() {
  const current = client;
  resetControls();
  await current.disconnect();
}

button.addEventListener("click", () => (client ? disconnect() : connect()));
window.addEventListener("pagehide", () => client && client.disconnect());
