"""Tools with real language models: the bundled SmolLM2 in process (``toolprompt``'s ChatML format), and
llama-cpp-python's own server in ``chatml-function-calling`` mode, whose streamed requests with tools
answer 200 with no events, whose legacy function names end in a colon, and whose template drops ``tool``
messages (hence ``?tool_results=user``). Each asks "What is the weather in Paris?" in a text call and
the reply must carry what the tool returned.

SmolLM2-135M calls a tool for nearly anything when given one, and asks again with the result in front
of it; the loop makes it answer after one repeat. What it then says is checked for the tool's words
("sunny", "24"), which it copies in every run here (greedy decoding at temperature 0.3 on a 135M model:
the words of a short JSON result are the likeliest continuation by a wide margin)."""

from __future__ import annotations

import pytest

from tests.support.llm_server import llama_cpp_server
from tests.support.typed import ask, final_reply
from voicepeer.backends.llm import History, ToolCall
from voicepeer.backends.openai.chat import OpenAICompatibleLLM
from voicepeer.call.logic import Logic
from voicepeer.call.services import Services
from voicepeer.call.text import words
from voicepeer.call.tools import Tool

pytestmark = pytest.mark.slow

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOL_SPEC = [
    Tool(
        name="get_weather",
        description="The weather now in a city",
        parameters=WEATHER,
        webhook="http://unused/",
    ).spec()
]


async def get_weather(arguments, _call):
    CALLS.append(arguments)
    return {"forecast": "sunny", "temperature_celsius": 24}


CALLS: list[dict] = []
LOGIC = Logic(tools=(Tool.of(get_weather, WEATHER, description="The weather now in a city"),))


async def ask_weather(services: Services, question: str) -> tuple[list[dict], list[dict]]:
    """The question typed into a call with the weather tool: (the events, the tool's calls)."""
    CALLS.clear()
    seen = await ask(services, question, LOGIC)
    return seen, list(CALLS)


async def test_the_embedded_model_calls_a_tool_and_speaks_its_result(services):
    seen, calls = await ask_weather(services, "What is the weather in Paris?")
    assert calls and calls[0]["city"].lower() == "paris", seen
    heard = set(words(final_reply(seen)))
    assert {"sunny", "24"} & heard, seen
    assert [e["name"] for e in seen if e["type"] == "tool_call"] == ["get_weather"]


@pytest.fixture(scope="module")
def function_server(tmp_path_factory):
    with llama_cpp_server(
        tmp_path_factory.mktemp("fc") / "server.log", chat_format="chatml-function-calling"
    ) as url:
        yield url


async def test_llama_cpp_pythons_server_gives_tool_calls_unstreamed(function_server):
    llm = OpenAICompatibleLLM(function_server)
    try:
        items = [
            i async for i in llm.stream(History().messages("What is the weather in Paris?"), None, TOOL_SPEC)
        ]
        # Streamed with tools, it answered nothing: asked again unstreamed, and from now on at once.
        assert not llm._streams_tools
        (call,) = [i for i in items if isinstance(i, ToolCall)]
        assert call.name == "get_weather" and "paris" in call.arguments.lower()  # no stray colon
        # Without tools the same server still streams.
        text = [i async for i in llm.stream(History().messages("Say hello."))]
        assert len(text) > 1 and all(isinstance(t, str) for t in text)
    finally:
        await llm.aclose()


async def test_a_call_on_llama_cpp_pythons_server_speaks_the_tools_result(services, function_server):
    server = OpenAICompatibleLLM(f"{function_server}?tool_results=user")
    try:
        seen, calls = await ask_weather(
            Services(asr=services.asr, llm=server, tts=services.tts), "What is the weather in Paris?"
        )
    finally:
        await server.aclose()
    assert calls and calls[0]["city"].lower() == "paris", seen
    assert {"sunny", "24"} & set(words(final_reply(seen))), seen


async def test_with_several_tools_the_embedded_model_names_one_and_fills_its_schema(services):
    clock = {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}
    specs = [
        *TOOL_SPEC,
        Tool(name="get_time", description="The time now", parameters=clock, webhook="http://x/").spec(),
    ]
    llm = services.llm
    for question in ("What time is it in Tokyo?", "What is the weather in Rome?"):
        items = [i async for i in llm.stream(History().messages(question), None, specs)]
        calls = [i for i in items if isinstance(i, ToolCall)]
        for call in calls:  # the grammar guarantees a declared name and arguments its schema takes
            tool = next(
                Tool(name=s["function"]["name"], parameters=s["function"]["parameters"], webhook="http://x/")
                for s in specs
                if s["function"]["name"] == call.name
            )
            tool.check(call.arguments)
        assert calls or "".join(i for i in items if isinstance(i, str)).strip(), items
