"""Drive a voicepeer call from your own code, with no WebRTC: a typed question in, the spoken answer out
as a WAV file.

A ``Call`` takes microphone PCM (``hear``) and control commands (``control``), sends its events to
subscribers (``events.subscribe``), and hands out the bot's voice one 20 ms frame of 48 kHz at a time
(``playout.next_frame``). Here the question is typed (a ``say`` command, answered as if it had been
spoken) and the frames are pulled in real time, as a WebRTC track would pull them, into a WAV file.

    .venv/bin/python examples/typed_call.py "What is the capital of France?" answer.wav
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import wave
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from voicepeer.audio.formats import WEBRTC_FRAME_SAMPLES, WEBRTC_RATE
from voicepeer.call.call import Call
from voicepeer.call.services import Services, load_services
from voicepeer.config import Config

FRAME_S = WEBRTC_FRAME_SAMPLES / WEBRTC_RATE


async def converse(
    services: Services, config: Config, text: str, wav_path: Path, timeout_s: float = 60.0
) -> list[dict[str, Any]]:
    """Asks ``text`` in a new call and writes the bot's voice to ``wav_path`` (48 kHz mono) until the
    reply has been played. Returns the call's events."""
    call = Call(services, config, voice=True, client_aec=True)  # client_aec: no echo comes back
    received: list[dict[str, Any]] = []
    played = asyncio.Event()

    def on_event(event: dict[str, Any]) -> None:
        received.append(event)
        # A turn's metrics come once its reply has been played (or has failed).
        if event["type"] == "metrics":
            played.set()

    call.events.subscribe(on_event)
    call.start()
    call.control({"type": "say", "text": text})
    loop = asyncio.get_running_loop()
    with wave.open(str(wav_path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(WEBRTC_RATE)
        try:
            async with asyncio.timeout(timeout_s):
                start = loop.time()
                n = 0
                while not played.is_set():
                    n += 1
                    await asyncio.sleep(max(0.0, start + n * FRAME_S - loop.time()))
                    wav.writeframes(call.playout.next_frame(loop.time()).tobytes())
        finally:
            await call.close()
    return received


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a typed question, the spoken answer as a WAV file")
    parser.add_argument("text")
    parser.add_argument("wav", type=Path)
    args = parser.parse_args(argv)
    config = Config()
    services = load_services(config)  # every model, as the server loads them: a few seconds
    for event in asyncio.run(converse(services, config, args.text, args.wav)):
        print(json.dumps(event))
    return 0


if __name__ == "__main__":
    sys.exit(main())
