"""What a tool call adds to a reply: typed weather questions answered with and without a tool.

Each question is typed (``say``) into a new call in this process, whose voice is pulled in real time as
a WebRTC track would pull it; the turn's own metrics give the time from the question to the first
token of the answer's words (``llm_first_token_ms``) and to its first frame of voice
(``first_frame_sent_ms``). Rows:

- ``embedded``: the bundled SmolLM2 in process, no tools;
- ``embedded+callable``: the same with ``get_weather`` as a Python function (no I/O), the model left
  to decide (``auto``): its decision, its arguments, the second round (SmolLM2 asks again, so a third,
  told to answer);
- ``embedded+webhook``: ``get_weather`` served by ``examples/tool_server.py`` on loopback (signed POST),
  ``--tool-choice required``;
- ``server`` and ``server+webhook``: llama-cpp-python's server (``chatml-function-calling``, the same
  GGUF) over HTTP, without and with the webhook tool (``required``, ``?tool_results=user``).

The filler is off, so the first frame is the answer's. Medians and p95 over ``--repeat`` passes of the
questions; prints one JSON document, then a one-line summary.

    python -m bench.tools [--repeat 2] [--rows embedded,embedded+callable,...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.support.llm_server import llama_cpp_server
from tests.support.tool_app import SECRET, tool_server
from tests.support.typed import ask, final_reply
from voicepeer.backends.openai.chat import OpenAICompatibleLLM
from voicepeer.call.logic import Logic
from voicepeer.call.services import Services, load_services
from voicepeer.call.tools import Tool, load_tools
from voicepeer.call.webhook import Webhooks
from voicepeer.config import Config

CITIES = ("Paris", "London", "Berlin", "Madrid", "Rome", "Oslo")
ROWS = ("embedded", "embedded+callable", "embedded+webhook", "server", "server+webhook")
PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


async def get_weather(arguments: dict[str, Any], _call: Any) -> dict[str, Any]:
    """The weather now in a city."""
    return {"forecast": "sunny", "temperature_celsius": 24}


async def turn(services: Services, logic: Logic, question: str) -> dict[str, Any]:
    """One typed question in a new call; its metrics and what the tools did."""
    seen = await ask(services, question, logic)
    metrics = next(e for e in seen if e["type"] == "metrics")
    return {
        "question": question,
        "first_token_ms": metrics.get("llm_first_token_ms"),
        "first_frame_ms": metrics.get("first_frame_sent_ms"),
        "tool_calls": sum(e["type"] == "tool_call" for e in seen),
        "tool_ms": [e["ms"] for e in seen if e["type"] == "tool_result"],
        "errors": [e["code"] for e in seen if e["type"] == "error"],
        "reply": final_reply(seen),
    }


def summary(turns: list[dict[str, Any]]) -> dict[str, Any]:
    def stats(key: str) -> dict[str, float | None]:
        values = sorted(t[key] for t in turns if t[key] is not None)
        if not values:
            return {"p50": None, "p95": None}
        return {
            "p50": round(statistics.median(values), 1),
            "p95": round(values[round(0.95 * (len(values) - 1))], 1),
        }

    return {
        "turns": len(turns),
        "first_token_ms": stats("first_token_ms"),
        "first_frame_ms": stats("first_frame_ms"),
        "tool_calls_per_turn": round(sum(t["tool_calls"] for t in turns) / max(1, len(turns)), 2),
        "tool_ms_p50": round(statistics.median([m for t in turns for m in t["tool_ms"]]), 1)
        if any(t["tool_ms"] for t in turns)
        else None,
        "errors": sum(len(t["errors"]) for t in turns),
    }


async def run_row(services: Services, logic: Logic, repeat: int) -> dict[str, Any]:
    turns = []
    for _ in range(repeat):
        for city in CITIES:
            turns.append(await turn(services, logic, f"What is the weather in {city}?"))
    return {"summary": summary(turns), "turns": turns}


async def main_async(rows: list[str], repeat: int) -> dict[str, Any]:
    config = Config()
    embedded = load_services(config)
    results: dict[str, Any] = {}
    work = Path(tempfile.mkdtemp(prefix="bench-tools-"))
    callable_tool = Tool.of(get_weather, PARAMETERS)
    off = {"tool_filler": ""}
    required: dict[str, Any] = {"tool_choice": "required"}
    with (
        tool_server(work) as (_url, tools_file),
        llama_cpp_server(work / "llm.log", chat_format="chatml-function-calling") as llm_url,
    ):
        webhooks = Webhooks(SECRET)
        webhook_tools = load_tools(str(tools_file))
        server = OpenAICompatibleLLM(f"{llm_url}?tool_results=user")
        over_http = Services(asr=embedded.asr, llm=server, tts=embedded.tts)
        logics = {
            "embedded": (embedded, Logic(**off)),
            "embedded+callable": (embedded, Logic(tools=(callable_tool,), **off)),
            "embedded+webhook": (embedded, Logic(tools=webhook_tools, webhooks=webhooks, **required, **off)),
            "server": (over_http, Logic(**off)),
            "server+webhook": (over_http, Logic(tools=webhook_tools, webhooks=webhooks, **required, **off)),
        }
        try:
            for row in rows:
                services, logic = logics[row]
                await turn(services, logic, "What is the weather in Lisbon?")  # warm: caches, connections
                results[row] = await run_row(services, logic, repeat)
                print(row, json.dumps(results[row]["summary"]), file=sys.stderr, flush=True)
        finally:
            await webhooks.aclose()
            await server.aclose()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--rows", default=",".join(ROWS))
    args = parser.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    results = asyncio.run(main_async(rows, args.repeat))
    print(json.dumps(results, indent=1))
    line = "; ".join(
        f"{row}: first frame p50 {r['summary']['first_frame_ms']['p50']} ms, "
        f"{r['summary']['tool_calls_per_turn']} tool calls/turn"
        for row, r in results.items()
    )
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
