"""The peer's own cost per call with inference elsewhere: the media path alone (issue 20, item 6a).

The peer (``voicepeer serve``, its own process) gets its ASR and TTS from Wyoming servers in other
processes (wyoming-faster-whisper, wyoming-piper) and its LLM over HTTP from another process (by
default ``serve_scripted_llm``, a stand-in that streams a story to every request at once;
``--llm llama``: llama-cpp-python's server, which answers one request at a time). What the peer
computes itself is the media path: WebRTC (Opus, SRTP, the jitter buffer), the echo cancellers and
noise suppression, the Silero VAD, the end-of-turn model at pauses, resampling and the pacing of the
bot's voice. N real aiortc clients (split over ``--client-procs`` processes, never the peer's) hold
calls in one of three modes:

- ``idle``: connected, the microphone sending silence (what a client does when nobody speaks);
- ``listening``: every user speaks without a pause (a long espeak-ng run-on sentence, looped; its word
  gaps stay under the turn's end silence, so no turn ends and the bot never answers);
- ``speaking``: the bot talks (a storyteller prompt and a typed question; asked again whenever a
  story ends), so its voice is synthesized remotely and paced out by the peer.

For each mode and N a fresh peer is started (its loop-lag percentiles cover its whole life: a few
seconds of setup, then the measured window), the calls are set up, and over ``--window`` seconds the
bench reads the peer's CPU time (``/proc/<pid>/stat``: threads and children included), the clients'
and the inference servers' CPU, the machine's busy share, and from the peer's ``/metrics`` the loop
lag p99 and the outbound frames released late. Runs interleave the levels; medians are reported.

Per mode: CPU % of one core per call, the least-squares slope over the levels before the machine
saturated (the clients and the inference servers share the 2 cores); ``100 / slope``, the calls one
core carries by CPU alone; and the largest N whose loop lag p99 stays within 10 ms with no late
outbound frames. The goal (issue 20): at least 10 calls per core. ``--py-spy`` profiles the peer in
every window (py-spy from a venv of its own).

    python -m bench.media [--levels 1,2,4,8] [--runs 3] [--window 12] [--modes idle,listening,speaking]
    python -m bench.media --summarize bench/results/media.json   # the summary of an earlier run again

Prints one JSON document, then a one-line summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from bench.latency import scrape_media_health
from tests.support import servers
from tests.support.rtc_client import RtcClient
from tests.support.server import ROOT, STORY, ServerProcess
from tests.support.speech import read_wav, speak
from tests.support.wyoming_servers import wyoming_asr_server, wyoming_tts_server
from voicepeer.runtime import models

MODES = ("idle", "listening", "speaking")

LAG_BUDGET_MS = 10.0
"""Loop lag p99 a call level may reach and still count as carried (issue 20)."""

GOAL_CALLS_PER_CORE = 10

RUN_ON = (
    "the keeper of the old lighthouse climbs the narrow stairs every evening and lights the lamp while the "
    "ships pass far out on the grey water and the wind comes in from the north across the rocks and the "
    "gulls turn above the harbour where the fishing boats wait for the morning tide"
)
"""What a listening user says, with no punctuation: espeak-ng then leaves no pause over ~130 ms, less
than the 300 ms of silence that ends a turn, so the bot only listens."""

QUESTION = "Tell me a long story about a lighthouse keeper and a storm at sea."

SPEAKING_FLAGS = (*STORY, "--llm-max-tokens", "400", "--llm-timeout", "180")
"""Long replies; a long LLM timeout because llama-cpp-python's server answers one request at a time,
so with N calls asking at once the last one waits for N - 1 stories."""

CLK_TCK = os.sysconf("SC_CLK_TCK")

STORY_TEXT = (
    "Old Tom kept the lighthouse on the point for forty years, and he knew every mood of the sea. "
    "One autumn evening the sky turned the colour of slate, and the wind began to howl around the tower. "
    "He climbed the narrow stairs, trimmed the wick, and watched the beam sweep across the black water. "
    "Far out beyond the reef, a small fishing boat was fighting its way home against the waves. "
    "Tom rang the bell and lit the second lamp, so the sailors could see the rocks on either side. "
    "The rain came sideways, and the spray reached the top of the tower, but the light never failed. "
    "Hour after hour the little boat crept closer, riding up each wave and sliding down the other side. "
    "At last it rounded the point and slipped into the quiet water of the harbour below. "
    "In the morning the fishermen climbed the hill with bread, cheese and a jar of honey for the keeper. "
    "Tom only smiled, wound the great clock, and went back to polishing the brass of the lamp. "
)
"""What the scripted LLM tells, again and again: plain sentences, as the storyteller prompt asks for."""

SCRIPTED_WORDS_PER_S = 60.0
"""How fast the scripted LLM streams: about what llama.cpp writes with SmolLM2-135M on a free core,
far ahead of speech (about 2.5 words a second)."""


# --- inference in other processes ---------------------------------------------------------------------


async def _scripted_completion(request: Any) -> Any:
    """An OpenAI chat completion stream of ``STORY_TEXT`` word by word, up to ``max_tokens`` words."""
    from aiohttp import web

    body = await request.json()
    words = (STORY_TEXT * 10).split()[: int(body.get("max_tokens") or 400)]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i, word in enumerate(words):
        delta = {"choices": [{"index": 0, "delta": {"content": (" " if i else "") + word}}]}
        await response.write(f"data: {json.dumps(delta)}\n\n".encode())
        await asyncio.sleep(1 / SCRIPTED_WORDS_PER_S)
    await response.write(b"data: [DONE]\n\n")
    return response


def serve_scripted_llm(port: int) -> None:
    """A stand-in OpenAI-compatible LLM (``--scripted-llm PORT``): streams a story to every request at
    once, at a fixed pace, costing next to nothing. For the speaking mode: llama-cpp-python's server
    answers one request at a time, so N calls asking at once wait for N - 1 stories (minutes at N = 8 on
    2 shared cores), and what the peer does with the tokens is the same whoever writes them."""
    from aiohttp import web

    app = web.Application()
    app.router.add_post("/v1/chat/completions", _scripted_completion)
    app.router.add_get(
        "/v1/models", lambda _: web.json_response({"object": "list", "data": [{"id": "story"}]})
    )
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def _llm_ready(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
        return r.status == 200


@dataclass
class RemoteInference:
    """The three inference servers of a media-only peer, each its own process (group)."""

    asr: servers.ServerProcess
    tts: servers.ServerProcess
    llm: servers.ServerProcess

    def flags(self) -> list[str]:
        """``voicepeer serve`` flags that put every stage on these servers (no ``embedded`` in any
        chain, so the peer loads no ASR, TTS or LLM model)."""
        return [
            "--asr", f"wyoming://127.0.0.1:{self.asr.port}",
            "--tts", f"wyoming://127.0.0.1:{self.tts.port}",
            "--llm", f"http://127.0.0.1:{self.llm.port}/v1",
        ]  # fmt: skip

    def pids(self) -> dict[str, int]:
        return {s.name: s.proc.pid for s in (self.asr, self.tts, self.llm) if s.proc is not None}


@contextmanager
def remote_inference(work: Path, llm: str = "llama") -> Iterator[RemoteInference]:
    """Starts wyoming-faster-whisper (tiny.en, int8, greedy), wyoming-piper (the bundled voice) and
    llama-cpp-python's server (the bundled GGUF; ``llm="scripted"``: ``serve_scripted_llm``) on
    loopback, and stops them.

    The LLM server gets one thread per core, as the embedded LLM has, and ``--interrupt_requests
    false``: its default ends a streaming reply (a clean ``[DONE]``, mid-sentence) as soon as another
    request arrives, so with two talking calls one of them would get half an answer."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gguf = models.default_gguf()
    threads = str(os.cpu_count() or 1)

    def llm_command(port: int) -> list[str]:
        if llm == "scripted":
            return [sys.executable, "-m", "bench.media", "--scripted-llm", str(port)]
        return [
            sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
            "--port", str(port), "--n_ctx", "2048", "--n_threads", threads, "--interrupt_requests", "false",
        ]  # fmt: skip

    started: list[servers.ServerProcess] = []
    try:
        started.append(wyoming_asr_server(work))
        started.append(wyoming_tts_server(work))
        name = "scripted-llm" if llm == "scripted" else "llama-cpp-server"
        server = servers.ServerProcess(name, llm_command, _llm_ready, work / f"{name}.log", cwd=ROOT)
        started.append(server.start())
        yield RemoteInference(*started)
    finally:
        for server in reversed(started):
            server.stop()


# --- CPU time from /proc ----------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system seconds) of a live process, threads included."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the name may hold spaces
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_s(root: int) -> float:
    """CPU seconds used so far by ``root`` and its live descendants."""
    procs = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(int(p))) is not None}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in procs:
            total += procs[pid][1]
            todo += children.get(pid, [])
    return total


def machine_jiffies() -> tuple[int, int, int]:
    """(busy, of which niced, total) jiffies of all cores (iowait counts as idle). Niced work (a
    build in the background) yields to ours, so the two are told apart."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, values[1], total


# --- the clients, in their own processes ------------------------------------------------------------


def _window_stats(client: RtcClient, t0: float, t1: float) -> dict[str, Any]:
    """What one client saw in the measured window: how long the bot was speaking, the frames it got
    (50 a second when the peer paces well), the longest wait between two, and the voiced share."""
    states = [(t, m["state"]) for t, m in client.events if m.get("type") == "state"]
    speaking = 0.0
    for i, (t, state) in enumerate(states):
        end = states[i + 1][0] if i + 1 < len(states) else t1
        if state == "speaking":
            speaking += max(0.0, min(end, t1) - max(t, t0))
    times = np.array(client.received.times)
    inside = np.flatnonzero((times >= t0) & (times < t1))
    voiced = sum(int(np.abs(client.received.pcm[i].astype(np.int32)).max() > 300) for i in inside)
    errors = [m.get("code") for t, m in client.events if m.get("type") == "error" and t0 <= t < t1]
    finals = [
        m for t, m in client.events if m.get("type") == "transcript" and m.get("final") and t0 <= t < t1
    ]
    return {
        "speaking_s": round(speaking, 2),
        "frames": len(inside),
        "voiced_frames": voiced,
        "max_interval_ms": round(float(np.diff(times[inside]).max()) * 1000, 1) if len(inside) > 1 else None,
        "errors": errors,
        "turns_ended": len(finals),
    }


async def _drive(client: RtcClient, mode: str, speech: np.ndarray, offset: int) -> None:
    if mode == "listening":
        client.say(np.roll(speech, -offset))  # each user at another point of the sentence
        while True:
            if client.voice.buffered_samples < 4 * 48_000:
                client.say(speech)
            await asyncio.sleep(0.5)
    elif mode == "speaking":
        asked_at = -1e9
        loop = asyncio.get_running_loop()
        while True:
            states = client.messages("state")
            if (not states or states[-1]["state"] == "listening") and loop.time() - asked_at > 3.0:
                client.channel.send(json.dumps({"type": "say", "text": QUESTION}))
                asked_at = loop.time()
            await asyncio.sleep(0.2)


async def _clients(
    conn: Connection, url: str, count: int, first: int, total: int, mode: str, wav: str
) -> None:
    loop = asyncio.get_running_loop()

    async def receive() -> Any:
        return await loop.run_in_executor(None, conn.recv)

    clients = [RtcClient(url) for _ in range(count)]
    tasks: list[asyncio.Task[None]] = []
    try:
        await asyncio.gather(*(c.connect() for c in clients))
        await asyncio.gather(*(c.wait_for(lambda m: m["type"] == "session", 30) for c in clients))
        conn.send(("connected",))
        await receive()  # start
        speech = read_wav(Path(wav))[0]
        tasks = [
            asyncio.create_task(_drive(c, mode, speech, (first + i) * len(speech) // max(total, 1)))
            for i, c in enumerate(clients)
        ]
        if mode == "speaking":  # every bot talking
            await asyncio.gather(*(c.wait_for(lambda m: m.get("state") == "speaking", 300) for c in clients))
        conn.send(("active",))
        _, t0, t1 = await receive()  # stop, with the window
        conn.send(("done", [_window_stats(c, t0, t1) for c in clients]))
    except Exception as exc:  # the parent must hear of it, not wait forever
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def client_process(
    conn: Connection, url: str, count: int, first: int, total: int, mode: str, wav: str
) -> None:
    """A process of ``count`` aiortc clients; told what to do over ``conn``."""
    asyncio.run(_clients(conn, url, count, first, total, mode, wav))


class ClientGroup:
    """N clients split over a few processes, started and stepped together."""

    def __init__(self, url: str, n: int, procs: int, mode: str, wav: Path) -> None:
        context = multiprocessing.get_context("spawn")
        shares = [n // procs + (i < n % procs) for i in range(procs)]
        self.workers: list[tuple[Any, Connection]] = []
        first = 0
        for share in (s for s in shares if s):
            parent, child = context.Pipe()
            proc = context.Process(
                target=client_process, args=(child, url, share, first, n, mode, str(wav)), daemon=True
            )
            proc.start()
            self.workers.append((proc, parent))
            first += share

    def pids(self) -> list[int]:
        return [proc.pid for proc, _ in self.workers]

    def expect(self, what: str, timeout_s: float) -> list[Any]:
        answers = []
        for _, conn in self.workers:
            if not conn.poll(timeout_s):
                raise TimeoutError(f"clients not {what} in {timeout_s:g} s")
            answer = conn.recv()
            if answer[0] != what:
                raise RuntimeError(f"clients: {answer}")
            answers.append(answer)
        return answers

    def send(self, message: tuple[Any, ...]) -> None:
        for _, conn in self.workers:
            conn.send(message)

    def close(self) -> None:
        for proc, _ in self.workers:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.kill()
                proc.join()


# --- one measurement ---------------------------------------------------------------------------------


def _backend_requests(peer: ServerProcess) -> dict[str, int]:
    stages = peer.get_json("/healthz")["backends"]
    return {stage: sum(b["requests"] for b in chain["backends"]) for stage, chain in stages.items()}


def measure(
    inference: RemoteInference, mode: str, n: int, args: argparse.Namespace, wav: Path, log: Path
) -> dict[str, Any]:
    """One fresh peer, ``n`` calls in ``mode``, one window."""
    flags = ["--max-sessions", str(n + 1), "--offers-per-minute", "0", "--drain", "0", *SPEAKING_FLAGS]
    with ServerProcess(*flags, *inference.flags(), log_path=log) as peer:
        assert peer.proc is not None
        group = ClientGroup(peer.url, n, args.client_procs, mode, wav) if n else None
        try:
            if group:
                group.expect("connected", 60)
                group.send(("start",))
                group.expect("active", 60 + 20 * n if mode == "speaking" else 30)
            time.sleep(args.settle)
            watched = {"peer": peer.proc.pid} | inference.pids()
            clients = group.pids() if group else []

            def snapshot() -> dict[str, Any]:
                return {
                    "t": time.monotonic(),
                    "cpu": {name: tree_cpu_s(pid) for name, pid in watched.items()},
                    "clients_cpu": sum(tree_cpu_s(pid) for pid in clients),
                    "machine": machine_jiffies(),
                    "media": scrape_media_health(peer),
                    "requests": _backend_requests(peer),
                }

            spy = _start_py_spy(args, peer.proc.pid, log.with_suffix(".stacks")) if args.py_spy else None
            before = snapshot()
            time.sleep(args.window)
            after = snapshot()
            profile = _profile(spy, log.with_suffix(".stacks")) if spy else None
            seen: list[dict[str, Any]] = []
            if group:
                group.send(("stop", before["t"], after["t"]))
                seen = [s for answer in group.expect("done", 30) for s in answer[1]]
        finally:
            if group:
                group.close()
        load = Path("/proc/loadavg").read_text().split()[:3]
    wall = after["t"] - before["t"]
    busy, niced, total = (a - b for a, b in zip(after["machine"], before["machine"], strict=True))
    pct = {name: round(100 * (after["cpu"][name] - before["cpu"][name]) / wall, 1) for name in before["cpu"]}
    m0, m1 = before["media"], after["media"]
    return {
        "mode": mode,
        "calls": n,
        "window_s": round(wall, 2),
        "peer_cpu_pct": pct.pop("peer"),
        "inference_cpu_pct": pct,
        "clients_cpu_pct": round(100 * (after["clients_cpu"] - before["clients_cpu"]) / wall, 1),
        "machine_busy_pct": round(100 * busy / total, 1) if total else None,
        "machine_niced_pct": round(100 * niced / total, 1) if total else None,
        "loadavg": load,
        "loop_lag_p50_ms": m1["loop_lag_p50_ms"],
        "loop_lag_p99_ms": m1["loop_lag_p99_ms"],
        "loop_lag_max_ms": m1["loop_lag_max_ms"],
        "outbound_frames": m1["outbound_frames_total"] - m0["outbound_frames_total"],
        "outbound_gaps": m1["outbound_gaps_total"] - m0["outbound_gaps_total"],
        "outbound_gaps_before_window": m0["outbound_gaps_total"],
        "backend_requests": {k: after["requests"][k] - before["requests"][k] for k in after["requests"]},
        "bot_speaking_share": round(sum(s["speaking_s"] for s in seen) / (wall * n), 2) if n else None,
        "client_frames_per_s": round(sum(s["frames"] for s in seen) / (wall * n), 1) if n else None,
        "client_max_interval_ms": max((s["max_interval_ms"] or 0 for s in seen), default=None),
        "turns_ended": sum(s["turns_ended"] for s in seen),
        "errors": [e for s in seen for e in s["errors"]],
    } | ({"profile": profile} if profile else {})


# --- where the peer's time goes (py-spy) ---------------------------------------------------------


def _start_py_spy(args: argparse.Namespace, pid: int, out: Path) -> Any:
    """``py-spy record`` of the peer over the window, as collapsed stacks (py-spy is not a dependency
    of the project: install it in a venv of its own and pass its path)."""
    import subprocess

    cmd = [args.py_spy, "record", "--pid", str(pid), "--duration", str(round(args.window)), "--rate", "200"]
    # Non-blocking: the peer is never paused. (--native would pause it, and counts threads waiting on
    # a lock as busy.)
    cmd += ["--format", "raw", "--output", str(out), "--threads", "--nonblocking"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _frame_name(frame: str) -> str:
    """``function (path/to/module.py:123)`` -> ``function (module path from site-packages or the repo)``."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", f"{ROOT}/", "lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            path = path.split("/", 1)[1] if marker == "lib/python3." else path
            break
    return f"{name} ({path})"


PARTS = (
    ("end-of-turn model (Smart Turn)", "voicepeer/audio/endofturn.py"),
    ("Silero VAD", "SileroVAD"),
    ("echo cancellers (AEC3, Speex)", "voicepeer/audio/echo.py"),
    ("front-end (noise suppression, echo path)", "voicepeer/audio/"),
    ("resampling (PyAV)", "Resampler"),
    ("Opus (aiortc codecs)", "aiortc/codecs/"),
    ("SRTP", "pylibsrtp"),
    ("aiortc RTP, DTLS, SCTP", "aiortc/"),
    ("voicepeer call and transport", "voicepeer/"),
    ("thread-pool hand-offs", "concurrent/futures/"),
    ("thread wake-ups (threading)", "threading.py"),
    ("event loop (asyncio, epoll)", "asyncio/"),
    ("event loop (asyncio, epoll)", "selectors.py"),
)
"""Parts of the media path a sample is charged to: the innermost frame that matches one, in order."""


def _part(frames: list[str]) -> str:
    for frame in reversed(frames):
        for part, key in PARTS:
            if key in frame:
                return part
    return "other"


def _profile(spy: Any, stacks: Path, top: int = 25) -> dict[str, Any]:
    """The functions the peer spent its samples in: by own time (the innermost frame) and inclusive."""
    spy.wait(timeout=60)
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    threads: dict[str, int] = {}
    parts: dict[str, int] = {}
    total = 0
    for line in stacks.read_text().splitlines() if stacks.exists() else []:
        stack, _, count = line.rpartition(" ")
        thread, *stack_frames = stack.split(";")  # --threads: "thread (tid): name" comes first
        frames = [_frame_name(f) for f in stack_frames if f]
        if not frames:
            continue
        n = int(count)
        total += n
        name = thread.partition(": ")[2].rstrip("0123456789").rstrip("_") or thread
        threads[name] = threads.get(name, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        part = _part(frames)
        parts[part] = parts.get(part, 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n

    def share(table: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [(name, round(100 * n / total, 1)) for name, n in ranked]

    return {
        "samples": total,
        "parts": share(parts),
        "threads": share(threads),
        "own": share(own),
        "inclusive": share(inclusive),
    }


# --- the report -------------------------------------------------------------------------------------


SATURATED_PCT = 99.0
"""Machine busy share (both cores) from which a level counts as saturated: the peer then gets only
what the clients, the inference servers and everything else on the machine leave it, so its CPU use
no longer grows with the calls and its late frames are not of its own making."""


def slope(points: list[tuple[int, float]]) -> tuple[float, float] | None:
    """Least-squares (slope, intercept) of CPU % over calls."""
    if len({n for n, _ in points}) < 2:
        return None
    a, b = np.polyfit([n for n, _ in points], [c for _, c in points], 1)
    return round(float(a), 2), round(float(b), 1)


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def summarize_mode(mode: str, rows: list[dict[str, Any]], baseline: float | None) -> dict[str, Any]:
    """Medians per level; the CPU per call as the slope over the levels before the machine saturated
    (at least the two lowest); the calls carried within the lag budget with no late frames."""
    levels = sorted({r["calls"] for r in rows})
    table = []
    for n in levels:
        runs = [r for r in rows if r["calls"] == n]
        peer = median([r["peer_cpu_pct"] for r in runs])
        table.append(
            {
                "calls": n,
                "runs": len(runs),
                "peer_cpu_pct": peer,
                "peer_cpu_pct_runs": [r["peer_cpu_pct"] for r in runs],
                "per_call_pct": round((peer - (baseline or 0)) / n, 2) if peer is not None else None,
                "loop_lag_p99_ms": median([r["loop_lag_p99_ms"] for r in runs]),
                "loop_lag_p99_ms_runs": [r["loop_lag_p99_ms"] for r in runs],
                "loop_lag_max_ms": median([r["loop_lag_max_ms"] for r in runs]),
                "outbound_gaps": median([r["outbound_gaps"] for r in runs]),
                "outbound_gaps_runs": [r["outbound_gaps"] for r in runs],
                "clients_cpu_pct": median([r["clients_cpu_pct"] for r in runs]),
                "inference_cpu_pct": median([sum(r["inference_cpu_pct"].values()) for r in runs]),
                "machine_busy_pct": median([r["machine_busy_pct"] for r in runs]),
                "bot_speaking_share": median([r["bot_speaking_share"] for r in runs]),
                "client_frames_per_s": median([r["client_frames_per_s"] for r in runs]),
                "turns_ended": sum(r["turns_ended"] for r in runs),
                "errors": sorted({e for r in runs for e in r["errors"]}),
            }
        )
    unsaturated = [row["calls"] for row in table if (row["machine_busy_pct"] or 0) < SATURATED_PCT]
    fitted = unsaturated if len(unsaturated) >= 2 else levels[:2]
    fit = slope([(r["calls"], r["peer_cpu_pct"]) for r in rows if r["calls"] in fitted])
    carried = [
        row["calls"]
        for row in table
        if row["loop_lag_p99_ms"] is not None
        and row["loop_lag_p99_ms"] <= LAG_BUDGET_MS
        and row["outbound_gaps"] == 0
    ]
    largest = max(carried, default=0)
    failed = [row for row in table if row["calls"] not in carried]
    first_failure = min(failed, key=lambda row: row["calls"]) if failed else None
    if first_failure is None:
        limit = (
            f"not reached: every level up to {levels[-1]} kept lag p99 <= {LAG_BUDGET_MS:g} ms with no late "
            f"frames (machine {table[-1]['machine_busy_pct']}% busy, clients {table[-1]['clients_cpu_pct']}% "
            "of a core)"
        )
    else:
        row = first_failure
        why = (
            "saturated by the clients, the inference servers and the rest of the machine"
            if (row["machine_busy_pct"] or 0) >= SATURATED_PCT
            else "not saturated, but shared with other processes at the loop's priority"
        )
        limit = (
            f"{row['calls']} calls missed it (lag p99 {row['loop_lag_p99_ms']} ms, "
            f"{row['outbound_gaps']} late frames in the window, peer {row['peer_cpu_pct']}% of a core, "
            f"machine {row['machine_busy_pct']}% busy: {why})"
        )
    per_call = fit[0] if fit else None
    at_largest = next((row for row in table if row["calls"] == largest), None)
    return {
        "mode": mode,
        "cpu_per_call_pct": per_call,
        "cpu_intercept_pct": fit[1] if fit else None,
        "fitted_levels": fitted,
        "calls_per_core_by_cpu": round(100 / per_call, 1) if per_call and per_call > 0 else None,
        "largest_carried": largest,
        "peer_cpu_pct_at_largest": at_largest["peer_cpu_pct"] if at_largest else None,
        "limit": limit,
        "levels": table,
    }


META = ("runs", "window_s", "client_procs", "llm", "loadavg_before", "loadavg_after", "minutes")
"""What a result says of its run, kept when it is summarized again."""


def report(rows: list[dict[str, Any]], modes: list[str], meta: dict[str, Any], out: Path) -> None:
    """Writes the JSON (summary and every window) and prints the summary and the one-line result."""
    baseline = median([r["peer_cpu_pct"] for r in rows if r["calls"] == 0])
    summaries = [
        summarize_mode(mode, [r for r in rows if r["mode"] == mode and r["calls"] > 0], baseline)
        for mode in modes
    ]
    cores = os.cpu_count() or 1
    document = {
        "benchmark": "media",
        "cores": cores,
        **meta,
        "lag_budget_ms": LAG_BUDGET_MS,
        "saturated_pct": SATURATED_PCT,
        "goal_calls_per_core": GOAL_CALLS_PER_CORE,
        "peer_cpu_pct_no_calls": baseline,
        "modes": summaries,
        "details": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2))
    print(json.dumps({k: v for k, v in document.items() if k != "details"}, indent=2))
    parts = "; ".join(
        f"{s['mode']}: {s['cpu_per_call_pct']}% of a core per call over {s['fitted_levels']} calls "
        f"({s['calls_per_core_by_cpu']} per core by CPU), {s['largest_carried']} carried within "
        f"{LAG_BUDGET_MS:g} ms lag p99 and no late frames"
        for s in summaries
    )
    print(
        f"media path, inference in other processes ({cores} cores): {parts}; goal {GOAL_CALLS_PER_CORE}/core"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,2,4,8")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--window", type=float, default=12.0, help="seconds measured per level")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between setup and the window")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--llm", choices=("scripted", "llama"), default="scripted", help="the LLM server")
    parser.add_argument("--py-spy", help="path of a py-spy binary: profile the peer in every window")
    parser.add_argument("--summarize", type=Path, help="summarize the windows of an earlier result again")
    parser.add_argument("--scripted-llm", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("bench/results/media.json"))
    args = parser.parse_args(argv)
    if args.scripted_llm:
        serve_scripted_llm(args.scripted_llm)
        return 0
    levels = [int(x) for x in args.levels.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    if args.summarize:
        earlier = json.loads(args.summarize.read_text())
        meta = {k: v for k, v in earlier.items() if k in META}
        report(earlier["details"], [m["mode"] for m in earlier["modes"]], meta, args.out)
        return 0

    work = Path(tempfile.mkdtemp(prefix="voicepeer-bench-media-"))
    wav = speak(RUN_ON, work / "run-on.wav", lead_s=0.0, tail_s=0.0).path
    rows: list[dict[str, Any]] = []
    loadavg_before = Path("/proc/loadavg").read_text().split()[:3]
    started = time.monotonic()
    with remote_inference(work, args.llm) as inference:
        for r in range(args.runs):
            points = [("idle", 0)] + [(mode, n) for mode in modes for n in levels]
            for mode, n in points:
                row = measure(inference, mode, n, args, wav, work / f"peer-{mode}-{n}-{r}.log") | {"run": r}
                rows.append(row)
                print(
                    f"  run {r} {mode} {n}: peer {row['peer_cpu_pct']}% lag p99 {row['loop_lag_p99_ms']} ms "
                    f"gaps {row['outbound_gaps']} clients {row['clients_cpu_pct']}% inference "
                    f"{sum(row['inference_cpu_pct'].values()):.1f}% machine {row['machine_busy_pct']}% "
                    f"speaking {row['bot_speaking_share']} turns {row['turns_ended']} errors {row['errors']}",
                    file=sys.stderr,
                )
    meta = {
        "runs": args.runs,
        "window_s": args.window,
        "client_procs": args.client_procs,
        "llm": args.llm,
        "loadavg_before": loadavg_before,
        "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
        "minutes": round((time.monotonic() - started) / 60, 1),
    }
    report(rows, modes, meta, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
