"""The user's words while they speak, from a streaming ASR (``Capabilities.streaming_input``).

One ``LiveTranscript`` per utterance: the conversation feeds it what is new of the turn's audio at each
progress event of the detector, so the recogniser works while the user talks, its running hypothesis
is the partial transcript, and the final one is nearly done when the turn ends. It is single use: the
first turn made of the utterance (at a pause, or at its end) finishes it; a turn the user then goes on
with, or one that carries a held phrase, is transcribed whole by the stage's ``transcribe``. Any
failure of the stream only means the turn is transcribed that way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import numpy as np

from ..backends.asr import ASR, ASRStream, Transcript
from ..backends.base import BackendError

log = logging.getLogger(__name__)


class LiveTranscript:
    def __init__(self, asr: ASR) -> None:
        self._asr = asr
        self._stream: ASRStream | None = None
        self._lock = asyncio.Lock()  # feeds go in order, and the finish after them
        self.fed = 0
        """Samples of the utterance the recogniser has had."""
        self.done = False
        """Finished, failed or closed: nothing more is fed."""

    async def feed(self, audio: np.ndarray) -> str | None:
        """Feeds what is new in ``audio`` (the utterance so far, from its start); returns the words
        recognised so far, or None once the stream is done."""
        async with self._lock:
            if self.done:
                return None
            try:
                if self._stream is None:
                    self._stream = await self._asr.open_stream()
                if audio.size > self.fed:
                    await self._stream.feed(audio[self.fed :])
                    self.fed = audio.size
                return self._stream.partial
            except BackendError as exc:
                log.info("live transcript given up: %s", exc)
                await self._drop()
                return None

    async def finish(self, audio: np.ndarray) -> Transcript | None:
        """The transcript of ``audio`` (the whole utterance) from the stream, or None if it cannot give
        it (never opened, failed, already finished): then the caller transcribes the audio itself."""
        async with self._lock:
            stream, self._stream = self._stream, None
            was_done, self.done = self.done, True
            if stream is None or was_done:
                return None
            try:
                if audio.size > self.fed:
                    await stream.feed(audio[self.fed :])
                return await stream.finish()
            except BackendError as exc:
                log.info("live transcript failed at the end of the turn: %s", exc)
                return None
            finally:
                with contextlib.suppress(Exception):
                    await stream.aclose()

    async def aclose(self) -> None:
        """Abandons the stream (a new utterance began, or the call ended). Does not wait for a feed in
        flight: that one finds the stream closed."""
        self.done = True
        await self._drop()

    async def _drop(self) -> None:
        self.done = True
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                await stream.aclose()
