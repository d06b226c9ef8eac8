"""The bot's voice on its way out: the playout queue (exact frames, positions, pause, clear, listeners)
and the outbound track that paces it for aiortc (20 ms frames, contiguous pts, real time, never raising)."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from voicepeer.call.playout import Playout
from voicepeer.transport.tracks import PlayoutTrack


def take(playout: Playout, n: int) -> list[np.ndarray]:
    return [playout.next_frame(float(i)) for i in range(n)]


async def pull(track: PlayoutTrack, n: int) -> list:
    return [await track.recv() for _ in range(n)]


# -- the playout queue, with no transport at all ---------------------------------------------------


async def test_queued_audio_comes_out_bit_exact_then_silence_and_the_playout_goes_idle():
    playout = Playout()
    audio = (np.arange(960 * 3 + 100) % 2000 - 1000).astype(np.int16)
    playout.enqueue(audio[:1500])
    playout.enqueue(audio[1500:])
    out = np.concatenate(take(playout, 6))
    assert all(f.size == 960 for f in take(playout, 2))
    assert np.array_equal(out[: audio.size], audio)
    assert not out[audio.size :].any()
    assert playout.played_total == audio.size
    await asyncio.wait_for(playout.wait_idle(), 0.1)


def test_listeners_see_every_frame_its_position_time_and_whether_it_carried_bot_audio():
    playout = Playout()
    seen = []
    playout.add_listener(lambda pcm, pos, at, voiced: seen.append((pos, at, voiced, pcm.size)))
    playout.enqueue(np.ones(960, np.int16))
    take(playout, 3)
    assert seen == [(0, 0.0, True, 960), (960, 1.0, False, 960), (1920, 2.0, False, 960)]


def test_clear_drops_unsent_audio():
    playout = Playout()
    playout.enqueue(np.ones(48000, np.int16))
    take(playout, 2)
    assert playout.clear() == 48000 - 2 * 960
    assert not any(f.any() for f in take(playout, 2))
    assert playout.played_total == 2 * 960 and playout.buffered_samples == 0


def test_listener_errors_do_not_stop_the_frames():
    playout = Playout()

    def broken(*_):
        raise RuntimeError("listener bug")

    playout.add_listener(broken)
    playout.enqueue(np.ones(100, np.int16))
    frames = take(playout, 3)
    assert [f.size for f in frames] == [960] * 3 and frames[0][:100].all()


async def test_pause_sends_silence_and_keeps_the_queue_and_resume_goes_on_where_it_stopped():
    playout = Playout()
    voice = (np.arange(960 * 4) % 200 + 1).astype(np.int16)
    playout.enqueue(voice)
    assert np.array_equal(playout.next_frame(0.0), voice[:960]) and playout.played_total == 960
    playout.pause()
    assert all(not f.any() for f in take(playout, 3))
    assert playout.played_total == 960 and playout.buffered_samples == 960 * 3
    waiter = asyncio.ensure_future(playout.wait_idle())
    await asyncio.sleep(0)
    assert not waiter.done()  # paused with audio queued is not idle
    playout.resume()
    rest = np.concatenate(take(playout, 3))
    assert np.array_equal(rest, voice[960:]) and playout.played_total == playout.queued_total == voice.size
    await asyncio.wait_for(waiter, 1)


def test_clear_moves_the_queued_position_back_to_what_was_played():
    playout = Playout()
    playout.enqueue(np.ones(960 * 5, dtype=np.int16))
    take(playout, 2)
    assert playout.clear() == 960 * 3
    assert playout.queued_total == playout.played_total == 960 * 2
    playout.enqueue(np.ones(960, dtype=np.int16))
    assert playout.queued_total == 960 * 3


# -- the track: pacing for aiortc --------------------------------------------------------------------


async def test_frames_are_960_samples_mono_48k_with_contiguous_pts():
    track = PlayoutTrack(Playout())
    frames = await pull(track, 10)
    assert [f.pts for f in frames] == [i * 960 for i in range(10)]
    for f in frames:
        assert f.samples == 960 and f.sample_rate == 48000 and f.time_base == Fraction(1, 48000)
        assert f.format.name == "s16" and f.layout.name == "mono"
        assert not f.to_ndarray().any()  # nothing queued: silence


async def test_the_track_carries_the_playout_bit_exact():
    playout = Playout()
    audio = (np.arange(960 * 2 + 10) % 500 - 250).astype(np.int16)
    playout.enqueue(audio)
    out = np.concatenate([f.to_ndarray().reshape(-1) for f in await pull(PlayoutTrack(playout), 3)])
    assert np.array_equal(out[: audio.size], audio) and not out[audio.size :].any()


async def test_recv_never_runs_ahead_of_real_time():
    track = PlayoutTrack(Playout())
    loop = asyncio.get_running_loop()
    await track.recv()
    t0 = loop.time()
    await pull(track, 25)
    # 25 frames of 20 ms cannot be released in less than 0.5 s (a lower bound, so noise cannot fail it).
    assert loop.time() - t0 >= 0.5 - 0.005


async def test_a_failing_playout_yields_silence_not_exceptions():
    playout = Playout()
    track = PlayoutTrack(playout)

    def broken(_now: float) -> np.ndarray:
        raise RuntimeError("playout bug")

    playout.next_frame = broken
    frames = await pull(track, 3)
    assert [f.pts for f in frames] == [0, 960, 1920]
    assert not any(f.to_ndarray().any() for f in frames)


async def test_a_stalled_loop_restarts_the_clock_instead_of_bursting():
    track = PlayoutTrack(Playout())
    await track.recv()
    await asyncio.sleep(0.3)  # the loop was busy for longer than MAX_LATE_S
    loop = asyncio.get_running_loop()
    await track.recv()
    t0 = loop.time()
    frames = await pull(track, 5)
    assert track.restarts == 1
    assert loop.time() - t0 >= 5 * 0.02 - 0.005  # paced again, not five frames at once
    assert [f.pts for f in frames] == [960 * i for i in range(2, 7)]


async def test_stopped_track_ends_the_sender_cleanly():
    track = PlayoutTrack(Playout())
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_frame_intervals_are_counted_as_gaps_only_past_30_ms():
    track = PlayoutTrack(Playout())
    await pull(track, 2)
    assert track.max_interval_s >= 0.019  # paced: frames are not released faster than real time
    before = track.gaps
    await asyncio.sleep(0.08)  # a stall longer than a frame: the next frame is late
    await pull(track, 1)
    assert track.gaps == before + 1 and track.max_interval_s >= 0.08
