"""The Wyoming backends against Home Assistant's real servers (wyoming-faster-whisper 3.8 on tiny.en,
wyoming-piper 2.5 on the bundled voice, each from its own environment on loopback), and against a tiny
asyncio server in this file that answers garbage, truncated, oversized or endless events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
import pytest

from tests.support.server import free_port
from tests.support.speech import read_wav, to_speech_rate
from tests.support.wyoming_servers import wyoming_asr_server, wyoming_tts_server
from voicepeer.audio.formats import SPEECH_RATE
from voicepeer.backends.base import MAX_TEXT_CHARS, BackendError
from voicepeer.backends.chain import Chain, Switch
from voicepeer.backends.registry import BackendContext, BadBackendURL, create
from voicepeer.backends.stages import ASRChain, TTSChain
from voicepeer.backends.tts import PiperTTS
from voicepeer.backends.wyoming import TTS_DEFAULT_RATE, Event, WyomingASR, WyomingTTS
from voicepeer.call.text import words as spoken_words
from voicepeer.runtime import models

QUESTION = "What is the weather like in London today?"
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."


def words(text: str) -> set[str]:
    return set(spoken_words(text))


# -- the real servers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def asr_server(tmp_path_factory):
    server = wyoming_asr_server(tmp_path_factory.mktemp("wyoming-asr"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tts_server(tmp_path_factory):
    server = wyoming_tts_server(tmp_path_factory.mktemp("wyoming-tts"))
    yield server
    server.stop()


@pytest.fixture
def own_asr_server(tmp_path):
    """A server of the test's own, to kill."""
    server = wyoming_asr_server(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def own_tts_server(tmp_path):
    server = wyoming_tts_server(tmp_path)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def whisper(services):
    """The process's embedded recogniser, loaded once for the run, to hear a voice back."""
    return services.asr.chain.first


def url(server) -> str:
    return f"wyoming://127.0.0.1:{server.port}"


@pytest.mark.slow
async def test_transcribes_a_spoken_question(asr_server, make_speech):
    speech = make_speech(QUESTION, rate=SPEECH_RATE, lead_s=0.3, tail_s=0.5)
    audio = read_wav(speech.path)[0]
    asr = create("asr", url(asr_server), BackendContext())
    assert isinstance(asr, WyomingASR) and asr.name == url(asr_server)
    assert asr.capabilities.remote and not asr.capabilities.cheap
    transcript = await asr.transcribe(audio)
    assert len(words(transcript.text) & {"weather", "london", "today"}) >= 2, transcript.text
    assert transcript.audio_s == pytest.approx(audio.size / SPEECH_RATE)


@pytest.mark.slow
async def test_the_probe_finds_the_asr_server_ready_and_learns_its_languages(asr_server):
    asr = WyomingASR("127.0.0.1", asr_server.port)
    await asr.probe()
    assert "en" in asr.capabilities.languages


@pytest.mark.slow
async def test_synthesizes_audible_speech_at_the_voices_rate(tts_server, whisper):
    tts = create("tts", url(tts_server), BackendContext())
    assert isinstance(tts, WyomingTTS)
    voice_rate = json.loads(models.piper_voice_paths(None)[1].read_text())["audio"]["sample_rate"]
    assert tts.sample_rate == tts.capabilities.sample_rate == voice_rate
    assert tts.capabilities.streaming_output  # wyoming-piper 2.5 advertises streaming synthesis
    chunks = [chunk async for chunk in tts.synthesize(SENTENCE)]
    assert len(chunks) > 1 and all(c.dtype == np.int16 and c.ndim == 1 for c in chunks)
    pcm = np.concatenate(chunks)
    assert 1.5 < pcm.size / tts.sample_rate < 10
    assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 300
    heard = await whisper.transcribe(to_speech_rate(pcm, tts.sample_rate))
    assert len(words(heard.text) & {"quick", "brown", "fox", "lazy", "dog", "river"}) >= 3, heard.text


@pytest.mark.slow
async def test_the_plain_synthesize_request_speaks_too(tts_server, whisper):
    tts = WyomingTTS("127.0.0.1", tts_server.port, streaming=False, voice="en_US-joe-medium")
    assert not tts.capabilities.streaming_output and tts.capabilities.languages == ("en",)
    pcm = np.concatenate([chunk async for chunk in tts.synthesize(QUESTION)])
    heard = await whisper.transcribe(to_speech_rate(pcm, tts.sample_rate))
    assert len(words(heard.text) & {"weather", "london", "today"}) >= 2, heard.text


@pytest.mark.slow
async def test_the_probe_says_up_then_down_once_the_server_is_killed(own_asr_server, own_tts_server):
    asr = WyomingASR("127.0.0.1", own_asr_server.port, timeout_s=5)
    tts = WyomingTTS("127.0.0.1", own_tts_server.port, timeout_s=5)
    await asr.probe()
    await tts.probe()
    own_asr_server.kill()
    own_tts_server.kill()
    for backend in (asr, tts):
        with pytest.raises(BackendError, match="connection refused"):
            await backend.probe()


@pytest.mark.slow
async def test_a_paused_server_times_out(asr_server, tts_server, make_speech):
    audio = read_wav(make_speech(QUESTION, rate=SPEECH_RATE, lead_s=0.3, tail_s=0.5).path)[0]
    asr = WyomingASR("127.0.0.1", asr_server.port, timeout_s=1.0)
    tts = WyomingTTS("127.0.0.1", tts_server.port, timeout_s=1.0, sample_rate=22050)
    for server in (asr_server, tts_server):
        server.pause()
    try:
        async with asyncio.timeout(10):  # the backend's own timeout ends it, not this
            with pytest.raises(BackendError, match="timed out"):
                await asr.transcribe(audio)
            with pytest.raises(BackendError, match="timed out"):
                [chunk async for chunk in tts.synthesize(SENTENCE)]
            with pytest.raises(BackendError, match="timed out"):
                await asr.probe()
    finally:
        for server in (asr_server, tts_server):
            server.resume()
    await WyomingASR("127.0.0.1", asr_server.port).probe()  # and back (after the requests left behind)


@pytest.mark.slow
async def test_a_tts_whose_server_is_down_at_start_declares_the_default_rate():
    tts = create("tts", f"wyoming://127.0.0.1:{free_port()}", BackendContext())
    assert tts.sample_rate == TTS_DEFAULT_RATE
    with pytest.raises(BackendError, match="connection refused"):
        [chunk async for chunk in tts.synthesize(SENTENCE)]


@pytest.mark.slow
async def test_the_asr_chain_answers_through_the_fallback_when_the_server_died(
    own_asr_server, whisper, make_speech
):
    audio = read_wav(make_speech(QUESTION, rate=SPEECH_RATE, lead_s=0.3, tail_s=0.5).path)[0]
    remote = create("asr", url(own_asr_server), BackendContext())
    own_asr_server.kill()
    chain = Chain("asr", [remote, whisper], timeout_s=10, probe_interval_s=60)
    switches: list[Switch] = []
    chain.subscribe(switches.append)
    try:
        transcript = await ASRChain(chain).transcribe(audio)
        assert len(words(transcript.text) & {"weather", "london", "today"}) >= 2, transcript.text
        assert [(s.from_, s.to) for s in switches] == [(remote.name, whisper.name)]
        assert "connection refused" in switches[0].reason
    finally:
        await chain.aclose()


@pytest.mark.slow
async def test_the_tts_chain_speaks_through_the_fallback_when_the_server_died(own_tts_server):
    remote = create("tts", url(own_tts_server), BackendContext())
    own_tts_server.kill()
    piper = PiperTTS()
    chain = Chain("tts", [remote, piper], timeout_s=10, probe_interval_s=60)
    switches: list[Switch] = []
    chain.subscribe(switches.append)
    try:
        pcm = np.concatenate([chunk async for chunk in TTSChain(chain).synthesize(SENTENCE)])
        assert pcm.size / remote.sample_rate > 1.5
        assert [(s.from_, s.to) for s in switches] == [(remote.name, piper.name)]
    finally:
        await chain.aclose()


# -- fault injection: a fake server -------------------------------------------------------------------


@dataclass
class Fake:
    port: int
    connections: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the client closed (or dropped) every connection."""


Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def fake_server(answer: Answer) -> AsyncIterator[Fake]:
    """A server that runs ``answer`` on each connection, then waits for the client to close it."""
    fake = Fake(port=0)
    open_connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_connections
        fake.connections += 1
        open_connections += 1
        fake.closed.clear()
        try:
            await answer(reader, writer)
            while await reader.read(65536):
                pass
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            open_connections -= 1
            if open_connections == 0:
                fake.closed.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    fake.port = server.sockets[0].getsockname()[1]
    try:
        yield fake
    finally:
        server.close()
        await server.wait_closed()


async def nothing_left_running(fake: Fake) -> None:
    """The client closed its connection, and no task of it is left in the loop."""
    async with asyncio.timeout(5):
        await fake.closed.wait()
        while len(asyncio.all_tasks()) > 1:
            await asyncio.sleep(0.01)


def send(*events: Event | bytes) -> Answer:
    async def answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for event in events:
            writer.write(event if isinstance(event, bytes) else event.encode())
            await writer.drain()

    return answer


def send_and_close(*events: Event | bytes) -> Answer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await send(*events)(reader, writer)
        writer.write_eof()  # the end of what the server sends: the client reads it as EOF

    return answer


def header(kind: str, **lengths: int) -> bytes:
    return json.dumps({"type": kind, **lengths}).encode() + b"\n"


SILENCE = np.zeros(SPEECH_RATE // 2, dtype=np.int16)

ASR_FAULTS = {
    "garbage": (send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi\n"), "garbage"),
    "not an event": (send(b'{"text": "hello"}\n'), "garbage"),
    "lengths that are not numbers": (send(header("transcript", data_length=-5)), "garbage"),
    "data that is not JSON": (send(header("transcript", data_length=5) + b"hello"), "not JSON"),
    "truncated data": (send_and_close(header("transcript", data_length=100) + b'{"text": "he'), "truncated"),
    "truncated header": (send_and_close(b'{"type": "transcr'), "truncated"),
    "a closed connection": (send_and_close(), "closed the connection"),
    "a header line of 100 kB": (send(b"x" * 100_000), "a line over"),
    "a transcript of 1 MB": (
        send(header("transcript", data_length=1_000_016) + json.dumps({"text": "a" * 1_000_000}).encode()),
        "bytes of data",
    ),
    "a payload of 8 MB": (send(header("audio-chunk", payload_length=8 << 20)), "payload"),
    "a transcript too long": (
        send(Event("transcript", {"text": "word " * (MAX_TEXT_CHARS // 5 + 1)})),
        "a transcript of",
    ),
    "an error event": (
        send(Event("error", {"text": "model exploded", "code": "RuntimeError"})),
        "model exploded",
    ),
    "silence": (send(), "timed out"),
}


@pytest.mark.parametrize("fault", list(ASR_FAULTS))
async def test_a_faulty_asr_server_is_a_backend_error_and_leaves_nothing_running(fault):
    answer, message = ASR_FAULTS[fault]
    async with fake_server(answer) as fake:
        asr = WyomingASR("127.0.0.1", fake.port, timeout_s=0.5)
        with pytest.raises(BackendError, match=message):
            await asr.transcribe(SILENCE)
        await nothing_left_running(fake)


async def test_a_transcript_after_other_events_is_the_answer():
    answer = send(
        Event("transcript-start"),
        Event("transcript-chunk", {"text": "hello"}),
        Event("transcript", {"text": " hello world "}),
    )
    async with fake_server(answer) as fake:
        transcript = await WyomingASR("127.0.0.1", fake.port).transcribe(SILENCE)
        assert transcript.text == "hello world"
        await nothing_left_running(fake)


async def test_the_asr_sends_the_turn_as_wyoming_events():
    received: list[Event] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = json.loads(await reader.readline())
            data = (
                json.loads(await reader.readexactly(head["data_length"])) if head.get("data_length") else {}
            )
            received.append(
                Event(head["type"], data, await reader.readexactly(head.get("payload_length", 0)))
            )
            if head["type"] == "audio-stop":
                break
        writer.write(Event("transcript", {"text": "ok"}).encode())

    audio = (np.arange(SPEECH_RATE * 3 // 4) % 100).astype(np.int16)
    async with fake_server(answer) as fake:
        await WyomingASR("127.0.0.1", fake.port, language="de").transcribe(audio)
    assert [e.type for e in received] == ["transcribe", "audio-start", *["audio-chunk"] * 8, "audio-stop"]
    assert received[0].data == {"language": "de"}
    assert {k: received[1].data[k] for k in ("rate", "width", "channels")} == {
        "rate": 16000,
        "width": 2,
        "channels": 1,
    }
    assert b"".join(e.payload for e in received[2:-1]) == audio.tobytes()


async def test_a_server_without_speech_recognition_is_not_up():
    async with fake_server(send(Event("info", {"asr": [], "tts": [{"name": "piper"}]}))) as fake:
        with pytest.raises(BackendError, match="no asr program"):
            await WyomingASR("127.0.0.1", fake.port, timeout_s=0.5).probe()
        await nothing_left_running(fake)


async def test_a_refused_connection_is_a_backend_error():
    with pytest.raises(BackendError, match="connection refused"):
        await WyomingASR("127.0.0.1", free_port()).transcribe(SILENCE)


def test_urls_name_a_host_and_only_known_options():
    asr = create("asr", "wyoming://localhost", BackendContext())
    assert (asr.host, asr.port) == ("localhost", 10300)
    with pytest.raises(BadBackendURL, match="unknown option"):
        create("asr", "wyoming://localhost:1?voice=x", BackendContext())
    with pytest.raises(BadBackendURL, match="unknown option"):  # the TTS takes voice and speaker only
        create("tts", "wyoming://localhost:1?rate=16000", BackendContext())


def audio_events(pcm: bytes, rate: int, width: int, channels: int, chunk: int = 4096) -> list[Event]:
    fmt = {"rate": rate, "width": width, "channels": channels}
    return [
        Event("audio-start", fmt),
        *(Event("audio-chunk", fmt, pcm[i : i + chunk]) for i in range(0, len(pcm), chunk)),
        Event("audio-stop"),
    ]


async def test_stereo_32_bit_audio_at_another_rate_comes_out_mono_16_bit_at_the_declared_rate():
    t = np.arange(16000) / 16000  # 1 s at 16 kHz
    tone = (np.sin(2 * np.pi * 440 * t) * 0.5 * 2**31).astype("<i4")
    stereo = np.repeat(tone, 2).tobytes()  # an odd chunk size below splits frames across chunks
    async with fake_server(send(*audio_events(stereo, 16000, 4, 2, chunk=4099))) as fake:
        tts = WyomingTTS("127.0.0.1", fake.port, sample_rate=22050)
        pcm = np.concatenate([chunk async for chunk in tts.synthesize("A tone.")])
        await nothing_left_running(fake)
    assert pcm.dtype == np.int16 and abs(pcm.size - 22050) < 200
    assert 0.4 * 32768 < np.abs(pcm[1000:-1000]).max() < 0.6 * 32768
    assert tts.server_rate == 16000


TTS_FAULTS = {
    "24-bit audio": (send(*audio_events(bytes(3000), 22050, 3, 1)), "unsupported audio"),
    "a chunk without a format": (
        send(header("audio-chunk", payload_length=4) + bytes(4)),
        "without a format",
    ),
    "endless audio": (send(*audio_events(bytes(2 * 22050 * 20), 22050, 2, 1)[:-1]), "s of audio"),
    "no end": (send(*[Event("audio-start", {"rate": 22050, "width": 2, "channels": 1})] * 1100), "no end"),
    "an error event": (send(Event("error", {"text": "no such voice"})), "no such voice"),
    "a closed connection mid-audio": (send_and_close(*audio_events(bytes(8192), 22050, 2, 1)[:-1]), "closed"),
}


@pytest.mark.parametrize("fault", list(TTS_FAULTS))
async def test_a_faulty_tts_server_is_a_backend_error_and_leaves_nothing_running(fault):
    answer, message = TTS_FAULTS[fault]
    async with fake_server(answer) as fake:
        tts = WyomingTTS("127.0.0.1", fake.port, sample_rate=22050, timeout_s=0.5)
        with pytest.raises(BackendError, match=message):
            [chunk async for chunk in tts.synthesize("Hi.")]
        await nothing_left_running(fake)


async def test_an_abandoned_synthesis_closes_its_connection():
    async with fake_server(send(*audio_events(bytes(2 * 22050 * 20), 22050, 2, 1)[:-1])) as fake:
        tts = WyomingTTS("127.0.0.1", fake.port, sample_rate=22050, timeout_s=0.5)
        stream = tts.synthesize("Hi.")
        await anext(stream)
        await stream.aclose()  # the listener barged in
        await nothing_left_running(fake)
