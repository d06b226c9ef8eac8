"""Serving, and stopping without cutting calls.

A SIGTERM (``docker stop``, ``docker compose down``, a rolling restart, a Kubernetes pod deletion)
drains: the server takes no new call from that moment (``/healthz`` answers 503 ``draining``, so a load
balancer or a readiness probe sends new calls to another replica, and offers that still arrive get
503 ``draining``), tells each live call (a ``draining`` event), lets the calls end on their own for up
to ``--drain`` seconds, then closes what is left and exits. Requests about live calls (hang-up, events,
control, trickled candidates) keep working meanwhile. A second SIGTERM, or SIGINT (Ctrl-C at a
terminal), stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from ..call import events
from .state import STATE, ServerState

log = logging.getLogger(__name__)


async def serve(app: web.Application, host: str, port: int, drain_s: float) -> int:
    """Runs ``app`` on ``host:port`` until a signal, draining on SIGTERM; returns the exit status."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        hurry = asyncio.Event()

        def terminate() -> None:
            if stop.is_set():
                hurry.set()
            stop.set()

        def interrupt() -> None:
            stop.set()
            hurry.set()

        loop.add_signal_handler(signal.SIGTERM, terminate)
        loop.add_signal_handler(signal.SIGINT, interrupt)
        await stop.wait()
        if not hurry.is_set():
            await drain(app[STATE], drain_s, hurry)
    finally:
        await runner.cleanup()  # the app's shutdown closes any call still up ("shutdown")
    return 0


async def drain(state: ServerState, limit_s: float, hurry: asyncio.Event | None = None) -> None:
    """Stops taking calls and waits until the live ones have ended, ``limit_s`` has passed, or
    ``hurry`` is set."""
    state.draining = True
    live = list(state.sessions.values())
    log.info("draining: %d live call(s) may go on for up to %.0f s", len(live), limit_s)
    for session in live:
        session.call.events.send(events.draining(limit_s))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    hurry = hurry or asyncio.Event()
    while state.sessions and not hurry.is_set() and (left := deadline - loop.time()) > 0:
        with contextlib.suppress(TimeoutError):
            # Polled: sessions end by many paths (hang-up, watchdogs, the call's length limit).
            await asyncio.wait_for(hurry.wait(), min(0.2, left))
    if state.sessions:
        log.info("drain over: closing %d call(s) still up", len(state.sessions))
    else:
        log.info("drained: every call ended")
