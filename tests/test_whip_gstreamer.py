"""WHIP with a real third-party WebRTC stack: GStreamer's ``webrtcbin`` (Debian's 1.22), the engine of
GStreamer's own WHIP elements and of many encoders, against the real server (its own process).

The client is tests/support/gst_whip.py, run by the system Python (Debian's ``gi`` bindings; the
virtualenv has none). It sends a spoken question as Opus on a send-only transceiver, with the offer as
``webrtcbin`` makes it and its default RSA-2048 certificate (browsers use ECDSA: an RSA peer is what
found no cipher suite in common with aiortc when it was the DTLS client). It signals ICE in the two ways
RFC 9725 allows:

- ``full``: gathers first, then POSTs the complete offer (a client that does not trickle);
- ``trickle``: POSTs the offer at once, with no candidate at all, then PATCHes each candidate as it is
  gathered and an end-of-candidates (what the server's ICE agent must wait for, having none at first).

Either way the server must hear the question, transcribe it, and say so on the events stream named by the
answer's ``rel="events"`` link; the client then DELETEs the session. When the call fails, the assertion
carries the client's progress lines: ICE and DTLS states, OpenSSL's reason, the HTTP exchanges.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import ServerProcess
from voicepeer.call.text import words

pytestmark = pytest.mark.slow

SYSTEM_PYTHON = "/usr/bin/python3"
CLIENT = Path(__file__).resolve().parent / "support" / "gst_whip.py"
DEBIAN_PACKAGES = (
    "gstreamer1.0-tools python3-gst-1.0 gir1.2-gst-plugins-bad-1.0 gir1.2-gst-plugins-base-1.0 "
    "gstreamer1.0-nice gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad"
)
ELEMENTS = ("webrtcbin", "nicesrc", "dtlssrtpenc", "opusenc", "rtpopuspay", "wavparse", "audiomixer")

QUESTION = "What is the weather like today?"
CLIENT_TIMEOUT_S = 150.0
"""The client's own deadline (it hangs up and reports); generous, as the machine may be busy with other
tests. The test's is a minute longer, and kills the client if even that passes."""


@pytest.fixture(scope="module", autouse=True)
def gstreamer_installed() -> None:
    """Not a skip: `make test` installs the packages, so a machine without them is a broken setup."""
    check = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0'); "
        "gi.require_version('GstSdp', '1.0'); from gi.repository import Gst, GstWebRTC, GstSdp; "
        f"Gst.init(None); missing = [e for e in {ELEMENTS!r} if Gst.ElementFactory.find(e) is None]; "
        "assert not missing, 'missing GStreamer elements: ' + ', '.join(missing)"
    )
    try:
        done = subprocess.run([SYSTEM_PYTHON, "-c", check], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        pytest.fail(f"{SYSTEM_PYTHON} not found: the GStreamer client runs on Debian's own Python")
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        pytest.fail(
            f"{SYSTEM_PYTHON} cannot run GStreamer's webrtcbin ({why}): "
            f"`make test` installs it (apt-get install {DEBIAN_PACKAGES})"
        )


def summary(lines: list[dict[str, Any]]) -> str:
    """The client's progress, one short line each (SDP bodies and partial results left out): what a
    failure message needs to say where the call stopped."""
    out = []
    for line in lines:
        kind = line.get("kind")
        if kind == "event" and not line["event"].get("final", True):
            continue
        fields = {k: v for k, v in line.items() if k not in ("t", "kind", "sdp", "body")}
        if kind == "posted":
            fields["body"] = (line.get("body") or "")[:200] if line.get("status") != 201 else "<answer>"
        if kind == "post":
            fields = {"candidates": line.get("candidates")}
        out.append(f"{line.get('t', 0):8.3f} {kind} {json.dumps(fields)[:400]}")
    return "\n".join(out)


def run_client(server: ServerProcess, wav: Path, tmp_path: Path, *, trickle: bool) -> list[dict[str, Any]]:
    """Runs the GStreamer client to the end of the call; its progress lines, parsed. The client is
    killed if it outlives its own deadline by a minute, and on any way out of here."""
    cmd = [SYSTEM_PYTHON, str(CLIENT), "--url", f"{server.url}/whip", "--wav", str(wav)]
    cmd += ["--timeout", str(CLIENT_TIMEOUT_S), *(["--trickle"] if trickle else [])]
    stderr_path = tmp_path / "gst_whip.stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            out, _ = proc.communicate(timeout=CLIENT_TIMEOUT_S + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            lines = parse(out)
            pytest.fail(f"the GStreamer client hung; killed it. It said:\n{summary(lines)}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = parse(out)
    err = stderr_path.read_text(errors="replace").strip()
    (tmp_path / "gst_whip.jsonl").write_text(out)
    print(summary(lines))  # shown with the test's output on failure, or with -rP
    if proc.returncode not in (0, 1):  # 1 is a failure it reports itself, in its last line
        pytest.fail(
            f"the GStreamer client died ({proc.returncode}):\n{summary(lines)}\nstderr:\n{err[-3000:]}"
        )
    return lines


def parse(out: str) -> list[dict[str, Any]]:
    lines = []
    for raw in out.splitlines():
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:
            lines.append({"kind": "stdout", "text": raw})
    return lines


def of(lines: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("kind") == kind]


def failure(lines: list[dict[str, Any]]) -> str:
    """Why the call failed, in a sentence: the client's reason, the last states, and OpenSSL's errors."""
    done = of(lines, "done")
    reason = done[-1]["reason"] if done else "no final line"
    states = {
        kind: [line["state"] for line in of(lines, kind)]
        for kind in ("ice_connection_state", "dtls_state", "connection_state")
    }
    errors = [
        f"{line['category']}: {line['message'].strip()}"
        for line in of(lines, "gst_log")
        if line["category"].startswith("dtls")
    ]
    errors += [f"bus: {line['message']} ({line.get('debug')})" for line in of(lines, "bus_error")]
    return f"{reason}; states {states}; DTLS errors {errors or 'none'}"


@pytest.mark.parametrize("mode", ["full", "trickle"])
def test_gstreamer_webrtcbin_is_heard_and_transcribed(server, make_speech, tmp_path, mode):
    question = make_speech(QUESTION, lead_s=1.0, tail_s=2.0)
    server.wait_sessions(0, timeout=60)
    started = time.monotonic()
    lines = run_client(server, Path(question.path), tmp_path, trickle=mode == "trickle")
    took = time.monotonic() - started
    print(f"{mode}: the GStreamer call took {took:.1f} s")
    log = summary(lines)

    posts, posted = of(lines, "post"), of(lines, "posted")
    assert len(posts) == 1 and posted and posted[0]["status"] == 201, log
    answer = posted[0]["body"]
    assert "a=recvonly" in answer and "a=candidate:" in answer, answer
    assert set(posted[0]["links"]) >= {"events", "control"}, log
    offer = posts[0]["sdp"]
    gathered = [line["candidate"] for line in of(lines, "candidate") if line["candidate"]]
    patches = of(lines, "patched")
    if mode == "full":
        # The offer as webrtcbin holds it once gathering is complete: every candidate in it.
        assert all(f"a={c}\r\n" in offer for c in gathered) and gathered, log
        assert not patches, log
    else:
        # The offer exactly as create-offer made it, before any candidate; then one PATCH each.
        assert offer == of(lines, "offer_created")[0]["sdp"], log
        assert "a=candidate:" not in offer and "a=end-of-candidates" not in offer, offer
        assert [c for p in patches for c in p["candidates"]] == gathered and gathered, log
        assert all(p["status"] == 204 for p in patches), log
        assert patches[-1]["end"] and not patches[-1]["candidates"], log

    assert "connected" in [line["state"] for line in of(lines, "dtls_state")], (
        f"the GStreamer client never connected: {failure(lines)}\n{log}"
    )
    done = of(lines, "done")
    assert done and done[-1]["ok"], f"the GStreamer client failed: {failure(lines)}\n{log}"

    events = [line["event"] for line in of(lines, "event")]
    assert events[0]["type"] == "session" and events[0]["id"] in posted[0]["location"], log
    final = next(e for e in events if e["type"] == "transcript" and e["final"])
    heard = set(words(final["text"]))
    asked = set(words(QUESTION))
    # Heard whole in every run here; the margin is for a busy machine's late or lost packets.
    assert {"weather", "today"} <= heard and len(heard & asked) >= 4, final

    deleted = of(lines, "deleted")
    assert deleted and deleted[0]["status"] == 200, log
    server.wait_sessions(0, timeout=30)
