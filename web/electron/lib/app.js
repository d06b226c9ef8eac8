// The main process, wired from its parts. Every Electron object comes in through `electron`, so the
// wiring runs under plain Node with a stand-in (test/app.test.js) where the real binary cannot.
"use strict";

const fsp = require("node:fs/promises");
const path = require("node:path");

const { installPermissionHandlers, originOf } = require("./permissions");
const { APP_ORIGIN, handleAppProtocol, registerScheme } = require("./protocol");
const settingsStore = require("./settings");
const { LocalServer } = require("./localServer");
const { registerShortcuts } = require("./shortcuts");
const { TrayController } = require("./tray");

/** The one window's options: an isolated, sandboxed renderer with no Node, reaching the main process
 * only through preload.js's narrow bridge. */
function windowOptions(appDir) {
  return {
    width: 920,
    height: 780,
    minWidth: 560,
    minHeight: 480,
    show: false,
    title: "voicepeer",
    webPreferences: {
      contextIsolation: true,
      sandbox: true,
      nodeIntegration: false,
      nodeIntegrationInSubFrames: false,
      webSecurity: true,
      allowRunningInsecureContent: false,
      webviewTag: false,
      spellcheck: false,
      preload: path.join(appDir, "preload.js"),
    },
  };
}

function isWebUrl(url) {
  return /^https?:\/\//i.test(url);
}

/**
 * Starts the app. Returns {ready, state}: `ready` resolves once the window is loaded (null when another
 * instance already runs and this one quits).
 */
function start(
  electron,
  { appDir = path.join(__dirname, ".."), env = process.env, platform = process.platform, readFile = fsp.readFile } = {},
) {
  const { app, BrowserWindow, protocol, session, ipcMain, globalShortcut, Menu, Tray, nativeImage, shell, systemPreferences } =
    electron;
  registerScheme(protocol); // before "ready", or the scheme is not privileged
  if (!app.requestSingleInstanceLock()) {
    app.quit();
    return { ready: Promise.resolve(null), state: null };
  }
  const clientDir = app.isPackaged ? path.join(process.resourcesPath, "client") : path.join(appDir, "..", "client");
  const settingsFile = path.join(app.getPath("userData"), "settings.json");
  const defaultEnv = env.VOICEPEER_PYTHON_ENV || path.join(appDir, "..", "..", ".venv");
  const state = {
    window: null,
    tray: null,
    shortcuts: null,
    server: null,
    serverStart: null,
    settings: settingsStore.load(settingsFile).settings,
    quitting: false,
  };

  const send = (channel, payload) => {
    if (state.window && !state.window.isDestroyed()) state.window.webContents.send(channel, payload);
  };
  const show = () => {
    if (!state.window) return;
    if (state.window.isMinimized()) state.window.restore();
    state.window.show();
    state.window.focus();
  };
  const serverUrl = () => (state.settings.mode === "local" ? state.server && state.server.url : state.settings.serverUrl);

  // Only the app's own page may talk to the main process.
  const fromApp = (event) => originOf(event.senderFrame ? event.senderFrame.url : "") === APP_ORIGIN;
  const handle = (channel, fn) =>
    ipcMain.handle(channel, async (event, ...args) => {
      if (!fromApp(event)) throw new Error("refused: not the app's page");
      return fn(...args);
    });

  async function startLocalServer() {
    if (state.settings.mode !== "local") throw new Error("the app is set to use a remote server");
    if (state.server && state.server.child && state.server.status.phase === "ready") {
      return { url: state.server.url, token: state.server.token };
    }
    if (state.serverStart) return state.serverStart;
    const server = new LocalServer({ pythonEnv: state.settings.pythonEnv || defaultEnv, allowOrigin: APP_ORIGIN, env });
    server.on("status", (status) => send("server:status", status));
    state.server = server;
    state.serverStart = server.start().finally(() => {
      state.serverStart = null;
    });
    return state.serverStart;
  }

  const ready = app.whenReady().then(async () => {
    handleAppProtocol(protocol, {
      rendererDir: path.join(appDir, "renderer"),
      clientDir,
      getServerUrl: () => serverUrl() || "",
      readFile,
    });
    installPermissionHandlers(session.defaultSession, APP_ORIGIN, (line) => console.warn(`voicepeer: ${line}`));
    if (platform === "darwin" && systemPreferences.getMediaAccessStatus("microphone") !== "granted") {
      // macOS asks the user once per app; without it getUserMedia gets silence, not an error.
      await systemPreferences.askForMediaAccess("microphone");
    }

    handle("settings:get", () => ({ settings: state.settings, platform, defaultPythonEnv: defaultEnv }));
    handle("settings:save", async (input) => {
      const { settings, errors } = settingsStore.validate(input, state.settings);
      if (Object.keys(errors).length === 0) {
        const restart = settings.mode !== state.settings.mode || settings.pythonEnv !== state.settings.pythonEnv;
        state.settings = settings;
        settingsStore.save(settingsFile, settings);
        if (restart && state.server) await state.server.stop();
        rebindShortcuts();
      }
      return { settings: state.settings, errors };
    });
    handle("server:start", async () => {
      try {
        return await startLocalServer();
      } catch (err) {
        // Errors cross the bridge as messages only: keep the code in it for the renderer to show.
        throw new Error(`${err.code || "failed"}: ${err.message}`);
      }
    });
    handle("server:stop", async () => {
      if (state.server) await state.server.stop();
    });
    ipcMain.on("call:state", (event, payload) => {
      if (fromApp(event) && state.tray) state.tray.setState(payload);
    });

    const win = new BrowserWindow(windowOptions(appDir));
    state.window = win;
    win.webContents.setWindowOpenHandler(({ url }) => {
      if (isWebUrl(url)) shell.openExternal(url);
      return { action: "deny" };
    });
    win.webContents.on("will-navigate", (event, url) => {
      if (originOf(url) === APP_ORIGIN) return;
      event.preventDefault();
      if (isWebUrl(url)) shell.openExternal(url);
    });
    win.once("ready-to-show", () => win.show());
    win.on("closed", () => {
      state.window = null;
    });

    state.tray = new TrayController({ Tray, Menu }, nativeImage.createFromPath(path.join(appDir, "build", "tray.png")), {
      show,
      quit: () => app.quit(),
      toggleMute: () => send("shortcut", { action: "toggle-mute" }),
    });
    rebindShortcuts();
    await win.loadURL(`${APP_ORIGIN}/index.html`);
    return win;
  });

  function rebindShortcuts() {
    if (state.shortcuts) state.shortcuts.unregister();
    state.shortcuts = registerShortcuts(
      globalShortcut,
      { pushToTalk: state.settings.pushToTalkShortcut, mute: state.settings.muteShortcut },
      (message) => send("shortcut", message),
    );
    if (state.shortcuts.failed.length) {
      send("server:status", {
        phase: "warning",
        message: `shortcut unavailable (another program holds it): ${state.shortcuts.failed.join(", ")}`,
      });
    }
  }

  app.on("second-instance", show);
  app.on("window-all-closed", () => app.quit());
  app.on("will-quit", (event) => {
    if (state.shortcuts) state.shortcuts.unregister();
    if (state.server && state.server.child && !state.quitting) {
      // Stop the local peer first, then quit for real.
      event.preventDefault();
      state.quitting = true;
      state.server.stop().finally(() => app.quit());
    }
  });
  return { ready, state };
}

module.exports = { start, windowOptions };
