"""``/metrics``: the Prometheus exposition, by ``prometheus_client``.

One registry per server (tests build many), holding:

- per-turn stage latencies as histograms (``voicepeer_stage_seconds{stage}``: from the end of the
  user's speech to the endpoint, transcript, first token, first audio, first frame), fed by each call's
  own ``metrics`` events;
- calls by how they ended (``voicepeer_calls_total{outcome}``) and refusals by error code
  (``voicepeer_rejections_total{code}``);
- the library's process metrics (resident memory, open files, CPU seconds) and garbage collector;
- live figures read at scrape time: sessions, models ready, turns, interruptions, outbound frames and
  gaps, rate-limited messages (closed calls plus the running ones), and the event loop's lag.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, GCCollector, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from ..call.events import Event
from ..runtime.stalls import CAUSES
from ..runtime.workers import idle_trim

if TYPE_CHECKING:
    from .state import ServerState

STAGES = ("endpoint", "transcript", "llm_first_token", "tts_first_audio", "first_frame_sent")
BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.calls = Counter(
            "voicepeer_calls", "Calls that ended, by how they ended", ["outcome"], registry=self.registry
        )
        self.rejections = Counter(
            "voicepeer_rejections",
            "Offers and requests refused, by error code",
            ["code"],
            registry=self.registry,
        )
        self.stages = Histogram(
            "voicepeer_stage_seconds",
            "Seconds from the end of the user's speech to each stage of a turn",
            ["stage"],
            buckets=BUCKETS,
            registry=self.registry,
        )

        self.backend_switches = Counter(
            "voicepeer_backend_switches",
            "Moves of a stage (asr, tts, llm) to another backend, by the backend moved to (none: all down)",
            ["stage", "to"],
            registry=self.registry,
        )

    def on_event(self, event: Event) -> None:
        """A call's event sink: a turn's ``metrics`` event feeds the stage histograms."""
        if event.get("type") != "metrics":
            return
        for stage in STAGES:
            value = event.get(f"{stage}_ms")
            if isinstance(value, int | float):
                self.stages.labels(stage=stage).observe(max(0.0, value / 1000))

    def attach(self, state: ServerState) -> None:
        self.registry.register(_Live(state))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _tasks() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # scraped off the loop (never, in the server)
        return 0


class _Live:
    """Figures read off the server's state at scrape time."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def describe(self):
        return []  # computed at scrape time; nothing to reserve in the registry

    def collect(self):
        from .state import session_counts

        state = self.state
        yield GaugeMetricFamily("voicepeer_sessions", "Calls up now", value=len(state.sessions))
        yield GaugeMetricFamily(
            "voicepeer_draining",
            "1 while shutting down: no new calls, live ones finishing",
            value=int(state.draining),
        )
        yield GaugeMetricFamily(
            "voicepeer_models_ready", "1 once every model is loaded", value=int(state.services is not None)
        )
        yield GaugeMetricFamily(
            "voicepeer_uptime_seconds",
            "Seconds since the server started",
            value=time.monotonic() - state.started,
        )
        live: dict[str, int] = {}
        for session in state.sessions.values():
            for name, value in session_counts(session).items():
                live[name] = live.get(name, 0) + value
        causes = CounterMetricFamily(
            "voicepeer_outbound_gaps_by_cause",
            "Outbound gaps by why the loop was late: machine is other processes or steal; the rest are ours",
            labels=["cause"],
        )
        for cause in CAUSES:
            name = f"outbound_gaps_{cause}_total"
            causes.add_metric([cause], state.counters[name] + live.get(name, 0))
        yield causes
        for name, value in state.counters.items():
            if name.startswith("outbound_gaps_") and name != "outbound_gaps_total":
                continue
            yield CounterMetricFamily(
                f"voicepeer_{name.removesuffix('_total')}",
                name.replace("_", " "),
                value=value + live.get(name, 0),
            )
        lag = state.loop_monitor
        quantiles = GaugeMetricFamily(
            "voicepeer_loop_lag_seconds",
            "How late the event loop wakes (it releases every audio frame), over the last five minutes",
            labels=["quantile"],
        )
        for q in (50, 99, 100):
            quantiles.add_metric([f"{q / 100:g}"], lag.percentile(q))
        yield quantiles
        yield GaugeMetricFamily("voicepeer_loop_lag_seconds_count", "Loop lag samples", value=lag.samples)
        yield GaugeMetricFamily("voicepeer_loop_lag_max_seconds", "Longest loop lag", value=lag.max_s)
        yield GaugeMetricFamily(
            "voicepeer_asyncio_tasks", "Tasks alive on the event loop (a leak shows here)", value=_tasks()
        )
        yield CounterMetricFamily(
            "voicepeer_memory_trims", "Freed native memory given back to the system", value=idle_trim.trims
        )
        yield CounterMetricFamily(
            "voicepeer_memory_trims_deferred",
            "Times a due memory trim waited for every call's voice to go quiet",
            value=idle_trim.deferred,
        )
        up = GaugeMetricFamily(
            "voicepeer_backend_up",
            "1 if the backend answered its last request or probe, 0 if it failed, -1 not yet asked",
            labels=["stage", "backend"],
        )
        if state.services is not None:
            for chain in state.services.chains:
                for backend in chain.states:
                    up.add_metric(
                        [chain.stage, backend.backend.name], {None: -1, True: 1, False: 0}[backend.up]
                    )
        yield up
        yield CounterMetricFamily(
            "voicepeer_loop_lags_over_30ms", "Loop wake-ups over 30 ms late", value=lag.over_30ms
        )
