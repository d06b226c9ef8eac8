// A local peer for the desktop: `voicepeer serve` as a child process of the app.
//
// It listens on loopback only, on a free port, with a fresh secret (passed in the environment, not on
// the command line where other users' `ps` would see it) and the app's origin allowed. The app waits
// for /healthz while relaying the model-loading lines to the window, stops the server on quit, and
// turns every way of failing (not installed, port taken, crash, never ready) into a status with a code
// and a message instead of a silent nothing.
"use strict";

const { EventEmitter } = require("node:events");
const childProcess = require("node:child_process");
const crypto = require("node:crypto");
const fs = require("node:fs");
const net = require("node:net");
const path = require("node:path");

const READY_TIMEOUT_MS = 180_000; // first start on a slow disk: the models are paged in
const STOP_TIMEOUT_MS = 5_000;
const LOG_LINES = 40;

/** A TCP port nobody listens on now (on 127.0.0.1). */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** The `voicepeer` command inside a Python environment (a virtualenv's bin/ or Scripts\). */
function voicepeerCommand(pythonEnv, platform = process.platform) {
  return platform === "win32" ? path.join(pythonEnv, "Scripts", "voicepeer.exe") : path.join(pythonEnv, "bin", "voicepeer");
}

/** What a line of the server's log says about loading, for the window ("" for lines that say nothing). */
function progressOf(line) {
  const m = /INFO voicepeer\.call\.services: (.*)$/.exec(line) || /^voicepeer: (.*)$/.exec(line);
  return m ? m[1].trim() : "";
}

class LocalServer extends EventEmitter {
  /**
   * @param {object} options
   * @param {string} options.pythonEnv the environment where voicepeer is installed
   * @param {string} options.allowOrigin the app's origin (app://voicepeer)
   * @param {number} [options.port] a fixed port (default: a free one)
   * @param {string[]} [options.args] more `voicepeer serve` arguments
   * @param {Function} [options.spawn] child_process.spawn (a test may wrap it)
   */
  constructor({ pythonEnv, allowOrigin, port = 0, args = [], spawn = childProcess.spawn, env = process.env }) {
    super();
    this.pythonEnv = pythonEnv;
    this.allowOrigin = allowOrigin;
    this.port = port;
    this.args = args;
    this.spawn = spawn;
    this.env = env;
    this.child = null;
    this.url = null;
    this.token = null;
    this.status = { phase: "stopped", message: "" };
    this.log = [];
    this._stopping = false;
  }

  _set(phase, message, extra = {}) {
    this.status = { phase, message, ...extra };
    this.emit("status", this.status);
  }

  _fail(code, message) {
    const error = Object.assign(new Error(message), { code });
    this._set("error", message, { code, log: this.log.slice(-10) });
    return error;
  }

  /** Starts the server and resolves {url, token} once /healthz says ready; rejects with an Error whose
   * `code` is not_installed, port_taken, exited, load_failed or timeout. */
  async start({ timeoutMs = READY_TIMEOUT_MS } = {}) {
    if (this.child) return { url: this.url, token: this.token };
    const command = voicepeerCommand(this.pythonEnv);
    if (!fs.existsSync(command)) {
      throw this._fail(
        "not_installed",
        `voicepeer is not installed in ${this.pythonEnv}: run \`make install\` in the voicepeer checkout, ` +
          "or set the Python environment in Settings",
      );
    }
    const port = this.port || (await freePort());
    this.token = crypto.randomBytes(24).toString("base64url");
    this.url = `http://127.0.0.1:${port}`;
    this.log = [];
    this._stopping = false;
    this._set("starting", `starting voicepeer on ${this.url}`);
    const child = this.spawn(command, ["serve", "--host", "127.0.0.1", "--port", String(port), ...this.args], {
      env: {
        ...this.env,
        PYTHONUNBUFFERED: "1",
        VOICEPEER_AUTH_TOKEN: this.token,
        VOICEPEER_ALLOW_ORIGINS: this.allowOrigin,
      },
      stdio: ["ignore", "pipe", "pipe"],
      windowsHide: true,
    });
    this.child = child;
    const exited = new Promise((resolve) => {
      child.once("error", (err) => resolve({ code: null, signal: null, error: err }));
      child.once("exit", (code, signal) => resolve({ code, signal }));
    });
    this._exited = exited;
    for (const stream of [child.stdout, child.stderr]) {
      let partial = "";
      stream.setEncoding("utf8");
      stream.on("data", (chunk) => {
        const lines = (partial + chunk).split("\n");
        partial = lines.pop();
        for (const line of lines) this._line(line);
      });
    }
    exited.then((how) => this._onExit(child, how));

    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const result = await Promise.race([exited.then(() => "exited"), this._health()]);
      if (result === "exited" || this.child !== child) {
        const how = await exited;
        if (how.error) throw this._fail("not_installed", `could not start ${command}: ${how.error.message}`);
        throw this._exitError();
      }
      if (result && result.status === "ready") {
        this._set("ready", `voicepeer is ready on ${this.url}`, { url: this.url });
        return { url: this.url, token: this.token };
      }
      if (result && result.status === "error") {
        await this.stop();
        throw this._fail("load_failed", `voicepeer could not load its models: ${result.error}`);
      }
      await Promise.race([exited, new Promise((r) => setTimeout(r, 250))]);
    }
    await this.stop();
    throw this._fail("timeout", `voicepeer did not become ready within ${Math.round(timeoutMs / 1000)} s`);
  }

  _line(line) {
    if (!line) return;
    this.log.push(line);
    if (this.log.length > LOG_LINES) this.log.shift();
    const progress = progressOf(line);
    if (progress && this.status.phase !== "ready") this._set("loading", progress);
  }

  async _health() {
    try {
      const response = await fetch(`${this.url}/healthz`, { signal: AbortSignal.timeout(2000) });
      return await response.json();
    } catch {
      return null; // not listening yet
    }
  }

  _exitError() {
    const text = this.log.join("\n");
    if (/address already in use|Errno 98|Errno 48|EADDRINUSE/i.test(text)) {
      return this._fail("port_taken", `port ${new URL(this.url).port} is already in use by another program`);
    }
    const last = this.log.slice(-3).join(" | ") || "no output";
    return this._fail("exited", `voicepeer exited before it was ready: ${last}`);
  }

  _onExit(child, { code, signal, error }) {
    if (this.child !== child) return;
    this.child = null;
    if (this._stopping) {
      this._set("stopped", "voicepeer stopped");
    } else if (this.status.phase === "ready") {
      const why = error ? error.message : signal ? `signal ${signal}` : `exit code ${code}`;
      this._set("crashed", `voicepeer stopped unexpectedly (${why})`, { code: "crashed", log: this.log.slice(-10) });
    } // before ready, start() reports how it ended
  }

  /** Stops the server: SIGTERM (it ends its calls and exits), SIGKILL if it has not after a while. */
  async stop() {
    const child = this.child;
    if (!child) return;
    this._stopping = true;
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), STOP_TIMEOUT_MS);
    await this._exited;
    clearTimeout(timer);
  }
}

module.exports = { LocalServer, freePort, progressOf, voicepeerCommand };
