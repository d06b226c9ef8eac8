// A stand-in for the `electron` module: the Electron binary cannot be installed here, so the main
// process's wiring is run against these recorders. Only this seam is faked; the modules under test and
// the local server they start are real.
"use strict";

const { EventEmitter } = require("node:events");

function fakeElectron({ singleInstance = true, userData = "/tmp", isPackaged = false, micStatus = "granted" } = {}) {
  let resolveReady;
  const readyPromise = new Promise((resolve) => (resolveReady = resolve));

  const app = new EventEmitter();
  Object.assign(app, {
    isPackaged,
    quitCalls: 0,
    requestSingleInstanceLock: () => singleInstance,
    quit() {
      app.quitCalls += 1;
      const event = { defaultPrevented: false, preventDefault() { this.defaultPrevented = true; } };
      app.emit("will-quit", event);
      if (!event.defaultPrevented) app.quitted = true;
    },
    getPath: (name) => (name === "userData" ? userData : "/tmp"),
    whenReady: () => readyPromise,
    fireReady: () => resolveReady(),
  });

  const handlers = new Map();
  const ipcMain = new EventEmitter();
  ipcMain.handle = (channel, fn) => handlers.set(channel, fn);
  ipcMain.invoke = (channel, url, ...args) => handlers.get(channel)({ senderFrame: { url } }, ...args);
  ipcMain.sendFrom = (channel, url, payload) => ipcMain.emit(channel, { senderFrame: { url } }, payload);

  const windows = [];
  class BrowserWindow extends EventEmitter {
    constructor(options) {
      super();
      this.options = options;
      this.sent = [];
      this.loaded = null;
      this.visible = false;
      this.webContents = new EventEmitter();
      this.webContents.send = (channel, payload) => this.sent.push([channel, payload]);
      this.webContents.setWindowOpenHandler = (fn) => (this.openHandler = fn);
      windows.push(this);
    }
    loadURL(url) {
      this.loaded = url;
      return Promise.resolve();
    }
    isDestroyed() {
      return false;
    }
    isMinimized() {
      return false;
    }
    show() {
      this.visible = true;
    }
    focus() {}
    restore() {}
  }

  const shortcuts = new Map();
  const globalShortcut = {
    taken: new Set(),
    register(accelerator, fn) {
      if (this.taken.has(accelerator)) return false;
      shortcuts.set(accelerator, fn);
      return true;
    },
    unregister(accelerator) {
      shortcuts.delete(accelerator);
    },
    press(accelerator) {
      shortcuts.get(accelerator)();
    },
    registered: () => [...shortcuts.keys()],
  };

  const trays = [];
  class Tray extends EventEmitter {
    constructor(icon) {
      super();
      this.icon = icon;
      trays.push(this);
    }
    setToolTip(text) {
      this.tooltip = text;
    }
    setContextMenu(menu) {
      this.menu = menu;
    }
    destroy() {}
  }

  const session = { defaultSession: { setPermissionRequestHandler: (fn) => (session.request = fn), setPermissionCheckHandler: (fn) => (session.check = fn) } };
  const protocol = {
    privileged: null,
    registerSchemesAsPrivileged: (schemes) => (protocol.privileged = schemes),
    handle: (scheme, fn) => (protocol.handlers = { ...protocol.handlers, [scheme]: fn }),
    handlers: {},
  };

  return {
    windows,
    trays,
    app,
    BrowserWindow,
    ipcMain,
    globalShortcut,
    Tray,
    Menu: { buildFromTemplate: (template) => ({ template }) },
    nativeImage: { createFromPath: (p) => ({ path: p }) },
    shell: {
      opened: [],
      openExternal(url) {
        this.opened.push(url);
        return Promise.resolve();
      },
    },
    systemPreferences: {
      asked: [],
      getMediaAccessStatus: () => micStatus,
      askForMediaAccess(kind) {
        this.asked.push(kind);
        return Promise.resolve(true);
      },
    },
    session,
    protocol,
  };
}

module.exports = { fakeElectron };
