"""The outbound audio track: a call's ``Playout`` paced in real time for aiortc.

aiortc pulls frames from ``recv()`` as fast as it returns them, so the track itself is the clock: each
frame is released when the event loop's monotonic clock reaches its presentation time. Two rules come
from how aiortc's sender behaves: a frame without ``pts`` or any exception other than MediaStreamError
ends the sender task for good (silently, the call stays up with a dead audio track), so ``recv()``
catches everything and falls back to silence.
"""

from __future__ import annotations

import asyncio
import logging
from fractions import Fraction

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..call.playout import Playout
from ..runtime.stalls import CAUSES, OWN_CAUSES, OWN_RUN_S, stall_clock

log = logging.getLogger(__name__)

GAP_S = 0.03
"""Two frames handed to aiortc further apart than this (nominally 20 ms) count as a gap in the media."""

MAX_LATE_S = 0.2
"""If the loop stalled for longer than this, restart the pacing clock instead of bursting to catch up.

Bursting hundreds of milliseconds of audio into the network at once would overflow the receiver's jitter
buffer and be dropped anyway; a clean restart keeps pts contiguous and the audio continuous."""


class PlayoutTrack(MediaStreamTrack):
    """A mono s16 track that hands aiortc exactly one 20 ms frame of ``playout`` per 20 ms, with
    contiguous ``pts``, and counts the frames that left late."""

    kind = "audio"

    def __init__(self, playout: Playout) -> None:
        super().__init__()
        self.playout = playout
        self.sample_rate = playout.sample_rate
        self.frame_samples = playout.frame_samples
        self._time_base = Fraction(1, self.sample_rate)
        self._pts = 0
        self._start: float | None = None
        self._last_sent_at: float | None = None
        self.frames_sent = 0
        self.restarts = 0
        self.gaps = 0
        """Frames sent more than ``GAP_S`` after the one before: a stalled loop or a starved sender."""
        self.gap_causes = dict.fromkeys(CAUSES, 0)
        """The gaps by why the loop was late (``runtime.stalls``)."""
        self.max_interval_s = 0.0
        self._due: float | None = None
        self._returned_at: float | None = None
        self._held_s = 0.0  # how long the sender took to come back for this frame after the last one
        self._called_at = 0.0  # when the sender asked for this frame

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        self._called_at = loop.time()
        if self._returned_at is not None:
            self._held_s = self._called_at - self._returned_at
        try:
            await self._wait_for_slot()
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover - defensive: pacing must never kill the sender
            log.exception("outbound pacing failed; sending without delay")
        if self.frames_sent:
            self._pts += self.frame_samples
        sent_at = asyncio.get_running_loop().time()
        try:
            pcm = self.playout.next_frame(sent_at)
        except Exception:
            log.exception("outbound frame failed; sending silence")
            pcm = np.zeros(self.frame_samples, dtype=np.int16)
        self.frames_sent += 1
        if self._last_sent_at is not None:
            interval = sent_at - self._last_sent_at
            self.max_interval_s = max(self.max_interval_s, interval)
            if interval > GAP_S:
                self._count_gap(sent_at)
        self._last_sent_at = sent_at
        frame = self._frame(pcm)
        self._returned_at = loop.time()
        return frame

    def _count_gap(self, sent_at: float) -> None:
        self.gaps += 1
        assert self._last_sent_at is not None
        # A frame is due at its slot, or 20 ms after the last one left if the sender itself was slow.
        due = min(self._due or sent_at, self._last_sent_at + self.frame_samples / self.sample_rate)
        stall = stall_clock().explain(due, sent_at, asked=self._called_at)
        self.gap_causes[stall.cause] += 1
        # Ours, and the machine's the witness saw (told from ours only by it), are worth a line.
        witnessed = stall.witness_late_s >= OWN_RUN_S
        level = logging.INFO if stall.cause in OWN_CAUSES or witnessed else logging.DEBUG
        log.log(
            level,
            "outbound frame %.0f ms late (%s): loop ran %.0f, waited for a core %.0f, slept %.0f, "
            "paused %.0f ms; our other threads %.0f ms of core time; the witness process late "
            "%.0f ms; the sender held the last frame %.0f ms; the loop seen asleep in %s",
            stall.late_s * 1000,
            stall.cause,
            stall.ran_s * 1000,
            stall.waited_s * 1000,
            stall.slept_s * 1000,
            stall.paused_s * 1000,
            stall.own_threads_s * 1000,
            stall.witness_late_s * 1000,
            self._held_s * 1000,
            ", ".join(f"{where} x{n}" for where, n in stall.loop_seen.items()) or "nothing",
        )

    @property
    def own_gaps(self) -> int:
        """Gaps of this process's own making: everything but the machine's (``runtime.stalls``)."""
        return sum(self.gap_causes[c] for c in OWN_CAUSES)

    async def _wait_for_slot(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._start is None:
            self._start = now
            return
        target = self._start + (self._pts + self.frame_samples) / self.sample_rate
        self._due = target
        delay = target - now
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -MAX_LATE_S:
            self.restarts += 1
            log.warning("outbound track %.0f ms late; restarting its clock", -delay * 1000)
            self._start = now - (self._pts + self.frame_samples) / self.sample_rate

    def _frame(self, pcm: np.ndarray) -> av.AudioFrame:
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        frame.time_base = self._time_base
        return frame
