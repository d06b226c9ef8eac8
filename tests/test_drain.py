"""Stopping without cutting calls: a real server, real aiortc calls, real signals.

SIGTERM drains (no new calls, live ones go on up to ``--drain`` seconds, then the server exits);
a second SIGTERM or a SIGINT stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.support.offers import local_offer
from tests.support.rtc_client import RtcClient
from tests.support.server import ServerProcess
from tests.support.speech import read_wav

pytestmark = pytest.mark.slow


def health(server: ServerProcess) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(server.url + "/healthz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def exited(server: ServerProcess, timeout: float) -> int:
    assert server.proc is not None
    deadline = time.monotonic() + timeout
    while (code := server.proc.poll()) is None:
        assert time.monotonic() < deadline, "the server did not exit"
        await asyncio.sleep(0.1)  # another process: polled
    return code


async def ping(client: RtcClient) -> None:
    async with aiohttp.ClientSession() as http:
        url = client.base_url + client.answer["control_url"]
        async with http.post(url, json={"type": "ping"}) as r:
            assert r.status == 200, await r.text()


@contextlib.asynccontextmanager
async def call_on(server: ServerProcess) -> AsyncIterator[RtcClient]:
    """A connected call on ``server``, closed at the end."""
    client = RtcClient(server.url)
    try:
        await client.connect()
        await client.wait_for(lambda m: m["type"] == "session", 10)
        yield client
    finally:
        await client.close()


def signal_server(server: ServerProcess, signum: int) -> None:
    assert server.proc is not None
    server.proc.send_signal(signum)


async def test_sigterm_lets_a_live_call_finish_and_sends_new_calls_away(tmp_path, make_speech):
    question = make_speech("What is the capital of France?", lead_s=0.3, tail_s=1.5)
    with ServerProcess("--drain", "30", log_path=tmp_path / "server.log") as server:
        async with call_on(server) as client:
            signal_server(server, signal.SIGTERM)
            _, drained = await client.wait_for(lambda m: m["type"] == "draining", 10)
            assert drained["limit_s"] == 30

            # New calls are refused with a code a balancer or client can act on; health says why.
            status, body = health(server)
            assert (status, body["status"], body["sessions"]) == (503, "draining", 1)
            offer = {"sdp": await local_offer(), "type": "offer"}
            async with aiohttp.ClientSession() as http, http.post(server.url + "/offer", json=offer) as r:
                assert r.status == 503
                assert (await r.json())["error"] == "draining"
                assert r.headers["Retry-After"] == "1"

            # The live call carries on: it hears and answers a question, and takes control messages.
            client.say(read_wav(question.path)[0])
            await client.wait_for(lambda m: m["type"] == "transcript" and m["final"], 20)
            await client.wait_for(lambda m: m["type"] == "reply" and m["final"], 60)
            await ping(client)

            # Its hang-up ends the drain, long before the limit.
            session_url = server.url + client.answer["session_url"]
            async with aiohttp.ClientSession() as http, http.delete(session_url) as r:
                assert r.status == 204
            hung_up = time.monotonic()
            assert await exited(server, 25) == 0
            assert time.monotonic() - hung_up < 25
    assert "drained: every call ended" in server.log()


async def test_a_call_still_up_at_the_drain_limit_is_closed_then_and_not_before(tmp_path):
    with ServerProcess("--drain", "3", log_path=tmp_path / "server.log") as server:
        async with call_on(server) as client:
            signal_server(server, signal.SIGTERM)
            signalled = time.monotonic()
            await client.wait_for(lambda m: m["type"] == "draining", 10)
            await asyncio.sleep(1.0)
            await ping(client)  # still up within the limit
            assert client.pc.connectionState == "connected"
            assert await exited(server, 30) == 0
            assert time.monotonic() - signalled >= 3.0
    assert "drain over: closing 1 call(s) still up" in server.log()


@pytest.mark.parametrize("how", ["second SIGTERM", "SIGINT"])
async def test_a_second_sigterm_or_a_sigint_stops_at_once(tmp_path, how):
    with ServerProcess("--drain", "120", log_path=tmp_path / "server.log") as server:
        async with call_on(server) as client:
            if how == "SIGINT":
                signal_server(server, signal.SIGINT)
            else:
                signal_server(server, signal.SIGTERM)
                await client.wait_for(lambda m: m["type"] == "draining", 10)
                signal_server(server, signal.SIGTERM)
            assert await exited(server, 30) == 0  # not the 120 s of the drain
