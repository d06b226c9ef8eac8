"""Tools with real language models: the bundled SmolLM2 in process (``toolprompt``'s ChatML format), and
llama-cpp-python's own server in ``chatml-function-calling`` mode, whose streamed requests with tools
answer 200 with no events, whose legacy function names end in a colon, whose template drops ``tool``
messages (hence ``?tool_results=user``) and HTML-escapes quotes, and whose message is lost when the
model chooses to answer (asked again with ``tool_choice: none``).

In process, SmolLM2-135M calls the weather tool for nearly any question once it has one (the decision
is greedy), asks again with the result in front of it, and is made to answer after that repeat; shown
the result as a user turn it put it in its reply 24 times in 24 (``toolprompt.render``). Through the
server it calls the tool for half the cities; each test says the margin it relies on."""

from __future__ import annotations

import dataclasses

import pytest

from tests.support.llm_server import llama_cpp_server
from tests.support.typed import ask, final_reply
from voicepeer.backends.llm import History, LLMOptions, ToolCall
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


REQUIRED = dataclasses.replace(LOGIC, tool_choice="required")


async def ask_weather(
    services: Services, question: str, logic: Logic = LOGIC
) -> tuple[list[dict], list[dict]]:
    """The question typed into a call with the weather tool: (the events, the tool's calls)."""
    CALLS.clear()
    seen = await ask(services, question, logic)
    return seen, list(CALLS)


async def test_the_embedded_model_calls_a_tool_and_speaks_its_result(services):
    # Greedy, SmolLM2-135M calls the tool for two of four such cities here (Paris, London); every
    # reply after a call carried the result (8 in 8 with two seeds). One call of the four is asked for.
    called = 0
    for city in ("Paris", "London", "Rome", "Madrid"):
        seen, calls = await ask_weather(services, f"What is the weather in {city}?")
        reply = final_reply(seen)
        assert reply and not [e for e in seen if e["type"] == "error"], seen
        assert "message" not in reply.lower() and "function" not in reply.lower(), reply  # no recital
        if calls:
            called += 1
            assert calls[0]["city"].lower() == city.lower(), seen
            assert {"sunny", "24"} & set(words(reply)), seen
            assert [e["name"] for e in seen if e["type"] == "tool_call"] == ["get_weather"]
    assert called >= 1


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
    # Left to decide (greedy), SmolLM2-135M calls the tool through this server for three of six cities;
    # with --tool-choice required it calls it for every one (a named tool_choice), and answers with the
    # result as a user turn: "sunny" or "24" in every reply of three, and no HTML escapes.
    server = OpenAICompatibleLLM(f"{function_server}?tool_results=user", options=LLMOptions(temperature=0.0))
    over_http = Services(asr=services.asr, llm=server, tts=services.tts)
    carried = 0
    try:
        for city in ("Paris", "London", "Rome"):
            seen, calls = await ask_weather(over_http, f"What is the weather in {city}?", REQUIRED)
            reply = final_reply(seen)
            assert reply and "&#" not in reply, seen
            assert not [e for e in seen if e["type"] == "error"], seen
            assert [c["city"].lower() for c in calls] == [city.lower()], seen
            carried += bool({"sunny", "24"} & set(words(reply)))
    finally:
        await server.aclose()
    assert carried >= 2


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
