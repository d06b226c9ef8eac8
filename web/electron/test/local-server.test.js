// The local peer's lifecycle against a real `voicepeer serve` from the repository's environment
// (VOICEPEER_PYTHON_ENV, default ../../.venv): started, waited for, stopped, and every failure named.
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const net = require("node:net");
const path = require("node:path");

const { LocalServer, freePort, progressOf, voicepeerCommand } = require("../lib/localServer");
const { APP_ORIGIN } = require("../lib/protocol");

const PYTHON_ENV = process.env.VOICEPEER_PYTHON_ENV || path.resolve(__dirname, "../../../.venv");
const installed = fs.existsSync(voicepeerCommand(PYTHON_ENV));

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test("the server's log lines become loading progress", () => {
  assert.equal(progressOf("2026-11-25 13:11:45,520 INFO voicepeer.call.services: models loaded in 1.0 s"), "models loaded in 1.0 s");
  assert.equal(progressOf("voicepeer: loading models, then serving http://127.0.0.1:1/"), "loading models, then serving http://127.0.0.1:1/");
  assert.equal(progressOf("2026-11-25 13:11:47,746 INFO voicepeer.transport.session: session x: connection connecting"), "");
});

test("starts voicepeer, waits for health, serves the app with its secret, and stops", { skip: !installed && `no voicepeer in ${PYTHON_ENV}` }, async () => {
  const server = new LocalServer({ pythonEnv: PYTHON_ENV, allowOrigin: APP_ORIGIN });
  const phases = [];
  server.on("status", (s) => phases.push(s));
  const { url, token } = await server.start();
  const pid = server.child.pid;
  try {
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(phases.at(-1).phase, "ready");
    assert.ok(phases.some((s) => s.phase === "loading" && /models|ASR|TTS|LLM/.test(s.message)), JSON.stringify(phases));
    assert.equal((await (await fetch(`${url}/healthz`)).json()).status, "ready");
    // Signaling needs the secret the app generated; the app's origin gets CORS, another does not.
    assert.equal((await fetch(`${url}/ice-servers`)).status, 401);
    assert.equal((await fetch(`${url}/ice-servers`, { headers: { Authorization: `Bearer ${token}` } })).status, 200);
    const preflight = (origin) =>
      fetch(`${url}/offer`, {
        method: "OPTIONS",
        headers: { Origin: origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type, authorization" },
      });
    const ours = await preflight(APP_ORIGIN);
    assert.equal(ours.status, 204);
    const theirs = await preflight("https://evil.example");
    assert.equal(theirs.status, 403);
    assert.equal(theirs.headers.get("access-control-allow-origin"), null);
    // The secret is not on the command line, where `ps` would show it to every user.
    assert.doesNotMatch(fs.readFileSync(`/proc/${pid}/cmdline`, "utf8"), new RegExp(token));
  } finally {
    await server.stop();
  }
  assert.equal(server.status.phase, "stopped");
  assert.equal(alive(pid), false);
  await assert.rejects(fetch(`${url}/healthz`));
});

test("a missing installation is reported with what to do", async () => {
  const server = new LocalServer({ pythonEnv: "/nonexistent/venv", allowOrigin: APP_ORIGIN });
  await assert.rejects(server.start(), (err) => err.code === "not_installed" && /make install/.test(err.message));
  assert.equal(server.status.phase, "error");
});

test("a port already in use is reported as such", { skip: !installed && "voicepeer not installed" }, async () => {
  const port = await freePort();
  const squatter = net.createServer().listen(port, "127.0.0.1");
  await new Promise((resolve) => squatter.once("listening", resolve));
  try {
    const server = new LocalServer({ pythonEnv: PYTHON_ENV, allowOrigin: APP_ORIGIN, port });
    await assert.rejects(server.start(), (err) => err.code === "port_taken" && err.message.includes(String(port)));
    assert.equal(server.child, null);
  } finally {
    squatter.close();
  }
});

test("a crash after start is reported, with the end of its log", { skip: !installed && "voicepeer not installed" }, async () => {
  const server = new LocalServer({ pythonEnv: PYTHON_ENV, allowOrigin: APP_ORIGIN });
  await server.start();
  const crashed = new Promise((resolve) => server.on("status", (s) => s.phase === "crashed" && resolve(s)));
  server.child.kill("SIGKILL");
  const status = await crashed;
  assert.match(status.message, /unexpectedly.*SIGKILL/);
  assert.ok(status.log.length > 0);
  assert.equal(server.child, null);
  await server.stop(); // nothing left to stop: a no-op
});
