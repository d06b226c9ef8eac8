"""The inbound audio jitter buffer: no wait in order, the order restored, a bounded lag after it; and
the microphone's timeline read from its frames' timestamps."""

from __future__ import annotations

from fractions import Fraction

import av
from aiortc.rtp import RtpPacket

from voicepeer.transport.jitter import MAX_BACKLOG, AudioJitterBuffer, Timeline


def packet(seq: int) -> RtpPacket:
    p = RtpPacket(payload_type=111, sequence_number=seq % 65536, timestamp=(seq * 960) % 2**32)
    p._data = bytes([seq % 256])  # type: ignore[attr-defined]  # what the depayloader leaves
    return p


def feed(buffer: AudioJitterBuffer, order: list[int]) -> list[int | None]:
    out: list[int | None] = []
    for seq in order:
        _, frame = buffer.add(packet(seq))
        out.append(None if frame is None else frame.timestamp // 960)
    return out


def test_in_order_each_packet_goes_on_at_once() -> None:
    assert feed(AudioJitterBuffer(), list(range(10))) == list(range(10))


def test_sequence_numbers_wrap() -> None:
    order = list(range(65530, 65542))
    assert feed(AudioJitterBuffer(), order) == order


def test_a_late_packet_is_put_back_in_order() -> None:
    got = feed(AudioJitterBuffer(), [0, 1, 3, 2, 4, 5, 6])
    assert got == [0, 1, None, 2, 3, 4, 5]  # 3 waits for 2; the frames after it trail by one


def test_the_lag_after_reorderings_stays_bounded() -> None:
    # Every fourth packet arrives after the next one: aiortc's buffer would trail by one more each time.
    order: list[int] = []
    for base in range(0, 80, 4):
        order += [base, base + 2, base + 1, base + 3]
    buffer = AudioJitterBuffer()
    got = [f for f in feed(buffer, order) if f is not None]
    assert got == sorted(got)  # never out of order
    assert order[-1] - got[-1] <= 1
    assert buffer.dropped == 0


def test_a_burst_after_a_late_packet_is_cut_to_the_allowed_lag() -> None:
    order = [0, 2, 3, 4, 5, 6, 1, *range(7, 20)]  # 1 comes 100 ms late, five frames ready behind it
    buffer = AudioJitterBuffer()
    got = feed(buffer, order)
    assert got[:6] == [0, None, None, None, None, None]
    assert got[6] == 1 + (5 - MAX_BACKLOG)  # the oldest of the burst dropped
    assert buffer.dropped == 5 - MAX_BACKLOG
    assert order[-1] - got[-1] == MAX_BACKLOG  # the lag stays where it was bounded


def test_a_lost_packet_is_given_up_when_the_buffer_overflows() -> None:
    order = [0, 1, *range(3, 40)]  # 2 never comes
    got = feed(AudioJitterBuffer(), order)
    assert got[:2] == [0, 1]
    assert all(f is None for f in got[2:16])  # waiting for 2, up to the buffer's capacity
    later = [f for f in got if f is not None and f > 2]
    assert later and later == sorted(later)
    assert order[-1] - later[-1] <= MAX_BACKLOG + 1  # caught up


def test_the_microphones_timeline_tells_how_much_audio_never_came():
    def frame(pts: int | None) -> av.AudioFrame:
        f = av.AudioFrame(format="s16", layout="mono", samples=960)
        f.sample_rate = 48000
        f.pts = pts
        f.time_base = Fraction(1, 48000)
        return f

    timeline = Timeline()
    assert timeline.missing_s(frame(1000)) == 0.0  # the first: nothing to compare with
    assert timeline.missing_s(frame(1960)) == 0.0
    assert timeline.missing_s(frame(2920 + 3 * 960)) == 0.06  # three frames lost after 2920
    assert timeline.missing_s(frame(10)) == 0.0  # the sender started its timestamps again
    assert timeline.missing_s(frame(970)) == 0.0
    assert timeline.missing_s(frame(None)) == 0.0
