"""The OpenAI-compatible ASR and TTS backends against real servers (faster-whisper-server 0.0.3 on
tiny.en, local-tts-studio 1.0 on the bundled Piper voice, each from its own environment on loopback),
and every HTTP backend against a tiny asyncio server in this file that answers garbage, truncated,
oversized, endless or wrongly typed bodies, or nothing. (The LLM against llama-cpp-python's server is
tests/test_llm_http.py.)"""

from __future__ import annotations

import asyncio
import json
import re
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
import pytest

from tests.support.openai_servers import faster_whisper_server, local_tts_studio, openai_url
from tests.support.speech import read_wav, to_speech_rate
from voicepeer.audio.formats import SPEECH_RATE, rms_dbfs
from voicepeer.backends.asr import Transcript
from voicepeer.backends.base import MAX_TEXT_CHARS, BackendError
from voicepeer.backends.llm import History, LLMError, ToolCall, assistant_message, tool_message
from voicepeer.backends.openai import (
    OPENAI_PCM_RATE,
    OpenAIASR,
    OpenAICompatibleLLM,
    OpenAITTS,
    max_speech_s,
)
from voicepeer.backends.registry import BackendContext, BadBackendURL, create
from voicepeer.call.text import words as spoken_words

pytestmark = pytest.mark.slow

QUESTION = "What is the weather like in London today?"
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."


def words(text: str) -> set[str]:
    return set(spoken_words(text))


async def speak(tts: OpenAITTS, text: str) -> np.ndarray:
    return np.concatenate([chunk async for chunk in tts.synthesize(text)])


# -- the real servers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def asr_server(tmp_path_factory):
    server = faster_whisper_server(tmp_path_factory.mktemp("faster-whisper-server"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tts_server(tmp_path_factory):
    server = local_tts_studio(tmp_path_factory.mktemp("local-tts-studio"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def whisper(services):
    """The process's embedded recogniser, loaded once for the run, to hear a voice back."""
    return services.asr.chain.first


async def test_transcribes_a_spoken_question(asr_server, make_speech):
    asr = create("asr", openai_url(asr_server), BackendContext())
    assert isinstance(asr, OpenAIASR) and asr.model == "tiny.en"
    assert asr.capabilities.remote and not asr.capabilities.cheap
    question = make_speech(QUESTION, rate=SPEECH_RATE, lead_s=0.5, tail_s=0.5)
    try:
        transcript = await asr.transcribe(read_wav(question.path)[0])
        assert len(words(transcript.text) & {"weather", "london", "today"}) >= 2, transcript.text
        assert transcript.audio_s == pytest.approx(question.speech_end_s + 0.5, abs=0.6)
        session = asr.http.session_or_none
        await asr.probe()  # health, then a tiny transcription, on the same pooled session
        assert asr.http.session_or_none is session
    finally:
        await asr.aclose()
    assert session is not None and session.closed


async def test_speech_from_local_tts_studio_is_audible_and_heard_back(tts_server, whisper):
    tts = create("tts", openai_url(tts_server), BackendContext())
    assert isinstance(tts, OpenAITTS)
    # Asked at startup: the voice's own rate, and no streaming (it sends a Content-Length: the
    # whole WAV is synthesized before its first byte).
    assert tts.sample_rate == 22050 and tts.capabilities.sample_rate == 22050
    assert not tts.capabilities.streaming_output and tts.capabilities.remote
    try:
        audio = await speak(tts, SENTENCE)
        await tts.probe()
    finally:
        await tts.aclose()
    assert rms_dbfs(audio) > -35
    assert 2.0 < audio.size / tts.sample_rate < 8.0
    heard = (await whisper.transcribe(to_speech_rate(audio, tts.sample_rate))).text
    assert len(words(heard) & {"quick", "brown", "fox", "lazy", "dog", "river"}) >= 4, heard


async def test_pcm_at_the_servers_rate_is_resampled_to_the_declared_one(tts_server, whisper):
    """local-tts-studio's ``pcm`` is at its voice's 22050 Hz (OpenAI's would be 24 kHz), told in
    ``X-Sample-Rate``; declared 16 kHz, the backend resamples it and the speech keeps its pace."""
    wav = OpenAITTS(openai_url(tts_server), sample_rate=22050)
    pcm = OpenAITTS(openai_url(tts_server) + "?format=pcm&rate=16000&voice=ignored")
    assert pcm.sample_rate == 16000 and pcm.response_format == "pcm" and pcm.voice == "ignored"
    try:
        reference = await speak(wav, SENTENCE)
        audio = await speak(pcm, SENTENCE)
    finally:
        await wav.aclose()
        await pcm.aclose()
    assert audio.size / 16000 == pytest.approx(reference.size / 22050, rel=0.15)
    heard = (await whisper.transcribe(audio)).text
    assert len(words(heard) & {"quick", "brown", "fox", "lazy", "dog", "river"}) >= 4, heard


async def test_the_probes_say_up_then_down_once_a_server_is_killed_then_up_again(asr_server, tts_server):
    asr = OpenAIASR(openai_url(asr_server), model="tiny.en")
    tts = OpenAITTS(openai_url(tts_server), sample_rate=22050)
    try:
        for backend, server in ((asr, asr_server), (tts, tts_server)):
            await backend.probe()
            server.kill()
            try:
                with pytest.raises(BackendError, match=r"127\.0\.0\.1"):
                    await backend.probe()
            finally:
                server.start()  # the same port, ready again (its model loaded)
            await backend.probe()
        assert (await speak(tts, "Back again.")).size
    finally:
        await asr.aclose()
        await tts.aclose()


async def test_a_paused_server_is_a_timeout_within_the_backends_own(asr_server, tts_server, make_speech):
    """SIGSTOP: the kernel accepts the connection, nothing answers; each backend gives up by its own
    read timeout (the guard here is only against a hang), and is fine once the server resumes."""
    question = read_wav(make_speech(QUESTION, rate=SPEECH_RATE, lead_s=0.5, tail_s=0.5).path)[0]
    asr = OpenAIASR(openai_url(asr_server), model="tiny.en", timeout_s=1.5)
    tts = OpenAITTS(openai_url(tts_server), sample_rate=22050, timeout_s=1.5)
    try:
        requests = (
            (asr_server, lambda: asr.transcribe(question)),
            (tts_server, lambda: speak(tts, "Hello.")),
        )
        for server, request in requests:
            server.pause()
            try:
                with pytest.raises(BackendError, match=r"timed out after 1\.5 s"):
                    async with asyncio.timeout(15):
                        await request()
            finally:
                server.resume()
        # The same backends (and sessions) serve once it is back; the server first finishes what it was
        # asked while stopped (faster-whisper-server decodes one request at a time), hence more time.
        asr.timeout_s = tts.timeout_s = 30.0
        assert words((await asr.transcribe(question)).text) & {"weather", "london", "today"}
        assert (await speak(tts, "Hello.")).size
    finally:
        await asr.aclose()
        await tts.aclose()


async def test_a_refused_connection_is_a_backend_error_naming_the_server():
    from tests.support.server import free_port

    url = f"http://user:secret@127.0.0.1:{free_port()}/v1"
    asr = OpenAIASR(url)
    tts = OpenAITTS(url)
    requests = ((asr, lambda: asr.transcribe(np.ones(1600, np.int16))), (tts, lambda: speak(tts, "Hi.")))
    for backend, request in requests:
        with pytest.raises(BackendError) as error:
            await request()
        assert backend.name in str(error.value) and "secret" not in str(error.value)
        await backend.aclose()


async def test_a_tts_whose_server_is_down_at_start_declares_openais_rate():
    from tests.support.server import free_port

    tts = create("tts", f"http://127.0.0.1:{free_port()}/v1", BackendContext(timeout_s=2))
    assert tts.sample_rate == OPENAI_PCM_RATE


def test_url_options_are_checked_and_paths_are_not_sent_as_model_names(tmp_path):
    for query in ("format=mp3", "rate=fast", "rate=100"):
        with pytest.raises(BadBackendURL, match=query.partition("=")[0]):
            OpenAITTS(f"http://127.0.0.1:9/v1?{query}")
    tts = OpenAITTS("https://:sk-2@example.invalid:8443/v1?voice=nova&model=tts-1-hd&rate=48000")
    assert (tts.voice, tts.model, tts.sample_rate, tts.http.token) == ("nova", "tts-1-hd", 48000, "sk-2")
    assert tts.url == "https://example.invalid:8443/v1/audio/speech" and "sk-2" not in tts.name
    assert (
        create("asr", "http://127.0.0.1:9/v1", BackendContext(asr_model=str(tmp_path))).model == "whisper-1"
    )
    assert create("asr", "http://127.0.0.1:9/v1?model=large-v3", BackendContext()).model == "large-v3"
    llm = create("llm", "http://127.0.0.1:9/v1?model=qwen", BackendContext(llm_model="/models/smol.gguf"))
    assert llm.model == "qwen"


# -- a faulty server ------------------------------------------------------------------------------------

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Fault:
    url: str
    connections: set[asyncio.Task] = field(default_factory=set)
    requests: list[Request] = field(default_factory=list)


@dataclass(frozen=True)
class Request:
    line: str
    headers: dict[str, str]
    body: bytes


async def read_request(reader: asyncio.StreamReader) -> Request:
    head = await reader.readuntil(b"\r\n\r\n")
    line, *rest = head.decode("latin-1").strip().split("\r\n")
    headers = {}
    for header in rest:
        name, _, value = header.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Request(line, headers, await reader.readexactly(int(headers.get("content-length", 0))))


@asynccontextmanager
async def fault_server(answer: Answer) -> AsyncIterator[Fault]:
    """An HTTP/1.1 server that reads each request and lets ``answer`` write whatever it likes (or
    nothing), keeping the connection while ``answer`` returns."""
    fault = Fault("")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        fault.connections.add(task)
        try:
            while True:
                fault.requests.append(await read_request(reader))
                await answer(reader, writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # cancelled: only by the teardown, for a connection the test left open
        finally:
            fault.connections.discard(task)
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    fault.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    try:
        yield fault
    finally:
        server.close()
        for task in list(fault.connections):
            task.cancel()
        await server.wait_closed()


async def nothing_left_open(fault: Fault) -> None:
    """Once the backend is closed, the server sees every connection it had closed."""
    async with asyncio.timeout(5):
        while fault.connections:
            await asyncio.sleep(0.02)


def response(status: str, content_type: str, body: bytes, *, length: int | None = None) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length or len(body)}\r\n\r\n"
    )
    return head.encode() + body


def send(data: bytes, *, close: bool = False) -> Answer:
    async def answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        if close:
            await writer.drain()
            writer.close()
            raise ConnectionError("closed on purpose")

    return answer


async def hang(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
    """Never answers; notices only that the client went away."""
    await reader.read()
    raise ConnectionError("the client closed")


def chunked(content_type: str, parts: AsyncIterator[bytes]) -> Answer:
    async def answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        async for part in parts:
            writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")

    return answer


def wav(
    pcm: bytes, rate: int, *, channels: int = 1, bits: int = 16, code: int = 1, size: int | None = None
) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", code, channels, rate, rate * block, block, bits)
    data_size = len(pcm) if size is None else size
    return (
        b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVE"
        + b"fmt " + struct.pack("<I", len(fmt)) + fmt
        + b"data" + struct.pack("<I", data_size) + pcm
    )  # fmt: skip


def tone(hz: float, seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = (np.sin(2 * np.pi * hz * t) * 8000).astype(np.int16)
    return np.repeat(mono, channels) if channels > 1 else mono


def peak_hz(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    return float(np.fft.rfftfreq(pcm.size, 1 / rate)[np.argmax(spectrum)])


HUGE = json.dumps({"text": "a" * 1_000_000}).encode()


async def endless_text() -> AsyncIterator[bytes]:
    for _ in range(2000):
        yield json.dumps({"text": "a" * 1000})[:-2].encode()


ASR_FAULTS = {
    "garbage": (send(response("200 OK", "application/json", b"}{ not json")), "malformed JSON"),
    "no text": (send(response("200 OK", "application/json", b'{"txt": "hi"}')), "malformed JSON"),
    "a number as the text": (send(response("200 OK", "application/json", b'{"text": 3}')), "int"),
    "html": (send(response("200 OK", "text/html", b"<html>hi</html>")), "text/html, not JSON"),
    "1 MB transcript": (send(response("200 OK", "application/json", HUGE)), "over the"),
    "1 MB transcript, chunked": (chunked("application/json", endless_text()), "answered over"),
    "truncated": (send(response("200 OK", "application/json", b'{"te', length=100), close=True), "failed"),
    "an error": (
        send(response("500 Oops", "application/json", b'{"error": {"message": "model exploded"}}')),
        "answered 500: model exploded",
    ),
    "closed at once": (send(b"", close=True), "failed"),
    "silence": (hang, "timed out"),
}


@pytest.mark.parametrize("fault", ASR_FAULTS, ids=list(ASR_FAULTS))
async def test_a_faulty_transcription_server_is_a_backend_error_and_leaves_nothing_open(fault):
    answer, message = ASR_FAULTS[fault]
    async with fault_server(answer) as server:
        asr = OpenAIASR(server.url, model="tiny.en", timeout_s=1.0)
        with pytest.raises(BackendError, match=re.escape(message)):
            await asr.transcribe(tone(440, 0.5, SPEECH_RATE))
        session = asr.http.session_or_none
        await asr.aclose()
        assert session is not None and session.closed
        await nothing_left_open(server)


async def test_the_turn_goes_as_a_multipart_wav_naming_the_model_both_ways():
    async with fault_server(send(response("200 OK", "application/json", b'{"text": " Hello. "}'))) as server:
        asr = OpenAIASR(server.url + "?model=whisper-large", language="en")
        transcript = await asr.transcribe(tone(440, 0.5, SPEECH_RATE))
        assert await asr.transcribe(np.zeros(0, np.int16)) == Transcript("", 0.0)  # not sent
        await asr.aclose()
    assert transcript.text == "Hello." and transcript.audio_s == 0.5
    (request,) = server.requests
    body = request.body
    assert request.line == "POST /v1/audio/transcriptions HTTP/1.1"
    assert "authorization" not in request.headers
    for name, value in (("model", "whisper-large"), ("model_name", "whisper-large"), ("language", "en")):
        assert f'name="{name}"\r\n\r\n{value}\r\n'.encode() in body
    assert b'name="response_format"\r\n\r\njson\r\n' in body
    assert b'filename="turn.wav"\r\n\r\nRIFF' in body and b"\x80>\x00\x00" in body  # 16000 Hz


async def endless_wav() -> AsyncIterator[bytes]:
    yield wav(b"", 16000, size=0xFFFFFFFF)
    for _ in range(10_000):
        yield tone(440, 0.25, 16000).tobytes()
        await asyncio.sleep(0)


TTS_FAULTS = {
    "garbage": (send(response("200 OK", "audio/wav", b"\x00\x01garbage" * 10)), "no WAV"),
    "float samples": (
        send(response("200 OK", "audio/wav", wav(b"\0" * 400, 16000, bits=32, code=3))),
        "PCM16",
    ),
    "8-bit samples": (send(response("200 OK", "audio/wav", wav(b"\x80" * 400, 16000, bits=8))), "PCM16"),
    "six channels": (
        send(response("200 OK", "audio/wav", wav(b"\0" * 1200, 16000, channels=6))),
        "6 channels",
    ),
    "json": (send(response("200 OK", "application/json", b'{"error": "no voice"}')), "not audio: no voice"),
    "an error": (send(response("503 Busy", "application/json", b'{"detail": "loading"}')), "503: loading"),
    "no audio": (send(response("200 OK", "audio/wav", wav(b"", 16000))), "no audio"),
    "cut in the header": (send(response("200 OK", "audio/wav", b"RIFF\0\0\0\0WA")), "inside its WAV header"),
    "truncated": (
        send(response("200 OK", "audio/wav", wav(b"\1\0" * 8000, 16000)[:4000], length=16044), close=True),
        "failed",
    ),
    "short of its header's length": (
        send(response("200 OK", "audio/wav", wav(b"\1\0" * 8000, 16000, size=64000))),
        "cut short",
    ),
    "endless": (chunked("audio/wav", endless_wav()), "over 10.9 s of audio"),
    "silence": (hang, "timed out"),
}


@pytest.mark.parametrize("fault", TTS_FAULTS, ids=list(TTS_FAULTS))
async def test_a_faulty_speech_server_is_a_backend_error_and_leaves_nothing_open(fault):
    answer, message = TTS_FAULTS[fault]
    assert max_speech_s("Hi.") == pytest.approx(10.9)
    async with fault_server(answer) as server:
        tts = OpenAITTS(server.url, sample_rate=16000, timeout_s=1.0)
        with pytest.raises(BackendError, match=re.escape(message)):
            await speak(tts, "Hi.")
        session = tts.http.session_or_none
        await tts.aclose()
        assert session is not None and session.closed
        await nothing_left_open(server)


async def test_stereo_speech_at_another_rate_comes_out_mono_at_the_declared_rate():
    """A server that changed its voice (8 kHz stereo now, 22050 Hz at startup): the backend
    resamples, so a 440 Hz tone stays a 440 Hz tone of the same length."""
    body = wav(tone(440, 1.0, 8000, channels=2).tobytes(), 8000, channels=2)
    async with fault_server(send(response("200 OK", "audio/x-wav", body))) as server:
        tts = OpenAITTS(server.url, sample_rate=22050)
        audio = await speak(tts, "A tone.")
        await tts.aclose()
    assert audio.size == pytest.approx(22050, rel=0.02)
    assert peak_hz(audio, 22050) == pytest.approx(440, abs=5)
    sent = json.loads(server.requests[0].body)
    assert sent == {"model": "tts-1", "input": "A tone.", "voice": "alloy", "response_format": "wav"}


async def test_streamed_pcm_comes_out_chunk_by_chunk():
    async def parts() -> AsyncIterator[bytes]:
        samples = tone(440, 1.0, OPENAI_PCM_RATE).tobytes()
        for start in range(0, len(samples), 4801):  # odd sizes: samples split across chunks
            yield samples[start : start + 4801]
            await asyncio.sleep(0.01)

    async with fault_server(chunked("audio/pcm", parts())) as server:
        tts = OpenAITTS(server.url + "?format=pcm")
        chunks = [chunk async for chunk in tts.synthesize("A tone.")]
        await tts.aclose()
    audio = np.concatenate(chunks)
    assert len(chunks) > 3 and audio.size == OPENAI_PCM_RATE
    assert peak_hz(audio, OPENAI_PCM_RATE) == pytest.approx(440, abs=2)


async def test_an_abandoned_synthesis_closes_its_connection():
    async with fault_server(chunked("audio/wav", endless_wav())) as server:
        tts = OpenAITTS(server.url, sample_rate=16000)
        stream = tts.synthesize("Hello there.")
        assert (await anext(stream)).size
        await stream.aclose()  # the reply was cut off: the server must stop sending
        await nothing_left_open(server)
        await tts.aclose()


def sse(*events: object) -> bytes:
    return b"".join(f"data: {json.dumps(e) if not isinstance(e, str) else e}\n\n".encode() for e in events)


def delta(text: str) -> dict[str, object]:
    return {"choices": [{"delta": {"content": text}}]}


async def endless_tokens() -> AsyncIterator[bytes]:
    for _ in range(MAX_TEXT_CHARS):
        yield sse(delta("word "))


LLM_FAULTS = {
    "garbage": (send(response("200 OK", "text/event-stream", sse(delta("Hi"), "{not json"))), "malformed"),
    "no choices": (send(response("200 OK", "text/event-stream", sse({"choices": []}))), "malformed"),
    "json": (send(response("200 OK", "application/json", b'{"choices": []}')), "not an event stream"),
    "a long line": (send(response("200 OK", "text/event-stream", b"data: " + b"x" * 100_000)), "line over"),
    "endless": (chunked("text/event-stream", endless_tokens()), f"over {MAX_TEXT_CHARS} characters"),
    "an error": (
        send(response("401 No", "application/json", b'{"error": {"message": "bad key"}}')),
        "401: bad key",
    ),
    "truncated": (
        send(response("200 OK", "text/event-stream", sse(delta("Hi")), length=500), close=True),
        "failed",
    ),
    "silence": (hang, "timed out after 1 s"),
    "no text": (send(response("200 OK", "text/event-stream", sse("[DONE]"))), "ended its reply with no text"),
    "no end": (send(response("200 OK", "text/event-stream", sse(delta("Hi")))), "ended without [DONE]"),
}


@pytest.mark.parametrize("fault", LLM_FAULTS, ids=list(LLM_FAULTS))
async def test_a_faulty_chat_server_is_an_llm_error_and_leaves_nothing_open(fault):
    answer, message = LLM_FAULTS[fault]
    async with fault_server(answer) as server:
        llm = OpenAICompatibleLLM(server.url, read_timeout_s=1.0)
        with pytest.raises(LLMError, match=re.escape(message)):
            [token async for token in llm.stream(History().messages("Hi"))]
        session = llm.http.session_or_none
        await llm.aclose()
        assert session is not None and session.closed
        await nothing_left_open(server)


async def test_the_chat_request_carries_the_model_options_and_key():
    answer = send(response("200 OK", "text/event-stream", sse(delta("Hello"), delta(" there."), "[DONE]")))
    async with fault_server(answer) as server:
        llm = create("llm", server.url, BackendContext(llm_model="smol", llm_api_key="sk-1"))
        tokens = [token async for token in llm.stream(History().messages("Hi"))]
        await llm.aclose()
    assert tokens == ["Hello", " there."]
    request = server.requests[0]
    assert request.line == "POST /v1/chat/completions HTTP/1.1"
    assert request.headers["authorization"] == "Bearer sk-1"
    sent = json.loads(request.body)
    assert sent["model"] == "smol" and sent["stream"] is True and sent["messages"][-1]["content"] == "Hi"


# -- tool calls, as servers stream them (vLLM, Ollama, OpenAI) and as some answer them unstreamed ----------

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def tool_delta(index: int, *, id: str | None = None, name: str | None = None, args: str | None = None):
    call: dict[str, object] = {"index": index}
    if id is not None:
        call |= {"id": id, "type": "function"}
    function = {k: v for k, v in (("name", name), ("arguments", args)) if v is not None}
    if function:
        call["function"] = function
    return {"choices": [{"delta": {"tool_calls": [call]}}]}


async def test_streamed_tool_call_deltas_are_assembled_into_calls():
    # OpenAI's shape: the id and name first, the arguments in pieces; two calls in parallel, interleaved;
    # some text before them ("Let me check.").
    stream = sse(
        delta("Let me check."),
        tool_delta(0, id="call_a", name="get_weather", args=""),
        tool_delta(1, id="call_b", name="get_weather", args='{"ci'),
        tool_delta(0, args='{"city": '),
        tool_delta(0, args='"Paris"}'),
        tool_delta(1, args='ty": "Oslo"}'),
        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
        "[DONE]",
    )
    async with fault_server(send(response("200 OK", "text/event-stream", stream))) as server:
        llm = OpenAICompatibleLLM(server.url)
        items = [i async for i in llm.stream(History().messages("Weather?"), None, TOOLS)]
        await llm.aclose()
    assert items == [
        "Let me check.",
        ToolCall("call_a", "get_weather", '{"city": "Paris"}'),
        ToolCall("call_b", "get_weather", '{"city": "Oslo"}'),
    ]
    sent = json.loads(server.requests[0].body)
    assert sent["tools"] == TOOLS and sent["tool_choice"] == "auto" and sent["stream"] is True


async def test_required_names_the_one_tool_and_stays_required_with_several():
    answer = send(
        response(
            "200 OK", "text/event-stream", sse(tool_delta(0, id="c", name="get_weather", args="{}"), "[DONE]")
        )
    )
    two = [*TOOLS, {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    sent = []
    for tools in (TOOLS, two):
        async with fault_server(answer) as server:
            llm = OpenAICompatibleLLM(server.url)
            [i async for i in llm.stream(History().messages("Weather?"), None, tools, "required")]
            await llm.aclose()
        sent.append(json.loads(server.requests[0].body)["tool_choice"])
    assert sent == [{"type": "function", "function": {"name": "get_weather"}}, "required"]


async def test_a_history_with_tool_calls_goes_out_in_openais_format_or_as_user_turns():
    messages = [
        *History().messages("Weather in Paris?"),
        assistant_message("", [ToolCall("call_a", "get_weather", '{"city": "Paris"}')]),
        tool_message("call_a", '{"forecast": "sunny"}'),
    ]
    answer = send(response("200 OK", "text/event-stream", sse(delta("Sunny."), "[DONE]")))
    for url, kind in (("", "tool"), ("?tool_results=user", "user")):
        async with fault_server(answer) as server:
            llm = OpenAICompatibleLLM(server.url + url)
            assert [i async for i in llm.stream(messages, None, TOOLS, "none")] == ["Sunny."]
            await llm.aclose()
        sent = json.loads(server.requests[0].body)
        assert sent["tool_choice"] == "none"
        assistant, result = sent["messages"][-2:]
        assert assistant["content"] == "" and assistant["tool_calls"][0]["id"] == "call_a"  # not null
        if kind == "tool":
            assert result == {"role": "tool", "tool_call_id": "call_a", "content": '{"forecast": "sunny"}'}
        else:
            # Without quotes: llama-cpp-python's template would HTML-escape them.
            assert result == {"role": "user", "content": "The result of get_weather: {forecast: sunny}"}
    with pytest.raises(BadBackendURL, match="tool_results"):
        OpenAICompatibleLLM("http://127.0.0.1:1/v1?tool_results=system")


TOOL_FAULTS = {
    "not a list": sse({"choices": [{"delta": {"tool_calls": {"index": 0}}}]}, "[DONE]"),
    "bad index": sse(tool_delta(99, id="x", name="get_weather"), "[DONE]"),
    "no name": sse(tool_delta(0, id="x", args="{}"), "[DONE]"),
    "a number for a name": sse(
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": 3}}]}}]}
    ),
    "endless arguments": sse(
        tool_delta(0, id="x", name="f"), *[tool_delta(0, args="x" * 1000)] * 20, "[DONE]"
    ),
}


@pytest.mark.parametrize("fault", TOOL_FAULTS, ids=list(TOOL_FAULTS))
async def test_a_malformed_tool_call_is_an_llm_error(fault):
    async with fault_server(send(response("200 OK", "text/event-stream", TOOL_FAULTS[fault]))) as server:
        llm = OpenAICompatibleLLM(server.url)
        with pytest.raises(LLMError):
            [i async for i in llm.stream(History().messages("Hi"), None, TOOLS)]
        await llm.aclose()
        await nothing_left_open(server)


async def test_an_empty_stream_with_tools_is_asked_again_unstreamed():
    # llama-cpp-python's server with tools: 200, an event stream with nothing in it; then, unstreamed,
    # a legacy function_call whose name ends in a colon.
    unstreamed = json.dumps(
        {
            "choices": [
                {"message": {"content": None, "function_call": {"name": "get_weather:", "arguments": "{}"}}}
            ]
        }
    ).encode()
    answers = iter(
        [response("200 OK", "text/event-stream", b""), response("200 OK", "application/json", unstreamed)]
    )

    async def answer(_reader, writer):
        writer.write(next(answers))

    async with fault_server(answer) as server:
        llm = OpenAICompatibleLLM(server.url)
        items = [i async for i in llm.stream(History().messages("Weather?"), None, TOOLS)]
        await llm.aclose()
    assert items == [ToolCall("call_0", "get_weather", "{}")]
    assert [json.loads(r.body)["stream"] for r in server.requests] == [True, False]


async def test_a_name_repeated_in_every_delta_is_one_name():
    # llama-cpp-python streams a named tool_choice with the id and the name in every chunk.
    chunks = [tool_delta(0, id="c1", name="get_weather", args=part) for part in ('{"city": ', '"Paris"}')]
    answer = send(response("200 OK", "text/event-stream", sse(*chunks, "[DONE]")))
    async with fault_server(answer) as server:
        llm = OpenAICompatibleLLM(server.url)
        items = [i async for i in llm.stream(History().messages("Weather?"), None, TOOLS, "required")]
        await llm.aclose()
    assert items == [ToolCall("c1", "get_weather", '{"city": "Paris"}')]


async def test_with_results_as_user_turns_the_server_is_asked_to_answer():
    # llama-cpp-python under "auto" with results: its "message" can only be a function's name.
    messages = [
        *History().messages("Weather?"),
        assistant_message("", [ToolCall("c", "get_weather", "{}")]),
        tool_message("c", '{"forecast": "sunny"}'),
    ]
    answer = send(response("200 OK", "text/event-stream", sse(delta("Sunny."), "[DONE]")))
    async with fault_server(answer) as server:
        llm = OpenAICompatibleLLM(server.url + "?tool_results=user")
        assert [i async for i in llm.stream(messages, None, TOOLS)] == ["Sunny."]
        await llm.aclose()
    assert json.loads(server.requests[0].body)["tool_choice"] == "none"


async def test_a_bare_function_name_for_a_message_is_no_answer():
    bare = json.dumps({"choices": [{"message": {"content": "functions.get_weather:"}}]}).encode()
    answers = iter(
        [
            response("200 OK", "application/json", bare),
            response("200 OK", "text/event-stream", sse(delta("Sunny."), "[DONE]")),
        ]
    )

    async def answer(_reader, writer):
        writer.write(next(answers))

    async with fault_server(answer) as server:
        llm = OpenAICompatibleLLM(server.url)
        llm._streams_tools = False  # a server known not to stream a choice
        assert [i async for i in llm.stream(History().messages("Weather?"), None, TOOLS)] == ["Sunny."]
        await llm.aclose()
    assert [json.loads(r.body)["tool_choice"] for r in server.requests] == ["auto", "none"]
