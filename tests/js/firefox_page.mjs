// A headless Firefox page driven over WebDriver BiDi (puppeteer-core), for the Python tests.
//
// Playwright's Firefox is a patched build that would have to be downloaded; puppeteer-core drives the
// Firefox ESR that Debian ships, as it is. The Python side (tests/support/firefox.py) gives its tests a
// small subset of Playwright's Page on top of this script, so the Chromium tests' helpers
// (tests/support/browser.py) drive Firefox unchanged.
//
// Protocol: one JSON object per line. The script's first line on stdout is
// {"ready": true, "pid": <Firefox's pid>, "version": "..."}; then for every request on stdin,
// {"id", "method", "params"}, one answer {"id", "result"} or {"id", "error"}. Results are JSON text
// made in the page, so that nested objects (the events' messages) come back whole. The page's console
// and errors, and Firefox's own output, go to stderr.
//
// Options (one JSON argument): {executablePath, userDataDir, prefs, env}.

import { createInterface } from "node:readline";
import puppeteer from "puppeteer-core";

const options = JSON.parse(process.argv[2] || "{}");

function send(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

function log(...parts) {
  process.stderr.write(`[firefox_page] ${parts.join(" ")}\n`);
}

const browser = await puppeteer.launch({
  browser: "firefox",
  protocol: "webDriverBiDi",
  executablePath: options.executablePath,
  userDataDir: options.userDataDir,
  headless: true,
  dumpio: false, // it would copy Firefox's stdout onto ours, which carries the protocol
  extraPrefsFirefox: options.prefs || {},
  env: { ...process.env, ...(options.env || {}) },
  timeout: 120_000,
  protocolTimeout: 180_000,
});

for (const stream of [browser.process()?.stdout, browser.process()?.stderr]) stream?.pipe(process.stderr);

const page = (await browser.pages())[0] || (await browser.newPage());
page.on("console", (message) => log(`console.${message.type()}:`, message.text()));
page.on("pageerror", (error) => log("pageerror:", error.message || String(error)));

/** Evaluates `source` as Playwright does: a function is called with `arg`, anything else is the value.
 * The result comes back as JSON text (undefined as null). */
async function evaluate(source, arg) {
  const expression = `(async () => {
    const value = (${source});
    const result = typeof value === "function" ? await value(${JSON.stringify(arg ?? null)}) : await value;
    return JSON.stringify(result === undefined ? null : result);
  })()`;
  return JSON.parse(await page.evaluate(expression));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const methods = {
  async add_init_script({ script }) {
    await page.evaluateOnNewDocument(script);
    return null;
  },
  async goto({ url, timeout }) {
    await page.goto(url, { waitUntil: "load", timeout });
    return null;
  },
  async click({ selector }) {
    // The element's own click(): the pages under test react to the event, not to where the mouse is.
    await page.$eval(selector, (element) => element.click());
    return null;
  },
  async set_checked({ selector, checked }) {
    await page.$eval(
      selector,
      (element, on) => {
        if (element.checked !== on) element.click();
      },
      checked,
    );
    return null;
  },
  async fill({ selector, value }) {
    await page.$eval(
      selector,
      (element, text) => {
        element.value = text;
        element.dispatchEvent(new Event("input", { bubbles: true }));
      },
      value,
    );
    return null;
  },
  async text_content({ selector }) {
    return page.$eval(selector, (element) => element.textContent);
  },
  async evaluate({ source, arg }) {
    return evaluate(source, arg);
  },
  async wait_for_function({ expression, timeout, interval = 50 }) {
    // Polled from here rather than with requestAnimationFrame, which a headless page may throttle.
    const deadline = Date.now() + timeout;
    for (;;) {
      if (await evaluate(expression)) return true;
      if (Date.now() > deadline) throw new Error(`TimeoutError: not true after ${timeout} ms: ${expression}`);
      await sleep(interval);
    }
  },
};

let closing = false;

async function close() {
  if (closing) return;
  closing = true;
  try {
    await browser.close();
  } catch (error) {
    log("close:", error.message || String(error));
  }
  process.exit(0);
}

send({ ready: true, pid: browser.process()?.pid ?? null, version: await browser.version() });

// One request at a time, in order: the Python side waits for every answer before the next request.
const lines = createInterface({ input: process.stdin });
let queue = Promise.resolve();
lines.on("line", (line) => {
  queue = queue.then(async () => {
    let request;
    try {
      request = JSON.parse(line);
    } catch {
      return;
    }
    if (request.method === "close") {
      send({ id: request.id, result: null });
      await close();
      return;
    }
    try {
      const method = methods[request.method];
      if (!method) throw new Error(`unknown method ${request.method}`);
      send({ id: request.id, result: await method(request.params || {}) });
    } catch (error) {
      send({ id: request.id, error: String(error && error.message ? error.message : error) });
    }
  });
});
// The test process went away (or closed our stdin): take Firefox down with us.
lines.on("close", () => queue.then(close));
