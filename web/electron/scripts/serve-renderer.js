#!/usr/bin/env node
// Serves the app's renderer over plain HTTP exactly as the app's app:// handler does (same files, same
// mapping, same Content-Security-Policy), so it can run in any Chromium: the tests load it this way,
// and it previews the window without Electron.
//
//   node scripts/serve-renderer.js --port 5173 --server http://127.0.0.1:8080
//   then open http://127.0.0.1:5173/index.html?server=http://127.0.0.1:8080
//   (the server needs --allow-origin http://127.0.0.1:5173)
//
// --extra DIR also serves DIR's .js files under /__extra/ (the tests' audio recorder, which the
// window's CSP only lets load from the window's own origin).
"use strict";

const fsp = require("node:fs/promises");
const http = require("node:http");
const path = require("node:path");
const { parseArgs } = require("node:util");

const { handleAppProtocol } = require("../lib/protocol");

const { values } = parseArgs({ options: { port: { type: "string", default: "0" }, server: { type: "string", default: "" }, extra: { type: "string", default: "" } }, });
const dirs = { rendererDir: path.join(__dirname, "..", "renderer"), clientDir: path.join(__dirname, "..", "..", "client") };

let handler;
handleAppProtocol({ handle: (_scheme, fn) => (handler = fn) }, { ...dirs, getServerUrl: () => values.server, readFile: fsp.readFile });

const server = http.createServer(async (request, response) => {
  const url = new URL(request.url, "app://voicepeer");
  if (values.extra && url.pathname.startsWith("/__extra/")) {
    const name = path.basename(url.pathname);
    const body = name.endsWith(".js") ? await fsp.readFile(path.join(values.extra, name)).catch(() => null) : null;
    response.writeHead(body ? 200 : 404, { "Content-Type": "text/javascript; charset=utf-8" });
    response.end(body || "");
    return;
  }
  const answer = await handler(new Request(`app://voicepeer${url.pathname}`));
  response.writeHead(answer.status, Object.fromEntries(answer.headers));
  response.end(Buffer.from(await answer.arrayBuffer()));
});
server.listen(Number(values.port), "127.0.0.1", () => {
  console.log(`http://127.0.0.1:${server.address().port}`);
});
