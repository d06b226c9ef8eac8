"""Audio end-of-turn detection: has the user finished the turn, or only paused inside it?

Silence alone cannot tell "What is the capital of France?" from "What is the capital of ... ": both end
in a pause. Smart Turn v3.2 (Daily's open model, a Whisper-tiny encoder with a classifier head, int8
ONNX, 8.7 MB) listens to the turn's last 8 s, intonation and pace included, and gives the probability
that the turn is complete. It is the file pipecat bundles (``models.smart_turn_path``); we run it the
way pipecat's ``LocalSmartTurnAnalyzerV3`` does, without the framework and without transformers:

- the last 8 s of 16 kHz audio, zero-padded at the front when the turn is shorter;
- zero-mean unit-variance normalisation of that whole window, padding included (transformers'
  ``do_normalize=True``: pipecat pads first, so the feature extractor sees no padding to mask);
- Whisper log-mel features of exactly 800 frames, as transformers' ``WhisperFeatureExtractor
  (chunk_length=8)`` computes them (see ``features``: the last bits matter);
- one ONNX call; input ``input_features`` (batch, 80, 800), output (batch, 1), already a sigmoid;
  above 0.5 the turn is complete.
"""

from __future__ import annotations

import abc
import functools

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..runtime import models
from ..runtime.workers import priority
from .formats import SPEECH_RATE, to_float32

WINDOW_S = 8
"""Seconds of audio the model hears: the end of the turn, where the cues are."""

WINDOW_SAMPLES = WINDOW_S * SPEECH_RATE

N_MELS = 80
N_FFT = 400
HOP = 160
"""Whisper's analysis: 25 ms windows every 10 ms at 16 kHz."""

FRAMES = 800
"""Feature frames for 8 s at a 10 ms hop: the STFT gives 801, and Whisper drops the last."""


class EndOfTurn(abc.ABC):
    """Says from the audio of a user turn whether the user has finished it.

    The interface is a probability rather than a yes/no, so the caller can weigh it against how long
    the silence has lasted (wait longer for a turn that sounds unfinished, never forever). Another audio
    model, or one that reads the transcript, can plug in here.
    """

    @abc.abstractmethod
    def probability(self, audio: np.ndarray, sample_rate: int = SPEECH_RATE) -> float:
        """Probability that the turn is complete, from its int16 mono audio so far. Blocking."""

    def warmup(self) -> None:
        """Runs once at load (blocking) so the first user does not pay for lazy initialisation."""
        return None


@functools.cache
def _session(path: str):  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    options = ort.SessionOptions()
    # One thread: a decision is one small call, and it runs beside ASR and TTS on a 2-core machine,
    # where a second thread only steals a core from them (pipecat's default is 1 too).
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # The model is quantized as QuantizeLinear / DequantizeLinear pairs around float ops. Fused into
    # int8 kernels, it computes u8 x s8 products that saturate their 16-bit sums on x86 CPUs without
    # VNNI (AVX2, early AVX-512): on an AVX2 EPYC the same turn 6 dB louder moved from 0.81 to 0.11
    # complete, and a complete question scored 0.70 where the exact sums give 0.97. Unfused, the
    # pairs run as float ops on the quantized values, the sums the model was trained to make, alike on
    # every CPU and about as fast (120 against 116 ms a decision on that EPYC).
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def smart_turn_session(path: str | None = None):  # -> onnxruntime.InferenceSession
    """The process-wide Smart Turn session for ``path`` (default: the bundled v3.2), loaded once.

    onnxruntime sessions may be run from several threads at once, so every call shares it."""
    return _session(str(models.smart_turn_path(path).resolve()))


@functools.cache
def _mel_filters() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whisper's 80 Slaney mel filters for a 400-point FFT at 16 kHz, as their 391 nonzero weights:
    (FFT bins, weights, where each filter starts). Each filter is a few adjacent bins, so the mel
    projection is a gather and a segmented sum, with no BLAS call: numpy's OpenBLAS would run a
    (80, 201) @ (201, 801) product on every core and leave its threads spinning after it, 20 ms of CPU
    per decision taken from the ASR and TTS beside it."""
    from faster_whisper.feature_extractor import FeatureExtractor

    filters = FeatureExtractor.get_mel_filters(SPEECH_RATE, N_FFT, n_mels=N_MELS)
    bins = [np.flatnonzero(row) for row in filters]
    starts = np.cumsum([0] + [b.size for b in bins[:-1]])
    weights = np.concatenate([row[b] for row, b in zip(filters, bins, strict=True)])
    return np.concatenate(bins), weights, starts


_HANN = np.hanning(N_FFT + 1)[:-1]  # periodic, as torch.hann_window and transformers use


def features(audio: np.ndarray) -> np.ndarray:
    """The model's input for a turn: (80, 800) float32 log-mel features of its last 8 s.

    ``audio`` is int16 at 16 kHz. This is transformers' numpy path (and pipecat's copy of it), float64
    spectrum included: faster-whisper's own extractor computes the same features in float32, which
    differ by ~1e-5, and the int8 model turns differences that small into up to 0.3 of probability on
    a borderline turn (7 of 93 bench clips moved by more than 0.01). In float64 the features match
    transformers' to 2e-7 and the probabilities are identical, so a turn gets the decision pipecat
    (and the model's training) would give it.
    """
    x = to_float32(audio[-WINDOW_SAMPLES:])
    if x.size < WINDOW_SAMPLES:
        x = np.concatenate([np.zeros(WINDOW_SAMPLES - x.size, dtype=np.float32), x])
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)  # in float32, as transformers normalises
    padded = np.pad(x.astype(np.float64), N_FFT // 2, mode="reflect")  # centred frames
    frames = sliding_window_view(padded, N_FFT)[::HOP]  # 801 frames for 8 s
    power = np.abs(np.fft.rfft(frames * _HANN, axis=-1)) ** 2  # (801, 201)
    bins, weights, starts = _mel_filters()
    mel = np.add.reduceat(power[:, bins] * weights, starts, axis=1).T  # (80, 801)
    log_mel = np.log10(np.maximum(mel, 1e-10))[:, :-1]  # Whisper drops the last frame
    log_mel = np.maximum(log_mel, log_mel.max() - 8.0)
    return ((log_mel + 4.0) / 4.0).astype(np.float32)


class SmartTurn(EndOfTurn):
    """Smart Turn v3.2: one ONNX call on the turn's last 8 s, ~70 ms of one core on the 2-core VM
    (10 ms of it the features; bench/endofturn.py).

    The session is shared by the whole process; instances hold nothing else, so any number of calls
    may use one. It was trained on human speech (23 languages). On synthetic voices it hears a trailing
    "um" or "because" as unfinished, but a bare cut ("What is the capital of") is a coin toss, and it
    calls many complete TTS questions unfinished (4 to 7 of 10 right per voice): tests and benchmarks
    that speak with espeak-ng or flite will see turns held when it is on.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = models.smart_turn_path(path)
        self._session = smart_turn_session(path)
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != "input_features" or inputs[0].shape[1:] != [N_MELS, FRAMES]:
            found = [(i.name, i.shape) for i in inputs]
            raise ValueError(f"{self.path} is not a Smart Turn v3 model: inputs {found}")

    def probability(self, audio: np.ndarray, sample_rate: int = SPEECH_RATE) -> float:
        """Probability that the turn is complete. ``audio`` is the whole turn so far, int16 mono at
        16 kHz, ending in the silence that made the caller ask (the model was trained on turns cut
        about 200 ms into the speaker's silence); only its last 8 s count. Blocking: one ONNX call on
        one core."""
        if sample_rate != SPEECH_RATE:
            raise ValueError(f"Smart Turn takes {SPEECH_RATE} Hz audio, got {sample_rate} Hz: resample first")
        if audio.dtype != np.int16 or audio.ndim != 1:
            raise ValueError(f"Smart Turn takes 1-D int16 PCM, got {audio.dtype} with shape {audio.shape}")
        if audio.size == 0:
            raise ValueError("Smart Turn needs some audio, got none")
        # The user is waiting for this decision: the embedded LLM pauses between tokens meanwhile.
        with priority.urgent():
            batch = features(audio)[None]
            (out,) = self._session.run(None, {"input_features": batch})
        return float(np.asarray(out).reshape(-1)[0])

    def warmup(self) -> None:
        self.probability(np.zeros(SPEECH_RATE, dtype=np.int16))
