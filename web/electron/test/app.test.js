// The main process's wiring, run under Node with a stand-in for the `electron` module (the binary
// cannot be installed here). The local server it starts in the last test is the real one.
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");

const { start } = require("../lib/app");
const { voicepeerCommand } = require("../lib/localServer");
const { fakeElectron } = require("./fake-electron");

const APP = "app://voicepeer/index.html";
const PYTHON_ENV = process.env.VOICEPEER_PYTHON_ENV || path.resolve(__dirname, "../../../.venv");

// Every test's user-data directory, removed when the file's tests are done.
const userDataDirs = [];
test.after(() => {
  for (const dir of userDataDirs) fs.rmSync(dir, { recursive: true, force: true });
});

async function started(options = {}, startOptions = {}) {
  const userData = fs.mkdtempSync(path.join(os.tmpdir(), "vp-app-"));
  userDataDirs.push(userData);
  const electron = fakeElectron({ userData, ...options });
  const app = start(electron, { env: { VOICEPEER_PYTHON_ENV: PYTHON_ENV }, platform: "linux", ...startOptions });
  electron.app.fireReady();
  const win = await app.ready;
  return { electron, app, win, userData };
}

test("a second instance quits and leaves the first one alone", async () => {
  const electron = fakeElectron({ singleInstance: false });
  const app = start(electron, { platform: "linux" });
  assert.equal(await app.ready, null);
  assert.equal(electron.app.quitCalls, 1);
  assert.equal(electron.windows.length, 0);
});

test("one isolated, sandboxed window loads the app from its own scheme", async () => {
  const { electron, win } = await started();
  assert.equal(electron.windows.length, 1);
  const prefs = win.options.webPreferences;
  assert.equal(prefs.contextIsolation, true);
  assert.equal(prefs.sandbox, true);
  assert.equal(prefs.nodeIntegration, false);
  assert.equal(prefs.webviewTag, false);
  assert.ok(fs.existsSync(prefs.preload), prefs.preload);
  assert.equal(win.loaded, APP);
  assert.equal(electron.protocol.privileged[0].scheme, "app");
  const page = await electron.protocol.handlers.app(new Request(APP));
  assert.equal(page.status, 200);
  assert.match(page.headers.get("Content-Security-Policy"), /script-src 'self'/);
  // Media permissions are the app's only: the microphone yes, the camera and other origins no.
  const { request, check } = electron.session;
  const answers = [];
  request({ getURL: () => APP }, "media", (ok) => answers.push(ok), { mediaTypes: ["audio"], requestingUrl: APP });
  request({ getURL: () => APP }, "media", (ok) => answers.push(ok), { mediaTypes: ["video"], requestingUrl: APP });
  assert.deepEqual(answers, [true, false]);
  assert.equal(check(null, "media", "app://voicepeer", {}), true);
  // A second launch brings this window forward.
  win.visible = false;
  electron.app.emit("second-instance");
  assert.equal(win.visible, true);
});

test("macOS is asked for the microphone when the app has not been granted it", async () => {
  const { electron } = await started({ micStatus: "not-determined" }, { platform: "darwin" });
  assert.deepEqual(electron.systemPreferences.asked, ["microphone"]);
  const linux = await started({ micStatus: "not-determined" });
  assert.deepEqual(linux.electron.systemPreferences.asked, []);
});

test("links leave for the system browser; the window never navigates away", async () => {
  const { electron, win } = await started();
  assert.deepEqual(win.openHandler({ url: "https://github.com/voicepeer" }), { action: "deny" });
  assert.deepEqual(win.openHandler({ url: "file:///etc/passwd" }), { action: "deny" });
  const away = { prevented: false, preventDefault() { this.prevented = true; } };
  win.webContents.emit("will-navigate", away, "https://evil.example/");
  const inside = { prevented: false, preventDefault() { this.prevented = true; } };
  win.webContents.emit("will-navigate", inside, "app://voicepeer/index.html?x");
  assert.equal(away.prevented, true);
  assert.equal(inside.prevented, false);
  assert.deepEqual(electron.shell.opened, ["https://github.com/voicepeer", "https://evil.example/"]);
});

test("global shortcuts reach the renderer; a taken one is reported", async () => {
  const { electron, win } = await started();
  const { globalShortcut } = electron;
  assert.deepEqual(globalShortcut.registered().sort(), ["CommandOrControl+Shift+M", "CommandOrControl+Shift+Space"]);
  globalShortcut.press("CommandOrControl+Shift+Space");
  globalShortcut.press("CommandOrControl+Shift+M");
  assert.deepEqual(
    win.sent.filter(([c]) => c === "shortcut").map(([, p]) => p.action),
    ["push-to-talk", "toggle-mute"],
  );
  // Changing a shortcut in the settings rebinds; one another program holds is named in the window.
  globalShortcut.taken.add("F9");
  const answer = await electron.ipcMain.invoke("settings:save", APP, { pushToTalkShortcut: "F9" });
  assert.deepEqual(answer.errors, {});
  assert.deepEqual(globalShortcut.registered(), ["CommandOrControl+Shift+M"]);
  assert.ok(win.sent.some(([c, p]) => c === "server:status" && p.phase === "warning" && p.message.includes("F9")));
  electron.app.quit();
  assert.deepEqual(globalShortcut.registered(), []);
});

test("the tray shows the call state the app's page reports, and only its page", async () => {
  const { electron, app, win } = await started();
  const tray = electron.trays[0];
  assert.equal(tray.tooltip, "voicepeer: Not in a call");
  electron.ipcMain.sendFrom("call:state", APP, { state: "speaking", muted: false });
  assert.equal(tray.tooltip, "voicepeer: Speaking");
  electron.ipcMain.sendFrom("call:state", APP, { state: "listening", muted: true });
  assert.equal(tray.tooltip, "voicepeer: Listening (muted)");
  electron.ipcMain.sendFrom("call:state", "https://evil.example/", { state: "thinking" });
  electron.ipcMain.sendFrom("call:state", APP, { state: "<script>" });
  assert.equal(tray.tooltip, "voicepeer: Not in a call");
  // Its menu mutes through the renderer and quits the app.
  const items = tray.menu.template;
  items.find((i) => i.label === "Mute").click();
  assert.deepEqual(win.sent.at(-1), ["shortcut", { action: "toggle-mute" }]);
  tray.emit("click");
  assert.equal(win.visible, true);
  assert.ok(app.state.tray);
});

test("the bridge refuses callers that are not the app's page, and bad settings", async () => {
  const { electron, userData } = await started();
  await assert.rejects(electron.ipcMain.invoke("settings:get", "https://evil.example/"), /refused/);
  const got = await electron.ipcMain.invoke("settings:get", APP);
  assert.equal(got.settings.mode, "local");
  const bad = await electron.ipcMain.invoke("settings:save", APP, { serverUrl: "javascript:alert(1)", mode: "remote" });
  assert.ok(bad.errors.serverUrl);
  assert.equal(bad.settings.mode, "local", "nothing is saved when a field is bad");
  const good = await electron.ipcMain.invoke("settings:save", APP, { serverUrl: "https://voice.example.com", mode: "remote" });
  assert.deepEqual(good.errors, {});
  assert.equal(JSON.parse(fs.readFileSync(path.join(userData, "settings.json"), "utf8")).mode, "remote");
  await assert.rejects(electron.ipcMain.invoke("server:start", APP), /remote server/);
});

test(
  "local mode starts the real peer on request and stops it before quitting",
  { skip: !fs.existsSync(voicepeerCommand(PYTHON_ENV)) && "voicepeer not installed" },
  async () => {
    const { electron, app, win } = await started();
    const [first, second] = await Promise.all([
      electron.ipcMain.invoke("server:start", APP),
      electron.ipcMain.invoke("server:start", APP), // one server, however often asked
    ]);
    assert.deepEqual(first, second);
    const pid = app.state.server.child.pid;
    assert.equal((await (await fetch(`${first.url}/healthz`)).json()).status, "ready");
    const phases = win.sent.filter(([c]) => c === "server:status").map(([, s]) => s.phase);
    assert.ok(phases.includes("loading") && phases.at(-1) === "ready", phases.join(","));
    // The page's CSP now names the local server.
    const page = await electron.protocol.handlers.app(new Request(APP));
    assert.ok(page.headers.get("Content-Security-Policy").includes(first.url));

    electron.app.quit();
    assert.equal(electron.app.quitted, undefined, "quit waits for the server");
    await new Promise((resolve) => {
      const poll = setInterval(() => electron.app.quitted && (clearInterval(poll), resolve()), 50);
    });
    assert.throws(() => process.kill(pid, 0));
  },
);
