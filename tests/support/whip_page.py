"""Medooze's WHIP client (npm ``whip-whep``, MIT) in a real headless Chromium, against our server.

The page is served at the server's own origin by Playwright's request routing (``/__test__/...``), so it
is what a same-origin WHIP publisher would be; nothing of it is added to the server. The client is the
package's own ``whip.js``, unmodified. An observer wraps ``fetch`` to record every WHIP request and the
answer's headers (the client keeps the ``Link`` headers to itself), and the events stream named by the
answer's ``rel="events"`` link is read with the browser's own ``EventSource``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
WHIP_JS = ROOT / "tests" / "js" / "node_modules" / "whip-whep" / "whip.js"

PAGE = "<!doctype html><meta charset=utf-8><title>WHIP publisher</title><body>WHIP publisher</body>"

OBSERVER_JS = """
(() => {
  window.__whip = { requests: [], events: [] };
  const origFetch = window.fetch;
  const now = () => (window.__whip.ctx ? window.__whip.ctx.currentTime : null);
  window.fetch = async (input, init = {}) => {
    const sent = now();
    const response = await origFetch(input, init);
    const headers = {};
    response.headers.forEach((value, name) => { headers[name] = value; });
    window.__whip.requests.push({
      method: init.method || "GET", url: String(input), status: response.status, headers,
      sent, answered: now(),
      contentType: init.headers && (init.headers["Content-Type"] || init.headers["content-type"]),
      body: typeof init.body === "string" ? init.body : null,
    });
    return response;
  };
})();
"""

PUBLISH_JS = """
async ({ direction, worklet }) => {
  const { WHIPClient } = await import("/__test__/whip.js");
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
  const pc = new RTCPeerConnection();
  pc.addTransceiver(stream.getAudioTracks()[0], { direction, streams: [stream] });
  const ctx = new AudioContext();
  await ctx.resume();
  const url = URL.createObjectURL(new Blob([worklet], { type: "application/javascript" }));
  await ctx.audioWorklet.addModule(url);
  const sink = ctx.createGain();
  sink.gain.value = 0;
  sink.connect(ctx.destination);
  const levels = { local: [], remote: [] };
  window.__whip.levels = levels;
  const record = (s, name) => {
    const node = new AudioWorkletNode(ctx, "level-recorder");
    node.port.onmessage = (e) => { for (const x of e.data) levels[name].push(x); };
    ctx.createMediaStreamSource(s).connect(node);
    node.connect(sink);
  };
  record(stream, "local");
  pc.addEventListener("track", (e) => {
    const remote = e.streams[0] || new MediaStream([e.track]);
    const audio = new Audio();  // Chromium renders a remote track only when something plays it
    audio.muted = true;
    audio.srcObject = remote;
    audio.play().catch(() => {});
    record(remote, "remote");
  });
  const client = new WHIPClient();
  window.__whip.client = client;
  window.__whip.pc = pc;
  window.__whip.ctx = ctx;
  pc.addEventListener("connectionstatechange", () => {
    if (pc.connectionState === "connected") window.__whip.connected = ctx.currentTime;
  });
  await client.publish(pc, new URL("/whip", location.href).href);
  const post = window.__whip.requests.find((r) => r.method === "POST");
  const links = {};
  for (const part of (post.headers.link || "").split(/,\\s*(?=<)/)) {
    const m = part.match(/^<([^>]*)>.*rel="([^"]+)"/);
    if (m) links[m[2]] = m[1];
  }
  const source = new EventSource(links.events);
  window.__whip.source = source;
  source.onmessage = (e) => window.__whip.events.push({ t: ctx.currentTime, msg: JSON.parse(e.data) });
  source.onerror = () => { window.__whip.streamClosed = true; source.close(); };
  return {
    links, resource: client.resourceURL.href, etag: client.etag, status: post.status,
    answer: pc.remoteDescription.sdp,
  };
}
"""


def open_publisher(page: Any, server_url: str) -> None:
    """Routes the test page and the client module at the server's origin, then opens the page."""
    page.route(
        f"{server_url}/__test__/whip.html",
        lambda route: route.fulfill(status=200, content_type="text/html", body=PAGE),
    )
    page.route(
        f"{server_url}/__test__/whip.js",
        lambda route: route.fulfill(status=200, content_type="text/javascript", path=str(WHIP_JS)),
    )
    page.add_init_script(OBSERVER_JS)
    page.goto(f"{server_url}/__test__/whip.html")


def publish(page: Any, direction: str, worklet: str) -> dict[str, Any]:
    return page.evaluate(PUBLISH_JS, {"direction": direction, "worklet": worklet})


def wait_for_event(page: Any, predicate_js: str, timeout_ms: int) -> None:
    page.wait_for_function(f"window.__whip.events.some(({{msg: m}}) => {predicate_js})", timeout=timeout_ms)


def events(page: Any) -> list[dict[str, Any]]:
    return page.evaluate("window.__whip.events.map((e) => e.msg)")


def requests(page: Any) -> list[dict[str, Any]]:
    return page.evaluate("window.__whip.requests")


def stop(page: Any) -> None:
    page.evaluate("window.__whip.client.stop()")
