// The desktop app's window: the call panel shared with the demo page (./client/panel.js: state,
// Connect / Interrupt / Mute, errors, conversation, level) plus desktop controls (devices, push-to-talk,
// settings, a local peer). It uses the shared client unchanged and reaches the main process only
// through `window.voicepeerDesktop` (preload.js). Without that bridge (the page opened in a plain
// browser, as the tests do) it runs against the server named by `?server=` and `?token=`.
import { VoicePeerClient, listDevices } from "./client/voicepeer.js";
import { CallPanel } from "./client/panel.js";

const $ = (id) => document.getElementById(id);
const desktop = window.voicepeerDesktop || null;
let settings = null;
let platform = "";
let talking = false; // push-to-talk: the microphone is open

function showStatus({ phase = "", message = "" } = {}) {
  $("server-status").textContent = message;
  $("server-status").dataset.phase = phase;
}

// Settings: the main process keeps them; a plain browser keeps them in the URL and localStorage.
async function loadSettings() {
  if (desktop) {
    const answer = await desktop.getSettings();
    platform = answer.platform;
    $("python-env").placeholder = answer.defaultPythonEnv;
    return answer.settings;
  }
  const params = new URLSearchParams(location.search);
  const stored = JSON.parse(localStorage.getItem("voicepeer-settings") || "{}");
  return {
    mode: "remote",
    serverUrl: params.get("server") || stored.serverUrl || location.origin,
    token: params.get("token") || stored.token || "",
    pushToTalkShortcut: "",
    muteShortcut: "",
    inputDeviceId: stored.inputDeviceId || "",
    outputDeviceId: stored.outputDeviceId || "",
  };
}

async function saveSettings(changes) {
  if (desktop) {
    const { settings: saved, errors } = await desktop.saveSettings({ ...settings, ...changes });
    settings = saved;
    return errors;
  }
  settings = { ...settings, ...changes };
  localStorage.setItem("voicepeer-settings", JSON.stringify(settings));
  return {};
}

/** Where to connect: the local peer (started on demand) or the configured server. */
async function peer() {
  if (settings.mode === "local" && desktop) {
    const { url, token } = await desktop.startLocalServer();
    return { serverUrl: url, token };
  }
  return { serverUrl: settings.serverUrl, token: settings.token || null };
}

async function refreshDevices() {
  const { inputs, outputs } = await listDevices();
  for (const [select, devices, chosen] of [
    [$("input-device"), inputs, settings.inputDeviceId],
    [$("output-device"), outputs, settings.outputDeviceId],
  ]) {
    const options = [new Option("System default", "")];
    for (const { deviceId, label } of devices) {
      if (deviceId && deviceId !== "default") options.push(new Option(label || `device ${options.length}`, deviceId));
    }
    select.replaceChildren(...options);
    select.value = options.some((o) => o.value === chosen) ? chosen : "";
  }
  $("output-device").disabled = typeof HTMLMediaElement.prototype.setSinkId !== "function";
}

async function createClient({ audioElement }) {
  const { serverUrl, token } = await peer();
  const client = new VoicePeerClient({
    serverUrl,
    token,
    audioElement,
    inputDeviceId: settings.inputDeviceId || null,
    reconnect: { attempts: 3, delayMs: 1000 },
    // Electron's echo canceller is reported not to work on Windows: keep the server's on there.
    trustEchoCancellation: platform !== "win32",
  });
  client.addEventListener("reconnecting", (e) => {
    showStatus({ phase: "warning", message: `connection lost, reconnecting (attempt ${e.detail.attempt})…` });
  });
  return client;
}

async function onConnected(client) {
  if (settings.outputDeviceId) await client.setOutputDevice(settings.outputDeviceId).catch(() => {});
  if ($("push-to-talk").checked) client.mute();
  await refreshDevices(); // labels are readable now that the microphone is allowed
}

function onReset() {
  talking = false;
  document.body.classList.remove("talking");
}

const panel = new CallPanel({
  createClient,
  onConnected,
  onReset,
  // The tray shows the call's state and offers Mute.
  onCallState: (call) => desktop && desktop.setCallState(call),
});

// Push-to-talk: the server listens only while talking; letting go ends the turn and it is answered.
function talk(on) {
  const client = panel.client;
  if (!client || talking === on) return;
  talking = on;
  document.body.classList.toggle("talking", on);
  if (on) client.unmute();
  else client.mute();
}

function onShortcut({ action }) {
  if (!panel.client) return;
  if (action === "toggle-mute") panel.toggleMute();
  else if (action === "push-to-talk" && $("push-to-talk").checked) talk(!talking);
}

function isTyping(event) {
  return ["INPUT", "SELECT", "TEXTAREA"].includes(event.target.tagName) && event.target.type !== "checkbox";
}

// Settings dialog.
function openSettings() {
  const form = $("settings-form");
  for (const input of form.querySelectorAll("input[name]")) {
    if (input.type === "radio") input.checked = settings.mode === input.value;
    else input.value = settings[input.name] || "";
  }
  if (!desktop) for (const input of form.querySelectorAll('input[name="mode"], input[name$="Shortcut"], #python-env')) input.disabled = true;
  showModeFields();
  $("settings-error").hidden = true;
  $("settings").showModal();
}

function showModeFields() {
  const mode = $("settings-form").querySelector('input[name="mode"]:checked')?.value || settings.mode;
  for (const el of $("settings-form").querySelectorAll("[data-mode]")) el.hidden = el.dataset.mode !== mode;
}

$("settings-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData($("settings-form"));
  const changes = Object.fromEntries([...form.entries()].filter(([, v]) => typeof v === "string"));
  const errors = await saveSettings(changes);
  const messages = Object.entries(errors).map(([k, v]) => `${k}: ${v}`);
  $("settings-error").textContent = messages.join("; ");
  $("settings-error").hidden = messages.length === 0;
  if (messages.length === 0) $("settings").close();
});
$("settings-form").addEventListener("change", showModeFields);
$("settings-cancel").addEventListener("click", () => $("settings").close());
$("open-settings").addEventListener("click", openSettings);

$("push-to-talk").addEventListener("change", (event) => {
  const client = panel.client;
  if (!client) return;
  talking = false;
  if (event.target.checked) client.mute();
  else client.unmute();
});
window.addEventListener("keydown", (event) => {
  if (event.code === "Space" && !event.repeat && $("push-to-talk").checked && !isTyping(event)) {
    event.preventDefault();
    talk(true);
  }
});
window.addEventListener("keyup", (event) => {
  if (event.code === "Space" && $("push-to-talk").checked && !isTyping(event)) {
    event.preventDefault();
    talk(false);
  }
});
$("input-device").addEventListener("change", async (event) => {
  await saveSettings({ inputDeviceId: event.target.value });
  const client = panel.client;
  const show = (err) => panel.showError(`microphone: ${err.message}`);
  if (client) await client.setInputDevice(event.target.value).catch(show);
});
$("output-device").addEventListener("change", async (event) => {
  await saveSettings({ outputDeviceId: event.target.value });
  const client = panel.client;
  const show = (err) => panel.showError(`output: ${err.message}`);
  if (client) await client.setOutputDevice(event.target.value).catch(show);
});
navigator.mediaDevices.addEventListener("devicechange", () => refreshDevices());

settings = await loadSettings();
if (desktop) {
  desktop.onServerStatus(showStatus);
  desktop.onShortcut(onShortcut);
  $("ptt-hint").textContent = `(hold Space, or ${settings.pushToTalkShortcut} anywhere)`;
  // Models take a while to load: start the local peer now, not when the user clicks Connect.
  if (settings.mode === "local") desktop.startLocalServer().catch((err) => showStatus({ phase: "error", message: err.message }));
} else {
  showStatus({ phase: "remote", message: `server: ${settings.serverUrl}` });
}
await refreshDevices();
document.body.dataset.ready = "true";
