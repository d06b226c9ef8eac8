// The renderer's only way to the main process: a few named calls, no ipcRenderer, no Node.
// Runs sandboxed, so it may require "electron" and nothing else.
"use strict";

const { contextBridge, ipcRenderer } = require("electron");

function subscribe(channel, callback) {
  const listener = (_event, payload) => callback(payload); // never hand the event (and its sender) over
  ipcRenderer.on(channel, listener);
  return () => ipcRenderer.removeListener(channel, listener);
}

contextBridge.exposeInMainWorld("voicepeerDesktop", {
  getSettings: () => ipcRenderer.invoke("settings:get"),
  saveSettings: (settings) => ipcRenderer.invoke("settings:save", settings),
  startLocalServer: () => ipcRenderer.invoke("server:start"),
  stopLocalServer: () => ipcRenderer.invoke("server:stop"),
  setCallState: (state) => ipcRenderer.send("call:state", state),
  onServerStatus: (callback) => subscribe("server:status", callback),
  onShortcut: (callback) => subscribe("shortcut", callback),
});
