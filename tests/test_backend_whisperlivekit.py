"""The WhisperLiveKit streaming ASR (``ws://HOST:PORT/asr``): against the real server for the words,
the partials and the faults a deployment sees (killed, hung), and against a tiny in-test WebSocket
server for the answers a real one should never give (garbage, 1 MB, no end)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Awaitable, Callable, Iterator

import numpy as np
import pytest
from aiohttp import web

from tests.support.speech import read_wav
from voicepeer.audio.formats import SPEECH_RATE
from voicepeer.backends import registry
from voicepeer.backends.base import BackendError
from voicepeer.backends.whisperlivekit import WhisperLiveKitASR
from voicepeer.call.text import words as spoken_words

QUESTION = "What is the weather like in Paris today?"
CONTENT = {"weather", "paris", "today"}


def words(text: str) -> set[str]:
    return set(spoken_words(text))


@pytest.fixture(scope="module")
def wlk(tmp_path_factory: pytest.TempPathFactory):
    from tests.support.wlk_server import whisperlivekit_server

    server = whisperlivekit_server(tmp_path_factory.mktemp("wlk"))
    yield server
    server.stop()


@pytest.fixture
def question(make_speech) -> np.ndarray:
    speech = make_speech(QUESTION, rate=SPEECH_RATE, lead_s=0.3, tail_s=0.5)
    return read_wav(speech.path)[0]


def backend_for(port: int, timeout_s: float = 10.0) -> WhisperLiveKitASR:
    context = registry.BackendContext(timeout_s=timeout_s)
    backend = registry.create("asr", f"ws://127.0.0.1:{port}/asr", context)
    assert isinstance(backend, WhisperLiveKitASR)
    return backend


async def no_leaks(before: set[asyncio.Task]) -> None:
    await asyncio.sleep(0)
    leaked = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert not leaked, leaked


def test_url_parts() -> None:
    backend = WhisperLiveKitASR("wss://:s3cret@asr.example:8443/wlk/asr?mode=full", language="fr")
    assert backend.name == "wss://asr.example:8443/wlk/asr"
    assert backend.ws_url() == "wss://asr.example:8443/wlk/asr?mode=full&language=fr"
    assert backend.health_url == "https://asr.example:8443/wlk/health"
    assert backend._headers == {"Authorization": "Bearer s3cret"}
    caps = backend.capabilities
    assert caps.streaming_input and caps.partials and caps.remote and not caps.cheap
    assert caps.sample_rate == SPEECH_RATE


# -- the real server ----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_transcribes_a_question(wlk, question: np.ndarray) -> None:
    backend = backend_for(wlk.port)
    try:
        await backend.probe()
        transcript = await backend.transcribe(question)
    finally:
        await backend.aclose()
    assert len(CONTENT & words(transcript.text)) >= 2, transcript
    assert transcript.audio_s == pytest.approx(question.size / SPEECH_RATE)


@pytest.mark.slow
async def test_streams_partials_while_the_user_speaks(wlk, question: np.ndarray) -> None:
    before = asyncio.all_tasks()
    backend = backend_for(wlk.port)
    stream = await backend.open_stream()
    partials = []
    try:
        # The question, then up to 10 s of the pause after it, in 100 ms chunks at about real time, as
        # a call feeds it until its end-of-turn detector fires: the words come while it is fed (on a
        # busy 2-core machine the first can take longer than the question itself).
        chunk = SPEECH_RATE // 10
        pause = np.zeros(10 * SPEECH_RATE, dtype=np.int16)
        audio = np.concatenate([question, pause])
        for start in range(0, audio.size, chunk):
            await stream.feed(audio[start : start + chunk])
            await asyncio.sleep(0.1)
            if stream.partial:
                partials.append(stream.partial)
            if start >= question.size and partials:
                break
        transcript = await stream.finish()
    finally:
        await stream.aclose()
        await backend.aclose()
    assert partials, "no partial before the end of the turn"
    assert len(CONTENT & words(transcript.text)) >= 2, transcript
    await no_leaks(before)


@pytest.mark.slow
async def test_a_hung_server_is_a_bounded_error(wlk, question: np.ndarray) -> None:
    """SIGSTOP: the kernel still accepts connections and buffers what we send, nothing answers."""
    backend = backend_for(wlk.port, timeout_s=1.5)
    before = asyncio.all_tasks()
    stream = await backend.open_stream()
    await stream.feed(question[: question.size // 2])
    wlk.pause()
    try:
        async with asyncio.timeout(60):  # a guard against hanging, not a timing claim
            await stream.feed(question[question.size // 2 :])
            with pytest.raises(BackendError, match="no end of transcript"):
                await stream.finish()  # a turn in flight
            with pytest.raises(BackendError, match="no WebSocket handshake"):
                await backend.transcribe(question)  # a new turn
            with pytest.raises(BackendError, match="/health"):
                await backend.probe()
    finally:
        wlk.resume()
        await stream.aclose()
        await backend.aclose()
    await no_leaks(before)


@pytest.mark.slow
async def test_probe_tells_a_killed_server(wlk) -> None:
    backend = backend_for(wlk.port)
    try:
        await backend.probe()
        wlk.kill()
        with pytest.raises(BackendError, match=r"cannot connect|/health failed"):
            await backend.probe()
        with pytest.raises(BackendError, match="cannot connect"):
            await backend.transcribe(np.zeros(SPEECH_RATE, dtype=np.int16))
    finally:
        await backend.aclose()


# -- a fake server: answers a real one never gives ------------------------------------------------------

Behaviour = Callable[[web.WebSocketResponse], Awaitable[None]]

STATE = {"status": "active_transcription", "lines": [], "buffer_transcription": " hello"}


async def drain(ws: web.WebSocketResponse) -> None:
    async for _ in ws:
        pass


async def garbage(ws: web.WebSocketResponse) -> None:
    await ws.send_json({"type": "config", "useAudioWorklet": True})
    await ws.send_str("{not json")
    await drain(ws)


async def one_megabyte(ws: web.WebSocketResponse) -> None:
    await ws.send_json({"type": "config", "useAudioWorklet": True})
    await ws.send_str(json.dumps({**STATE, "buffer_transcription": "a" * 1_000_000}))
    await drain(ws)


async def long_transcript(ws: web.WebSocketResponse) -> None:
    """Under the message bound, over the text bound."""
    await ws.send_json({"type": "config", "useAudioWorklet": True})
    lines = [{"speaker": 1, "text": " word" * 1000, "start": "0", "end": "1"}] * 5
    await ws.send_json({**STATE, "lines": lines})
    await drain(ws)


async def never_ready(ws: web.WebSocketResponse) -> None:
    await ws.send_json({"type": "config", "useAudioWorklet": True})
    while not ws.closed:
        await ws.send_json(STATE)
        await asyncio.sleep(0.05)


async def silent(ws: web.WebSocketResponse) -> None:
    await drain(ws)


async def closes_mid_turn(ws: web.WebSocketResponse) -> None:
    await ws.send_json({"type": "config", "useAudioWorklet": True})
    await ws.receive()
    await ws.close()


async def wants_encoded_audio(ws: web.WebSocketResponse) -> None:
    await ws.send_json({"type": "config", "useAudioWorklet": False})
    await drain(ws)


async def server_error(ws: web.WebSocketResponse) -> None:
    await ws.send_json({"type": "config", "useAudioWorklet": True})
    await ws.send_json({"status": "error", "error": "FFmpeg error: boom", "lines": []})
    await drain(ws)


async def well_behaved(ws: web.WebSocketResponse) -> None:
    await ws.send_json({"type": "config", "useAudioWorklet": True})
    async for msg in ws:
        if msg.data == b"":
            lines = [{"speaker": 1, "text": " Hello", "start": "0", "end": "1"}]
            await ws.send_json({**STATE, "lines": lines, "buffer_transcription": " there."})
            await ws.send_json({"type": "ready_to_stop"})


@pytest.fixture
def fake() -> Iterator[Callable[[Behaviour], str]]:
    """Serves one behaviour per path from its own thread and loop (so that the test's loop holds only
    the client's tasks); returns the ``ws://`` URL of a behaviour."""
    behaviours: dict[str, Behaviour] = {}

    async def endpoint(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        with contextlib.suppress(ConnectionError):
            await behaviours[request.match_info["name"]](ws)
        return ws

    async def health(request: web.Request) -> web.Response:
        kind = request.match_info["name"]
        if kind == "garbage":
            return web.Response(text="<html>")
        if kind == "broken":
            return web.Response(status=503, text="loading")
        return web.json_response({"status": "ok", "ready": True})

    app = web.Application()
    app.router.add_get("/{name}/asr", endpoint)
    app.router.add_get("/{name}/health", health)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def serve() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    port = asyncio.run_coroutine_threadsafe(serve(), loop).result(timeout=10)

    def url(behaviour: Behaviour) -> str:
        behaviours[behaviour.__name__] = behaviour
        return f"ws://127.0.0.1:{port}/{behaviour.__name__}/asr"

    yield url
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


@pytest.mark.parametrize(
    ("behaviour", "match"),
    [
        (garbage, "garbage message"),
        (one_megabyte, "a message over"),
        (long_transcript, "over 16000 characters"),
        (never_ready, "no end of transcript"),
        (silent, "no config message"),
        (closes_mid_turn, r"connection closed|connection lost"),
        (wants_encoded_audio, "--pcm-input"),
        (server_error, "server error"),
    ],
)
async def test_bad_answers_are_backend_errors(fake, behaviour: Behaviour, match: str) -> None:
    before = asyncio.all_tasks()
    backend = WhisperLiveKitASR(fake(behaviour), timeout_s=1.0)
    try:
        with pytest.raises(BackendError, match=match):
            await backend.transcribe(np.zeros(SPEECH_RATE, dtype=np.int16))
    finally:
        await backend.aclose()
    await no_leaks(before)


async def test_a_stream_abandoned_mid_turn_leaves_nothing(fake) -> None:
    before = asyncio.all_tasks()
    backend = WhisperLiveKitASR(fake(never_ready), timeout_s=1.0)
    stream = await backend.open_stream()
    await stream.feed(np.zeros(SPEECH_RATE, dtype=np.int16))
    await asyncio.sleep(0.2)
    assert stream.partial == "hello"
    await stream.aclose()
    await stream.aclose()  # idempotent
    with pytest.raises(BackendError):
        await stream.feed(np.zeros(160, dtype=np.int16))
    await backend.aclose()
    await backend.aclose()
    await no_leaks(before)


async def test_the_final_text_joins_lines_and_buffer(fake) -> None:
    backend = WhisperLiveKitASR(fake(well_behaved), timeout_s=2.0)
    try:
        await backend.probe()
        transcript = await backend.transcribe(np.zeros(SPEECH_RATE, dtype=np.int16))
    finally:
        await backend.aclose()
    assert transcript.text == "Hello there."
    assert transcript.audio_s == pytest.approx(1.0)


@pytest.mark.parametrize(("name", "match"), [("garbage", "garbage"), ("broken", "HTTP 503")])
async def test_probe_refuses_a_bad_health_route(fake, name: str, match: str) -> None:
    url = fake(well_behaved)
    backend = WhisperLiveKitASR(url.replace("/well_behaved/", f"/{name}/"), timeout_s=1.0)
    try:
        with pytest.raises(BackendError, match=match):
            await backend.probe()
    finally:
        await backend.aclose()
