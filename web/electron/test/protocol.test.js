"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");

const { contentSecurityPolicy, handleAppProtocol, registerScheme, resolveAppFile } = require("../lib/protocol");

const dirs = { rendererDir: path.resolve(__dirname, "../renderer"), clientDir: path.resolve(__dirname, "../../client") };

test("app URLs map to the renderer and the shared client, and nothing else", () => {
  assert.equal(resolveAppFile("app://voicepeer/", dirs), path.join(dirs.rendererDir, "index.html"));
  assert.equal(resolveAppFile("app://voicepeer/app.js", dirs), path.join(dirs.rendererDir, "app.js"));
  assert.equal(resolveAppFile("app://voicepeer/client/voicepeer.js", dirs), path.join(dirs.clientDir, "voicepeer.js"));
  for (const url of [
    "app://voicepeer/../../../etc/passwd",
    "app://voicepeer/%2e%2e/%2e%2e/package.json",
    "app://voicepeer/..%2f..%2fmain.js",
    "app://other/index.html",
    "file:///etc/passwd",
    "app://voicepeer/%E0%A4%A",
    "app://voicepeer/secret.txt",
  ]) {
    assert.equal(resolveAppFile(url, dirs), null, url);
  }
  // The URL parser folds dot segments first: this one names renderer/demo/demo.js, inside the root.
  const folded = resolveAppFile("app://voicepeer/client/%2e%2e/demo/demo.js", dirs);
  assert.ok(folded.startsWith(dirs.rendererDir + path.sep), folded);
});

test("the scheme is registered as a secure, standard one", () => {
  let schemes;
  registerScheme({ registerSchemesAsPrivileged: (s) => (schemes = s) });
  assert.equal(schemes[0].scheme, "app");
  assert.equal(schemes[0].privileges.secure, true);
  assert.equal(schemes[0].privileges.standard, true);
});

test("the CSP allows the page's own files and the one server", () => {
  const csp = contentSecurityPolicy("https://voice.example.com:8443/some/path");
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self'(;|$)/);
  assert.match(csp, /connect-src 'self' https:\/\/voice\.example\.com:8443(;|$)/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  assert.match(contentSecurityPolicy("not a url"), /connect-src 'self'(;|$)/);
});

test("served files carry their type and the CSP; unknown ones are 404", async () => {
  const protocol = { handle: (scheme, fn) => (protocol.fn = fn) };
  handleAppProtocol(protocol, { ...dirs, getServerUrl: () => "http://127.0.0.1:9", readFile: require("node:fs/promises").readFile });
  const page = await protocol.fn(new Request("app://voicepeer/index.html"));
  assert.equal(page.status, 200);
  assert.match(page.headers.get("Content-Type"), /text\/html/);
  assert.match(page.headers.get("Content-Security-Policy"), /connect-src 'self' http:\/\/127\.0\.0\.1:9/);
  assert.match(await page.text(), /<title>voicepeer<\/title>/);
  const client = await protocol.fn(new Request("app://voicepeer/client/voicepeer.js"));
  assert.match(client.headers.get("Content-Type"), /javascript/);
  assert.equal((await protocol.fn(new Request("app://voicepeer/missing.js"))).status, 404);
  assert.equal((await protocol.fn(new Request("app://voicepeer/../package.json"))).status, 404);
});

test("every file the window loads, down the imports, is served by the app and packaged with it", () => {
  const fs = require("node:fs");
  // The shared client ships as extraResources (the renderer as "renderer/**"): its filter must take
  // every kind of file the window loads from it, or the packaged app misses one the tests never do.
  const { filter } = require("../package.json").build.extraResources.find((r) => r.to === "client");
  const loaded = new Set();
  const visit = (url) => {
    if (loaded.has(url)) return;
    loaded.add(url);
    const file = resolveAppFile(url, dirs);
    assert.ok(file && fs.existsSync(file), `${url} is not served`);
    if (file.startsWith(dirs.clientDir + path.sep)) assert.ok(filter.includes(`*${path.extname(file)}`), `${file} is not packaged`);
    const text = fs.readFileSync(file, "utf8");
    const refs = file.endsWith(".html") ? /(?:src|href)="(\.[^"]+)"/g : /^import .* from "(\.[^"]+)";$/gm;
    for (const [, ref] of text.matchAll(refs)) visit(new URL(ref, url).href);
  };
  visit("app://voicepeer/index.html");
  for (const name of ["app.js", "app.css", "client/voicepeer.js", "client/view.js", "client/view.css", "client/panel.js"]) {
    assert.ok(loaded.has(`app://voicepeer/${name}`), name);
  }
});
