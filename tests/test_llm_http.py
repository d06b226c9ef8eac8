"""The OpenAI-compatible HTTP backend against a real local server: llama-cpp-python's own, serving the
bundled SmolLM2 GGUF on loopback."""

from __future__ import annotations

import pytest

from tests.support.calls import call
from tests.support.llm_server import llama_cpp_server
from tests.support.server import free_port
from tests.support.speech import read_wav
from voicepeer.backends.llm import History, LLMError, OpenAICompatibleLLM
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
    assert len(tokens) > 2 and "".join(tokens).strip()


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
