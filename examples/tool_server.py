"""A tool for the voice, served by your own application: ``get_weather`` as a signed webhook.

voicepeer runs a tool by posting ``{"call": ID, "tool": NAME, "arguments": {...}}`` to its webhook and
giving the JSON answer to the model. Each request is signed with the secret both sides share
(``--webhook-secret``), so this app checks the signature first and refuses anything else.

    .venv/bin/python examples/tool_server.py --port 8090 --secret s3cret --declare tools.json
    .venv/bin/python -m voicepeer serve --tools tools.json --webhook-secret s3cret

``--declare`` writes the tool's declaration for ``--tools``. Then ask "What is the weather in Paris?".
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from voicepeer import verify_webhook

FORECASTS = {
    "paris": {"forecast": "sunny", "temperature_celsius": 24},
    "london": {"forecast": "light rain", "temperature_celsius": 14},
}
"""What the weather service knows; any other city is cloudy."""

PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "the city, in English"}},
    "required": ["city"],
}


def declaration(url: str) -> list[dict]:
    """The tool as ``--tools`` takes it: OpenAI's declaration and where it runs."""
    function = {"name": "get_weather", "description": "The weather now in a city", "parameters": PARAMETERS}
    return [{"type": "function", "function": function, "webhook": f"{url}/tools/weather"}]


def make_app(secret: str) -> web.Application:
    async def weather(request: web.Request) -> web.Response:
        body = await request.read()
        timestamp = request.headers.get("X-Voicepeer-Timestamp", "")
        signature = request.headers.get("X-Voicepeer-Signature", "")
        if not verify_webhook(secret, body, timestamp, signature):
            return web.json_response({"error": "not signed by our voicepeer"}, status=401)
        arguments = json.loads(body)["arguments"]
        city = str(arguments.get("city", "")).strip().lower()
        return web.json_response(FORECASTS.get(city, {"forecast": "cloudy", "temperature_celsius": 18}))

    app = web.Application(client_max_size=64 * 1024)
    app.router.add_post("/tools/weather", weather)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a weather tool for voicepeer, as a signed webhook")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--secret", required=True, help="the server's --webhook-secret")
    parser.add_argument("--declare", type=Path, help="write the declaration for --tools to this file")
    args = parser.parse_args(argv)
    if args.declare:
        args.declare.write_text(json.dumps(declaration(f"http://{args.host}:{args.port}"), indent=2))
    web.run_app(make_app(args.secret), host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
