"""Debugging recordings: a call's microphone and the bot's voice, as the front-end got them, in one WAV
file; and each user turn as the ASR got it.

Echo cancellation and barge-in are tuned on what really reaches the server: the client's microphone
after its own processing and two trips through Opus, with the bot's voice coming back at whatever delay
and level the room gives it. ``--record-audio DIR`` writes each call's 16 kHz stream as a stereo WAV
(left: the microphone, right: the reference it was paired with), so a problem heard in a real room can
be replayed offline through the front-end and the turn detector, sample for sample.
"""

from __future__ import annotations

import logging
import wave
from pathlib import Path

import numpy as np

from .formats import SPEECH_RATE

log = logging.getLogger(__name__)


class CallRecorder:
    """Appends paired microphone and reference samples to ``DIR/call-<id>.wav``. Called from the
    front-end's worker thread, one chunk at a time; a disk error stops the recording, never the call."""

    def __init__(self, directory: str, call_id: str) -> None:
        self.path = Path(directory) / f"call-{call_id}.wav"
        self._wav: wave.Wave_write | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._wav = wave.open(str(self.path), "wb")
            self._wav.setnchannels(2)
            self._wav.setsampwidth(2)
            self._wav.setframerate(SPEECH_RATE)
        except OSError as exc:
            log.warning("not recording the call's audio: %s", exc)
            self._wav = None

    def write(self, mic: np.ndarray, reference: np.ndarray) -> None:
        if self._wav is None or mic.size != reference.size:
            return
        try:
            self._wav.writeframes(np.stack([mic, reference], axis=1).astype(np.int16).tobytes())
        except OSError as exc:
            log.warning("stopped recording the call's audio: %s", exc)
            self.close()

    def close(self) -> None:
        if self._wav is not None:
            try:
                self._wav.close()
            except OSError:
                pass
            self._wav = None


class TurnRecorder:
    """Writes each committed user turn, as the ASR got it, to ``DIR/turn-<name>-<number>.wav``
    (``--record-turns DIR``): what the recogniser heard, to tell its mistakes from the detector's. A disk
    error loses that turn's file, never the call."""

    def __init__(self, directory: str, name: str) -> None:
        self.directory = Path(directory)
        self.name = name

    def write(self, number: int, audio: np.ndarray) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"turn-{self.name}-{number:03d}.wav"
            with wave.open(str(path), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(SPEECH_RATE)
                w.writeframes(audio.astype(np.int16).tobytes())
        except OSError as exc:
            log.warning("could not record turn %d: %s", number, exc)
