"""Debugging recordings: a call's microphone and the bot's voice, as the front-end got them, in one WAV
file; and each user turn as the ASR got it.

Echo cancellation and barge-in are tuned on what really reaches the server: the client's microphone
after its own processing and two trips through Opus, with the bot's voice coming back at whatever delay
and level the room gives it. ``--record-audio DIR`` writes each call's 16 kHz stream as a stereo WAV
(left: the microphone, right: the reference it was paired with), and beside it the client's playout
reports as the front-end got them (``call-<id>.edits.jsonl``: each edit of the reference and the
recording's sample at which it came; within a chunk, 20 ms, of where the live front-end applied it),
so a problem heard in a real room can be replayed offline through the front-end and the turn detector
(``python -m bench.replay DIR``). Without the reports a replay holds the reference where the client's
receiver no longer played it, and the canceller loses an echo it followed live.
"""

from __future__ import annotations

import json
import logging
import threading
import wave
from collections import deque
from pathlib import Path

import numpy as np

from .formats import SPEECH_RATE
from .receiver import PlayoutEdit

log = logging.getLogger(__name__)


class CallRecorder:
    """Appends paired microphone and reference samples to ``DIR/call-<id>.wav``. Called from the
    front-end's worker thread, one chunk at a time; a disk error stops the recording, never the call.
    A call that closes may still have a chunk in the worker: the files are written under a lock."""

    def __init__(self, directory: str, call_id: str) -> None:
        self.path = Path(directory) / f"call-{call_id}.wav"
        self.edits_path = self.path.with_suffix(".edits.jsonl")
        self.samples = 0
        """Samples written so far, per channel."""
        self._wav: wave.Wave_write | None = None
        self._edits: deque[dict[str, float]] = deque()  # playout edits not yet on disk (two threads)
        self._lock = threading.Lock()  # the files: the worker's chunk against the call's close
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
        if mic.size != reference.size:
            return
        with self._lock:
            if self._wav is None:
                return
            self._write_edits()
            try:
                self._wav.writeframes(np.stack([mic, reference], axis=1).astype(np.int16).tobytes())
                self.samples += mic.size
            except OSError as exc:
                log.warning("stopped recording the call's audio: %s", exc)
                self._close_wav()

    def edit(self, edit: PlayoutEdit) -> None:
        """A playout edit the front-end was just given. Called on the event loop, so it only queues the
        line; the next ``write`` (the front-end's thread) puts it on disk."""
        if self._wav is not None:
            self._edits.append({"sample": self.samples, "ms": edit.ms, "back_ms": edit.back_ms})

    def _write_edits(self) -> None:
        """Under ``_lock``."""
        if not self._edits:
            return
        lines = [self._edits.popleft() for _ in range(len(self._edits))]
        try:
            with self.edits_path.open("a") as f:
                f.writelines(json.dumps(line) + "\n" for line in lines)
        except OSError as exc:
            log.warning("lost the call's playout reports: %s", exc)

    def close(self) -> None:
        with self._lock:
            self._write_edits()
            self._close_wav()

    def _close_wav(self) -> None:
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
