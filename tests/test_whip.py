"""WHIP (RFC 9725) at the HTTP level, on the real app with the real models: status codes, headers,
trickle PATCH semantics, DELETE, admission. The third-party client in a real browser is in
test_whip_browser.py."""

from __future__ import annotations

import re

import aiohttp
import pytest

from tests.support.calls import serve, wait_until
from tests.support.offers import local_offer
from voicepeer.config import IceConfig, ServerConfig
from voicepeer.transport.app import STATE

pytestmark = pytest.mark.slow

SDP = {"Content-Type": "application/sdp"}
FRAG = {"Content-Type": "application/trickle-ice-sdpfrag"}


def without_candidates(sdp: str) -> str:
    """An offer as a trickling client sends it: no candidates yet, and no end of them."""
    return re.sub(r"a=candidate:.*\r\n|a=end-of-candidates\r\n", "", sdp)


@pytest.fixture
async def whip(services, request):
    config = getattr(request, "param", {})
    server = await serve(services, server=ServerConfig(max_sessions=2), **config)
    http = aiohttp.ClientSession(base_url=str(server.make_url("")))
    try:
        yield server, http
    finally:
        await http.close()
        await server.close()


async def test_a_send_only_offer_gets_201_with_location_etag_links_and_a_full_answer(whip):
    server, http = whip
    async with http.post("/whip", data=await local_offer("sendonly", channel=False), headers=SDP) as r:
        assert r.status == 201, await r.text()
        answer = await r.text()
        location, etag = r.headers["Location"], r.headers["ETag"]
        links = r.headers.getall("Link")
        assert r.headers["Content-Type"] == "application/sdp"
        assert {"Location", "ETag", "Link"} <= set(
            re.split(r",\s*", r.headers["Access-Control-Expose-Headers"])
        )
    session_id = location.split("?")[0].rsplit("/", 1)[1]
    cap = server.app[STATE].capabilities.of(session_id)
    assert location == f"/whip/{session_id}?cap={cap}" and len(session_id) >= 20  # unguessable
    assert re.fullmatch(r'"[^"]+"', etag)
    assert "a=recvonly" in answer and "a=candidate:" in answer  # all of the server's candidates
    assert f'</sessions/{session_id}/events?cap={cap}>; rel="events"' in links
    assert f'</sessions/{session_id}/control?cap={cap}>; rel="control"' in links
    async with http.delete(f"/whip/{session_id}") as r:  # the id alone is not enough
        assert r.status == 404
    assert session_id in server.app[STATE].sessions
    assert server.app[STATE].sessions[session_id].output is None  # nothing to play to a send-only client

    async with http.delete(location) as r:
        assert r.status == 200
    assert not server.app[STATE].sessions
    async with http.delete(location) as r:  # ended already: still a success, as DELETE is idempotent
        assert r.status == 200
    async with http.delete("/whip/nonexistent") as r:
        assert r.status == 404 and (await r.json())["error"] == "not_found"


async def test_a_send_receive_offer_gets_the_bots_voice_track(whip):
    server, http = whip
    async with http.post("/whip", data=await local_offer("sendrecv", channel=False), headers=SDP) as r:
        assert r.status == 201
        assert "a=sendrecv" in await r.text()
        location = r.headers["Location"]
    session = next(iter(server.app[STATE].sessions.values()))
    assert session.output is not None and session.call.voice
    await http.delete(location)


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"v=0", {"Content-Type": "application/json"}, 415, "unsupported_media_type"),
        (b"v=0", {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        (b"", SDP, 400, "invalid_sdp"),
        (b"\xff\xfe", SDP, 400, "invalid_sdp"),
        (b"v=0\r\nm=audio nonsense", SDP, 400, "invalid_sdp"),
        (b"a" * 70_000, SDP, 413, "too_large"),
    ],
)
async def test_bad_whip_posts_get_the_rfcs_4xx_as_json(whip, body, headers, status, code):
    server, http = whip
    async with http.post("/whip", data=body, headers=headers) as r:
        assert r.status == status
        assert (await r.json())["error"] == code
    assert not server.app[STATE].sessions


async def test_an_offer_without_audio_or_that_only_receives_is_refused(whip):
    _, http = whip
    async with http.post("/whip", data=await local_offer(None), headers=SDP) as r:
        assert r.status == 400 and (await r.json())["error"] == "no_audio"
    async with http.post("/whip", data=await local_offer("recvonly", channel=False), headers=SDP) as r:
        assert r.status == 400 and (await r.json())["error"] == "bad_direction"


async def test_a_full_server_answers_503_with_retry_after(whip):
    server, http = whip
    # Without candidates (a client that will trickle them), a session waits in "connecting".
    offer = without_candidates(await local_offer("sendonly", channel=False))
    locations = []
    for _ in range(2):
        async with http.post("/whip", data=offer, headers=SDP) as r:
            assert r.status == 201
            locations.append(r.headers["Location"])
    async with http.post("/whip", data=offer, headers=SDP) as r:
        assert r.status == 503 and r.headers["Retry-After"]
        assert (await r.json())["error"] == "busy"
    for location in locations:
        await http.delete(location)
    assert not server.app[STATE].sessions


async def test_trickle_patch_follows_the_rfc(whip):
    server, http = whip
    offer = without_candidates(await local_offer("sendonly", channel=False))
    client_ufrag = re.search(r"a=ice-ufrag:(\S+)", offer).group(1)
    async with http.post("/whip", data=offer, headers=SDP) as r:
        location, etag = r.headers["Location"], r.headers["ETag"]
    session = server.app[STATE].sessions[location.split("?")[0].rsplit("/", 1)[1]]
    frag = (
        f"a=ice-ufrag:{client_ufrag}\r\na=ice-pwd:whatever\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n"
        "a=candidate:1 1 udp 2122260223 127.0.0.1 40000 typ host generation 0\r\n"
        "a=candidate:this is not a candidate\r\n"
    )
    cases = [
        (frag, {"Content-Type": "application/sdp", "If-Match": etag}, 415),
        (frag, FRAG, 428),  # no If-Match
        (frag, {**FRAG, "If-Match": '"stale"'}, 412),
        (frag.replace(client_ufrag, "newufrag"), {**FRAG, "If-Match": etag}, 422),  # an ICE restart
        (frag, {**FRAG, "If-Match": "*"}, 422),  # the RFC's way to ask for a restart
    ]
    for body, headers, status in cases:
        async with http.patch(location, data=body, headers=headers) as r:
            assert r.status == status, (headers, await r.text())
            assert (await r.json())["error"]
    async with http.patch(location, data=frag, headers={**FRAG, "If-Match": etag}) as r:
        assert r.status == 204 and "ETag" not in r.headers  # the bad line is discarded, the rest taken
    remote = session.pc.getTransceivers()[0].receiver.transport.transport.getRemoteCandidates()
    assert any(c.ip == "127.0.0.1" and c.port == 40000 for c in remote)
    async with http.patch(
        location, data=frag + "a=end-of-candidates\r\n", headers={**FRAG, "If-Match": etag}
    ) as r:
        assert r.status == 204
    async with http.patch("/whip/nonexistent", data=frag, headers={**FRAG, "If-Match": etag}) as r:
        assert r.status == 404
    await http.delete(location)
    await wait_until(lambda: not server.app[STATE].sessions, 5)


async def test_options_advertises_what_the_endpoint_accepts(whip):
    _, http = whip
    async with http.options("/whip") as r:
        assert r.status == 204 and r.headers["Accept-Post"] == "application/sdp"


@pytest.mark.parametrize(
    "whip", [{"ice": IceConfig(servers=("stun:127.0.0.1:3478", "turn:127.0.0.1:3478"))}], indirect=True
)
async def test_configured_ice_servers_are_advertised_as_link_headers(whip):
    _, http = whip
    async with http.post("/whip", data=await local_offer("sendonly", channel=False), headers=SDP) as r:
        assert r.status == 201
        links = r.headers.getall("Link")
        location = r.headers["Location"]
    assert '<stun:127.0.0.1:3478>; rel="ice-server"' in links
    assert '<turn:127.0.0.1:3478>; rel="ice-server"' in links
    await http.delete(location)


async def test_a_client_cannot_trickle_an_unbounded_list_of_addresses(whip):
    from voicepeer.transport.session import MAX_TRICKLED

    server, http = whip
    offer = without_candidates(await local_offer("sendonly", channel=False))
    ufrag = re.search(r"a=ice-ufrag:(\S+)", offer).group(1)
    async with http.post("/whip", data=offer, headers=SDP) as r:
        location, etag = r.headers["Location"], r.headers["ETag"]
    session = server.app[STATE].sessions[location.split("?")[0].rsplit("/", 1)[1]]
    candidates = "".join(
        f"a=candidate:{i} 1 udp 2122260223 127.0.0.1 {41000 + i} typ host\r\n"
        for i in range(MAX_TRICKLED + 20)
    )
    frag = f"a=ice-ufrag:{ufrag}\r\na=ice-pwd:x\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n{candidates}"
    async with http.patch(location, data=frag, headers={**FRAG, "If-Match": etag}) as r:
        assert r.status == 204
    remote = session.pc.getTransceivers()[0].receiver.transport.transport.getRemoteCandidates()
    assert len(remote) == MAX_TRICKLED
    await http.delete(location)
