"""The HTTP surface: offer validation, health while models are missing, metrics and static pages.

The server here is the real application with a model path that does not exist, which is also how we
test that a missing model gives a clear answer instead of a crash or a hang.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.support.offers import local_offer
from tests.support.server import metric_values
from voicepeer.config import ASRConfig, Config
from voicepeer.runtime.stalls import CAUSES
from voicepeer.transport.app import create_app


@pytest.fixture
async def client():
    app = create_app(Config(asr=ASRConfig(model="/nonexistent/whisper")))
    async with TestClient(TestServer(app)) as c:
        for _ in range(200):  # wait for the (failing) background load to finish
            if (await c.get("/healthz")).status == 503 and (await (await c.get("/healthz")).json())[
                "status"
            ] == "error":
                break
            await asyncio.sleep(0.05)
        yield c


async def test_health_reports_the_missing_model_and_offers_get_503_naming_it(client: TestClient):
    r = await client.get("/healthz")
    body = await r.json()
    assert r.status == 503 and body["status"] == "error"
    assert "/nonexistent/whisper" in body["error"] and "faster-whisper model directory" in body["error"]
    r = await client.post("/offer", json={"type": "offer", "sdp": await local_offer()})
    assert r.status == 503
    assert (await r.json())["error"] == "models_failed"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "bad_json"),
        (b"\xff\xfe", 400, "bad_json"),
        (b"[]", 400, "bad_offer"),
        (b'{"type": "answer", "sdp": "v=0"}', 400, "bad_offer"),
        (b'{"type": "offer"}', 400, "bad_offer"),
        (b'{"type": "offer", "sdp": ""}', 400, "bad_offer"),
        (b'{"type": "offer", "sdp": "v=0\\r\\nm=audio nonsense"}', 400, "invalid_sdp"),
        (b'{"type": "offer", "sdp": "' + b"a" * 70000 + b'"}', 413, "too_large"),
    ],
)
async def test_malformed_offers_get_a_4xx_json_error(client: TestClient, body: bytes, status: int, code: str):
    r = await client.post("/offer", data=body, headers={"Content-Type": "application/json"})
    assert r.status == status
    payload = await r.json()
    assert payload["error"] == code and payload["message"]
    assert (await client.get("/healthz")).status == 503  # still up, still answering


async def test_an_offer_without_audio_is_refused(client: TestClient):
    r = await client.post("/offer", json={"type": "offer", "sdp": await local_offer(None)})
    assert r.status == 400 and (await r.json())["error"] == "no_audio"


@pytest.mark.parametrize("direction", ["sendonly", "recvonly", "inactive"])
async def test_a_one_way_audio_offer_is_refused(client: TestClient, direction: str):
    r = await client.post("/offer", json={"type": "offer", "sdp": await local_offer(direction)})
    assert r.status == 400
    body = await r.json()
    assert body["error"] == "bad_direction" and direction in body["message"]


async def test_metrics_count_rejections(client: TestClient):
    await client.post("/offer", data=b"nope")
    await client.post("/offer", data=b"nope", headers={"Content-Type": "application/json"})
    text = await (await client.get("/metrics")).text()
    assert "voicepeer_models_ready 0" in text
    assert "voicepeer_offers_rejected_total 2" in text
    assert 'voicepeer_rejections_total{code="unsupported_media_type"} 1' in text
    assert 'voicepeer_rejections_total{code="bad_json"} 1' in text
    assert "voicepeer_sessions 0" in text
    # The standard library's process metrics: memory, open files, CPU.
    assert "process_resident_memory_bytes" in text and "process_open_fds" in text
    assert "process_cpu_seconds_total" in text


async def test_echo_cancellation_must_be_a_boolean(client: TestClient):
    sdp = await local_offer()
    r = await client.post("/offer", json={"type": "offer", "sdp": sdp, "echo_cancellation": "yes"})
    assert r.status == 400 and (await r.json())["error"] == "bad_offer"


async def test_metrics_report_how_late_the_event_loop_runs(client: TestClient):
    time.sleep(0.05)  # noqa: ASYNC251 - the point: hold the loop as a blocking call in it would
    await asyncio.sleep(0.05)
    text = await (await client.get("/metrics")).text()
    values = metric_values(text)
    assert values["voicepeer_loop_lag_max_seconds"] >= 0.04
    assert values['voicepeer_loop_lag_seconds{quantile="1"}'] >= 0.04
    assert values["voicepeer_loop_lag_seconds_count"] > 0
    assert values["voicepeer_outbound_gaps_total"] == 0
    for cause in CAUSES:  # every cause is reported, at zero until a frame leaves late
        assert values[f'voicepeer_outbound_gaps_by_cause_total{{cause="{cause}"}}'] == 0


async def test_demo_page_and_client_module_are_served(client: TestClient):
    page = await (await client.get("/")).text()
    assert "/demo/demo.js" in page and 'id="connect"' in page
    module = await client.get("/client/voicepeer.js")
    assert module.status == 200 and "export class VoicePeerClient" in await module.text()
    assert (await client.get("/demo/demo.js")).status == 200


async def test_unknown_session_delete_is_404(client: TestClient):
    assert (await client.delete("/sessions/nope")).status == 404


@pytest.mark.parametrize(
    "argv",
    [["--port", "9000", "serve"], ["serve", "--port", "9000"], ["--port", "9000"]],
)
def test_cli_options_count_before_and_after_the_subcommand(argv):
    from voicepeer.cli import build_parser, config_from_args

    assert config_from_args(build_parser().parse_args(argv)).server.port == 9000


@pytest.mark.parametrize(
    "argv",
    [
        ["--asr-threads", "-1"],
        ["--llm-threads", "-2"],
        ["--tts-threads", "two"],
        ["--port", "70000"],
        ["--llm-max-tokens", "0"],
        ["--llm-timeout", "-1"],
        ["--vad-threshold", "1.5"],
        ["--vad-threshold", "nan"],
        ["--turn-ttl", "inf"],
        ["--max-sessions", "0"],
        ["--media-timeout", "0"],
        ["--auto-gain", "40"],
        ["serve", "--interrupt-after-ms", "-300"],
    ],
)
def test_cli_refuses_a_number_out_of_range_as_a_usage_error(argv, capsys):
    from voicepeer.cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    flag = next(a for a in argv if a.startswith("--"))
    assert f"argument {flag}" in capsys.readouterr().err


def test_cli_refuses_an_environment_value_out_of_range(monkeypatch, capsys):
    from voicepeer.cli import build_parser

    monkeypatch.setenv("VOICEPEER_LLM_THREADS", "-4")
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([])
    assert exited.value.code == 2
    assert "--llm-threads" in capsys.readouterr().err
    monkeypatch.setenv("VOICEPEER_LLM_THREADS", "3")
    assert build_parser().parse_args([]).llm_threads == 3


def audio_mids(sdp: str) -> list[str]:
    sections = [m for m in sdp.split("m=")[1:] if m.startswith("audio")]
    return [line[len("a=mid:") :] for m in sections for line in m.split("\r\n") if line.startswith("a=mid:")]


@pytest.mark.parametrize(
    ("second", "fields", "says"),
    [
        ("sendonly", {"unprocessed_mid": 1}, "must be a string"),
        ("sendonly", {"unprocessed_mid": ""}, "must be a string"),
        ("sendonly", {"unprocessed_mid": "x" * 33}, "must be a string"),
        ("sendonly", {"unprocessed_mid": "7"}, "names no audio m-line"),
        ("sendonly", {"unprocessed_mid": "FIRST"}, "names no audio m-line"),  # the microphone's own
        ("sendonly", {"unprocessed_mid": "CHANNEL"}, "names no audio m-line"),
        ("recvonly", {"unprocessed_mid": "SECOND"}, "sends nothing"),
        ("sendonly", {"unprocessed_mid": "SECOND", "echo_cancellation": False}, "goes with"),
    ],
)
async def test_a_bad_unprocessed_capture_is_a_bad_offer(client: TestClient, second, fields, says):
    sdp = await local_offer(second=second)
    first, second_mid = audio_mids(sdp)
    names = {"FIRST": first, "SECOND": second_mid, "CHANNEL": "2"}
    body = {"type": "offer", "sdp": sdp, "echo_cancellation": True, **fields}
    if isinstance(body["unprocessed_mid"], str):
        body["unprocessed_mid"] = names.get(body["unprocessed_mid"], body["unprocessed_mid"])
    r = await client.post("/offer", json=body)
    payload = await r.json()
    assert r.status == 400 and payload["error"] == "bad_offer" and says in payload["message"], payload


async def test_a_good_unprocessed_capture_passes_the_offer_checks(client: TestClient):
    sdp = await local_offer(second="sendonly")
    body = {"type": "offer", "sdp": sdp, "echo_cancellation": True, "unprocessed_mid": audio_mids(sdp)[1]}
    r = await client.post("/offer", json=body)
    assert r.status == 503 and (await r.json())["error"] == "models_failed"  # past every check of the offer
