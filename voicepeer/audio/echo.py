"""Acoustic echo cancellers for the 16 kHz speech path, fed with the exact far-end reference.

The peer knows, sample by sample, what it sent to the client, so it can remove its own voice from the
microphone on the server. Two cancellers are here behind one interface, because they fail differently
(measured by ``bench/frontend.py``):

- ``aec3``: WebRTC's AEC3 (PyPI ``pywebrtc-audio``): finds the delay by itself and converges in
  seconds, but its suppressor may pull down the user's words while the bot talks (double-talk).
- ``speex``: Debian's libspeexdsp through ctypes: a linear MDF filter whose tail must cover the echo
  delay, slow to converge, gentle with double-talk.

Both take 10 ms frames (160 samples of int16 at 16 kHz) of near end (microphone) and far end (what was
played) in step with each other, and return the near end with the echo removed.
"""

from __future__ import annotations

import abc
import ctypes
import ctypes.util

import numpy as np

from .formats import SPEECH_RATE

FRAME = SPEECH_RATE // 100
"""Samples per 10 ms frame at 16 kHz: the unit both cancellers work in."""


class EchoCanceller(abc.ABC):
    """Removes the far end's echo from the near end, one 10 ms frame at a time. Not thread-safe."""

    name: str

    @abc.abstractmethod
    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        """``near`` and ``far`` are ``FRAME`` int16 samples each, aligned in time; returns ``FRAME``."""

    def close(self) -> None:
        return None  # optional: cancellers holding native state free it here


class Aec3(EchoCanceller):
    name = "aec3"

    def __init__(self, stream_delay_ms: int = 0) -> None:
        from pywebrtc_audio import EchoCanceller as _Aec3

        self._aec = _Aec3(sample_rate=SPEECH_RATE, num_channels=1, stream_delay_ms=stream_delay_ms)

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        return self._aec.process(np.ascontiguousarray(near, np.int16), np.ascontiguousarray(far, np.int16))


_SPEEX_ECHO_SET_SAMPLING_RATE = 24
_SPEEX_PREPROCESS_SET_ECHO_STATE = 24
_SPEEX_PREPROCESS_SET_DENOISE = 0
_SPEEX_PREPROCESS_SET_AGC = 2
_I16P = ctypes.POINTER(ctypes.c_int16)


def _libspeexdsp() -> ctypes.CDLL:
    name = ctypes.util.find_library("speexdsp") or "libspeexdsp.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise RuntimeError("libspeexdsp is not installed: apt-get install libspeexdsp1") from exc
    lib.speex_echo_state_init.restype = ctypes.c_void_p
    lib.speex_echo_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.speex_echo_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lib.speex_echo_cancellation.argtypes = [ctypes.c_void_p, _I16P, _I16P, _I16P]
    lib.speex_echo_state_destroy.argtypes = [ctypes.c_void_p]
    lib.speex_preprocess_state_init.restype = ctypes.c_void_p
    lib.speex_preprocess_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.speex_preprocess_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lib.speex_preprocess_run.argtypes = [ctypes.c_void_p, _I16P]
    lib.speex_preprocess_state_destroy.argtypes = [ctypes.c_void_p]
    return lib


class Speex(EchoCanceller):
    """speexdsp's MDF canceller plus its residual-echo suppressor (the preprocessor bound to it).

    ``tail_ms`` must cover the longest echo delay plus the room's decay: the filter only models echo
    that far back.
    """

    name = "speex"

    def __init__(self, tail_ms: int = 512, residual_suppression: bool = True) -> None:
        self._lib = _libspeexdsp()
        taps = int(tail_ms * SPEECH_RATE / 1000)
        self._echo = self._lib.speex_echo_state_init(FRAME, taps)
        rate = ctypes.c_int(SPEECH_RATE)
        self._lib.speex_echo_ctl(self._echo, _SPEEX_ECHO_SET_SAMPLING_RATE, ctypes.byref(rate))
        self._pre = None
        if residual_suppression:
            self._pre = self._lib.speex_preprocess_state_init(FRAME, SPEECH_RATE)
            self._lib.speex_preprocess_ctl(self._pre, _SPEEX_PREPROCESS_SET_ECHO_STATE, self._echo)
            # Only the residual-echo suppressor: noise and gain are the front-end's next stage.
            off = ctypes.c_int(0)
            self._lib.speex_preprocess_ctl(self._pre, _SPEEX_PREPROCESS_SET_DENOISE, ctypes.byref(off))
            self._lib.speex_preprocess_ctl(self._pre, _SPEEX_PREPROCESS_SET_AGC, ctypes.byref(off))
        self._out = np.zeros(FRAME, dtype=np.int16)

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        near = np.ascontiguousarray(near, np.int16)
        far = np.ascontiguousarray(far, np.int16)
        if near.size != FRAME or far.size != FRAME:
            raise ValueError(f"speex works on {FRAME}-sample frames, got {near.size} and {far.size}")
        out = self._out.ctypes.data_as(_I16P)
        self._lib.speex_echo_cancellation(
            self._echo, near.ctypes.data_as(_I16P), far.ctypes.data_as(_I16P), out
        )
        if self._pre is not None:
            self._lib.speex_preprocess_run(self._pre, out)
        return self._out.copy()

    def close(self) -> None:
        if self._pre is not None:
            self._lib.speex_preprocess_state_destroy(self._pre)
            self._pre = None
        if self._echo is not None:
            self._lib.speex_echo_state_destroy(self._echo)
            self._echo = None

    def __del__(self) -> None:
        self.close()


CANCELLERS: dict[str, type[EchoCanceller]] = {"aec3": Aec3, "speex": Speex}


def make_canceller(name: str) -> EchoCanceller | None:
    """The canceller for ``--aec NAME``; None for ``off``."""
    if name == "off":
        return None
    try:
        return CANCELLERS[name]()
    except KeyError:
        raise ValueError(f"unknown echo canceller {name!r}: use off, {', '.join(CANCELLERS)}") from None
