"""voicepeer as a library, with the application's logic in process: a tool as a Python function, a
per-turn hook, and a greeting, served with voicepeer's own models and WebRTC.

    .venv/bin/python examples/weather_voice.py --port 8080

Then open http://127.0.0.1:8080/ and ask "What is the weather in Paris?" or "Where is my order?".
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from voicepeer import Config, HookRequest, Tool, ToolContext, create_app, load_services, serve

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


async def get_weather(arguments: dict[str, Any], call: ToolContext) -> dict[str, Any]:
    """The weather now in a city."""
    # Your application's code: a database, an API. Here, one answer for every city.
    return {"city": arguments["city"], "forecast": "sunny", "temperature_celsius": 24}


async def hook(request: HookRequest) -> dict[str, str] | None:
    """Sees each final user turn first: answers it itself, or lets the model answer (None)."""
    if "order" in request.transcript.lower():
        return {"say": "Your order left the warehouse this morning."}
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="voicepeer with a weather tool and a hook")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    config = Config().with_options(
        {
            "server.port": args.port,
            "app.greeting": "Hello! Ask me about the weather.",
            "app.tool_choice": "required",  # a weather line: what the hook leaves is about the weather
        }
    )
    app = create_app(config, services=load_services(config), tools=[Tool.of(get_weather, WEATHER)], hook=hook)
    print(f"serving http://{config.server.host}:{config.server.port}/", flush=True)
    return asyncio.run(serve(app, config.server.host, config.server.port, config.server.drain_s))


if __name__ == "__main__":
    sys.exit(main())
