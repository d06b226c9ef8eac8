// Global shortcuts: push-to-talk and mute from anywhere on the desktop.
//
// Electron's globalShortcut reports key presses only, never releases, so a global push-to-talk cannot
// be held: each press toggles talking (the first opens the microphone, the next closes it and the
// turn is answered). Inside the window, holding Space is true push-to-talk (renderer key events).
"use strict";

/**
 * Registers the accelerators; each press sends `{action}` to the renderer through `send`.
 * Returns {registered, failed, unregister}: an accelerator another program holds is reported, not fatal.
 */
function registerShortcuts(globalShortcut, { pushToTalk, mute }, send) {
  const registered = [];
  const failed = [];
  for (const [accelerator, action] of [
    [pushToTalk, "push-to-talk"],
    [mute, "toggle-mute"],
  ]) {
    if (!accelerator) continue;
    let ok = false;
    try {
      ok = globalShortcut.register(accelerator, () => send({ action }));
    } catch {
      ok = false; // an accelerator Electron cannot parse
    }
    (ok ? registered : failed).push(accelerator);
  }
  return {
    registered,
    failed,
    unregister() {
      for (const accelerator of registered) globalShortcut.unregister(accelerator);
      registered.length = 0;
    },
  };
}

module.exports = { registerShortcuts };
