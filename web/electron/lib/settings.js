// The app's settings: where the peer is (a local one the app starts, or a remote URL and token), the
// Python environment of the local one, the shortcuts and the chosen devices. Kept as JSON in the
// user-data directory; anything the renderer sends is validated here, in the main process.
"use strict";

const fs = require("node:fs");
const path = require("node:path");

const DEFAULTS = Object.freeze({
  mode: "local", // "local": start `voicepeer serve` as a child process; "remote": use serverUrl
  serverUrl: "http://127.0.0.1:8080",
  token: "",
  pythonEnv: "", // the virtualenv holding voicepeer; "" = the repository's .venv next to the app
  pushToTalkShortcut: "CommandOrControl+Shift+Space",
  muteShortcut: "CommandOrControl+Shift+M",
  inputDeviceId: "",
  outputDeviceId: "",
});

const MAX_STRING = 2048;

/** Returns {settings, errors}: the valid fields of `input` over `base`, and one message per bad field. */
function validate(input, base = DEFAULTS) {
  const settings = { ...base };
  const errors = {};
  if (input === null || typeof input !== "object" || Array.isArray(input)) {
    return { settings, errors: { _: "settings must be an object" } };
  }
  for (const [key, value] of Object.entries(input)) {
    if (!(key in DEFAULTS)) {
      errors[key] = "unknown setting";
    } else if (typeof value !== "string" || value.length > MAX_STRING) {
      errors[key] = `must be a string of at most ${MAX_STRING} characters`;
    } else if (key === "mode" && !["local", "remote"].includes(value)) {
      errors[key] = 'must be "local" or "remote"';
    } else if (key === "serverUrl" && !isHttpUrl(value)) {
      errors[key] = "must be an http:// or https:// URL";
    } else if (key === "token" && /[\s"]/.test(value)) {
      errors[key] = "must not contain spaces or quotes";
    } else {
      settings[key] = value;
    }
  }
  return { settings, errors };
}

function isHttpUrl(value) {
  try {
    const url = new URL(value);
    return (url.protocol === "http:" || url.protocol === "https:") && !url.username && !url.password;
  } catch {
    return false;
  }
}

/** Reads the settings file; a missing or damaged file gives the defaults (and says so). */
function load(file) {
  try {
    const { settings, errors } = validate(JSON.parse(fs.readFileSync(file, "utf8")));
    return { settings, errors };
  } catch (err) {
    return { settings: { ...DEFAULTS }, errors: err.code === "ENOENT" ? {} : { _: `ignored ${file}: ${err.message}` } };
  }
}

/** Writes atomically (a crash mid-write must not lose the previous settings). */
function save(file, settings) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(settings, null, 2), { mode: 0o600 });
  fs.renameSync(tmp, file);
}

module.exports = { DEFAULTS, load, save, validate };
