"""The outbound track: exact 20 ms frames, contiguous pts, real-time pacing, silence, and never raising."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from peer.tracks import OutboundAudioTrack


async def pull(track: OutboundAudioTrack, n: int) -> list:
    return [await track.recv() for _ in range(n)]


async def test_frames_are_960_samples_mono_48k_with_contiguous_pts():
    track = OutboundAudioTrack()
    frames = await pull(track, 10)
    assert [f.pts for f in frames] == [i * 960 for i in range(10)]
    for f in frames:
        assert f.samples == 960 and f.sample_rate == 48000 and f.time_base == Fraction(1, 48000)
        assert f.format.name == "s16" and f.layout.name == "mono"
        assert not f.to_ndarray().any()  # nothing queued: silence


async def test_recv_never_runs_ahead_of_real_time():
    track = OutboundAudioTrack()
    loop = asyncio.get_running_loop()
    await track.recv()
    t0 = loop.time()
    await pull(track, 25)
    # 25 frames of 20 ms cannot be released in less than 0.5 s (a lower bound, so noise cannot fail it).
    assert loop.time() - t0 >= 0.5 - 0.005


async def test_queued_audio_comes_out_bit_exact_then_silence_and_callbacks_fire():
    track = OutboundAudioTrack()
    audio = (np.arange(960 * 3 + 100) % 2000 - 1000).astype(np.int16)
    played = []
    track.enqueue(audio[:1500], on_played=lambda: played.append("a"))
    track.enqueue(audio[1500:], on_played=lambda: played.append("b"))
    frames = await pull(track, 6)
    out = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    assert np.array_equal(out[: audio.size], audio)
    assert not out[audio.size :].any()
    assert played == ["a", "b"]
    await asyncio.wait_for(track.wait_idle(), 0.1)


async def test_listeners_see_every_frame_and_whether_it_carried_bot_audio():
    track = OutboundAudioTrack()
    seen = []
    track.add_listener(lambda pcm, pts, at, voiced: seen.append((pts, voiced, pcm.size)))
    track.enqueue(np.ones(960, np.int16))
    await pull(track, 3)
    assert seen == [(0, True, 960), (960, False, 960), (1920, False, 960)]


async def test_clear_drops_unsent_audio_and_its_callbacks():
    track = OutboundAudioTrack()
    played = []
    track.enqueue(np.ones(48000, np.int16), on_played=lambda: played.append(1))
    await pull(track, 2)
    assert track.clear() == 48000 - 2 * 960
    frames = await pull(track, 2)
    assert not any(f.to_ndarray().any() for f in frames)
    assert played == []


async def test_bad_input_or_listener_errors_yield_silence_not_exceptions():
    track = OutboundAudioTrack()

    def broken(*_):
        raise RuntimeError("listener bug")

    track.add_listener(broken)
    track.enqueue(np.ones(100, np.int16))
    frames = await pull(track, 3)
    assert [f.pts for f in frames] == [0, 960, 1920]


async def test_a_stalled_loop_restarts_the_clock_instead_of_bursting():
    track = OutboundAudioTrack()
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
    track = OutboundAudioTrack()
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_pause_sends_silence_and_keeps_the_queue_and_resume_goes_on_where_it_stopped():
    track = OutboundAudioTrack()
    voice = (np.arange(960 * 4) % 200 + 1).astype(np.int16)
    track.enqueue(voice)
    first = (await track.recv()).to_ndarray().reshape(-1)
    assert np.array_equal(first, voice[:960]) and track.played_total == 960
    track.pause()
    paused = await pull(track, 3)
    assert all(not f.to_ndarray().any() for f in paused)
    assert track.played_total == 960 and track.buffered_samples == 960 * 3
    waiter = asyncio.ensure_future(track.wait_idle())
    await asyncio.sleep(0)
    assert not waiter.done()  # paused with audio queued is not idle
    track.resume()
    rest = np.concatenate([f.to_ndarray().reshape(-1) for f in await pull(track, 3)])
    assert np.array_equal(rest, voice[960:]) and track.played_total == track.queued_total == voice.size
    await asyncio.wait_for(waiter, 1)


async def test_clear_moves_the_queued_position_back_to_what_was_played():
    track = OutboundAudioTrack()
    track.enqueue(np.ones(960 * 5, dtype=np.int16))
    await pull(track, 2)
    assert track.clear() == 960 * 3
    assert track.queued_total == track.played_total == 960 * 2
    track.enqueue(np.ones(960, dtype=np.int16))
    assert track.queued_total == 960 * 3


async def test_frame_intervals_are_counted_as_gaps_only_past_30_ms():
    track = OutboundAudioTrack()
    await pull(track, 2)
    assert track.max_interval_s >= 0.019  # paced: frames are not released faster than real time
    before = track.gaps
    await asyncio.sleep(0.08)  # a stall longer than a frame: the next frame is late
    await pull(track, 1)
    assert track.gaps == before + 1 and track.max_interval_s >= 0.08
