// The demo page: the shared call panel (/client/panel.js: state, buttons, errors, conversation, meters)
// plus the demo's own parts: the browser's audio processing, a typed message, options from the URL.
import { VoicePeerClient } from "/client/voicepeer.js";
import { CallPanel } from "/client/panel.js";

const $ = (id) => document.getElementById(id);

function createClient({ audioElement }) {
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
  const client = new VoicePeerClient({
    audioElement,
    audioProcessing,
    iceTransportPolicy,
    token,
    jitterBufferTargetMs,
  });
  client.addEventListener("capture", (e) => {
    // Which of the two captures the server hears: a hint that the browser's canceller was not needed.
    $("connection").title = e.detail.unprocessed
      ? "no echo of the bot in the microphone: the server hears it without the browser's canceller"
      : "the bot's voice comes back in the microphone: the browser's canceller stays on";
  });
  return client;
}

// The call's language (?language=zh preselects it): sent once the call is up, and whenever it changes.
const chosen = new URLSearchParams(location.search).get("language");
if (chosen && [...$("language").options].some((o) => o.value === chosen)) $("language").value = chosen;
function sendLanguage(client) {
  if (client && $("language").value) client.configure({ language: $("language").value });
}
$("language").addEventListener("change", () => sendLanguage(panel.client));

const panel = new CallPanel({
  createClient,
  callControls: ["say", "say-text"],
  onConnected: async (client) => {
    client.addEventListener("language", (e) => {
      // With "detect it", the language the server heard; otherwise the one it was asked for.
      $("heard-language").textContent = e.detail.detected ? `heard: ${e.detail.language}` : "";
    });
    sendLanguage(client);
  },
  onReset: () => ($("heard-language").textContent = ""),
});

$("say-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("say-text").value.trim();
  if (panel.client && text && panel.client.say(text)) $("say-text").value = "";
});
