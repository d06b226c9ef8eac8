// The tray icon: the call's state at a glance, and mute / show / quit without the window.
"use strict";

const LABELS = {
  idle: "Not in a call",
  connecting: "Connecting…",
  listening: "Listening",
  thinking: "Thinking…",
  speaking: "Speaking",
  reconnecting: "Reconnecting…",
};

class TrayController {
  /**
   * @param {object} electron {Tray, Menu}
   * @param {object} icon a nativeImage
   * @param {object} actions {toggleMute(), show(), quit()}
   */
  constructor({ Tray, Menu }, icon, actions) {
    this.Menu = Menu;
    this.actions = actions;
    this.tray = new Tray(icon);
    this.state = "idle";
    this.muted = false;
    this.tray.on("click", () => actions.show());
    this.update();
  }

  /** The renderer's call state (validated: anything unknown shows as idle). */
  setState({ state, muted } = {}) {
    this.state = Object.hasOwn(LABELS, state) ? state : "idle";
    this.muted = Boolean(muted);
    this.update();
  }

  label() {
    const base = LABELS[this.state];
    return this.muted && this.state !== "idle" ? `${base} (muted)` : base;
  }

  update() {
    this.tray.setToolTip(`voicepeer: ${this.label()}`);
    this.tray.setContextMenu(
      this.Menu.buildFromTemplate([
        { label: this.label(), enabled: false },
        { type: "separator" },
        { label: this.muted ? "Unmute" : "Mute", enabled: this.state !== "idle", click: () => this.actions.toggleMute() },
        { label: "Show voicepeer", click: () => this.actions.show() },
        { label: "Quit", click: () => this.actions.quit() },
      ]),
    );
  }

  destroy() {
    this.tray.destroy();
  }
}

module.exports = { LABELS, TrayController };
