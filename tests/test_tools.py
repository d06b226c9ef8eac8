"""The application's logic in the loop: tools the model calls (a Python callable, and a signed webhook
served by a real aiohttp app on loopback), the per-turn hook, and what each does with bad input.

The turn logic runs on a virtual clock with the scripted models (``tests.support.scripted``); the
scripted LLM calls the tools a test tells it to. The real models calling tools are in
``test_tools_models.py``.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from tests.support.clock import virtual_time
from tests.support.dialogue import CallLine
from tests.support.scripted import ScriptedLLM
from voicepeer.backends.llm import ToolCall
from voicepeer.call.control import ControlError
from voicepeer.call.hook import HookAnswer, HookError, parse_answer
from voicepeer.call.logic import Logic, LogicError
from voicepeer.call.toolloop import TOOL_APOLOGY
from voicepeer.call.tools import Tool, ToolError, load_tools, parse_tools
from voicepeer.call.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, Webhooks, verify
from voicepeer.config import Config

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
QUESTION = "What is the weather in Paris?"


def weather_llm(arguments: str = '{"city": "Paris"}') -> ScriptedLLM:
    llm = ScriptedLLM()
    llm.tool_calls[QUESTION] = [ToolCall("call_1", "get_weather", arguments)]
    return llm


# -- declarations -----------------------------------------------------------------------------------


def test_declarations_are_checked_where_they_come_in(tmp_path):
    good = [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": WEATHER},
            "webhook": "http://app/w",
        }
    ]
    (tools,) = parse_tools(json.dumps(good))
    assert tools.spec() == {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}
    path = tmp_path / "tools.json"
    path.write_text(json.dumps(good))
    assert load_tools(str(path)) == load_tools(json.dumps(good))
    for bad, says in [
        ("{", "not JSON"),
        ("{}", "JSON list"),
        ([{"function": {"name": "x y"}, "webhook": "http://a/"}], "not 1-64"),
        ([{"function": {"name": "x"}}], "webhook"),
        ([{"function": {"name": "x"}, "webhook": "file:///etc/passwd"}], "http"),
        ([{"function": {"name": "x", "parameters": {"type": "array"}}, "webhook": "http://a/"}], "object"),
        (
            [
                {
                    "function": {"name": "x", "parameters": {"type": "object", "properties": 3}},
                    "webhook": "http://a/",
                }
            ],
            "valid JSON schema",
        ),
        ([{"function": {"name": "x"}, "webhook": "http://a/", "extra": 1}], "unknown field"),
        ([{"function": {"name": "x"}, "webhook": "http://a/"}] * 2, "same name"),
        ([{"function": {"name": f"t{i}"}, "webhook": "http://a/"} for i in range(33)], "at most 32"),
    ]:
        with pytest.raises(ValueError, match=says):
            parse_tools(bad if isinstance(bad, str) else json.dumps(bad))
    with pytest.raises(ValueError, match="cannot read"):
        load_tools(str(tmp_path / "missing.json"))


def test_arguments_are_checked_against_the_schema():
    tool = Tool.of(lambda a, c: a, WEATHER, name="get_weather")
    assert tool.check('{"city": "Paris"}') == {"city": "Paris"}
    for bad, says in [
        ("Paris", "not JSON"),
        ("[1]", "not a JSON object"),
        ('{"town": "Paris"}', "schema"),
        ('{"city": 3}', "schema"),
        ("x" * 9000, "over"),
    ]:
        with pytest.raises(ToolError, match=says):
            tool.check(bad)


def test_webhooks_need_a_secret_and_a_calls_own_tools_an_allowed_url():
    config = Config().with_options(
        {
            "app.tools": json.dumps(
                [
                    {
                        "function": {"name": "get_weather", "parameters": WEATHER},
                        "webhook": "http://127.0.0.1:9/w",
                    }
                ]
            )
        }
    )
    with pytest.raises(LogicError, match="signed"):
        Logic.from_config(config)
    logic = Logic.from_config(config.with_options({"app.webhook_secret": "s3cret"}))
    assert logic.allows("http://127.0.0.1:9/other") and not logic.allows("http://127.0.0.1:10/w")
    assert not logic.allows("http://127.0.0.1:9.evil.example/w")


def test_a_hooks_answer_takes_one_of_its_shapes():
    assert parse_answer(None) == HookAnswer() and parse_answer({}) == HookAnswer()
    assert parse_answer({"say": "  Hi  there "}).say == "Hi there"
    assert parse_answer({"context": "VIP"}).messages == ({"role": "system", "content": "VIP"},)
    assert parse_answer({"messages": [{"role": "user", "content": "a"}]}).action == "context"
    for bad in [
        [],
        {"say": ""},
        {"say": "x", "context": "y"},
        {"shout": "x"},
        {"say": "x" * 3000},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": "x"},
        {"context": 3},
    ]:
        with pytest.raises(HookError):
            parse_answer(bad)


def test_a_signature_checks_the_body_the_time_and_the_secret():
    from voicepeer.call.webhook import sign

    body = b'{"a":1}'
    signature = sign("k", body, 1000)
    assert verify("k", body, "1000", signature, now=1010)
    assert not verify("k", body + b" ", "1000", signature, now=1010)
    assert not verify("other", body, "1000", signature, now=1010)
    assert not verify("k", body, "1000", signature, now=1000 + 301)  # a replay
    assert not verify("k", body, "soon", signature, now=1010)


# -- a callable tool in a call ----------------------------------------------------------------------


@virtual_time
async def test_the_model_calls_a_tool_and_the_reply_carries_its_result():
    seen = []

    async def get_weather(arguments, call):
        seen.append((arguments, call.call_id, call.context))
        return {"forecast": "sunny, 24 degrees"}

    logic = Logic(tools=(Tool.of(get_weather, WEATHER),))
    async with CallLine(llm=weather_llm(), logic=logic) as line:
        line.call.control({"type": "config", "context": {"user": "Ada"}})
        line.call.control({"type": "say", "text": QUESTION})
        reply = await line.first(lambda m: m["type"] == "reply" and m["final"])
        assert "sunny, 24 degrees" in reply["text"]
        assert seen == [({"city": "Paris"}, line.call.id, {"user": "Ada"})]
        call, result = line.messages("tool_call")[0], line.messages("tool_result")[0]
        assert call["name"] == "get_weather" and call["arguments"] == {"city": "Paris"}
        assert (
            result["ok"] and result["result"] == {"forecast": "sunny, 24 degrees"} and not result["dropped"]
        )
        # The history holds the call and its result as OpenAI's format has them, for the next turns.
        (turn,) = line.call.conversation.history.turns
        assert [m["role"] for m in turn.steps] == ["assistant", "tool"]
        assert turn.steps[0]["tool_calls"][0]["function"]["name"] == "get_weather"
        assert turn.steps[1] == {"role": "tool", "tool_call_id": "call_1", "content": result_json()}
        # The second round asked with the result; the model may call again, and must answer after that.
        assert line.llm.tool_choices == ["auto", "auto"]


def result_json() -> str:
    return json.dumps({"forecast": "sunny, 24 degrees"})


@virtual_time
async def test_required_makes_the_first_round_call_a_tool():
    logic = Logic(
        tools=(Tool.of(lambda a, c: {"t": 20}, WEATHER, name="get_weather"),), tool_choice="required"
    )
    async with CallLine(llm=weather_llm(), logic=logic) as line:
        line.call.control({"type": "say", "text": QUESTION})
        await line.first(lambda m: m["type"] == "reply" and m["final"])
        assert line.llm.tool_choices == ["required", "auto"]


@virtual_time
async def test_a_slow_tool_is_covered_by_a_filler_and_a_failing_one_by_an_apology():
    async def slow(arguments, call):
        await asyncio.sleep(2.0)
        return {"forecast": "rain"}

    async with CallLine(
        llm=weather_llm(), logic=Logic(tools=(Tool.of(slow, WEATHER, name="get_weather"),))
    ) as line:
        line.call.control({"type": "say", "text": QUESTION})
        reply = await line.first(lambda m: m["type"] == "reply" and m["final"])
        assert reply["text"].startswith("One moment. The tool says")

    def broken(arguments, call):
        raise RuntimeError("database down")

    async with CallLine(
        llm=weather_llm(), logic=Logic(tools=(Tool.of(broken, WEATHER, name="get_weather"),))
    ) as line:
        line.call.control({"type": "say", "text": QUESTION})
        error = await line.first(lambda m: m["type"] == "error")
        assert error["code"] == "tool_failed" and "RuntimeError" in error["message"]
        assert "database" not in error["message"]  # the application's own words stay in its log
        await line.first(lambda m: m["type"] == "metrics")
        assert TOOL_APOLOGY in line.tts.spoken and line.call.conversation.history.turns == []
        # The call goes on.
        line.call.control({"type": "say", "text": "Hello?"})
        reply = await line.first(lambda m: m["type"] == "reply" and m["final"])
        assert reply["text"] == line.llm.default


@virtual_time
async def test_an_unknown_tool_or_bad_arguments_get_an_error_and_an_apology():
    for call, says in [
        (ToolCall("c", "launch_rockets", "{}"), "not a tool"),
        (ToolCall("c", "get_weather", '{"town": "Paris"}'), "schema"),
    ]:
        llm = ScriptedLLM()
        llm.tool_calls[QUESTION] = [call]
        logic = Logic(tools=(Tool.of(lambda a, c: {"ok": 1}, WEATHER, name="get_weather"),))
        async with CallLine(llm=llm, logic=logic) as line:
            line.call.control({"type": "say", "text": QUESTION})
            error = await line.first(lambda m: m["type"] == "error")
            assert error["code"] == "tool_failed" and says in error["message"]
            await line.first(lambda m: m["type"] == "metrics")
            assert TOOL_APOLOGY in line.tts.spoken


@virtual_time
async def test_a_model_that_calls_the_same_tool_again_must_answer():
    llm = weather_llm()
    calls = []
    logic = Logic(tools=(Tool.of(lambda a, c: calls.append(a) or {"t": 20}, WEATHER, name="get_weather"),))
    # The model asks again with the result in front of it: a loop, broken after one repeat.
    llm.answer = lambda messages: "Twenty degrees."  # type: ignore[method-assign]
    original = llm.tool_calls[QUESTION]
    llm.tool_calls["__any__"] = original
    real_stream = llm.stream

    def looping(messages, options=None, tools=(), tool_choice="auto"):
        if tools and tool_choice == "auto" and messages[-1]["role"] == "tool":
            messages = [*messages, {"role": "user", "content": QUESTION}]
        return real_stream(messages, options, tools, tool_choice)

    llm.stream = looping  # type: ignore[method-assign]
    async with CallLine(llm=llm, logic=logic) as line:
        line.call.control({"type": "say", "text": QUESTION})
        reply = await line.first(lambda m: m["type"] == "reply" and m["final"])
        assert reply["text"] == "Twenty degrees."
        assert len(calls) == 1 and llm.tool_choices == ["auto", "auto", "none"]


@virtual_time
async def test_barge_in_during_a_tool_drops_its_late_result():
    async def slow(arguments, call):
        await asyncio.sleep(3.0)
        return {"forecast": "rain"}

    logic = Logic(tools=(Tool.of(slow, WEATHER, name="get_weather"),), tool_filler="")
    async with CallLine(llm=weather_llm(), logic=logic) as line:
        line.call.control({"type": "say", "text": QUESTION})
        await line.first(lambda m: m["type"] == "tool_call")
        line.call.control({"type": "say", "text": "Never mind."})
        late = await line.first(lambda m: m["type"] == "tool_result")
        assert late["dropped"] and late["result"] == {"forecast": "rain"}
        await line.first(lambda m: m["type"] == "reply" and m["final"] and m["turn"] == 2)
        assert all("rain" not in r["text"] for r in line.final("reply"))


# -- a webhook tool, on a real HTTP server --------------------------------------------------------------


@pytest.fixture
async def app_backend(unused_tcp_port_factory=None):
    """A small application: ``/weather`` checks the signature and answers; ``/broken`` answers 500,
    ``/huge`` 10 MB, ``/text`` something that is not JSON, ``/hang`` never."""
    requests: list[dict] = []

    async def weather(request: web.Request) -> web.Response:
        body = await request.read()
        ok = verify("s3cret", body, request.headers[TIMESTAMP_HEADER], request.headers[SIGNATURE_HEADER])
        if not ok:
            return web.json_response({"error": "bad signature"}, status=401)
        requests.append({"json": json.loads(body), "headers": dict(request.headers)})
        return web.json_response({"forecast": "cloudy, 18 degrees"})

    async def broken(_r):
        return web.Response(status=500, text="boom")

    async def huge(_r):
        return web.Response(body=b"[" + b"1," * 5_000_000 + b"1]", content_type="application/json")

    async def text(_r):
        return web.Response(text="<html>hello</html>")

    async def hang(_r):
        await asyncio.sleep(3600)

    app = web.Application()
    for path, handler in [
        ("/weather", weather),
        ("/broken", broken),
        ("/huge", huge),
        ("/text", text),
        ("/hang", hang),
    ]:
        app.router.add_post(path, handler)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", requests
    await runner.cleanup()


async def test_a_webhook_tool_is_signed_and_its_failures_are_errors(app_backend):
    base, requests = app_backend
    webhooks = Webhooks("s3cret")
    try:
        tool = Tool(name="get_weather", parameters=WEATHER, webhook=f"{base}/weather")
        from voicepeer.call.tools import Toolbox

        box = Toolbox([tool], webhooks, "call-1", {"user": "Ada"}, timeout_s=1.0)
        outcome = await box.run(ToolCall("c1", "get_weather", '{"city": "Paris"}'))
        assert outcome.ok and json.loads(outcome.result) == {"forecast": "cloudy, 18 degrees"}
        (request,) = requests
        assert request["json"] == {"call": "call-1", "tool": "get_weather", "arguments": {"city": "Paris"}}
        assert "s3cret" not in json.dumps(request["headers"])
        for path, says in [
            ("broken", "answered 500"),
            ("huge", "over"),
            ("text", "not JSON"),
            ("hang", "within 1 s"),
        ]:
            box.tools["get_weather"] = Tool(name="get_weather", parameters=WEATHER, webhook=f"{base}/{path}")
            outcome = await box.run(ToolCall("c1", "get_weather", '{"city": "Paris"}'))
            assert not outcome.ok and says in (outcome.error or ""), (path, outcome.error)
    finally:
        await webhooks.aclose()


@virtual_time
async def test_a_calls_own_tools_are_bounded_and_need_an_allowed_webhook():
    logic = Logic(webhooks=Webhooks("k"), webhook_allow=("http://app.internal",))
    async with CallLine(logic=logic) as line:
        declared = [
            {"function": {"name": "get_weather", "parameters": WEATHER}, "webhook": "http://app.internal/w"}
        ]
        line.call.control({"type": "config", "tools": declared, "context": {"user": "Ada", "vip": True}})
        event = line.messages("config")[-1]
        assert event["tools"] == ["get_weather"] and event["context"] == {"user": "Ada", "vip": "true"}
        for tools, says in [
            ([{**declared[0], "webhook": "http://169.254.169.254/latest"}], "does not allow"),
            ("not a list", "JSON list"),
        ]:
            with pytest.raises(ControlError, match=says) as refused:
                line.call.control({"type": "config", "tools": tools})
            assert refused.value.field == "tools"
        for context in [{"bad name": "x"}, {"x": {"nested": 1}}, {"x": "y" * 9000}, "text"]:
            with pytest.raises(ControlError) as refused:
                line.call.control({"type": "config", "context": context})
            assert refused.value.field == "context"
        line.call.control({"type": "config", "context": {"vip": None}})
        assert line.messages("config")[-1]["context"] == {"user": "Ada"}


# -- the hook ----------------------------------------------------------------------------------------


@virtual_time
async def test_the_hook_answers_adds_context_or_leaves_the_model_to_answer():
    answers = {
        "Where is my order?": {"say": "Your order left the warehouse this morning."},
        "What should I cook?": {"context": "The user is vegetarian."},
        "Slow one.": "hang",
        "Broken one.": "raise",
        "Odd one.": {"shout": "x"},
    }
    seen = []

    async def hook(request):
        seen.append(request)
        answer = answers.get(request.transcript)
        if answer == "hang":
            await asyncio.sleep(60)
        if answer == "raise":
            raise RuntimeError("secret detail")
        return answer

    async with CallLine(logic=Logic(hook=hook, hook_timeout_s=1.0)) as line:
        for n, text in enumerate(
            ["Where is my order?", "What should I cook?", "Hello.", "Slow one.", "Broken one.", "Odd one."],
            start=1,
        ):
            line.call.control({"type": "say", "text": text})
            await line.first(lambda m, n=n: m["type"] == "metrics" and m["turn"] == n)
        actions = [m["action"] for m in line.messages("hook")]
        assert actions == ["say", "context", "none", "failed", "failed", "failed"]
        replies = [m["text"] for m in line.final("reply")]
        assert replies[0] == "Your order left the warehouse this morning."
        assert len(line.llm.requests) == 5  # the model was skipped once, and answered every other turn
        cook = line.llm.requests[0][0]
        assert cook[-2] == {"role": "system", "content": "The user is vegetarian."}
        assert cook[-1] == {"role": "user", "content": "What should I cook?"}
        errors = [m for m in line.messages("error") if m["code"] == "hook_failed"]
        assert len(errors) == 3 and "secret detail" not in json.dumps(errors)
        assert [r.turn for r in seen] == [1, 2, 3, 4, 5, 6] and seen[0].call_id == line.call.id


def test_the_server_refuses_to_start_with_bad_tools(tmp_path):
    import subprocess
    import sys

    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "voicepeer", "serve", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    bad = tmp_path / "bad.json"
    bad.write_text('[{"function": {"name": "x"}}]')
    unsigned = tmp_path / "unsigned.json"
    unsigned.write_text('[{"function": {"name": "x"}, "webhook": "http://127.0.0.1:1/x"}]')
    for args, says in [
        (("--tools", str(tmp_path / "missing.json")), "cannot read the tools file"),
        (("--tools", str(bad)), 'tool 0: "webhook" must be'),
        (("--tools", str(unsigned)), "--webhook-secret"),
        (("--hook", "http://127.0.0.1:1/hook"), "--webhook-secret"),
    ]:
        done = serve(*args)
        assert done.returncode == 2 and says in done.stderr, (args, done.stderr[-300:])


def test_tools_with_no_llm_that_calls_them_are_refused():
    from examples.custom_llm import RuleLLM
    from tests.support.scripted import ScriptedASR, ScriptedTTS
    from voicepeer.call.services import Services
    from voicepeer.transport.app import create_app

    services = Services(asr=ScriptedASR(), llm=RuleLLM(), tts=ScriptedTTS())  # declares no tools
    tool = Tool.of(lambda a, c: {}, WEATHER, name="get_weather")
    with pytest.raises(LogicError, match="no LLM backend"):
        create_app(Config(), services=services, tools=[tool])
    create_app(Config(), services=services)  # without tools it serves
