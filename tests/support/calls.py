"""Real aiortc calls against the real app on loopback, for the tests that need a whole call."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp.test_utils import TestServer

from tests.support.rtc_client import RtcClient
from voicepeer.call.services import Services
from voicepeer.config import Config
from voicepeer.runtime.load import InferenceLoad
from voicepeer.transport.app import STATE, create_app


async def serve(services: Services, **config) -> TestServer:
    """The app on loopback with the suite's shared models. Each server starts with a fresh record of
    the turns' load, as a new process would: the slow turns of earlier tests are not its own."""
    services.load = InferenceLoad()
    server = TestServer(create_app(Config(**config), services=services), host="127.0.0.1")
    await server.start_server()
    return server


async def wait_until(condition, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def call(services: Services, **config) -> AsyncIterator[tuple[TestServer, RtcClient]]:
    """A connected call (events channel open); on the way out the client hangs up, and the server must
    have released the session before it is closed."""
    server = await serve(services, **config)
    client = RtcClient(str(server.make_url("")))
    try:
        await client.connect()
        await client.wait_for(lambda m: m["type"] == "session", 10)
        yield server, client
    finally:
        await client.close()
        try:
            await wait_until(lambda: not server.app[STATE].sessions, 10)
        finally:
            await server.close()
