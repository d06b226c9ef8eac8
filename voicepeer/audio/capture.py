"""The client's second, unprocessed capture of its microphone, and when the call takes it instead.

A browser's echo canceller, asked for by default, is what a loudspeaker needs, and what a headset user
pays for: Chromium's AEC3 takes speech over the bot's first ~6 s of a call for double talk and removes
most of it before it is sent (it stops only once it has heard that much of the far end with no echo
path, its "transparent mode"). In the barge-in benchmark, a user cutting in ~3-4 s into the bot's first
reply was understood 2 times in 9 (50 % WER); ~10-12 s in, 9 in 9 (4.2 %). A page cannot switch a live
track's canceller off, but it can open the same microphone again without one and send both.

The call measures the bot's echo in the unprocessed capture (``EchoCoupling``, the front-end's own
measure) while it goes on hearing the processed one. If the bot's voice does not come back in it
(headphones), it takes the unprocessed capture from then on: the server's front-end still cancels an
echo the moment one appears. If the voice does come back (a loudspeaker), the browser's canceller is
doing its job and the processed capture stays.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np

from .echopath import EchoCoupling, far_active
from .formats import InboundConverter
from .frontend import FarEndReference, FramePairs

log = logging.getLogger(__name__)

Choice = Literal["measuring", "taken", "refused"]


class UnprocessedCapture:
    """The second capture's own conversion, reference pairing and echo measurement.

    Its reference is a tap of its own on the bot's voice (``reference.on_frame`` as a playout listener),
    taken as this capture's samples arrive, so the two captures each stay paired with "now" whichever
    one the call is hearing."""

    def __init__(self) -> None:
        self.converter = InboundConverter()
        self.reference = FarEndReference()
        self.coupling = EchoCoupling(expected=True)
        self.choice: Choice = "measuring"
        self._pairs = FramePairs()

    def measure(self, speech: np.ndarray, reference: np.ndarray) -> Choice:
        """Feeds 16 kHz samples and the reference paired with them; returns the choice so far, which
        changes once, from ``measuring``. Blocking (an FFT every 250 ms of the bot speaking)."""
        if self.choice != "measuring":
            return self.choice
        for mic, ref in self._pairs.push(speech, reference):
            self.coupling.push(mic, ref, far_active(ref))
            if self.coupling.seen:
                self.choice = "refused"
                log.info("the unprocessed capture holds the bot's echo: the browser's canceller stays")
                break
            if not self.coupling.present:
                self.choice = "taken"
                log.info("no echo in the unprocessed capture (headphones): hearing it instead")
                break
        return self.choice
