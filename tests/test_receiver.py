"""The client's receiver reports (``playout``): a concealment burst moves the bot's echo, and the front-end
follows it at once (``voicepeer.audio.receiver``, ``FrontEnd.playout_moved``)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from tests.support.calls import call, wait_until
from tests.support.speech import read_wav
from tests.test_echo import through_room
from voicepeer.audio.echo import FRAME
from voicepeer.audio.formats import SPEECH_RATE
from voicepeer.audio.frontend import FrontEnd
from voicepeer.audio.receiver import BURST_MS, PlayoutMoves, ReceiverStats
from voicepeer.transport.app import STATE

REPORT = {"concealedSamples": 480, "packetsLost": 0, "packetsDiscarded": 0, "clockRate": 48000}


def stats(concealed_ms: float, lost: int = 0, discarded: int = 0) -> ReceiverStats:
    return ReceiverStats(
        concealed_samples=concealed_ms * 48, packets_lost=lost, packets_discarded=discarded, clock_rate=48_000
    )


def test_a_concealment_burst_moves_the_playout_once_it_counts_and_then_as_it_grows():
    moves = PlayoutMoves()
    assert moves.update(stats(1000)) == 0.0  # the first report: counters from before
    assert moves.update(stats(1040)) == 0.0  # 40 ms: a late packet or two
    assert moves.update(stats(1100)) == pytest.approx(100)  # the burst passed BURST_MS: all of it
    assert moves.update(stats(1300)) == pytest.approx(200)  # and the rest as it comes
    assert moves.update(stats(1300)) == 0.0  # over
    assert moves.update(stats(1330)) == 0.0  # a new, small one
    assert moves.moved_ms == pytest.approx(300)


def test_lost_packets_and_our_own_stalls_are_concealed_without_a_move_for_the_receiver():
    moves = PlayoutMoves()
    moves.update(stats(0))
    assert moves.update(stats(200, lost=10)) == 0.0  # ten lost packets: concealed in place
    assert moves.update(stats(500, lost=10), ours_ms=300) == 0.0  # our stall: the reference has it
    assert moves.update(stats(800, lost=10), ours_ms=200) == pytest.approx(100)
    assert moves.update(stats(1200, lost=10, discarded=15)) == pytest.approx(100)  # played late: 100
    assert BURST_MS <= 100


def test_a_new_receiver_starts_its_counters_again_without_a_move():
    moves = PlayoutMoves()
    moves.update(stats(5000))
    assert moves.update(stats(10)) == 0.0
    assert moves.update(stats(30)) == 0.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("concealedSamples", "12"),
        ("concealedSamples", True),
        ("concealedSamples", -1),
        ("concealedSamples", float("nan")),
        ("concealedSamples", 1e300),
        ("packetsLost", None),
        ("clockRate", 0),
        ("clockRate", 10**9),
    ],
)
def test_a_report_that_no_receiver_could_make_is_refused_by_field(field, value):
    message = {**REPORT, field: value}
    with pytest.raises(ValueError, match=field):
        ReceiverStats.parse(message)


def client_echo(far: np.ndarray, delay_ms: int, dry_at_s: float, dry_ms: int) -> np.ndarray:
    """A loudspeaker's echo of ``far`` (-6 dB, ``delay_ms``) from a client whose receiver ran dry for
    ``dry_ms`` when its playout was at ``dry_at_s`` (of the microphone's timeline): concealment (silence),
    then everything ``dry_ms`` later."""
    at = round((dry_at_s - delay_ms / 1000) * SPEECH_RATE)
    played = np.concatenate([far[:at], np.zeros(dry_ms * SPEECH_RATE // 1000), far[at:]])[: far.size]
    return np.clip(through_room(played, delay_ms, -6), -32768, 32767).astype(np.int16)


def over_echo_frames(far: np.ndarray, mic: np.ndarray, report_at_s: float | None, move_ms: int) -> np.ndarray:
    """Per 10 ms frame, whether the front-end took it for the user talking over the bot."""
    fe = FrontEnd("aec3", echo_expected=True)
    chunk = 320
    over = []
    for i in range(0, mic.size - chunk + 1, chunk):
        if report_at_s is not None and i <= report_at_s * SPEECH_RATE < i + chunk:
            fe.playout_moved(move_ms)
        over.append(fe.process_pair(mic[i : i + chunk], far[i : i + chunk]).over_echo)
    fe.close()
    flags = np.concatenate(over)
    return flags[: flags.size // FRAME * FRAME].reshape(-1, FRAME)[:, 0]


@pytest.mark.slow
def test_the_echo_follows_a_receiver_that_ran_dry_as_soon_as_it_says_so(make_speech):
    # The bot talks for 12 s; the client's receiver runs dry for 493 ms at 6 s, so the echo comes back
    # 315 ms late before and 808 ms after: out of the canceller's reach until the reference moves.
    story = make_speech(
        "Once upon a time there was a dragon who lived by the sea. Every morning it flew over the town, "
        "and the children ran out to see it pass. One day a little girl asked it where it went, and the "
        "dragon told her about the mountains far away, where the winds sing at the top of the world.",
        rate=SPEECH_RATE,
        lead_s=0.0,
        tail_s=0.0,
    )
    far = read_wav(story.path)[0][: 12 * SPEECH_RATE]
    mic = client_echo(far, 315, 6.0, 493)
    t = np.arange(far.size // FRAME) * FRAME / SPEECH_RATE
    after = (t >= 6.0) & (t < 9.0)
    # The report comes while the receiver is still concealing (it polls every 100 ms), or just after.
    for delay_s in (0.1, 0.3):
        flags = over_echo_frames(far, mic, 6.0 + delay_s, 493)
        assert int(flags[after].sum()) <= 3, (delay_s, np.flatnonzero(flags[after]))


async def test_a_call_takes_the_clients_reports_and_refuses_bad_ones_with_an_error_event(services):
    async with call(services) as (server, client):
        session = server.app[STATE].sessions[client.session_id]
        report = {"type": "playout", **REPORT, "concealedSamples": 0}
        client.channel.send(json.dumps(report))
        client.channel.send(json.dumps({**report, "concealedSamples": 0.4 * 48000}))  # dry for 400 ms
        await wait_until(lambda: session.call.playout_moves.reports == 2, 10)
        assert session.call.playout_moves.moved_ms == pytest.approx(400)
        await wait_until(lambda: session.call.frontend.delay_ms >= 400, 10)  # as the next frame is heard
        client.channel.send(json.dumps({**report, "clockRate": "48k"}))
        client.channel.send(json.dumps({**report, "jitter": 1}))
        await wait_until(lambda: len(client.messages("error")) == 2, 10)
        bad_value, bad_field = client.messages("error")
        assert bad_value["code"] == "bad_value" and bad_value["field"] == "clockRate", bad_value
        assert bad_field["code"] == "bad_field" and bad_field["field"] == "jitter", bad_field
        await asyncio.sleep(0.2)
        assert session.call.playout_moves.reports == 2
