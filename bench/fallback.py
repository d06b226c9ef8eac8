"""What a fallback costs: a turn answered while its ASR server is up, just killed, or hung.

A real peer (``voicepeer serve --asr wyoming://...,embedded``, wyoming-faster-whisper from
``.servers/``) and a real aiortc client on loopback. Per round the client asks a question three times:
with the Wyoming server up; right after it was killed (connection refused: the turn goes to the
embedded model at once); and with it paused (SIGSTOP: it accepts and never answers, so the turn waits
``--asr-timeout`` before the fallback). Between rounds the server comes back and the chain's probe moves
the stage back to it. Per case: the server's first reply frame after the end of the user's speech
(``first_frame_sent_ms``) and the transcript's time (``transcript_ms``), from the turn's own metrics,
and the time from the server's death to the ``backend`` event.

    python -m bench.fallback [--rounds 5] [--asr-timeout 4]

Prints one JSON document, then a one-line summary (medians over the rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.rtc_client import RtcClient
from tests.support.server import ServerProcess
from tests.support.speech import SpeechFile, read_wav, speak
from tests.support.wyoming_servers import wyoming_asr_server

QUESTION = "What is the weather like in London today?"


async def turn(client: RtcClient, question: SpeechFile, after: int) -> dict[str, Any]:
    client.say(read_wav(question.path)[0])
    _, metrics = await client.wait_for(lambda m: m["type"] == "metrics" and m["turn"] > after, 90)
    return metrics


async def wait_active(peer: ServerProcess, name: str, timeout_s: float = 30.0) -> None:
    """Waits (without holding the client's loop: its call must go on) for the stage to use ``name``."""
    deadline = time.monotonic() + timeout_s
    while (await asyncio.to_thread(peer.get_json, "/healthz"))["backends"]["asr"]["active"] != name:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the ASR stage did not come back to {name}")
        await asyncio.sleep(0.1)


async def rounds(peer: ServerProcess, asr, question: SpeechFile, n: int) -> list[dict[str, Any]]:
    name = f"wyoming://127.0.0.1:{asr.port}"
    client = RtcClient(peer.url)
    results = []
    try:
        await client.connect()
        await client.wait_for(lambda m: m["type"] == "session", 10)
        last = 0
        for _ in range(n):
            await wait_active(peer, name)
            row: dict[str, Any] = {}
            up = await turn(client, question, last)
            last = up["turn"]
            row["up"] = up
            seen = len(client.messages("backend"))
            died = asyncio.get_running_loop().time()
            asr.kill()
            killed = await turn(client, question, last)
            last = killed["turn"]
            moved_at = [t for t, m in client.events if m["type"] == "backend"][seen]
            row["killed"] = {**killed, "switch_after_death_ms": round((moved_at - died) * 1000)}
            await asyncio.to_thread(asr.start)
            await wait_active(peer, name)
            asr.pause()
            try:
                row["hung"] = await turn(client, question, last)
                last = row["hung"]["turn"]
            finally:
                asr.resume()
            results.append(row)
    finally:
        await client.close()
    return results


def median(rows: list[dict[str, Any]], case: str, key: str) -> float | None:
    values = [r[case][key] for r in rows if r[case].get(key) is not None]
    return round(statistics.median(values)) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--asr-timeout", type=float, default=4.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="voicepeer-bench-fallback-") as tmp:
        work = Path(tmp)
        question = speak(QUESTION, work / "q.wav", rate=48_000, lead_s=0.5, tail_s=2.5)
        asr = wyoming_asr_server(work)
        try:
            peer_args = (
                "--asr", f"wyoming://127.0.0.1:{asr.port},embedded",
                "--asr-timeout", str(args.asr_timeout), "--probe-interval", "1",
            )  # fmt: skip
            with ServerProcess(*peer_args, log_path=work / "server.log") as peer:
                rows = asyncio.run(rounds(peer, asr, question, args.rounds))
        finally:
            asr.stop()
    summary = {
        case: {key: median(rows, case, key) for key in ("transcript_ms", "first_frame_sent_ms")}
        for case in ("up", "killed", "hung")
    }
    summary["killed"]["switch_after_death_ms"] = median(rows, "killed", "switch_after_death_ms")
    print(
        json.dumps(
            {"benchmark": "fallback", "asr_timeout_s": args.asr_timeout, "rounds": rows, "summary": summary}
        )
    )
    print(
        "fallback: first frame p50 "
        + ", ".join(f"{case} {summary[case]['first_frame_sent_ms']} ms" for case in ("up", "killed", "hung"))
        + f" (transcript {summary['up']['transcript_ms']}/{summary['killed']['transcript_ms']}/"
        f"{summary['hung']['transcript_ms']} ms; asr timeout {args.asr_timeout:g} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
