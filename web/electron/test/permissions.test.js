"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");

const { allowed, installPermissionHandlers, originOf } = require("../lib/permissions");
const { APP_ORIGIN } = require("../lib/protocol");

const APP = `${APP_ORIGIN}/index.html`;

test("the app's own page may capture audio", () => {
  assert.equal(allowed({ permission: "media", mediaTypes: ["audio"], origin: APP, appOrigin: APP_ORIGIN }), true);
});

test("the camera, screen capture and other permissions are denied", () => {
  for (const mediaTypes of [["video"], ["audio", "video"]]) {
    assert.equal(allowed({ permission: "media", mediaTypes, origin: APP, appOrigin: APP_ORIGIN }), false);
  }
  for (const permission of ["geolocation", "notifications", "display-capture", "clipboard-read", "openExternal"]) {
    assert.equal(allowed({ permission, mediaTypes: [], origin: APP, appOrigin: APP_ORIGIN }), false, permission);
  }
});

test("other origins get nothing, even the microphone", () => {
  for (const origin of ["https://evil.example", "app://other/index.html", "file:///etc/passwd", "null", "", "not a url"]) {
    assert.equal(allowed({ permission: "media", mediaTypes: ["audio"], origin, appOrigin: APP_ORIGIN }), false, origin);
  }
});

test("the first check arrives without a mediaType and is granted for the app only", () => {
  let request;
  let check;
  installPermissionHandlers(
    { setPermissionRequestHandler: (fn) => (request = fn), setPermissionCheckHandler: (fn) => (check = fn) },
    APP_ORIGIN,
  );
  assert.equal(check(null, "media", APP_ORIGIN, { securityOrigin: APP_ORIGIN }), true);
  assert.equal(check(null, "media", APP_ORIGIN, { mediaType: "audio" }), true);
  assert.equal(check(null, "media", APP_ORIGIN, { mediaType: "video" }), false);
  assert.equal(check(null, "media", "https://evil.example", {}), false);

  const answers = [];
  const contents = { getURL: () => APP };
  request(contents, "media", (ok) => answers.push(ok), { mediaTypes: ["audio"], requestingUrl: APP });
  request(contents, "media", (ok) => answers.push(ok), { mediaTypes: ["video"], requestingUrl: APP });
  request(contents, "media", (ok) => answers.push(ok), { mediaTypes: ["audio"], requestingUrl: "https://evil.example/" });
  request(contents, "notifications", (ok) => answers.push(ok), {});
  assert.deepEqual(answers, [true, false, false, false]);
});

test("origins of custom schemes are compared by scheme and host", () => {
  assert.equal(originOf("app://voicepeer/x/y.html?q"), "app://voicepeer");
  assert.equal(originOf("https://a.example:8443/p"), "https://a.example:8443");
  assert.equal(originOf("::"), "");
});
