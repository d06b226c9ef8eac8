"""The OpenAI-compatible HTTP LLM against a real local server: llama-cpp-python's own, serving the
bundled SmolLM2 GGUF on loopback. (Its faults, against a server that answers garbage, are in
tests/test_backend_openai.py.)"""

from __future__ import annotations

import aiohttp
import pytest

from tests.support.calls import call
from tests.support.llm_server import llama_cpp_server
from tests.support.server import free_port
from tests.support.speech import read_wav
from voicepeer.backends.base import BackendError
from voicepeer.backends.llm import History, LLMError
from voicepeer.backends.openai import OpenAICompatibleLLM
from voicepeer.backends.registry import BackendContext, create
from voicepeer.call.services import Services

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm_server(tmp_path_factory):
    pytest.importorskip("llama_cpp.server")
    with llama_cpp_server(tmp_path_factory.mktemp("llm") / "llm_server.log") as url:
        yield url


async def test_replies_stream_token_by_token_from_a_real_server(llm_server):
    llm = OpenAICompatibleLLM(llm_server, model="smollm2")
    tokens = [t async for t in llm.stream(History().messages("What is the capital of France?"))]
    await llm.aclose()
    assert len(tokens) > 2 and "".join(tokens).strip()


async def test_two_turns_share_one_pooled_connection(llm_server):
    """One session per backend, kept alive: the second turn pays no new connection (the old client
    opened a session, and a connection, per turn)."""
    created: list[object] = []

    async def on_create(_session, _context, params) -> None:
        created.append(params)

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    llm = OpenAICompatibleLLM(llm_server, model="smollm2", trace_configs=[trace])
    history = History()
    try:
        for question in ("What is the capital of France?", "And of Italy?"):
            reply = "".join([t async for t in llm.stream(history.messages(question))])
            assert reply.strip()
            history.add(question, reply)
        await llm.probe()
        session = llm.http.session_or_none
    finally:
        await llm.aclose()
    assert len(created) == 1
    assert session is not None and session.closed


async def test_the_probe_asks_for_the_models_and_says_down_when_nothing_answers(llm_server):
    llm = create("llm", llm_server, BackendContext(llm_model="smollm2"))
    assert isinstance(llm, OpenAICompatibleLLM) and llm.capabilities.remote
    await llm.probe()
    await llm.aclose()
    dead = OpenAICompatibleLLM(f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(BackendError, match="failed"):
        await dead.probe()
    await dead.aclose()


async def test_a_refused_connection_is_an_llm_error_naming_the_server():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with pytest.raises(LLMError, match=url.replace(".", r"\.")):
        [t async for t in OpenAICompatibleLLM(url).stream(History().messages("Hi"))]


async def test_an_http_error_is_an_llm_error_with_the_status(llm_server):
    with pytest.raises(LLMError, match="answered 404"):
        [t async for t in OpenAICompatibleLLM(llm_server + "/nope").stream(History().messages("Hi"))]


async def test_a_call_answered_by_the_http_backend(services, llm_server, make_speech):
    question = make_speech("Tell me about the weather in London.", lead_s=0.5, tail_s=1.5)
    remote = Services(
        asr=services.asr, llm=OpenAICompatibleLLM(llm_server, model="smollm2"), tts=services.tts
    )
    async with call(remote) as (_server, client):
        client.say(read_wav(question.path)[0])
        _, reply = await client.wait_for(lambda m: m["type"] == "reply" and m["final"], 60)
        assert reply["text"]
        assert client.messages("error") == []
