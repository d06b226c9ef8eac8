"""Sample-rate conversion and framing: exact lengths, preserved content, no drift across chunks."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from voicepeer.audio.formats import (
    SPEECH_RATE,
    WEBRTC_FRAME_SAMPLES,
    WEBRTC_RATE,
    InboundConverter,
    Resampler,
    SampleBuffer,
    frame_pcm,
    leading_quiet,
    rms_dbfs,
    to_float32,
    to_int16,
)


def tone(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return to_int16(amp * np.sin(2 * np.pi * freq * t))


def dominant_freq(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(pcm.size)))
    return float(np.fft.rfftfreq(pcm.size, 1 / rate)[np.argmax(spectrum)])


def aiortc_frame(stereo_interleaved: np.ndarray, pts: int) -> av.AudioFrame:
    """A frame shaped exactly as aiortc 1.16's Opus decoder delivers it: s16 packed stereo, 960 samples."""
    frame = av.AudioFrame.from_ndarray(stereo_interleaved.reshape(1, -1), format="s16", layout="stereo")
    frame.sample_rate = WEBRTC_RATE
    frame.pts = pts
    frame.time_base = Fraction(1, WEBRTC_RATE)
    return frame


def test_inbound_48k_stereo_frames_become_16k_mono_without_drift():
    mono = tone(440, WEBRTC_RATE, 3.0)
    stereo = np.repeat(mono, 2)  # interleaved L R L R, as to_ndarray() shows (1, 1920)
    conv = InboundConverter()
    out = []
    for i in range(mono.size // WEBRTC_FRAME_SAMPLES):
        chunk = stereo[i * 2 * WEBRTC_FRAME_SAMPLES : (i + 1) * 2 * WEBRTC_FRAME_SAMPLES]
        out.append(conv.convert(*frame_pcm(aiortc_frame(chunk, i * WEBRTC_FRAME_SAMPLES))))
    pcm = np.concatenate(out)
    # 150 frames of 20 ms: exactly 3 s at 16 kHz, less the resampler's small delay line.
    assert 3 * SPEECH_RATE - 64 <= pcm.size <= 3 * SPEECH_RATE
    assert dominant_freq(pcm[1000:], SPEECH_RATE) == pytest.approx(440, abs=2)
    # Level preserved (mono = average of identical channels), within 0.5 dB.
    assert rms_dbfs(pcm[1000:-1000]) == pytest.approx(rms_dbfs(mono), abs=0.5)


def test_inbound_converter_ignores_pts_jumps_from_packet_loss():
    conv = InboundConverter()
    frame = np.repeat(tone(300, WEBRTC_RATE, 0.02), 2)
    sizes = [
        conv.convert(*frame_pcm(aiortc_frame(frame, pts))).size
        for pts in (0, 960, 960 * 10, 960 * 11, 960 * 50)
    ]
    # Every frame yields its 320 samples (after the first fills the filter), whatever the pts say.
    assert all(300 <= s <= 340 for s in sizes[1:])


def test_resampler_22050_to_48000_keeps_pitch_and_length_across_chunks():
    src = tone(1000, 22050, 2.0)
    r = Resampler(22050, WEBRTC_RATE)
    chunks = np.array_split(src, 7)  # uneven chunk sizes, as TTS sentences are
    out = np.concatenate([r.push(c) for c in chunks] + [r.flush()])
    assert abs(out.size - 2 * WEBRTC_RATE) <= 2
    assert dominant_freq(out, WEBRTC_RATE) == pytest.approx(1000, abs=2)


def test_only_s16_frames_are_taken_and_their_layout_is_read_off_the_frame():
    pcm, rate, channels = frame_pcm(aiortc_frame(np.zeros(1920, np.int16), 0))
    assert (pcm.shape, rate, channels) == ((1920,), WEBRTC_RATE, 2)
    planar = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.float32), format="fltp", layout="mono")
    planar.sample_rate = WEBRTC_RATE
    with pytest.raises(ValueError, match="expected s16"):
        frame_pcm(planar)


def test_inbound_converter_follows_a_change_of_rate_and_refuses_odd_layouts():
    conv = InboundConverter()
    assert 300 <= conv.convert(tone(300, WEBRTC_RATE, 0.1), WEBRTC_RATE, 1).size <= 1600
    assert 1500 <= conv.convert(tone(300, 16_000, 0.1), 16_000, 1).size <= 1600
    with pytest.raises(ValueError, match="mono or stereo"):
        conv.convert(np.zeros(960 * 6, np.int16), WEBRTC_RATE, 6)


def test_sample_buffer_hands_out_exact_blocks_in_order():
    buf = SampleBuffer()
    data = np.arange(5000, dtype=np.int16)
    for part in np.array_split(data, 13):
        buf.push(part)
    blocks = []
    while (b := buf.pop(512)) is not None:
        blocks.append(b)
    assert len(blocks) == 5000 // 512
    rest = buf.pop_all()
    assert np.array_equal(np.concatenate([*blocks, rest]), data)
    assert len(buf) == 0 and buf.pop(1) is None


def test_float_int16_round_trip_clips_instead_of_wrapping():
    x = np.array([-2.0, -1.0, 0.0, 0.5, 1.0, 2.0])
    y = to_int16(x)
    assert y.tolist() == [-32768, -32768, 0, 16384, 32767, 32767]
    assert np.allclose(to_float32(y), np.clip(x, -1, 32767 / 32768), atol=1e-4)


def test_leading_quiet_finds_the_first_frame_near_the_turns_level():
    rate = 16_000
    rng = np.random.default_rng(0)
    hiss = np.round(rng.normal(0, 3, rate // 2)).astype(np.int16)  # 500 ms at about -80 dBFS
    t = np.arange(rate // 2) / rate
    soft = (300 * np.sin(2 * np.pi * 3000 * t[:1600])).astype(np.int16)  # a consonant, -30 dB under
    vowel = (10_000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
    assert leading_quiet(np.concatenate([hiss, soft, vowel]), rate, 40.0) == hiss.size
    assert leading_quiet(np.concatenate([hiss, vowel]), rate, 40.0) == hiss.size
    assert leading_quiet(vowel, rate, 40.0) == 0
    assert leading_quiet(np.zeros(rate, np.int16), rate, 40.0) == 0  # all silence: nothing is louder
    assert leading_quiet(np.zeros(100, np.int16), rate, 40.0) == 0  # shorter than a frame
