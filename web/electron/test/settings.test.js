"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");

const { DEFAULTS, load, save, validate } = require("../lib/settings");

test("valid settings are kept and each bad field is named", () => {
  const { settings, errors } = validate({
    mode: "remote",
    serverUrl: "https://voice.example.com",
    token: "v1.abc.def",
    bogus: 1,
    pythonEnv: 42,
  });
  assert.equal(settings.mode, "remote");
  assert.equal(settings.serverUrl, "https://voice.example.com");
  assert.deepEqual(Object.keys(errors).sort(), ["bogus", "pythonEnv"]);
  assert.equal(settings.pythonEnv, DEFAULTS.pythonEnv);
});

test("hostile values are refused", () => {
  for (const [field, value] of [
    ["mode", "both"],
    ["serverUrl", "javascript:alert(1)"],
    ["serverUrl", "file:///etc/passwd"],
    ["serverUrl", "https://user:pw@example.com"],
    ["token", "a b"],
    ["pythonEnv", "x".repeat(5000)],
  ]) {
    const { errors } = validate({ [field]: value });
    assert.ok(errors[field], `${field}=${String(value).slice(0, 20)}`);
  }
  assert.ok(validate(null).errors._);
  assert.ok(validate([]).errors._);
});

test("settings survive a round trip; a damaged file gives the defaults and says so", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vp-settings-"));
  const file = path.join(dir, "sub", "settings.json");
  assert.deepEqual(load(file), { settings: { ...DEFAULTS }, errors: {} });
  save(file, { ...DEFAULTS, mode: "remote" });
  assert.equal(load(file).settings.mode, "remote");
  assert.equal(fs.statSync(file).mode & 0o777, 0o600);
  fs.writeFileSync(file, "{not json");
  const damaged = load(file);
  assert.deepEqual(damaged.settings, { ...DEFAULTS });
  assert.ok(damaged.errors._);
  fs.rmSync(dir, { recursive: true });
});
