"""Your application steering a call: it follows the call's events stream and answers with control
commands, with no code in voicepeer's process.

The browser opens the call (``POST /offer``) and hands your backend the ``events_url`` and
``control_url`` of the answer (or your backend opens it). This backend tells the call who the customer
is (``config``: a variable for the system prompt), has the bot greet them by name (``speak``), and ends
the call politely (``hangup``) when the customer says goodbye.

    .venv/bin/python examples/app_backend.py http://127.0.0.1:8080 "$EVENTS_URL" "$CONTROL_URL" --name Ada
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

import aiohttp

PROMPT = "You are the voice of a bicycle shop. The customer is {name}. Answer in one short sentence."
FAREWELLS = ("bye", "goodbye", "that's all")


async def steer(server: str, events_url: str, control_url: str, name: str) -> list[dict[str, Any]]:
    """Steers one call until it ends; returns the events it saw."""
    seen: list[dict[str, Any]] = []
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    async with aiohttp.ClientSession(server, timeout=timeout) as http:

        async def send(command: dict[str, Any]) -> None:
            async with http.post(control_url, json=command) as answer:
                if answer.status != 200:
                    raise RuntimeError(f"{command['type']} refused: {await answer.text()}")

        await send({"type": "config", "system_prompt": PROMPT, "context": {"name": name}})
        await send({"type": "speak", "text": f"Hello {name}! Your new bicycle has shipped."})
        async with http.get(events_url) as stream:
            async for line in stream.content:  # server-sent events, one JSON object per data line
                if not line.startswith(b"data:"):
                    continue
                event = json.loads(line[5:])
                seen.append(event)
                if event["type"] == "transcript" and event["final"]:
                    if any(word in event["text"].lower() for word in FAREWELLS):
                        await send({"type": "hangup", "text": f"Goodbye, {name}!"})
                if event["type"] == "bye":
                    break
    return seen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="follow a voicepeer call and steer it")
    parser.add_argument("server", help="the voicepeer server's URL")
    parser.add_argument("events_url", help="the call's events_url, from the answer to its offer")
    parser.add_argument("control_url", help="the call's control_url")
    parser.add_argument("--name", default="Ada", help="the customer's name")
    args = parser.parse_args(argv)
    for event in asyncio.run(steer(args.server, args.events_url, args.control_url, args.name)):
        print(json.dumps(event))
    return 0


if __name__ == "__main__":
    sys.exit(main())
