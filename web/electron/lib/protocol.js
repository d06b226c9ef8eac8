// The app's own scheme: app://voicepeer/ serves the renderer and the shared client from disk.
//
// A custom scheme gives the page a stable origin that the server can be told to allow
// (--allow-origin app://voicepeer), unlike file:// whose origin is "null" for every file on the disk.
"use strict";

const path = require("node:path");

const SCHEME = "app";
const HOST = "voicepeer";
const APP_ORIGIN = `${SCHEME}://${HOST}`;

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".png": "image/png",
  ".svg": "image/svg+xml",
};

/** Registers the scheme's privileges; must run before the app is ready. */
function registerScheme(protocol) {
  protocol.registerSchemesAsPrivileged([
    { scheme: SCHEME, privileges: { standard: true, secure: true, supportFetchAPI: true, stream: true } },
  ]);
}

/**
 * The file behind an app URL, or null: `/client/...` comes from the shared client directory, the rest
 * from the renderer's. Nothing outside those two directories can be named (no "..", no other host).
 */
function resolveAppFile(url, { rendererDir, clientDir }) {
  let parsed;
  try {
    parsed = new URL(url);
  } catch {
    return null;
  }
  if (parsed.protocol !== `${SCHEME}:` || parsed.host !== HOST) return null;
  let rel;
  try {
    rel = decodeURIComponent(parsed.pathname);
  } catch {
    return null;
  }
  if (rel === "/" || rel === "") rel = "/index.html";
  const [root, sub] = rel.startsWith("/client/") ? [clientDir, rel.slice("/client/".length)] : [rendererDir, rel.slice(1)];
  const file = path.resolve(root, sub);
  if (!file.startsWith(path.resolve(root) + path.sep)) return null;
  if (!TYPES[path.extname(file)]) return null;
  return file;
}

/** The page's Content-Security-Policy: its own files only, and network access to the one server. */
function contentSecurityPolicy(serverUrl) {
  let server = "";
  try {
    server = serverUrl ? new URL(serverUrl).origin : "";
  } catch {
    server = "";
  }
  const connect = ["'self'", server].filter(Boolean).join(" ");
  return [
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "media-src 'self' blob: mediastream:",
    `connect-src ${connect}`,
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join("; ");
}

/** Serves app:// with `protocol.handle`, reading files with `readFile` (fs.promises.readFile). */
function handleAppProtocol(protocol, { rendererDir, clientDir, getServerUrl, readFile }) {
  protocol.handle(SCHEME, async (request) => {
    const file = resolveAppFile(request.url, { rendererDir, clientDir });
    if (!file) return new Response("not found", { status: 404 });
    let body;
    try {
      body = await readFile(file);
    } catch {
      return new Response("not found", { status: 404 });
    }
    return new Response(body, {
      headers: {
        "Content-Type": TYPES[path.extname(file)],
        "Content-Security-Policy": contentSecurityPolicy(getServerUrl()),
        "X-Content-Type-Options": "nosniff",
      },
    });
  });
}

module.exports = { APP_ORIGIN, SCHEME, contentSecurityPolicy, handleAppProtocol, registerScheme, resolveAppFile };
